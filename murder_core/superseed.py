"""Which pieces a seeder reveals to whom, so its uplink sends each piece once first.

A plain seeder advertises everything and serves whatever it is asked for; early in a
deploy every peer asks for its own random picks and the seeder's uplink carries some
pieces twice while others have not left it yet. Like BEP 16 super-seeding, we show each
peer only a few pieces at a time, taken in one rotation over all pieces, and show it
more as it reports the ones it got. Peers then fetch the rest from each other. Unlike
BEP 16 we do not wait to see a piece re-shared before offering the next one: the
fleet is trusted, and waiting would idle the uplink.

Pure bookkeeping: no sockets, no clock.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Callable

#: Keep at least this many bytes offered to each peer so its request pipeline stays full.
OFFER_BYTES = 4 * 1024 * 1024


class SuperSeeder:
    def __init__(
        self, num_pieces: int, piece_length: int, *, rng: random.Random | None = None
    ) -> None:
        if num_pieces <= 0:
            raise ValueError(f"num_pieces must be positive, got {num_pieces}")
        self.num_pieces = num_pieces
        self.per_peer = max(2, -(-OFFER_BYTES // piece_length))
        # A shuffled rotation: peers of a fresh swarm should not all start at piece 0.
        self._order = list(range(num_pieces))
        (rng or random.Random()).shuffle(self._order)
        self._cursor = 0
        self._rounds = 0
        self._offered: dict[Hashable, set[int]] = {}
        self._has: dict[Hashable, Callable[[int], bool]] = {}
        self.offers = [0] * num_pieces

    @property
    def first_round_done(self) -> bool:
        """True once every piece has been offered at least once."""
        return self._rounds > 0

    def add_peer(self, peer: Hashable, has: Callable[[int], bool]) -> list[int]:
        self._offered[peer] = set()
        self._has[peer] = has
        return self.refresh(peer)

    def remove_peer(self, peer: Hashable) -> None:
        self._offered.pop(peer, None)
        self._has.pop(peer, None)

    def offered(self, peer: Hashable) -> frozenset[int]:
        return frozenset(self._offered.get(peer, ()))

    def refresh(self, peer: Hashable) -> list[int]:
        """Drop offers the peer has completed and top it up; returns pieces to announce."""
        offered = self._offered.get(peer)
        if offered is None:
            return []
        has = self._has[peer]
        offered.difference_update([i for i in offered if has(i)])
        new: list[int] = []
        tried = 0
        while len(offered) < self.per_peer and tried < self.num_pieces:
            index = self._order[self._cursor]
            self._cursor += 1
            if self._cursor == self.num_pieces:
                self._cursor = 0
                self._rounds += 1
            tried += 1
            if has(index) or index in offered:
                continue
            offered.add(index)
            self.offers[index] += 1
            new.append(index)
        return new
