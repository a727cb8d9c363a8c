"""The upload order: oldest request first, a few links at a time, no link held forever.

The bookkeeping is driven by hand with plain link stand-ins; the last test runs a real
session over sockets with a peer that never reads.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from wirepeer import WAIT, next_message, remote_conn, serve_session, small_torrent

from murder_core.session import Session, SessionConfig
from murder_core.storage import Storage
from murder_core.uploads import SLOT_HOLD, UploadOrder
from murder_core.wire import messages as m
from murder_core.wire.connection import PeerConnection


@dataclass(eq=False)
class Link:
    name: str
    uploads: deque[tuple[int, int, int]] = field(default_factory=deque)
    paused: bool = False
    closed: bool = False

    def ask(self, order: UploadOrder[Link], index: int) -> None:
        self.uploads.append((index, 0, 1))
        order.requested(self)


def _drain(order: UploadOrder[Link], now: float = 0.0) -> list[str]:
    """Serve until the order says wait; links take everything (never pause)."""
    served = []
    while (link := order.next_link(now)) is not None:
        link.uploads.popleft()
        served.append(link.name)
    return served


def test_requests_go_out_oldest_first_across_links() -> None:
    order: UploadOrder[Link] = UploadOrder(slots=1)
    a, b, c = Link("a"), Link("b"), Link("c")
    for link, index in ((a, 0), (b, 0), (a, 1), (c, 0), (b, 1)):
        link.ask(order, index)
    assert _drain(order) == ["a", "b", "a", "c", "b"]
    assert not order.waiting


def test_only_so_many_links_hold_unsent_data() -> None:
    order: UploadOrder[Link] = UploadOrder(slots=2)
    a, b, c = Link("a"), Link("b"), Link("c")
    for link in (a, b, c, a):
        link.ask(order, 0)
    for expected in (a, b):
        assert order.next_link(0.0) is expected
        expected.uploads.popleft()
        expected.paused = True  # the transport still holds what it was given
    assert order.next_link(0.01) is None
    assert order.retry_after(0.01) == pytest.approx(SLOT_HOLD - 0.01)
    a.paused = False  # a's data left: its slot is free, c is next, then a again
    assert order.next_link(0.02) is c
    c.uploads.popleft()
    assert order.next_link(0.02) is a


def test_a_link_that_stays_stuck_gives_its_slot_back() -> None:
    order: UploadOrder[Link] = UploadOrder(slots=1, hold=0.5)
    stuck, other = Link("stuck"), Link("other")
    stuck.ask(order, 0)
    other.ask(order, 0)
    assert order.next_link(10.0) is stuck
    stuck.uploads.popleft()
    stuck.paused = True
    assert order.next_link(10.4) is None
    assert order.next_link(10.5) is other


def test_closed_links_and_cancelled_blocks_are_skipped() -> None:
    order: UploadOrder[Link] = UploadOrder(slots=3)
    gone, cancelled, busy, live = Link("gone"), Link("cancelled"), Link("busy"), Link("live")
    for link in (gone, cancelled, busy, live):
        link.ask(order, 0)
    gone.closed = True
    cancelled.uploads.clear()
    busy.paused = True  # sending something else: its request keeps its place
    assert _drain(order) == ["live"]
    assert order.waiting
    busy.paused = False
    assert _drain(order) == ["busy"]
    assert not order.waiting


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        UploadOrder(slots=0)


def test_a_peer_that_stops_reading_does_not_stop_uploads_to_the_others(tmp_path: Path) -> None:
    """With a single upload slot, a peer that asks for 4 MiB and never reads holds the
    slot; the other peer must still get every block it asks for."""
    meta, payload = small_torrent(tmp_path, pieces=32, piece_length=256 * 1024)
    storage = Storage.for_seed(meta, payload)
    storage.verify_all()
    config = SessionConfig(super_seed=False, upload_slots=1)
    session = Session(meta, storage, b"-MU0001-000000000000", config)
    data = payload.read_bytes()

    async def connect(
        port: int, peer_id: bytes, rcvbuf: int | None
    ) -> tuple[PeerConnection, asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        conn = remote_conn(session, peer_id)
        writer.write(conn.initiate())
        while not isinstance(await next_message(conn, reader), m.Unchoke):
            writer.write(conn.send(m.Interested()))
        return conn, reader, writer

    async def body(port: int) -> float:
        stuck = await connect(port, b"-XX0001-000000000001", 16 * 1024)
        conn, _, writer = stuck
        writer.write(b"".join(conn.send(m.Request(i, 0, 128 * 1024)) for i in range(32)))
        await asyncio.sleep(0.5)  # it has the slot now, and a full window
        conn, reader, writer = await connect(port, b"-XX0001-000000000002", None)
        started = time.monotonic()
        wanted = {(i, b) for i in range(8) for b in (0, 128 * 1024)}
        writer.write(b"".join(conn.send(m.Request(i, b, 128 * 1024)) for i, b in wanted))
        while wanted:
            msg = await asyncio.wait_for(next_message(conn, reader), WAIT)
            if isinstance(msg, m.Piece):
                at = msg.index * meta.piece_length + msg.begin
                assert bytes(msg.block) == data[at : at + len(msg.block)]
                wanted.discard((msg.index, msg.begin))
        return time.monotonic() - started

    try:
        took = serve_session(session, body)
    finally:
        storage.close()
    assert took < WAIT
