from __future__ import annotations

import random

from murder_core.availability import AvailabilityBuckets


def flags(n: int, pieces: set[int]) -> bytearray:
    return bytearray(1 if i in pieces else 0 for i in range(n))


def test_seed_gets_the_rarest_candidate() -> None:
    buckets = AvailabilityBuckets(4)
    for index, count in enumerate([2, 0, 1, 3]):
        for _ in range(count):
            buckets.change(index, 1)
    rng = random.Random(0)
    order = []
    for _ in range(4):
        index = buckets.rarest(None, rng)
        order.append(index)
        buckets.discard(index)
    assert order == [1, 2, 0, 3]
    assert buckets.rarest(None, rng) == -1
    assert len(buckets) == 0


def test_partial_peer_gets_its_rarest_piece_only() -> None:
    buckets = AvailabilityBuckets(6)
    peer = flags(6, {0, 4, 5})
    others = [flags(6, {0, 1, 2, 3, 4}), flags(6, {0, 1, 2})]
    for has in [peer, *others]:
        for index in range(6):
            if has[index]:
                buckets.change(index, 1)
    # For this peer: piece 5 (1 peer) < piece 4 (2) < piece 0 (3); 1..3 it lacks.
    assert buckets.rarest(peer, random.Random(1)) == 5
    buckets.discard(5)
    assert buckets.rarest(peer, random.Random(1)) == 4
    buckets.discard(4)
    buckets.discard(0)
    assert buckets.rarest(peer, random.Random(1)) == -1


def test_counts_survive_discard_and_moves_between_buckets() -> None:
    buckets = AvailabilityBuckets(3)
    buckets.change(1, 1)
    buckets.discard(1)
    buckets.change(1, 1)
    assert buckets.count(1) == 2
    assert not buckets.is_candidate(1)
    buckets.change(0, 1)
    buckets.change(0, -1)
    assert buckets.count(0) == 0
    assert buckets.is_candidate(0)
    assert len(buckets) == 2
    assert buckets.rarest(flags(3, {1}), random.Random(0)) == -1


def test_ties_are_broken_at_random() -> None:
    firsts = set()
    for seed in range(30):
        buckets = AvailabilityBuckets(50)
        firsts.add(buckets.rarest(None, random.Random(seed)))
    assert len(firsts) > 15
