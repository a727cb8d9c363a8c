"""Unstarted pieces bucketed by availability, so the rarest one is found without a scan.

The picker's helper: it counts, for every piece, how many connected peers that
are not seeds have it, and keeps each piece nobody has started yet in the
bucket of that count. Moving a piece between buckets, dropping it once it is
started, and drawing a random piece from the rarest non-empty bucket are O(1).
"""

from __future__ import annotations

import random


class AvailabilityBuckets:
    """Availability counts of every piece, and the candidates grouped by them."""

    def __init__(self, num_pieces: int) -> None:
        self._count = [0] * num_pieces
        self._buckets: list[list[int]] = [list(range(num_pieces))]
        self._slot = list(range(num_pieces))  # position in its bucket; -1 once discarded

    def __len__(self) -> int:
        """Pieces still waiting to be started."""
        return sum(len(bucket) for bucket in self._buckets)

    def count(self, index: int) -> int:
        return self._count[index]

    def is_candidate(self, index: int) -> bool:
        return self._slot[index] >= 0

    def change(self, index: int, delta: int) -> None:
        """One more (+1) or one fewer (-1) peer has this piece."""
        if self._slot[index] < 0:
            self._count[index] += delta
            return
        self._remove(index)
        self._count[index] += delta
        self._add(index)

    def discard(self, index: int) -> None:
        """The piece was started or verified: no longer a candidate."""
        if self._slot[index] >= 0:
            self._remove(index)
            self._slot[index] = -1

    def rarest(self, has: bytearray | None, rng: random.Random) -> int:
        """A candidate of lowest availability among those in ``has``, or -1.

        ``has`` is one peer's per-piece flags, or None for a seed (every piece).
        Ties are broken at random: a random start in the bucket, then onwards,
        so peers of a fresh swarm do not all begin with piece 0.
        """
        if has is None:
            for bucket in self._buckets:
                if bucket:
                    return bucket[rng.randrange(len(bucket))]
            return -1
        # A peer that is not a seed counts towards every piece it has, so skip bucket 0.
        for bucket in self._buckets[1:]:
            size = len(bucket)
            if not size:
                continue
            start = rng.randrange(size)
            for pos in range(start, size):
                if has[bucket[pos]]:
                    return bucket[pos]
            for pos in range(start):
                if has[bucket[pos]]:
                    return bucket[pos]
        return -1

    def _remove(self, index: int) -> None:
        bucket = self._buckets[self._count[index]]
        last = bucket.pop()
        if last != index:
            pos = self._slot[index]
            bucket[pos] = last
            self._slot[last] = pos

    def _add(self, index: int) -> None:
        count = self._count[index]
        while count >= len(self._buckets):
            self._buckets.append([])
        bucket = self._buckets[count]
        self._slot[index] = len(bucket)
        bucket.append(index)
