from __future__ import annotations

import random
from collections import Counter

import pytest

from murder_core.superseed import OFFER_BYTES, SuperSeeder


def _peer_has(have: set[int]):  # type: ignore[no-untyped-def]
    return lambda i: i in have


def test_each_peer_is_offered_enough_bytes_to_fill_its_pipeline() -> None:
    assert SuperSeeder(100, 256 * 1024).per_peer == OFFER_BYTES // (256 * 1024)
    assert SuperSeeder(100, 16 * 1024 * 1024).per_peer == 2


def test_no_piece_is_offered_twice_before_every_piece_was_offered_once() -> None:
    ss = SuperSeeder(64, 1024 * 1024, rng=random.Random(7))
    haves: dict[str, set[int]] = {f"p{i}": set() for i in range(5)}
    offered: list[int] = []
    for name, have in haves.items():
        offered += ss.add_peer(name, _peer_has(have))
    # Peers complete what they were offered, a few rounds over.
    while not ss.first_round_done:
        for name, have in haves.items():
            have.update(ss.offered(name))
            offered += ss.refresh(name)
    first_round = offered[:64]
    assert sorted(first_round) == list(range(64))


def test_pieces_a_peer_already_has_are_not_offered_to_it() -> None:
    ss = SuperSeeder(10, 1024 * 1024, rng=random.Random(1))
    have = {0, 1, 2, 3, 4, 5, 6, 7}
    offers = ss.add_peer("p", _peer_has(have))
    assert set(offers) == {8, 9}
    have.update({8, 9})
    assert ss.refresh("p") == []


def test_refresh_tops_up_as_offers_are_completed() -> None:
    ss = SuperSeeder(100, 1024 * 1024, rng=random.Random(3))
    have: set[int] = set()
    first = ss.add_peer("p", _peer_has(have))
    assert len(first) == ss.per_peer
    have.add(first[0])
    more = ss.refresh("p")
    assert len(more) == 1 and more[0] not in first
    assert ss.offered("p") == frozenset(first[1:] + more)


def test_removed_peer_gets_nothing_and_its_pieces_come_round_again() -> None:
    ss = SuperSeeder(8, 4 * 1024 * 1024, rng=random.Random(5))  # one piece per offer slot
    gone = ss.add_peer("gone", _peer_has(set()))
    ss.remove_peer("gone")
    assert ss.refresh("gone") == []
    have: set[int] = set()
    seen: Counter[int] = Counter()
    seen.update(ss.add_peer("q", _peer_has(have)))
    for _ in range(8):
        have.update(ss.offered("q"))
        seen.update(ss.refresh("q"))
    assert set(gone) <= set(seen)


def test_empty_torrent_is_refused() -> None:
    with pytest.raises(ValueError, match="num_pieces must be positive, got 0"):
        SuperSeeder(0, 1024)
