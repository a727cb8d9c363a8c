"""Who may talk to a peer, and what it hands out (issue 5, "Access").

- A peer accepts a connection only for its own info_hash, and says nothing (not even
  its handshake, which names the info_hash) until the dialler has named it.
- It serves only pieces it has verified.
- ``--bind`` really limits where the seeder and the tracker listen.

The wire and storage rules are also unit-tested (test_wire_connection.py:
``test_different_info_hash_names_both_hashes``; test_storage.py: reads of unverified
pieces are refused); here they are checked on real sockets, through the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from pathlib import Path

import pytest
from wirepeer import (
    PIECE,
    THEIR_ID,
    WAIT,
    next_message,
    run_session,
    small_torrent,
    until,
)

from murder_core.metainfo import BLOCK_SIZE
from murder_core.session import Session, SessionConfig
from murder_core.storage import Storage
from murder_core.wire import messages as m
from murder_core.wire.connection import PeerConnection
from murder_core.wire.framing import encode
from murder_dev.localswarm import LocalSwarm, child_env, free_port, make_payload, murder_cmd

WRONG_HASH = b"W" * 20


def _handshake(info_hash: bytes) -> bytes:
    return encode(m.Handshake(info_hash=info_hash, peer_id=THEIR_ID, reserved=m.FAST_RESERVED))


def _read_all(sock: socket.socket) -> bytes:
    """Everything the other side sends until it closes (bounded by the socket timeout)."""
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def _seeder_port(sw: LocalSwarm) -> int:
    seeders = [p for t in sw.stats()["torrents"].values() for p in t["peers"] if p["seeder"]]
    assert len(seeders) == 1, seeders
    return int(seeders[0]["port"])


@pytest.mark.slow
def test_running_seeder_drops_a_wrong_info_hash_without_revealing_its_own(
    tmp_path: Path,
) -> None:
    payload = make_payload(tmp_path / "release.bin", 3 * PIECE + 5)
    with LocalSwarm(tmp_path / "run", payload) as sw:
        sw.start_tracker()
        sw.make_torrent(piece_size=PIECE)
        sw.start_seeder()
        sw.wait_for_seeders(1, timeout=60)
        port = _seeder_port(sw)
        from murder_core.metainfo import read_metainfo

        info_hash = read_metainfo(sw.torrent).info_hash.raw

        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as wrong:
            wrong.sendall(_handshake(WRONG_HASH))
            # Dropped, and not one byte first: our handshake would name the info_hash.
            assert _read_all(wrong) == b""

        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as right:
            right.sendall(_handshake(info_hash))
            answer = b""
            while len(answer) < 68:
                chunk = right.recv(68 - len(answer))
                assert chunk, "the seeder closed a connection for its own info_hash"
                answer += chunk
            assert answer[28:48] == info_hash
        assert sw.procs["seeder"].poll() is None, sw.log("seeder")


def test_a_silent_connection_gets_no_handshake_and_does_not_break_the_tick(
    tmp_path: Path,
) -> None:
    """Keep-alives go to handshaken peers only: a silent dialler must not crash the timer."""
    meta, payload = small_torrent(tmp_path)
    storage = Storage.for_seed(meta, payload)
    storage.verify_all()
    # keepalive_every=0: every tick wants to send a keep-alive to every link.
    session = Session(meta, storage, b"-MU0001-000000000000", SessionConfig(keepalive_every=0))

    async def scenario(
        s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(100):  # bounded: the server side has accepted within a few loop turns
            if s.links:
                break
            await asyncio.sleep(0.01)
        assert len(s.links) == 1
        s.tick(loop)
        s.tick(loop)
        with contextlib.suppress(asyncio.TimeoutError):
            early = await asyncio.wait_for(reader.read(1), 0.2)
            pytest.fail(f"the seeder spoke before our handshake: {early!r}")
        conn = PeerConnection(meta.info_hash.raw, THEIR_ID, meta.num_pieces)
        writer.write(conn.initiate())
        hs = await next_message(conn, reader)
        assert isinstance(hs, m.Handshake) and hs.info_hash == meta.info_hash.raw
        s.tick(loop)  # now ready: a keep-alive is due and allowed
        assert isinstance(await until(conn, reader, m.KeepAlive), m.KeepAlive)

    try:
        run_session(session, scenario)
    finally:
        storage.close()


def test_only_verified_pieces_are_served(tmp_path: Path) -> None:
    meta, payload = small_torrent(tmp_path)
    data = payload.read_bytes()
    (tmp_path / "dl").mkdir()
    storage = Storage.for_download(meta, tmp_path / "dl" / "payload.bin")
    session = Session(meta, storage, b"-MU0001-000000000000", SessionConfig(super_seed=False))

    async def scenario(
        s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = PeerConnection(meta.info_hash.raw, THEIR_ID, meta.num_pieces)
        writer.write(conn.initiate())
        await until(conn, reader, m.Handshake)
        writer.write(conn.send(m.HaveNone()) + conn.send(m.Interested()))
        await until(conn, reader, m.Unchoke)
        # Piece 0's bytes are on disk, right ones even, but not verified yet: refused.
        for begin in (0, BLOCK_SIZE):
            s.storage.write_block(0, begin, data[begin : begin + BLOCK_SIZE])
        request = m.Request(0, 0, BLOCK_SIZE)
        writer.write(conn.send(request))
        answer = await until(conn, reader, (m.RejectRequest, m.Piece))
        assert answer == m.RejectRequest(0, 0, BLOCK_SIZE)
        assert s.storage.verify_piece(0)
        writer.write(conn.send(request))
        answer = await until(conn, reader, (m.RejectRequest, m.Piece))
        assert answer == m.Piece(0, 0, data[:BLOCK_SIZE])

    try:
        run_session(session, scenario)
    finally:
        storage.close()


# -- --bind ------------------------------------------------------------------------------


def _connectable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=WAIT):
            return True
    except ConnectionRefusedError:
        return False


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not _connectable(host, port):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"nothing listens on {host}:{port}: {log.read_text()}"
        time.sleep(0.1)


@pytest.mark.slow
def test_bind_limits_where_the_tracker_and_the_seeder_listen(tmp_path: Path) -> None:
    """127.0.0.2 is loopback too, so only the bind address itself stops 127.0.0.1."""
    if not _loopback_alias_works():
        pytest.skip("this kernel does not route 127.0.0.2 to loopback")
    payload = make_payload(tmp_path / "release.bin", 2 * PIECE)
    # Free on every address, so nothing else answers on 127.0.0.1 either.
    tport, sport = free_port("0.0.0.0"), free_port("0.0.0.0")
    torrent = tmp_path / "release.torrent"
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    cmd, env = murder_cmd(), child_env(None)
    subprocess.run(
        [*cmd, "make-torrent", str(payload), "--tracker", f"127.0.0.2:{tport}", "-o", str(torrent)],
        check=True,
        capture_output=True,
        env=env,
        timeout=60,
    )
    (allowed / torrent.name).write_bytes(torrent.read_bytes())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        tlog, slog = tmp_path / "tracker.log", tmp_path / "seeder.log"
        with open(tlog, "wb") as out:
            tracker = subprocess.Popen(
                [
                    *cmd,
                    "tracker",
                    "--bind",
                    "127.0.0.2",
                    "--port",
                    str(tport),
                    "--allowed-dir",
                    str(allowed),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        procs.append(tracker)
        _wait_listening("127.0.0.2", tport, tracker, tlog)
        with open(slog, "wb") as out:
            seeder = subprocess.Popen(
                [
                    *cmd,
                    "seed",
                    str(torrent),
                    str(payload),
                    "--bind",
                    "127.0.0.2",
                    "--ip",
                    "127.0.0.2",
                    "--minport",
                    str(sport),
                    "--maxport",
                    str(sport),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        procs.append(seeder)
        _wait_listening("127.0.0.2", sport, seeder, slog)
        assert not _connectable("127.0.0.1", tport)
        assert not _connectable("127.0.0.1", sport)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _loopback_alias_works() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
    except OSError:
        return False
    return True
