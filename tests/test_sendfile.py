"""Uploads with os.sendfile: what the socket takes goes straight from the file, the rest
through the transport, and the peer always receives whole, correct Piece messages."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from wirepeer import WAIT, next_message, run_session, small_torrent

from murder_core import peer as peer_module
from murder_core import sendfile
from murder_core.session import REQUEST_UNIT, Session, SessionConfig
from murder_core.storage import Storage
from murder_core.wire import messages as m
from murder_core.wire.connection import PeerConnection

pytestmark = pytest.mark.skipif(not sendfile.AVAILABLE, reason="no os.sendfile here")

MURDER_ID = b"-MU0001-000000000009"


def _fill(sock: socket.socket) -> None:
    """Write until the kernel refuses more: the next send finds the socket full."""
    sock.setblocking(False)
    chunk = b"x" * 65536
    while True:
        try:
            sock.send(chunk)
        except BlockingIOError:
            return


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(WAIT)
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        assert data, f"connection closed after {len(out)} of {n} bytes"
        out += data
    return bytes(out)


def test_send_direct_stops_where_the_socket_is_full(tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    path = tmp_path / "f"
    path.write_bytes(payload)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    a.setblocking(False)
    fd = os.open(path, os.O_RDONLY)
    try:
        # Two extents of one file, as a block that spans two files would be.
        extents = [(fd, 1000, 1024 * 1024), (fd, 2 * 1024 * 1024, 1024 * 1024)]
        head_sent, sent = sendfile.send_direct(a.fileno(), b"HEAD", extents)
        assert head_sent == 4
        assert 0 < sent < 2 * 1024 * 1024  # 2 MiB never fit in these buffers
        expected = (payload[1000 : 1000 + 1024 * 1024] + payload[2 * 1024 * 1024 :])[:sent]
        assert _recv_exactly(b, 4 + sent) == b"HEAD" + expected
    finally:
        os.close(fd)
        a.close()
        b.close()


def test_send_direct_sends_nothing_into_a_full_socket(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"y" * 4096)
    a, b = socket.socketpair()
    fd = os.open(path, os.O_RDONLY)
    try:
        _fill(a)
        assert sendfile.send_direct(a.fileno(), b"HEAD", [(fd, 0, 4096)]) == (0, 0)
    finally:
        os.close(fd)
        a.close()
        b.close()


def test_a_peer_that_reads_late_gets_every_block_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """192 units asked at once from a peer that does not read: the seed's socket fills, a
    block is cut short mid-sendfile, the transport queues the rest; all must arrive intact."""
    piece = 4 * REQUEST_UNIT
    meta, payload_path = small_torrent(tmp_path, pieces=48, piece_length=piece)
    data = payload_path.read_bytes()
    storage = Storage.for_seed(meta, payload_path)
    assert storage.verify_all() == meta.num_pieces
    session = Session(meta, storage, b"-MU0001-000000000000", SessionConfig(super_seed=False))
    results: list[tuple[int, int]] = []
    real = peer_module.send_direct

    def spy(fd: int, head: bytes, extents: list[tuple[int, int, int]]) -> tuple[int, int]:
        got = real(fd, head, extents)
        results.append((got[0] - len(head), got[1] - sum(size for _, _, size in extents)))
        return got

    monkeypatch.setattr(peer_module, "send_direct", spy)
    received: dict[tuple[int, int], bytes] = {}

    async def scenario(
        s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = PeerConnection(meta.info_hash.raw, MURDER_ID, meta.num_pieces)
        writer.write(conn.initiate())
        assert isinstance(await next_message(conn, reader), m.Handshake)
        writer.write(conn.send(m.Interested()))
        while not isinstance(await next_message(conn, reader), m.Unchoke):
            pass
        units = [
            (i, begin, REQUEST_UNIT)
            for i in range(meta.num_pieces)
            for begin in range(0, piece, REQUEST_UNIT)
        ]
        writer.write(b"".join(conn.send(m.Request(*u)) for u in units))
        await writer.drain()
        await asyncio.sleep(0.5)  # not reading: the seed's socket and transport fill up
        while len(received) < len(units):
            msg = await next_message(conn, reader)
            if isinstance(msg, m.Piece):
                received[(msg.index, msg.begin)] = bytes(msg.block)

    try:
        run_session(session, scenario)
    finally:
        storage.close()
    assert len(received) == 48 * 4
    for (index, begin), block in received.items():
        at = index * piece + begin
        assert block == data[at : at + REQUEST_UNIT], f"block {index}/{begin} differs"
    assert any(head == 0 and rest == 0 for head, rest in results), "no block went whole"
    assert any(head < 0 or rest < 0 for head, rest in results), "the socket never filled"
