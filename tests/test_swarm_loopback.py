"""A real swarm on loopback: tracker, seeder and peers as separate processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from fabfile.release import helper_source
from murder_core.metainfo import read_metainfo
from murder_dev.localswarm import LocalSwarm, make_payload, sha256

pytestmark = pytest.mark.slow


def _stats(port: int) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def test_five_peers_get_byte_identical_copies(tmp_path: Path) -> None:
    payload = make_payload(tmp_path / "release.bin", 24 * 1024 * 1024 + 12345)
    with LocalSwarm(tmp_path / "run", payload) as sw:
        sw.start_tracker()
        sw.make_torrent(piece_size=256 * 1024)
        # A slow seeder: alone it would need 5 x 24 MiB / 4 MiB/s = 30 s.
        sw.start_seeder("--max-upload-rate", "4m")
        names = [f"peer{i}" for i in range(5)]
        for name in names:
            sw.start_peer(name, tmp_path / name / "release.bin", "--linger", "3")
        codes = sw.wait(names, timeout=240)
        logs = {n: sw.log(n)[-2000:] for n in names}
        assert codes == {n: 0 for n in names}, logs
        want = sha256(payload)
        for name in names:
            assert sha256(tmp_path / name / "release.bin") == want
            assert not (tmp_path / name / "release.bin.part").exists()
        assert sw.stop("seeder") == 0
        # Peers fed each other: the seeder sent less than one copy per peer.
        seeded = int(sw.log("seeder").split("totals: uploaded=")[1].split()[0])
        assert payload.stat().st_size <= seeded < 5 * payload.stat().st_size


def test_killed_peer_resumes_from_what_is_on_disk(tmp_path: Path) -> None:
    payload = make_payload(tmp_path / "release.bin", 16 * 1024 * 1024)
    target = tmp_path / "p" / "release.bin"
    with LocalSwarm(tmp_path / "run", payload) as sw:
        sw.start_tracker()
        sw.make_torrent(piece_size=256 * 1024)
        sw.start_seeder()
        slow = sw.start_peer("slow", target, "--linger", "0", "--max-download-rate", "2m")
        part = Path(str(target) + ".part")
        size = payload.stat().st_size
        # Kill it once the tracker has heard it hold a quarter of the file (2 MiB/s cap).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and slow.poll() is None:
            lefts = [
                p["left"]
                for t in _stats(sw.tracker_port)["torrents"].values()
                for p in t["peers"]
                if not p["seeder"]
            ]
            if lefts and min(lefts) <= size * 3 // 4:
                break
            time.sleep(0.2)
        assert slow.poll() is None, sw.log("slow")
        slow.send_signal(signal.SIGKILL)
        slow.wait(10)
        assert part.exists() and not target.exists()
        sw.start_peer("again", target, "--linger", "0")
        assert sw.wait(["again"], timeout=120) == {"again": 0}, sw.log("again")
        log = sw.log("again")
        resumed = int(log.split("resuming: ")[1].split(" of ")[0])
        assert resumed > 0, log
        assert sha256(target) == sha256(payload)


def test_peer_serving_corrupt_blocks_is_banned_and_not_redialled(tmp_path: Path) -> None:
    import subprocess
    import sys

    from murder_dev.localswarm import ROOT, free_port

    payload = make_payload(tmp_path / "release.bin", 8 * 1024 * 1024)
    target = tmp_path / "p" / "release.bin"
    with LocalSwarm(tmp_path / "run", payload) as sw:
        sw.start_tracker()
        sw.make_torrent(piece_size=256 * 1024)
        # A slow honest seeder, so the liar gets asked for a good share of the pieces.
        sw.start_seeder("--max-upload-rate", "2m")
        bad_log = tmp_path / "bad.log"
        with open(bad_log, "wb") as log:
            bad = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "murder_dev.badpeer",
                    str(sw.torrent),
                    "--port",
                    str(free_port()),
                    "--lifetime",
                    "120",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PYTHONPATH": str(ROOT), "PATH": ""},
            )
        try:
            deadline = time.monotonic() + 20
            while b"announced" not in bad_log.read_bytes():
                assert time.monotonic() < deadline and bad.poll() is None, bad_log.read_text()
                time.sleep(0.1)
            sw.start_peer("victim", target, "--linger", "0")
            assert sw.wait(["victim"], timeout=120) == {"victim": 0}, sw.log("victim")[-3000:]
        finally:
            bad.terminate()
            bad.wait(10)
        assert sha256(target) == sha256(payload)
        victim = sw.log("victim")
        assert "failed its SHA-1 check" in victim
        assert "banning peer" in victim
        assert (
            bad_log.read_text().count("connection ")
            - bad_log.read_text().count("connection closed")
            == 1
        ), bad_log.read_text()


def test_a_lazy_checking_seeder_serves_good_data_and_stops_on_bad(tmp_path: Path) -> None:
    """--lazy-check skips the check at start; a piece that fails its hash when first
    asked for stops the seeder with exit 3 before any of it leaves."""
    payload = make_payload(tmp_path / "release.bin", 6 * 1024 * 1024)
    with LocalSwarm(tmp_path / "good", payload) as sw:
        sw.start_tracker()
        sw.make_torrent(piece_size=256 * 1024)
        sw.start_seeder("--lazy-check")
        sw.start_peer("p1", tmp_path / "p1" / "release.bin", "--linger", "0")
        assert sw.wait(["p1"], timeout=120) == {"p1": 0}, sw.log("p1")
        assert sha256(tmp_path / "p1" / "release.bin") == sha256(payload)
        assert sw.stop("seeder") == 0
    with LocalSwarm(tmp_path / "bad", payload) as sw:
        sw.start_tracker()
        sw.make_torrent(piece_size=256 * 1024)
        with open(payload, "r+b") as fh:  # the payload changes after the torrent was made
            fh.seek(3 * 256 * 1024 + 5)
            fh.write(b"\xff" if fh.read(1) != b"\xff" else b"\x00")
        sw.start_seeder("--lazy-check")
        sw.start_peer("p2", tmp_path / "p2" / "release.bin", "--timeout", "60")
        codes = sw.wait(["seeder"], timeout=60)
        assert codes == {"seeder": 3}, sw.log("seeder")
        assert "piece 3 fails its SHA-1 check" in sw.log("seeder")
        assert sw.stop("p2") is not None
    assert not (tmp_path / "p2" / "release.bin").exists()


def test_a_directory_keeps_its_executable_bits_through_the_swarm(tmp_path: Path) -> None:
    """A multi-file torrent of a release directory: the peer's copy of a program runs
    (x bits where the r bits are, as BEP 47's attr "x" says), its data files do not."""
    release = tmp_path / "release"
    (release / "bin").mkdir(parents=True)
    (release / "bin" / "app").write_bytes(b"#!/bin/sh\necho murdered\n")
    (release / "bin" / "app").chmod(0o755)
    (release / "data.bin").write_bytes(make_payload(tmp_path / "d", 300_000).read_bytes())
    with LocalSwarm(tmp_path / "run", release) as sw:
        sw.start_tracker()
        sw.make_torrent()
        sw.start_seeder()
        target = tmp_path / "peer" / "release"
        sw.start_peer("peer", target, "--linger", "0")
        assert sw.wait(["peer"], timeout=120) == {"peer": 0}, sw.log("peer")[-2000:]
    assert (target / "data.bin").read_bytes() == (release / "data.bin").read_bytes()
    assert os.access(target / "bin" / "app", os.X_OK)
    assert not os.access(target / "data.bin", os.X_OK)
    umask = os.umask(0)
    os.umask(umask)
    assert (target / "bin" / "app").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_peer_unpacking_a_plain_tarball_feeds_the_next_from_its_files(tmp_path: Path) -> None:
    """``--unpack-map``: the member data lands in files of their own, the payload file
    keeps the rest; once the seeder is gone, a plain peer gets the whole tarball from it."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    make_payload(src / "d" / "big.bin", 3 * 1024 * 1024 + 17)
    (src / "small.txt").write_text("hello\n")
    tarball = tmp_path / "rel.tar"
    subprocess.run(["tar", "-c", "-C", f"{src}/", "-f", str(tarball), "."], check=True)
    map_path = tmp_path / "rel.map.json"
    subprocess.run(
        [sys.executable, "-c", helper_source(), "unpack-map", str(tarball), str(map_path)],
        check=True,
    )
    with LocalSwarm(tmp_path / "run", tarball) as sw:
        sw.start_tracker()
        sw.make_torrent(piece_size=64 * 1024)
        sw.start_seeder()
        unpacked = tmp_path / "u" / "rel.tar"
        flags = ["--unpack-map", str(map_path), "--unpack-dir", str(tmp_path / "u" / "in")]
        flags += ["--logfile", str(tmp_path / "unpacker.log")]
        sw.start_peer("unpacker", unpacked, "--linger", "60", *flags)
        deadline = time.monotonic() + 120
        while not unpacked.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sw.stop("seeder") == 0
        plain = tmp_path / "p" / "rel.tar"
        sw.start_peer("plain", plain, "--linger", "0")
        assert sw.wait(["plain"], timeout=120) == {"plain": 0}, sw.log("plain")[-2000:]
        assert "unpack map: 2 files, 3145751 of" in (tmp_path / "unpacker.log").read_text()
    assert sha256(plain) == sha256(tarball)
    assert (tmp_path / "u" / "in" / "d" / "big.bin").read_bytes() == (
        src / "d" / "big.bin"
    ).read_bytes()
    assert (tmp_path / "u" / "in" / "small.txt").read_text() == "hello\n"
    assert unpacked.stat().st_size == tarball.stat().st_size - 3145751


def _limit_open_files(soft: int) -> None:
    import resource

    resource.setrlimit(
        resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )


#: More peers than the 256 descriptors the engine used to keep spare beyond its files.
FLEET = 400


def test_a_seeder_started_with_a_low_open_file_limit_greets_a_fleet(tmp_path: Path) -> None:
    """Every host of a fleet dials the seeder. Started with a soft limit of 64 open
    files (1024 is common), it must still answer 400 peers holding their connections
    open: it raises its soft limit toward the hard one, as it may unprivileged."""
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * FLEET:
        pytest.skip(f"hard open-file limit {hard} is too low to show this")
    if soft != resource.RLIM_INFINITY and soft < 2 * FLEET:  # this test's own sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (2 * FLEET, hard))
    payload = make_payload(tmp_path / "release.bin", 1 << 20)
    with LocalSwarm(tmp_path / "run", payload) as sw:
        sw.start_tracker()
        info_hash = read_metainfo(sw.make_torrent()).info_hash.raw
        sw._spawn(
            "seeder",
            ["seed", str(sw.torrent), str(payload), "--ip", "127.0.0.1", "--bind", "127.0.0.1"],
            preexec_fn=lambda: _limit_open_files(64),
        )
        sw.wait_for_seeders(1, timeout=60)
        (seeder,) = _stats(sw.tracker_port)["torrents"][info_hash.hex()]["peers"]
        deadline = time.monotonic() + 60
        hello = b"\x13BitTorrent protocol" + bytes(8) + info_hash
        socks: list[socket.socket] = []
        try:
            for i in range(FLEET):
                sock = socket.create_connection(("127.0.0.1", seeder["port"]), timeout=10)
                socks.append(sock)
                sock.sendall(hello + b"-XX0001-%012d" % i)  # each a peer of its own
            greeted = 0
            for sock in socks:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                reply = b""
                with contextlib.suppress(OSError):
                    while len(reply) < 68:
                        chunk = sock.recv(68 - len(reply))
                        if not chunk:
                            break
                        reply += chunk
                greeted += reply[:20] == hello[:20] and reply[28:48] == info_hash
        finally:
            for sock in socks:
                sock.close()
        assert greeted == FLEET, sw.log("seeder")[-1500:]


class BusyThenOpen:
    """A tracker's port as a whole fleet's first announces leave it: every connection is
    taken at once and none answered for ``busy`` seconds; after that each request is
    relayed to the real tracker on ``upstream``."""

    def __init__(self, upstream: int, busy: float) -> None:
        self.upstream = upstream
        self.opens_at = time.monotonic() + busy
        self.held: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            if time.monotonic() < self.opens_at:
                self.held.append(conn)  # taken, never answered
            else:
                threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(("127.0.0.1", self.upstream), timeout=10) as up:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            up.sendall(head)
            while chunk := up.recv(65536):
                conn.sendall(chunk)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_busy_tracker_is_waited_for_past_the_tracker_timeout(tmp_path: Path) -> None:
    """A tracker that takes connections but answers none for 4 s (a fleet announcing at
    once) is busy, not gone: peers with --tracker-timeout 1 keep trying and download.
    Giving up after --tracker-timeout whatever the failure, they exited 4 at ~2.5 s."""
    payload = make_payload(tmp_path / "release.bin", 2 * 1024 * 1024)
    with LocalSwarm(tmp_path / "run", payload) as sw:
        real = sw.start_tracker()
        gate = BusyThenOpen(real, busy=4.0)
        try:
            sw.tracker_port = gate.port  # the torrent announces through the gate
            sw.make_torrent()
            patience = ("--tracker-timeout", "1", "--announce-timeout", "0.5")
            sw.start_seeder(*patience)
            target = tmp_path / "p" / "release.bin"
            sw.start_peer("peer", target, *patience, "--linger", "0", "--timeout", "60")
            codes = sw.wait(["peer"], timeout=90)
            log = sw.log("peer")
            assert codes == {"peer": 0}, log[-2000:]
            assert "is busy: connected, but no reply within 0.5 s" in log
            assert sha256(target) == sha256(payload)
            assert len(gate.held) >= 2  # both were turned away at least once
        finally:
            gate.close()
