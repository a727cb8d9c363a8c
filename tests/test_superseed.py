from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from pathlib import Path

import pytest
from wirepeer import PIECE, next_message, serve_session, small_torrent

from murder_core.metainfo import BLOCK_SIZE
from murder_core.peer import PeerLink
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


def _left(ss: SuperSeeder) -> bool:
    return ss.all_left  # a call, so that mypy does not narrow one check into the next


def test_a_piece_has_left_once_all_its_bytes_went_out_in_order() -> None:
    ss = SuperSeeder(3, 4 * BLOCK_SIZE, last_length=BLOCK_SIZE + 1)
    ss.note_sent(0, 0, 2 * BLOCK_SIZE)
    ss.note_sent(0, 3 * BLOCK_SIZE, BLOCK_SIZE)  # ahead of a gap: not counted yet
    ss.note_sent(0, 0, BLOCK_SIZE)  # again: nothing new
    ss.note_sent(1, 0, 4 * BLOCK_SIZE)
    ss.note_sent(2, 0, BLOCK_SIZE + 1)  # the short last piece
    ss.note_sent(7, 0, BLOCK_SIZE)  # no such piece: ignored
    assert not _left(ss)
    ss.note_sent(0, 2 * BLOCK_SIZE, BLOCK_SIZE)
    assert not _left(ss)  # the block sent ahead of the gap is not remembered
    ss.note_sent(0, 3 * BLOCK_SIZE, BLOCK_SIZE)
    assert _left(ss) and not ss.all_seen


def test_a_piece_sent_out_of_order_has_left_once_a_peer_reports_it() -> None:
    ss = SuperSeeder(2, 2 * BLOCK_SIZE)
    ss.note_sent(0, 0, 2 * BLOCK_SIZE)
    ss.note_sent(1, BLOCK_SIZE, BLOCK_SIZE)
    ss.note_sent(1, 0, BLOCK_SIZE)
    assert not _left(ss)
    ss.note_have(1)
    assert _left(ss)
    ss.note_have(0)  # sent and then reported: counted once
    assert _left(ss) and ss.all_seen


def test_a_wrapped_rotation_offers_again_once_every_piece_was_sent() -> None:
    ss = SuperSeeder(4, 4 * 1024 * 1024, rng=random.Random(8))  # one piece per offer
    quiet: set[int] = set()  # a peer that fetches its offers and never reports them
    offered = [piece for i in range(4) for piece in ss.add_peer(f"p{i}", _peer_has(quiet), 0.0)]
    assert sorted(offered) == [0, 1, 2, 3] and ss.first_round_done
    assert ss.refresh("p0", 0.0) == []  # holding back: all four are out on offer
    for name in ("p0", "p1", "p2", "p3"):
        (piece,) = ss.offered(name)
        ss.note_sent(piece, 0, 4 * 1024 * 1024)
    assert ss.all_left and not ss.all_seen
    # p0 still holds its own offer; the hold-back is over, so others' pieces come round.
    assert ss.refresh("p0", 0.0) == [] and len(ss.offered("p0")) == 1
    lacking: set[int] = set()
    ss.add_peer("late", _peer_has(lacking), 0.0)
    assert len(ss.offered("late")) == 1


# -- a seeding Session, two peers over real sockets ------------------------------------


def _seeding_session(tmp_path: Path) -> tuple[Session, Storage, bytes]:
    meta, payload = small_torrent(tmp_path, pieces=32, piece_length=PIECE)
    storage = Storage.for_seed(meta, payload)
    assert storage.verify_all() == meta.num_pieces
    session = Session(meta, storage, b"-MU0001-000000000000", SessionConfig(super_seed=True))
    return session, storage, payload.read_bytes()


def _record_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, PeerLink]]:
    """(piece, offset, link) of every block the seeding session hands to a socket."""
    sent: list[tuple[int, int, PeerLink]] = []
    send = PeerLink.send_piece

    def recording(link: PeerLink, storage: Storage, index: int, begin: int, length: int) -> None:
        sent.append((index, begin, link))
        send(link, storage, index, begin, length)

    monkeypatch.setattr(PeerLink, "send_piece", recording)
    return sent


class _Remote:
    """A peer on the far side of a real socket, driven by the sans-IO PeerConnection."""

    def __init__(self, session: Session, peer_id: bytes, data: bytes) -> None:
        self.num_pieces = session.num_pieces
        self.conn = PeerConnection(session.info_hash, peer_id, self.num_pieces)
        self.data = data
        self.asked: set[int] = set()
        self.got: set[int] = set()

    async def open(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(self.conn.initiate())
        assert isinstance(await next_message(self.conn, reader), m.Handshake)
        writer.write(self.conn.send(m.Interested()))
        return reader, writer

    def ask_for_shown(self, writer: asyncio.StreamWriter) -> None:
        """Request every block of each piece shown to us and not asked for yet."""
        if self.conn.peer_choking.name != "UNCHOKED":
            return
        new = [i for i in range(self.num_pieces) if self.conn.peer_has(i)]
        new = [i for i in new if i not in self.asked and i not in self.got]
        self.asked.update(new)
        writer.write(
            b"".join(
                self.conn.send(m.Request(i, b, BLOCK_SIZE))
                for i in new
                for b in range(0, PIECE, BLOCK_SIZE)
            )
        )

    def take(self, msg: m.Message) -> int | None:
        """Check a received block; the piece's index once its last block is in."""
        if not isinstance(msg, m.Piece):
            return None
        at = msg.index * PIECE + msg.begin
        assert bytes(msg.block) == self.data[at : at + len(msg.block)]
        if msg.begin + len(msg.block) < PIECE:
            return None
        self.got.add(msg.index)
        return msg.index


def test_once_every_piece_left_the_seed_it_shows_each_peer_all_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two peers fetch what the super-seeding Session offers them and share nothing with
    each other. No block leaves twice before every block has left once; after that each
    peer must be shown every piece it lacks at once (a full seed from then on), not a few
    offers at a time."""
    session, storage, data = _seeding_session(tmp_path)
    sent = _record_sends(monkeypatch)
    remotes = [_Remote(session, b"-XX0000-00000000000" + c, data) for c in (b"a", b"b")]

    async def peer(port: int, remote: _Remote) -> PeerConnection:
        reader, writer = await remote.open(port)
        try:
            while remote.conn.peer_piece_count < remote.num_pieces:
                remote.ask_for_shown(writer)
                index = remote.take(await next_message(remote.conn, reader))
                if index is not None:
                    writer.write(remote.conn.send(m.Have(index)))
            return remote.conn
        finally:
            writer.close()

    async def both(port: int) -> list[PeerConnection]:
        return await asyncio.gather(*(peer(port, r) for r in remotes))

    try:
        conns = serve_session(session, both)
    finally:
        storage.close()
    blocks = session.num_pieces * (PIECE // BLOCK_SIZE)
    first_pass = sent[:blocks]
    assert len({(i, b) for i, b, _ in first_pass}) == blocks, (
        "a block left twice before all had left once"
    )
    # Before the end, each peer was sent pieces of its own: its offers.
    a, b = ({i for i, _, link in first_pass if link is to} for to in {lk for *_, lk in sent})
    assert a and b and not a & b, "each peer got its own offers before the end"
    assert len(a | b) == session.num_pieces
    assert all(r.got for r in remotes), "each peer got offers of its own"
    assert all(c.peer_piece_count == session.num_pieces for c in conns)


def test_the_last_offers_go_round_once_sent_without_waiting_for_their_haves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that fetches its offers and never reports them (while it keeps asking us
    for blocks, so its offers never lapse) must not hold those pieces back: once every
    piece has been sent, the other peer is shown them and completes."""
    session, storage, data = _seeding_session(tmp_path)
    reporting = _Remote(session, b"-XX0000-00000000000a", data)
    quiet = _Remote(session, b"-XX0000-00000000000q", data)
    done = asyncio.Event()

    async def report(port: int) -> None:
        reader, writer = await reporting.open(port)
        try:
            while len(reporting.got) < reporting.num_pieces:
                reporting.ask_for_shown(writer)
                index = reporting.take(await next_message(reporting.conn, reader))
                if index is not None:
                    writer.write(reporting.conn.send(m.Have(index)))
            done.set()
        finally:
            writer.close()

    async def keep_quiet(port: int) -> None:
        reader, writer = await quiet.open(port)
        loop = asyncio.get_running_loop()
        try:
            reread = loop.time()
            while not done.is_set():
                quiet.ask_for_shown(writer)
                if quiet.got and loop.time() >= reread:  # busy with us: offers stay ours
                    writer.write(quiet.conn.send(m.Request(min(quiet.got), 0, BLOCK_SIZE)))
                    reread = loop.time() + 0.5
                with contextlib.suppress(asyncio.TimeoutError):
                    quiet.take(await asyncio.wait_for(next_message(quiet.conn, reader), 0.2))
        finally:
            writer.close()

    async def both(port: int) -> None:
        await asyncio.gather(report(port), keep_quiet(port))

    try:
        serve_session(session, both)
    finally:
        storage.close()
    assert quiet.got, "the quiet peer was offered pieces of its own"
    assert quiet.got <= reporting.got and len(reporting.got) == session.num_pieces
