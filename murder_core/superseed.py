"""Which pieces a seeder reveals to whom, so its uplink sends each piece once first.

A plain seeder advertises everything and serves whatever it is asked for; early in a
deploy every peer asks for its own random picks and the seeder's uplink carries some
pieces twice while others have not left it yet. Like BEP 16 super-seeding, we show each
peer only a few pieces at a time, taken in one rotation over all pieces, and show it
more as it reports the ones it got. Peers then fetch the rest from each other. Unlike
BEP 16 we do not wait to see a piece re-shared before offering the next one: the
fleet is trusted, and waiting would idle the uplink.

Once the rotation has gone round, pieces still on offer to someone have not left yet;
offering them (or pieces already out) to more peers would send them twice while the
last ones wait, and the last piece to leave the seeder is the last one the swarm can
finish. So until every piece has left (all its bytes sent, or reported by a peer), a
wrapped rotation offers only pieces that nobody holds an offer for. Two things release
an offer for someone else: its peer leaving, and its peer asking us for nothing for
``OFFER_TTL`` seconds (a stalled peer must not hold pieces back from the whole swarm).

Pure bookkeeping: no sockets; the caller passes the clock.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Callable

#: Bytes on offer at a time, shared by the peers: enough to keep the uplink busy while
#: Haves come back, few enough that every offer is claimed well within OFFER_TTL on a
#: 100 Mbit/s uplink (16 MiB there is 1.3 s). Up to four peers get a quarter each (a
#: lone fast peer needs that much in flight); sixteen get 1 MiB each.
OFFER_BYTES = 16 * 1024 * 1024
SHARES_AT_LEAST = 4
#: An offer not completed within this many seconds may go to another peer.
OFFER_TTL = 10.0


class SuperSeeder:
    def __init__(
        self,
        num_pieces: int,
        piece_length: int,
        *,
        last_length: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if num_pieces <= 0:
            raise ValueError(f"num_pieces must be positive, got {num_pieces}")
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self._last_length = piece_length if last_length is None else last_length
        # Bytes of each piece sent from its start on without a gap, -1 once it has left
        # (sent whole or reported). Blocks leave in order within a piece; one out of
        # order only delays the count until a peer reports the piece.
        self._sent_upto = [0] * num_pieces
        self._not_left = num_pieces
        # A shuffled rotation: peers of a fresh swarm should not all start at piece 0.
        self._order = list(range(num_pieces))
        (rng or random.Random()).shuffle(self._order)
        self._cursor = 0
        self._rounds = 0
        self._offered: dict[Hashable, dict[int, float]] = {}  # peer -> piece -> when
        self._has: dict[Hashable, Callable[[int], bool]] = {}
        self._asked_at: dict[Hashable, float] = {}  # peer -> when it last asked for a block
        self.offers = [0] * num_pieces
        self._holding = [0] * num_pieces  # live (unexpired) offers of each piece
        self._seen = bytearray(num_pieces)  # some peer reported it: it left us once
        self._seen_count = 0
        self._free = num_pieces  # pieces neither seen nor held in a live offer

    @property
    def per_peer(self) -> int:
        """Pieces each peer may hold on offer now."""
        peers = len(self._offered)
        share = OFFER_BYTES // max(SHARES_AT_LEAST, peers) // self.piece_length
        # Small torrents are spread thin so every early peer gets pieces of its own. The
        # last pieces out are the last the swarm can finish, and each travels at its
        # peer's share of a busy downlink: no peer holds more than its share of what
        # nobody has reported yet (one or two each at the end, not four to a few peers).
        unseen_share = -(-(self.num_pieces - self._seen_count) // max(1, peers))
        return max(1, min(share, self.num_pieces // 8, unseen_share))

    @property
    def first_round_done(self) -> bool:
        """True once every piece has been offered at least once."""
        return self._rounds > 0

    @property
    def all_seen(self) -> bool:
        """True once some peer has reported each piece: every piece has left us."""
        return self._seen_count == self.num_pieces

    @property
    def all_left(self) -> bool:
        """True once every piece has left us: all its bytes sent, or a peer reported it.

        Sent is enough. Waiting for the Haves of the last pieces left our uplink idle
        for 0.3-0.5 s at the end of an N = 16 swarm (the last piece in flight, checked
        and reported by a peer whose CPU was busy), when it could already serve them.
        """
        return self._not_left == 0

    def note_sent(self, index: int, begin: int, length: int) -> None:
        """A block of piece ``index`` went out."""
        if not 0 <= index < self.num_pieces:
            return
        upto = self._sent_upto[index]
        if begin <= upto < begin + length:
            size = self._last_length if index == self.num_pieces - 1 else self.piece_length
            if begin + length >= size:
                self._left(index)
            else:
                self._sent_upto[index] = begin + length

    def _left(self, index: int) -> None:
        if self._sent_upto[index] >= 0:
            self._sent_upto[index] = -1
            self._not_left -= 1

    def add_peer(self, peer: Hashable, has: Callable[[int], bool], now: float) -> list[int]:
        self._offered[peer] = {}
        self._has[peer] = has
        return self.refresh(peer, now)

    def remove_peer(self, peer: Hashable) -> None:
        """Forget a peer; what it was offered may go to others (``refresh`` them)."""
        for index, when in self._offered.pop(peer, {}).items():
            if when >= 0:
                self._release(index)
        self._has.pop(peer, None)
        self._asked_at.pop(peer, None)

    def offered(self, peer: Hashable) -> frozenset[int]:
        return frozenset(self._offered.get(peer, ()))

    def note_have(self, index: int) -> None:
        """Some peer reported piece ``index`` (offered to it or not)."""
        if 0 <= index < self.num_pieces and not self._seen[index]:
            self._left(index)
            self._seen[index] = 1
            self._seen_count += 1
            if not self._holding[index]:
                self._free -= 1

    def note_request(self, peer: Hashable, now: float) -> None:
        """The peer asked us for a block: it is working through its offers.

        OFFER_TTL counts from a peer's last request, not from each offer: a peer that
        joined early is offered a bigger share than it keeps once everyone is in, and
        fetched the last of it up to 10 s later at its share of our uplink; offers timed
        from when they were made lapsed meanwhile, went to a second peer, and left us twice.
        """
        if peer in self._offered:
            self._asked_at[peer] = now

    def expire(self, now: float) -> bool:
        """Release offers made over OFFER_TTL ago to peers that have asked for nothing
        for as long; True if any was (``refresh`` everyone)."""
        released = False
        for peer, offers in self._offered.items():
            asked = self._asked_at.get(peer, -1.0)
            for index, when in offers.items():
                if when >= 0 and max(when, asked) < now - OFFER_TTL:
                    offers[index] = -1.0  # still the peer's to fetch, no longer exclusive
                    self._release(index)
                    released = True
        return released

    def refresh(self, peer: Hashable, now: float) -> list[int]:
        """Drop offers the peer has completed and top it up; returns pieces to announce."""
        offers = self._offered.get(peer)
        if offers is None:
            return []
        has = self._has[peer]
        for index in [i for i in offers if has(i)]:
            self.note_have(index)
            if offers.pop(index) >= 0:
                self._release(index)
        new: list[int] = []
        tried = 0
        limit = self.per_peer
        while len(offers) < limit and tried < self.num_pieces:
            holding_back = self._rounds > 0 and not self.all_left
            if holding_back and not self._free:
                break
            index = self._order[self._cursor]
            self._cursor += 1
            if self._cursor == self.num_pieces:
                self._cursor = 0
                self._rounds += 1
            tried += 1
            if has(index):
                self.note_have(index)
                continue
            if index in offers:
                continue
            if holding_back and (self._seen[index] or self._holding[index]):
                continue
            offers[index] = now
            self.offers[index] += 1
            if not self._holding[index] and not self._seen[index]:
                self._free -= 1
            self._holding[index] += 1
            new.append(index)
        return new

    def _release(self, index: int) -> None:
        self._holding[index] -= 1
        if not self._holding[index] and not self._seen[index]:
            self._free += 1
