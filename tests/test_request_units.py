"""What a downloading session asks for: 128 KiB units from murder peers, 16 KiB blocks
from every other client, and how a split unit is put back together or given up.

The remote here is the test, speaking the wire through PeerConnection over a real
socket to a Session that downloads (see wirepeer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from wirepeer import (
    THEIR_ID,
    WAIT,
    Scenario,
    greet,
    next_message,
    piece_for,
    remote_conn,
    run_session,
    seed_to,
    small_torrent,
)

from murder_core import peer as peer_module
from murder_core.peer import STANDARD_BLOCK, PeerLink
from murder_core.session import REQUEST_UNIT, Session, SessionConfig
from murder_core.storage import Storage
from murder_core.values import PeerAddr
from murder_core.wire import messages as m
from murder_core.wire.connection import PeerConnection

MURDER_ID = b"-MU0001-000000000002"
PIECE = 2 * REQUEST_UNIT


def _downloader(tmp_path: Path, pieces: int) -> tuple[Session, Storage, bytes]:
    meta, payload = small_torrent(tmp_path, pieces=pieces, piece_length=PIECE)
    (tmp_path / "dl").mkdir()
    storage = Storage.for_download(meta, tmp_path / "dl" / "payload.bin")
    session = Session(meta, storage, b"-MU0001-000000000000", SessionConfig(super_seed=False))
    return session, storage, payload.read_bytes()


async def _greet_until_asked(
    conn: PeerConnection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    count: int,
    *first: m.Message,
) -> list[m.Request]:
    """Answer as a seed showing ``first`` (see ``greet``) until ``count`` Requests came."""
    requests: list[m.Request] = []
    while len(requests) < count:
        msg = await next_message(conn, reader)
        writer.write(greet(conn, msg, *first))
        if isinstance(msg, m.Request):
            requests.append(msg)
    return requests


def _run(session: Session, storage: Storage, scenario: Scenario) -> bytes:
    """Run ``scenario``; returns the downloaded file's bytes, with the storage closed."""
    try:
        run_session(session, scenario)
        return storage.path.read_bytes()
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("remote_id", "size"),
    [(MURDER_ID, REQUEST_UNIT), (THEIR_ID, STANDARD_BLOCK)],
    ids=["murder-peer", "other-client"],
)
def test_request_size_follows_the_remote_client(
    tmp_path: Path, remote_id: bytes, size: int
) -> None:
    session, storage, data = _downloader(tmp_path, pieces=3)

    async def scenario(
        s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        seen = await seed_to(remote_conn(s, remote_id), reader, writer, data, s)
        assert {r.length for r in seen} == {size}
        covered = sorted((r.index, r.begin) for r in seen)
        assert covered == [(i, b) for i in range(3) for b in range(0, PIECE, size)]

    assert _run(session, storage, scenario) == data


def test_a_rejected_block_gives_up_its_whole_unit_and_asks_again(tmp_path: Path) -> None:
    """Another client rejects one 16 KiB block: the rest of its unit is cancelled, and the
    unit is asked for again, whole, so no 128 KiB unit is left half-fetched."""
    session, storage, data = _downloader(tmp_path, pieces=1)
    per_unit = REQUEST_UNIT // STANDARD_BLOCK

    async def scenario(
        s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = remote_conn(s, THEIR_ID)
        writer.write(conn.initiate())
        requests = await _greet_until_asked(conn, reader, writer, 2 * per_unit, m.HaveAll())
        rejected = requests[2]  # the third block of the first unit
        writer.write(conn.send(m.RejectRequest(rejected.index, rejected.begin, rejected.length)))
        cancels: list[m.Cancel] = []
        while len(cancels) < per_unit - 1:
            msg = await next_message(conn, reader)
            assert isinstance(msg, (m.Cancel, m.Request)), msg
            if isinstance(msg, m.Cancel):
                cancels.append(msg)
        first_unit = {(r.index, r.begin) for r in requests[:per_unit]}
        assert {(c.index, c.begin) for c in cancels} == first_unit - {
            (rejected.index, rejected.begin)
        }
        # Serve the second unit now; the first comes back as a fresh request later.
        for r in requests[per_unit:]:
            writer.write(conn.send(piece_for(data, r, PIECE)))
        again: list[m.Request] = []
        while len(again) < per_unit:
            msg = await next_message(conn, reader)
            if isinstance(msg, m.Request):
                again.append(msg)
        assert {(r.index, r.begin) for r in again} == first_unit
        for r in again:
            writer.write(conn.send(piece_for(data, r, PIECE)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not s.complete:  # bounded: the last block is in flight on loopback
            assert loop.time() < deadline, "the piece did not complete"
            await asyncio.sleep(0.01)

    assert _run(session, storage, scenario) == data


def test_a_peer_that_dialled_us_is_not_dialled_again_every_tick(tmp_path: Path) -> None:
    """The remote's id sorts first, so its connection is the one kept; the address the
    tracker gave for it must then count as connected, or every tick dials it again only
    to drop the duplicate."""
    session, storage, _ = _downloader(tmp_path, pieces=1)
    first_id = b"-AA0000-000000000009"  # below our "-MU..." id: its own dial wins
    accepted: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        conn = remote_conn(session, first_id)
        conn.receive_data(await asyncio.wait_for(reader.readexactly(68), WAIT))
        writer.write(conn.initiate())
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await asyncio.wait_for(reader.read(), WAIT)  # until the session drops it
        writer.close()

    async def scenario(
        s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        try:
            conn = remote_conn(s, first_id)
            writer.write(conn.initiate())
            await next_message(conn, reader)  # its handshake: our link is up
            writer.write(conn.send(m.HaveNone()))
            s.add_peers([PeerAddr("127.0.0.1", server.sockets[0].getsockname()[1])])
            for _ in range(4):  # four ticks' worth of dialling
                s.connect_more(loop)
                deadline = loop.time() + WAIT
                while s.connecting or any(not link.ready for link in s.links):
                    assert loop.time() < deadline, "the dial did not settle"
                    await asyncio.sleep(0.01)
            assert len(accepted) == 1
            assert [link.remote_id for link in s.links] == [first_id]
        finally:
            server.close()

    try:
        run_session(session, scenario)
    finally:
        storage.close()


def test_the_peer_that_sent_a_piece_hears_its_have_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Haves to other peers wait to be bundled; the sender's may not: a super-seeder
    offers its next piece only once it sees this one arrived."""
    monkeypatch.setattr(peer_module, "HAVE_DELAY", 3600.0)  # "never", for this test
    session, storage, data = _downloader(tmp_path, pieces=2)

    async def scenario(
        s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = remote_conn(s, MURDER_ID)
        writer.write(conn.initiate())
        while True:
            msg = await next_message(conn, reader)
            # Like our super-seeder: nothing at first, then one piece revealed.
            writer.write(greet(conn, msg, m.HaveNone(), m.Have(1)))
            if isinstance(msg, m.Request):
                writer.write(conn.send(piece_for(data, msg, PIECE)))
            elif isinstance(msg, m.Have):
                assert msg.index == 1
                assert s.storage.has(1)
                return

    got = _run(session, storage, scenario)
    assert got[PIECE:] == data[PIECE:]


def test_pipeline_depth_follows_what_the_peer_delivers(tmp_path: Path) -> None:
    """Enough requests in flight for a quarter second of the peer's rate, within bounds:
    a deep queue on a slow link only delays the requests behind it."""
    session, storage, _ = _downloader(tmp_path, pieces=1)
    loop = asyncio.new_event_loop()
    try:
        link = PeerLink(session, None, False)
        session.link_opened(link)
        config = session.config
        assert link.depth == config.pipeline_start
        session._last_tick -= 1.0
        link.downloaded += 200 * 1024 * 1024  # a fast peer: 200 MiB in a second
        session.tick(loop)
        assert link.depth == config.pipeline_max
        for _ in range(8):  # then it goes quiet
            session._last_tick -= 1.0
            session.tick(loop)
        assert link.depth == config.pipeline_min
        session._last_tick -= 1.0
        link.downloaded += 12 * REQUEST_UNIT * 8  # ~12 units' worth per quarter second
        session.tick(loop)
        assert config.pipeline_min < link.depth < config.pipeline_max
    finally:
        loop.close()
        storage.close()


def test_a_new_offer_is_asked_for_at_once_while_requests_are_in_flight(tmp_path: Path) -> None:
    """A super-seeder reveals its next piece while our requests for the last are still
    unanswered: with room in the pipeline it is asked for on the Have itself, not when a
    block next arrives (or at the next tick, which this test never runs)."""
    session, storage, data = _downloader(tmp_path, pieces=2)
    session.config.pipeline_start = 2 * (PIECE // REQUEST_UNIT)  # room for both pieces

    async def scenario(
        s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = remote_conn(s, MURDER_ID)
        writer.write(conn.initiate())
        units = PIECE // REQUEST_UNIT
        pending = await _greet_until_asked(conn, reader, writer, units, m.HaveNone(), m.Have(0))
        assert {r.index for r in pending} == {0}
        writer.write(conn.send(m.Have(1)))  # nothing of piece 0 answered yet
        while len(pending) < 2 * (PIECE // REQUEST_UNIT):
            msg = await next_message(conn, reader)
            assert isinstance(msg, m.Request), msg
            assert msg.index == 1
            pending.append(msg)
        for r in pending:
            writer.write(conn.send(piece_for(data, r, PIECE)))
        while not s.complete:
            await next_message(conn, reader)

    assert _run(session, storage, scenario) == data
