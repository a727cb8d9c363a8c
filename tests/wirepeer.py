"""An in-process remote peer: one Session behind a real listening socket, and a test
driving the other end of the connection with the sans-IO PeerConnection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Coroutine, TypeVar

from murder_core.metainfo import BLOCK_SIZE, Metainfo, write_torrent
from murder_core.peer import PeerLink
from murder_core.session import Session
from murder_core.wire import messages as m
from murder_core.wire.connection import NEED_DATA, PeerConnection
from murder_dev.localswarm import make_payload

PIECE = 2 * BLOCK_SIZE
THEIR_ID = b"-XX0000-000000000001"
#: Bound on every wait for the other side; a hang fails the test instead of stalling it.
WAIT = 10.0


def small_torrent(
    tmp_path: Path, pieces: int = 3, piece_length: int = PIECE
) -> tuple[Metainfo, Path]:
    payload = make_payload(tmp_path / "payload.bin", pieces * piece_length)
    meta = write_torrent(
        payload, "http://127.0.0.1:1/announce", tmp_path / "p.torrent", piece_length=piece_length
    )
    return meta, payload


Scenario = Callable[
    [Session, asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]
]


T = TypeVar("T")


def serve_session(session: Session, body: Callable[[int], Coroutine[Any, Any, T]]) -> T:
    """Serve ``session`` on 127.0.0.1 and run ``body(port)``; closes everything after."""

    async def main() -> T:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: PeerLink(session, None, False), host="127.0.0.1", port=0
        )
        try:
            return await asyncio.wait_for(body(server.sockets[0].getsockname()[1]), 3 * WAIT)
        finally:
            session.close_all()
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def run_session(session: Session, scenario: Scenario) -> None:
    """Serve ``session`` on 127.0.0.1 and run ``scenario`` against it as the remote peer."""

    async def connect(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await scenario(session, reader, writer)
        finally:
            writer.close()

    serve_session(session, connect)


async def next_message(conn: PeerConnection, reader: asyncio.StreamReader) -> m.Message:
    while True:
        event = conn.next_event()
        if event is not NEED_DATA:
            assert isinstance(event, (m.Message, m.Handshake)), event
            return event
        data = await asyncio.wait_for(reader.read(65536), WAIT)
        conn.receive_data(data)


async def until(
    conn: PeerConnection, reader: asyncio.StreamReader, kind: type | tuple[type, ...]
) -> m.Message:
    while True:
        msg = await next_message(conn, reader)
        if isinstance(msg, kind):
            return msg


def remote_conn(session: Session, remote_id: bytes) -> PeerConnection:
    """The test's end of a connection to ``session``, as the peer ``remote_id``."""
    meta = session.meta
    return PeerConnection(meta.info_hash.raw, remote_id, meta.num_pieces)


def piece_for(data: bytes, r: m.Request, piece_length: int) -> m.Piece:
    """The honest answer to ``r`` out of the whole payload ``data``."""
    at = r.index * piece_length + r.begin
    return m.Piece(r.index, r.begin, data[at : at + r.length])


def greet(conn: PeerConnection, msg: m.Message, *first: m.Message) -> bytes:
    """A seed's answer to the handshake (``first``) and to Interested; b"" to the rest."""
    if isinstance(msg, m.Handshake):
        return b"".join(conn.send(f) for f in first)
    return conn.send(m.Unchoke()) if isinstance(msg, m.Interested) else b""


async def seed_to(
    conn: PeerConnection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    data: bytes,
    s: Session,
) -> list[m.Request]:
    """Serve every request as a seed until the session has everything; returns them all."""
    writer.write(conn.initiate())
    seen: list[m.Request] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3 * WAIT
    while not s.complete:
        assert loop.time() < deadline, f"not complete after {len(seen)} requests"
        msg = await next_message(conn, reader)
        writer.write(greet(conn, msg, m.HaveAll()))
        if isinstance(msg, m.Request):
            seen.append(msg)
            writer.write(conn.send(piece_for(data, msg, s.meta.piece_length)))
    return seen
