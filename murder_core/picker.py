"""Which block to ask which peer for next: finish started pieces, rarest-first, endgame.

Pure bookkeeping with no sockets, clock or disk. The driver tells the picker what
each peer has and which blocks arrived; the picker answers with the blocks to
request and the cancels to send. It sits on the download hot path (tens of
thousands of blocks a second), so per-block work is O(1) amortized:

* pieces nobody has started wait in buckets keyed by availability
  (``availability.py``), so opening the rarest piece is a bucket lookup, never
  a scan of every piece;
* seeds are counted apart from the buckets: a peer that has everything raises
  every piece by one and so never changes which piece is rarest;
* each peer keeps counters of the pieces it could still give us, so "nothing
  to ask this peer for" is answered without looking at a single piece.
"""

from __future__ import annotations

import random
from collections.abc import Hashable

from .availability import AvailabilityBuckets
from .errors import MetainfoError, RemoteProtocolError

BLOCK_SIZE = 16 * 1024
Block = tuple[int, int, int]  # (piece index, begin, length)
Cancel = tuple[Hashable, Block]  # (peer to send a cancel to, block)

# Piece states.
_WANTED = 0  # not started: a candidate in the availability buckets
_ACTIVE = 1  # started: has a _Piece with its block bookkeeping
_HAVE = 2  # verified


class _Piece:
    """Block bookkeeping of one started piece."""

    __slots__ = ("asked", "index", "length", "nblocks", "pool", "received")

    def __init__(self, index: int, length: int, block_size: int) -> None:
        self.index = index
        self.length = length
        self.nblocks = -(-length // block_size)
        # A stack popped from the end: reversed so blocks go out in disk order.
        self.pool = list(range((self.nblocks - 1) * block_size, -1, -block_size))
        self.asked: dict[int, list[Hashable]] = {}  # begin -> peers asked, in order
        self.received = 0


class _Peer:
    __slots__ = ("count", "fresh", "has", "requests", "wanted")

    def __init__(self, num_pieces: int) -> None:
        self.has: bytearray | None = bytearray(num_pieces)  # None once it has everything
        self.count = 0  # pieces in ``has``
        self.wanted = 0  # pieces it has that we lack (interest)
        self.fresh = 0  # pieces it has that nobody has started (worth a bucket search)
        self.requests: dict[Block, None] = {}  # outstanding, in request order


class PiecePicker:
    """Decides which blocks to request from which peer.

    ``next_requests`` hands out, in this order: unrequested blocks of pieces
    already started (oldest first), then blocks of new pieces chosen rarest-first
    with a random tie-break, then, in endgame only, blocks already requested from
    other peers, to a peer that owes us nothing (see ``_duplicate``). Endgame starts
    once every missing block has been requested, or once at most
    ``endgame_threshold`` pieces are missing (0 disables that).
    """

    def __init__(
        self,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        *,
        block_size: int = BLOCK_SIZE,
        rng: random.Random | None = None,
        endgame_threshold: int = 0,
    ) -> None:
        expected = -(-total_length // piece_length) if piece_length > 0 else 0
        if min(piece_length, total_length, block_size) <= 0 or num_pieces != expected:
            raise MetainfoError(
                f"inconsistent geometry: {num_pieces} pieces of {piece_length} bytes "
                f"for {total_length} bytes in blocks of {block_size}",
                key="info.pieces",
                value=num_pieces,
            )
        if endgame_threshold < 0:
            raise ValueError(f"endgame threshold must be >= 0, got {endgame_threshold}")
        self._n = num_pieces
        self._piece_length = piece_length
        self._last_length = total_length - (num_pieces - 1) * piece_length
        self._block_size = block_size
        self._rng = rng if rng is not None else random.Random()
        self._endgame_threshold = endgame_threshold
        self._full_bitfield = _full_bitfield(num_pieces)

        self._state = bytearray(num_pieces)  # all _WANTED
        self._rarity = AvailabilityBuckets(num_pieces)  # seeds are not counted
        self._active: dict[int, _Piece] = {}
        self._open: dict[int, _Piece] = {}  # active pieces with unrequested blocks, oldest first
        self._peers: dict[Hashable, _Peer] = {}
        self._have_count = 0
        per_piece = -(-piece_length // block_size)
        self._unopened_blocks = (num_pieces - 1) * per_piece + -(-self._last_length // block_size)
        self._pool_blocks = 0

    # -- our own pieces ---------------------------------------------------------------
    def have(self, index: int) -> bool:
        self._check_index(index)
        return self._state[index] == _HAVE

    @property
    def complete(self) -> bool:
        return self._have_count == self._n

    @property
    def missing_count(self) -> int:
        return self._n - self._have_count

    @property
    def endgame(self) -> bool:
        """True once duplicate requests are allowed."""
        return self._have_count < self._n and (
            self._unopened_blocks + self._pool_blocks == 0
            or self._n - self._have_count <= self._endgame_threshold
        )

    def piece_passed(self, index: int) -> None:
        """The piece's hash checked out: it is ours now."""
        self._check_index(index)
        self._set_have(index)

    mark_have = piece_passed  # resume and seeding: verified on disk before any download

    def piece_failed(self, index: int) -> None:
        """The piece failed its hash check: every block goes back to the pool."""
        piece = self._active.get(index)
        if piece is None:
            raise ValueError(f"piece {index} is not being downloaded, so it cannot fail")
        self._forget_asked(piece)
        self._pool_blocks += piece.nblocks - len(piece.pool)
        bs = self._block_size
        piece.pool = list(range((piece.nblocks - 1) * bs, -1, -bs))
        piece.received = 0
        self._open[index] = piece

    # -- peers ------------------------------------------------------------------------
    def add_peer(self, peer: Hashable) -> None:
        if peer in self._peers:
            raise ValueError(f"peer {peer!r} was already added")
        self._peers[peer] = _Peer(self._n)

    def remove_peer(self, peer: Hashable) -> list[Block]:
        """Forget a peer; returns its outstanding requests, back in the pool now."""
        dropped = self.requests_dropped(peer)
        p = self._peers.pop(peer)
        if p.has is not None:
            self._withdraw(p.has)
        return dropped

    def peer_bitfield(self, peer: Hashable, bits: bytes | bytearray) -> None:
        """The peer's BEP 3 bitfield (piece 0 is the high bit of the first byte)."""
        p = self._peer(peer)
        n = self._n
        if len(bits) != len(self._full_bitfield):
            raise RemoteProtocolError(
                f"bitfield for {n} pieces must be {len(self._full_bitfield)} bytes, got {len(bits)}"
            )
        spare = bits[-1] & ~self._full_bitfield[-1] & 0xFF
        if spare:
            raise RemoteProtocolError(
                f"bitfield has spare bits set after piece {n - 1}: last byte {bits[-1]:#04x}"
            )
        if p.has is None:
            return
        if bits == self._full_bitfield:
            self._promote(p)
            return
        for byte_index, byte in enumerate(bits):
            if byte:
                base = byte_index * 8
                for bit in range(8):
                    if byte & (0x80 >> bit):
                        self._add_have(p, base + bit)
        if p.count == n:
            self._promote(p)

    def peer_has_all(self, peer: Hashable) -> None:
        """BEP 6 have-all, or a bitfield with every bit set."""
        p = self._peer(peer)
        if p.has is not None:
            self._promote(p)

    def peer_has(self, peer: Hashable, index: int) -> None:
        """A have message."""
        p = self._peer(peer)
        if not 0 <= index < self._n:
            raise RemoteProtocolError(f"have for piece {index}, but there are {self._n} pieces")
        if p.has is None or p.has[index]:
            return
        self._add_have(p, index)
        if p.count == self._n:
            self._promote(p)

    def interesting(self, peer: Hashable) -> bool:
        """The peer has a piece we still need."""
        p = self._peer(peer)
        if p.has is None:
            return self._have_count < self._n
        return p.wanted > 0

    def outstanding(self, peer: Hashable) -> int:
        return len(self._peer(peer).requests)

    def expecting(self, peer: Hashable, block: Block) -> bool:
        """We asked this peer for exactly this block and it has not arrived yet.

        The driver writes a received block to disk only when this is true, so a
        late duplicate in endgame never overwrites a piece already verified.
        """
        p = self._peers.get(peer)
        return p is not None and block in p.requests

    # -- requests ---------------------------------------------------------------------
    def next_requests(self, peer: Hashable, max_count: int) -> list[Block]:
        """Up to ``max_count`` new blocks to request from this peer now."""
        p = self._peer(peer)
        out: list[Block] = []
        if max_count <= 0 or self._have_count == self._n:
            return out
        has = p.has
        if self._open:
            drained: list[int] = []
            for index, piece in self._open.items():
                if has is None or has[index]:
                    self._take(piece, peer, p, out, max_count)
                    if not piece.pool:
                        drained.append(index)
                    if len(out) >= max_count:
                        break
            for index in drained:
                del self._open[index]
        while len(out) < max_count and self._unopened_blocks:
            index = self._pick_new(p)
            if index < 0:
                break
            piece = self._start(index)
            self._take(piece, peer, p, out, max_count)
            if piece.pool:
                self._open[index] = piece
        if not out and not p.requests and self.endgame:
            self._duplicate(peer, p, out, max_count)
        return out

    def block_received(self, peer: Hashable, block: Block) -> tuple[bool, list[Cancel]]:
        """Returns (piece now has all its blocks, cancels to send to other peers).

        A block we did not ask this peer for is ignored: (False, []).
        """
        p = self._peers.get(peer)
        if p is None or block not in p.requests:
            return False, []
        del p.requests[block]
        index, begin, _ = block
        piece = self._active[index]
        askers = piece.asked.pop(begin)
        cancels: list[Cancel] = []
        if len(askers) > 1:
            for other in askers:
                if other != peer:
                    del self._peers[other].requests[block]
                    cancels.append((other, block))
        piece.received += 1
        return piece.received == piece.nblocks, cancels

    def requests_dropped(self, peer: Hashable) -> list[Block]:
        """The peer choked us (or vanished): forget its outstanding requests."""
        p = self._peer(peer)
        dropped = list(p.requests)
        for block in dropped:
            self._unask(peer, block)
        p.requests.clear()
        return dropped

    def request_rejected(self, peer: Hashable, block: Block) -> bool:
        """BEP 6 reject: forget one request. False if it was not outstanding."""
        p = self._peer(peer)
        if block not in p.requests:
            return False
        del p.requests[block]
        self._unask(peer, block)
        return True

    # -- internals --------------------------------------------------------------------
    def _peer(self, peer: Hashable) -> _Peer:
        try:
            return self._peers[peer]
        except KeyError:
            raise KeyError(f"peer {peer!r} was never added to the picker") from None

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._n:
            raise IndexError(f"piece index {index} out of range 0..{self._n - 1}")

    def _piece_size(self, index: int) -> int:
        return self._last_length if index == self._n - 1 else self._piece_length

    def _nblocks(self, index: int) -> int:
        return -(-self._piece_size(index) // self._block_size)

    def _add_have(self, p: _Peer, index: int) -> None:
        assert p.has is not None
        if p.has[index]:
            return
        p.has[index] = 1
        p.count += 1
        self._rarity.change(index, 1)
        state = self._state[index]
        if state != _HAVE:
            p.wanted += 1
            if state == _WANTED:
                p.fresh += 1

    def _withdraw(self, has: bytearray) -> None:
        """Take one peer's pieces out of the availability counts."""
        index = has.find(1)
        while index >= 0:
            self._rarity.change(index, -1)
            index = has.find(1, index + 1)

    def _promote(self, p: _Peer) -> None:
        """The peer has everything: count it as a seed instead of piece by piece."""
        assert p.has is not None
        self._withdraw(p.has)
        p.has = None
        p.wanted = p.fresh = 0

    def _set_have(self, index: int) -> None:
        state = self._state[index]
        if state == _HAVE:
            return
        if state == _WANTED:
            self._rarity.discard(index)
            self._unopened_blocks -= self._nblocks(index)
        else:
            piece = self._active.pop(index)
            self._open.pop(index, None)
            self._pool_blocks -= len(piece.pool)
            self._forget_asked(piece)
        self._state[index] = _HAVE
        self._have_count += 1
        for p in self._peers.values():
            if p.has is not None and p.has[index]:
                p.wanted -= 1
                if state == _WANTED:
                    p.fresh -= 1

    def _forget_asked(self, piece: _Piece) -> None:
        bs = self._block_size
        for begin, askers in piece.asked.items():
            block = (piece.index, begin, min(bs, piece.length - begin))
            for peer in askers:
                del self._peers[peer].requests[block]
        piece.asked.clear()

    def _unask(self, peer: Hashable, block: Block) -> None:
        """Undo one request; the block returns to the pool if nobody else has it."""
        index, begin, _ = block
        piece = self._active[index]
        askers = piece.asked[begin]
        askers.remove(peer)
        if not askers:
            del piece.asked[begin]
            piece.pool.append(begin)
            self._pool_blocks += 1
            self._open.setdefault(index, piece)

    def _pick_new(self, p: _Peer) -> int:
        """The rarest unstarted piece this peer has (random among equals), or -1."""
        if p.has is not None and not p.fresh:
            return -1  # without this, a peer with nothing new would cost a scan of every bucket
        return self._rarity.rarest(p.has, self._rng)

    def _start(self, index: int) -> _Piece:
        self._rarity.discard(index)
        piece = _Piece(index, self._piece_size(index), self._block_size)
        self._state[index] = _ACTIVE
        self._active[index] = piece
        self._unopened_blocks -= piece.nblocks
        self._pool_blocks += piece.nblocks
        for p in self._peers.values():
            if p.has is not None and p.has[index]:
                p.fresh -= 1
        return piece

    def _take(
        self, piece: _Piece, peer: Hashable, p: _Peer, out: list[Block], max_count: int
    ) -> None:
        pool = piece.pool
        count = min(len(pool), max_count - len(out))
        if count <= 0:
            return
        taken = pool[-count:]
        del pool[-count:]
        self._pool_blocks -= count
        index, length, bs = piece.index, piece.length, self._block_size
        asked, requests = piece.asked, p.requests
        for begin in reversed(taken):
            block = (index, begin, min(bs, length - begin))
            asked[begin] = [peer]
            requests[block] = None
            out.append(block)

    def _duplicate(self, peer: Hashable, p: _Peer, out: list[Block], max_count: int) -> None:
        """Endgame: ask this idle peer too for blocks one other peer still owes us.

        Only a peer that owes us nothing gets duplicates, and a block is asked of two
        peers at most: a Cancel rarely catches a block that is already queued in the
        sender's socket, so every duplicate of a healthy request is a block sent twice.
        Asking everyone for everything outstanding cost each peer of a 16-host swarm
        5-9% of its download in such copies.
        """
        has, requests, bs = p.has, p.requests, self._block_size
        for index, piece in self._active.items():
            if has is not None and not has[index]:
                continue
            for begin, askers in piece.asked.items():
                if len(askers) > 1 or peer in askers:
                    continue
                block = (index, begin, min(bs, piece.length - begin))
                askers.append(peer)
                requests[block] = None
                out.append(block)
                if len(out) >= max_count:
                    return


def _full_bitfield(num_pieces: int) -> bytes:
    whole, rest = divmod(num_pieces, 8)
    tail = bytes([(0xFF << (8 - rest)) & 0xFF]) if rest else b""
    return b"\xff" * whole + tail
