"""SHA-1 of each piece as its blocks arrive, so a finished piece is not read back from disk.

A block that lands right where its piece's running hash has reached is fed to
that hash from memory; the others only go to disk. When the last block of a
piece is in, only what the running hash has not seen is read back (usually
nothing: the picker asks for a piece's blocks in disk order).

One rule keeps the verdict true of what is on disk: a write below the point a
running hash has reached (an endgame duplicate overlapping bytes another peer
sent first) may change bytes already hashed, so that piece is hashed again
from disk instead.

Hashing stays on the event loop's thread: measured on loopback, a worker
thread cost more CPU per GB in hand-overs and GIL switches than it saved in
wall time, and on a busy deploy host every core is already taken.
"""

from __future__ import annotations

import hashlib

from .storage import Storage


class _Running:
    __slots__ = ("broken", "digest", "pos")

    def __init__(self) -> None:
        self.digest = hashlib.sha1()
        self.pos = 0  # bytes of the piece fed to ``digest``
        self.broken = False  # bytes below ``pos`` may have changed: read it all back


class PieceHasher:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._running: dict[int, _Running] = {}

    def block_written(self, index: int, begin: int, data: bytes | memoryview) -> None:
        """``data`` was just written at ``begin`` of piece ``index``."""
        running = self._running.get(index)
        if running is None:
            if begin != 0:
                return  # nothing to extend: the piece will be read back
            running = self._running[index] = _Running()
        if begin < running.pos:
            running.broken = True
        elif begin == running.pos and not running.broken:
            running.digest.update(data)
            running.pos += len(data)

    def forget(self, index: int) -> None:
        """Piece ``index`` will be fetched again from its first byte."""
        self._running.pop(index, None)

    def verify(self, index: int) -> bool:
        """Every block of piece ``index`` is on disk: check it and mark it in the storage."""
        running = self._running.pop(index, None)
        if running is None or running.broken:
            good = self.storage.check_piece(index)
        else:
            good = self.storage.check_piece(index, running.digest, running.pos)
        self.storage.record_check(index, good)
        return good
