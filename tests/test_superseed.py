from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest
from wirepeer import PIECE, next_message, serve_session, small_torrent

from murder_core.metainfo import BLOCK_SIZE
from murder_core.session import Session, SessionConfig
from murder_core.storage import Storage
from murder_core.superseed import OFFER_BYTES, OFFER_TTL, SHARES_AT_LEAST, SuperSeeder
from murder_core.wire import messages as m
from murder_core.wire.connection import PeerConnection


def _peer_has(have: set[int]):  # type: ignore[no-untyped-def]
    return lambda i: i in have


def test_the_offer_is_shared_by_the_peers_present() -> None:
    ss = SuperSeeder(1000, 256 * 1024)
    ss.add_peer("a", _peer_has(set()), 0.0)
    assert ss.per_peer == OFFER_BYTES // SHARES_AT_LEAST // (256 * 1024)
    assert len(ss.offered("a")) == ss.per_peer
    for i in range(15):
        ss.add_peer(f"p{i}", _peer_has(set()), 0.0)
    assert ss.per_peer == OFFER_BYTES // 16 // (256 * 1024)
    big = SuperSeeder(1000, 64 * 1024 * 1024)
    big.add_peer("a", _peer_has(set()), 0.0)
    assert big.per_peer == 1  # never nothing
    # A small torrent is spread over at least eight peers before any holds back.
    small = SuperSeeder(16, 256 * 1024)
    assert small.add_peer("a", _peer_has(set()), 0.0) and small.per_peer == 2


def test_no_piece_is_offered_twice_before_every_piece_was_offered_once() -> None:
    ss = SuperSeeder(64, 1024 * 1024, rng=random.Random(7))
    haves: dict[str, set[int]] = {f"p{i}": set() for i in range(5)}
    offered: list[int] = []
    for name, have in haves.items():
        offered += ss.add_peer(name, _peer_has(have), 0.0)
    # Peers complete what they were offered, a few rounds over.
    while not ss.first_round_done:
        for name, have in haves.items():
            have.update(ss.offered(name))
            offered += ss.refresh(name, 0.0)
    first_round = offered[:64]
    assert sorted(first_round) == list(range(64))


def test_pieces_a_peer_already_has_are_not_offered_to_it() -> None:
    ss = SuperSeeder(80, 1024 * 1024, rng=random.Random(1))
    have = set(range(78))
    offers = ss.add_peer("p", _peer_has(have), 0.0)
    assert set(offers) == {78, 79}
    have.update({78, 79})
    assert ss.refresh("p", 0.0) == []


def test_refresh_tops_up_as_offers_are_completed() -> None:
    ss = SuperSeeder(100, 1024 * 1024, rng=random.Random(3))
    have: set[int] = set()
    first = ss.add_peer("p", _peer_has(have), 0.0)
    assert len(first) == ss.per_peer
    have.add(first[0])
    more = ss.refresh("p", 0.0)
    assert len(more) == 1 and more[0] not in first
    assert ss.offered("p") == frozenset(first[1:] + more)


def test_removed_peer_gets_nothing_and_its_pieces_come_round_again() -> None:
    ss = SuperSeeder(8, 4 * 1024 * 1024, rng=random.Random(5))  # one piece per offer slot
    gone = ss.add_peer("gone", _peer_has(set()), 0.0)
    ss.remove_peer("gone")
    assert ss.refresh("gone", 0.0) == []
    have: set[int] = set()
    seen: Counter[int] = Counter()
    seen.update(ss.add_peer("q", _peer_has(have), 0.0))
    for _ in range(8):
        have.update(ss.offered("q"))
        seen.update(ss.refresh("q", 0.0))
    assert set(gone) <= set(seen)


def test_empty_torrent_is_refused() -> None:
    with pytest.raises(ValueError, match="num_pieces must be positive, got 0"):
        SuperSeeder(0, 1024)


def test_a_wrapped_rotation_offers_nothing_twice_until_every_piece_was_seen() -> None:
    # Peers finish one offered piece per step, in random order: the rotation wraps while
    # most of the last pass is still in flight.
    rng = random.Random(11)
    ss = SuperSeeder(32, 2 * 1024 * 1024, rng=random.Random(2))  # two pieces per offer
    haves: dict[str, set[int]] = {f"p{i}": set() for i in range(4)}
    offers: Counter[int] = Counter()
    for name, have in haves.items():
        offers.update(ss.add_peer(name, _peer_has(have), 0.0))
    steps = 0
    while not ss.all_seen:
        steps += 1
        assert steps < 1000, "the swarm stopped making progress"
        assert max(offers.values()) == 1, offers.most_common(3)
        for name, have in haves.items():
            pending = sorted(ss.offered(name))
            if pending:
                have.add(rng.choice(pending))
            offers.update(ss.refresh(name, 0.0))
    assert ss.first_round_done and sorted(offers) == list(range(32))
    # Once every piece was seen, a peer still missing pieces is offered them again.
    lagging = min(haves, key=lambda n: len(haves[n]))
    assert ss.refresh(lagging, 0.0) or ss.offered(lagging)


def test_a_departed_peers_offers_go_to_the_others() -> None:
    ss = SuperSeeder(8, 4 * 1024 * 1024, rng=random.Random(4))  # one piece per offer
    have: dict[str, set[int]] = {f"p{i}": set() for i in range(8)}
    for name in have:
        ss.add_peer(name, _peer_has(have[name]), 0.0)
    held = set(ss.offered("p0"))
    assert ss.first_round_done
    # Everyone else finishes their piece; p0 dies before fetching its own.
    for name in list(have)[1:]:
        have[name].update(ss.offered(name))
        assert ss.refresh(name, 1.0) == []  # holding back: p0's piece is still on offer
    ss.remove_peer("p0")
    again = [i for name in list(have)[1:] for i in ss.refresh(name, 2.0)]
    assert set(again) == held


def _all_but_p0_fetched() -> tuple[SuperSeeder, dict[str, set[int]], set[int]]:
    """Eight peers offered a piece each at 0 s; all but p0 report theirs at 1 s."""
    ss = SuperSeeder(8, 4 * 1024 * 1024, rng=random.Random(6))
    have: dict[str, set[int]] = {f"p{i}": set() for i in range(8)}
    for name in have:
        ss.add_peer(name, _peer_has(have[name]), 0.0)
    held = set(ss.offered("p0"))
    for name in list(have)[1:]:
        have[name].update(ss.offered(name))
        ss.refresh(name, 1.0)
    return ss, have, held


def test_an_offer_left_unclaimed_is_released_after_its_time() -> None:
    ss, have, stuck = _all_but_p0_fetched()
    assert not ss.expire(OFFER_TTL - 1)
    assert [i for name in have for i in ss.refresh(name, OFFER_TTL - 1)] == []
    assert ss.expire(OFFER_TTL + 1)
    again = [i for name in list(have)[1:] for i in ss.refresh(name, OFFER_TTL + 1)]
    assert set(again) == stuck


def test_offers_last_while_their_peer_keeps_asking() -> None:
    """OFFER_TTL counts from the peer's last request to us, not from the offer."""
    ss, have, slow = _all_but_p0_fetched()
    ss.note_request("p0", OFFER_TTL - 2)  # p0 is busy fetching (something of ours)
    ss.note_request("nobody", OFFER_TTL - 2)  # not a peer of ours: ignored
    assert not ss.expire(OFFER_TTL + 1)
    assert [i for name in list(have)[1:] for i in ss.refresh(name, OFFER_TTL + 1)] == []
    assert ss.expire(2 * OFFER_TTL)  # silent since: a stalled peer's offers are released
    again = [i for name in list(have)[1:] for i in ss.refresh(name, 2 * OFFER_TTL)]
    assert set(again) == slow


def test_the_last_pieces_are_spread_thin_over_the_peers() -> None:
    """A peer is topped up to its share of what nobody has reported yet, never above."""
    peers = 16
    ss = SuperSeeder(256, 256 * 1024, rng=random.Random(3))
    have: dict[str, set[int]] = {f"p{i}": set() for i in range(peers)}
    for name in have:
        ss.add_peer(name, _peer_has(have[name]), 0.0)
    seen: set[int] = set()
    thin = 0
    for step in range(200):
        if len(seen) == 256:
            break
        for name in have:
            got = set(ss.offered(name))
            have[name].update(got)  # fetched everything on offer, and says so
            for i in got:
                ss.note_have(i)
            seen |= got
            unseen = 256 - len(seen)
            if ss.refresh(name, float(step)):
                share = max(1, -(-unseen // peers))
                assert len(ss.offered(name)) <= share
                thin += share < 4
    assert len(seen) == 256
    assert thin > 0, "the end of the rotation was never reached"


# -- a seeding Session, two peers over real sockets ------------------------------------


def test_once_every_piece_left_the_seed_it_shows_each_peer_all_it_lacks(tmp_path: Path) -> None:
    """Two peers fetch what the super-seeding Session offers them and share nothing with
    each other. Once their Haves cover every piece, each must be shown every piece it
    lacks at once (a full seed from then on), not a few offers at a time."""
    meta, payload = small_torrent(tmp_path, pieces=32, piece_length=PIECE)
    data = payload.read_bytes()
    storage = Storage.for_seed(meta, payload)
    assert storage.verify_all() == meta.num_pieces
    session = Session(meta, storage, b"-MU0001-000000000000", SessionConfig(super_seed=True))
    fetched: dict[bytes, set[int]] = {
        b"-XX0000-00000000000a": set(),
        b"-XX0000-00000000000b": set(),
    }
    covered = asyncio.Event()

    async def peer(port: int, peer_id: bytes) -> PeerConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = PeerConnection(meta.info_hash.raw, peer_id, meta.num_pieces)
        mine = fetched[peer_id]
        try:
            writer.write(conn.initiate())
            assert isinstance(await next_message(conn, reader), m.Handshake)
            writer.write(conn.send(m.Interested()))
            asked: set[int] = set()
            while conn.peer_piece_count < meta.num_pieces:
                if not covered.is_set() and conn.peer_choking.name == "UNCHOKED":
                    new = [i for i in range(meta.num_pieces) if conn.peer_has(i)]
                    new = [i for i in new if i not in asked and i not in mine]
                    asked.update(new)
                    writer.write(
                        b"".join(
                            conn.send(m.Request(i, b, BLOCK_SIZE))
                            for i in new
                            for b in range(0, PIECE, BLOCK_SIZE)
                        )
                    )
                msg = await next_message(conn, reader)
                if isinstance(msg, m.Piece):
                    at = msg.index * PIECE + msg.begin
                    assert bytes(msg.block) == data[at : at + len(msg.block)]
                    if msg.begin + len(msg.block) == PIECE:
                        mine.add(msg.index)
                        writer.write(conn.send(m.Have(msg.index)))
                        if len(set().union(*fetched.values())) == meta.num_pieces:
                            covered.set()
            return conn
        finally:
            writer.close()

    async def both(port: int) -> list[PeerConnection]:
        return await asyncio.gather(*(peer(port, pid) for pid in fetched))

    try:
        conns = serve_session(session, both)
    finally:
        storage.close()
    a, b = fetched.values()
    assert a and b and not a & b, "each peer got its own offers before the end"
    assert len(a | b) == meta.num_pieces
    assert all(c.peer_piece_count == meta.num_pieces for c in conns)
