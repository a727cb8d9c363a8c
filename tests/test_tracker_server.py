from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote_from_bytes

import pytest
from conftest import need

from murder_core import bencoding
from murder_core.errors import TrackerError
from murder_core.metainfo import write_torrent
from murder_core.tracker import TrackerConfig, TrackerServer
from murder_core.values import InfoHash

HASH = InfoHash(b"H" * 20)
OTHER = InfoHash(b"O" * 20)
ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class Tracker:
    def __init__(self, tmp_path: Path, options: dict[str, Any], **config: Any) -> None:
        config.setdefault("logfile", str(tmp_path / "tracker.log"))
        self.config = TrackerConfig(port=0, bind="127.0.0.1", **config)
        self.server = TrackerServer(self.config, **options)
        self.server.start()
        host, port = self.server.address
        self.base = f"http://{host}:{port}"

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def announce(self, info_hash: InfoHash = HASH, n: int = 1, **params: Any) -> Any:
        status, _, body = self.get("/announce?" + announce_query(info_hash, n, **params))
        assert status == 200, body
        return bencoding.decode(body)

    def stats(self) -> Any:
        status, headers, body = self.get("/stats.json")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        return json.loads(body)

    def log(self) -> str:
        assert self.config.logfile is not None
        return Path(self.config.logfile).read_text()


def announce_query(info_hash: InfoHash, n: int, **params: Any) -> str:
    fields: dict[str, Any] = {
        "info_hash": info_hash.raw,
        "peer_id": f"-MU0001-{n:012d}".encode(),
        "port": 6000 + n,
        "uploaded": 0,
        "downloaded": 0,
        "left": 100,
    }
    fields.update(params)
    return "&".join(
        f"{k}={quote_from_bytes(v if isinstance(v, bytes) else str(v).encode(), safe='')}"
        for k, v in fields.items()
    )


@pytest.fixture
def make_tracker(tmp_path: Path) -> Iterator[Callable[..., Tracker]]:
    started: list[Tracker] = []

    def make(options: dict[str, Any] | None = None, **config: Any) -> Tracker:
        tracker = Tracker(tmp_path, options or {}, **config)
        started.append(tracker)
        return tracker

    yield make
    for tracker in started:
        tracker.server.stop()


def make_torrent(tmp_path: Path, name: str, target: Path) -> InfoHash:
    payload = tmp_path / name
    payload.write_bytes(os.urandom(1000) + name.encode())
    return write_torrent(payload, "http://127.0.0.1:1/announce", target).info_hash


def test_announce_hands_peers_to_each_other(make_tracker: Callable[..., Tracker]) -> None:
    t = make_tracker()
    first = t.announce(n=1, event="started", left=0)
    assert first[b"peers"] == b""
    assert (first[b"interval"], first[b"min interval"]) == (10, 2)
    second = t.announce(n=2, event="started")
    assert second[b"peers"] == bytes([127, 0, 0, 1]) + (6001).to_bytes(2, "big")
    assert (second[b"complete"], second[b"incomplete"]) == (1, 1)
    listed = t.announce(n=3, compact=0)[b"peers"]
    assert sorted(p[b"port"] for p in listed) == [6001, 6002]
    assert f"announce 127.0.0.1:6002 {HASH.hex[:8]} started left=100" in t.log()
    assert "serving ANY torrent" in t.log()


def test_scrape(make_tracker: Callable[..., Tracker]) -> None:
    t = make_tracker()
    t.announce(n=1, left=0, event="completed")
    t.announce(n=2)
    t.announce(OTHER, n=3)
    status, _, body = t.get(f"/scrape?info_hash={quote_from_bytes(HASH.raw)}")
    assert status == 200
    files = {HASH.raw: {b"complete": 1, b"incomplete": 1, b"downloaded": 1}}
    assert bencoding.decode(body) == {b"files": files}
    status, _, body = t.get("/scrape")
    assert set(bencoding.decode(body)[b"files"]) == {HASH.raw, OTHER.raw}


def test_stats_json_shape(make_tracker: Callable[..., Tracker]) -> None:
    t = make_tracker()
    t.announce(n=1, left=7, uploaded=3, downloaded=4)
    stats = t.stats()
    assert set(stats) == {"time", "interval", "torrents"}
    assert isinstance(stats["time"], float)
    assert stats["interval"] == 10
    torrent = stats["torrents"][HASH.hex]
    peer = torrent.pop("peers")[0]
    assert torrent == {"name": None, "length": None, "seeders": 0, "leechers": 1, "completed": 0}
    assert isinstance(peer.pop("last_seen"), float)
    assert peer == {
        "peer_id": f"-MU0001-{1:012d}".encode().hex(),
        "ip": "127.0.0.1",
        "port": 6001,
        "left": 7,
        "uploaded": 3,
        "downloaded": 4,
        "seeder": False,
    }


def test_expiry_uses_the_injected_clock(tmp_path: Path) -> None:
    now = [1000.0]
    server = TrackerServer(
        TrackerConfig(port=0, bind="127.0.0.1", logfile=str(tmp_path / "log")), clock=lambda: now[0]
    )
    server.start()
    try:
        host, port = server.address
        url = f"http://{host}:{port}/announce?{announce_query(HASH, 1)}"
        urllib.request.urlopen(url, timeout=10).read()
        assert len(server.stats()["torrents"][HASH.hex]["peers"]) == 1
        now[0] += 35.5
        assert server.stats()["torrents"] == {}
    finally:
        server.stop()


def test_status_page_escapes_names(make_tracker: Callable[..., Tracker], tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    info_hash = make_torrent(tmp_path, "<b>&evil", allowed / "a.torrent")
    t = make_tracker(allowed_dir=str(allowed))
    status, headers, body = t.get("/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert "&lt;b&gt;&amp;evil" in page
    assert "<b>&evil" not in page
    assert info_hash.hex in page
    stats = t.stats()["torrents"][info_hash.hex]
    assert (stats["name"], stats["length"]) == ("<b>&evil", 1008)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (announce_query(HASH, 1, port=0), "port must be an integer in 1..65535, got '0'"),
        ("port=1", "missing info_hash"),
        (announce_query(HASH, 1, event="later"),
         "event must be one of started, completed, stopped or empty, got 'later'"),
        (announce_query(HASH, 1, left="-3"), "left must be a non-negative integer, got '-3'"),
        ("x=" + "a" * 4100, "query string is 4102 bytes, more than the cap of 4096"),
    ],
)  # fmt: skip
def test_bad_announce_is_400(make_tracker: Callable[..., Tracker], query: str, reason: str) -> None:
    status, headers, body = make_tracker().get("/announce?" + query)
    assert status == 400
    assert headers["Content-Type"] == "text/plain"
    assert bencoding.decode(body) == {b"failure reason": reason.encode()}


def test_bad_scrape_is_400(make_tracker: Callable[..., Tracker]) -> None:
    status, _, body = make_tracker().get("/scrape?info_hash=abc")
    assert status == 400
    assert bencoding.decode(body) == {b"failure reason": b"info_hash must be 20 bytes, got 3"}


def test_unknown_path_and_method(make_tracker: Callable[..., Tracker]) -> None:
    t = make_tracker()
    status, _, body = t.get("/nothing?x=1")
    assert (status, bencoding.decode(body)) == (
        404,
        {b"failure reason": b"no such path '/nothing'"},
    )
    status, headers, body = t.get("/announce", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET"
    assert bencoding.decode(body) == {b"failure reason": b"method 'POST' not allowed, use GET"}


def test_not_allowed_torrent(make_tracker: Callable[..., Tracker]) -> None:
    t = make_tracker(allow=(HASH.hex,))
    assert t.announce(HASH)[b"incomplete"] == 1
    status, _, body = t.get("/announce?" + announce_query(OTHER, 1))
    assert status == 200
    reason = f"torrent {OTHER.hex} is not allowed on this tracker"
    assert bencoding.decode(body) == {b"failure reason": reason.encode()}
    assert "serving ANY torrent" not in t.log()
    t.server.allow(OTHER.hex)
    assert t.announce(OTHER)[b"incomplete"] == 1
    scraped = bencoding.decode(t.get("/scrape")[2])[b"files"]
    assert set(scraped) == {HASH.raw, OTHER.raw}


def test_short_interval_lowers_min_interval(make_tracker: Callable[..., Tracker]) -> None:
    reply = make_tracker(interval=1).announce()
    assert (reply[b"interval"], reply[b"min interval"]) == (1, 1)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (TrackerConfig(allow=("xyz",)), "--allow must be a 40-digit hex info_hash, got 'xyz'"),
        (TrackerConfig(port=70000), "port must be in 0..65535, got 70000"),
        (TrackerConfig(interval=0), "interval must be at least 1 second, got 0"),
    ],
)
def test_bad_config(config: TrackerConfig, message: str) -> None:
    with pytest.raises(TrackerError) as info:
        TrackerServer(config)
    assert str(info.value) == message


def test_allowed_dir_rescan_picks_up_new_torrent(
    make_tracker: Callable[..., Tracker], tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "broken.torrent").write_bytes(b"d4:spam")
    t = make_tracker(allowed_dir=str(allowed))
    assert "skipping bad torrent" in t.log()
    assert "broken.torrent" in t.log()
    late = make_torrent(tmp_path, "late.bin", tmp_path / "late.torrent")
    assert b"failure reason" in t.announce(late)
    os.replace(tmp_path / "late.torrent", allowed / "late.torrent")
    assert wait_for(lambda: b"failure reason" not in t.announce(late))
    assert t.stats()["torrents"][late.hex]["name"] == "late.bin"


def test_torrent_copied_in_right_after_a_refusal_is_served_at_once(
    make_tracker: Callable[..., Tracker], tmp_path: Path
) -> None:
    # The rescan rate limit must not refuse a deploy whose .torrent just landed.
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    t = make_tracker(allowed_dir=str(allowed))
    late = make_torrent(tmp_path, "late.bin", tmp_path / "late.torrent")
    assert b"failure reason" in t.announce(late)
    os.replace(tmp_path / "late.torrent", allowed / "late.torrent")
    assert b"failure reason" not in t.announce(late)


def test_restart_reloads_state_from_dfile(
    make_tracker: Callable[..., Tracker], tmp_path: Path
) -> None:
    dfile = tmp_path / "state.json"
    first = make_tracker(dfile=str(dfile))
    first.announce(n=1, left=0, event="completed")
    first.announce(n=2)
    before = first.stats()["torrents"]
    first.server.stop()
    first.server.stop()  # idempotent
    assert dfile.exists() and not Path(f"{dfile}.tmp").exists()
    second = make_tracker(dfile=str(dfile))
    assert second.stats()["torrents"] == before
    assert second.announce(n=3)[b"incomplete"] == 2


def test_dfile_is_saved_while_running(make_tracker: Callable[..., Tracker], tmp_path: Path) -> None:
    dfile = tmp_path / "state.json"
    t = make_tracker(dfile=str(dfile))
    t.announce(n=1)

    def saved() -> bool:
        return dfile.exists() and HASH.hex in json.loads(dfile.read_text())["torrents"]

    assert wait_for(saved)


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"version": 1, "torrents": 5}', b"\xff\xfe", b"[" * 100_000]
)
def test_corrupt_dfile_is_moved_aside(
    make_tracker: Callable[..., Tracker], tmp_path: Path, content: bytes
) -> None:
    dfile = tmp_path / "state.json"
    dfile.write_bytes(content)
    t = make_tracker(dfile=str(dfile))
    assert t.stats()["torrents"] == {}
    assert Path(f"{dfile}.corrupt").read_bytes() == content
    assert f"dfile {dfile} is unreadable" in t.log()
    assert t.announce(n=1)[b"incomplete"] == 1


def receive_until_closed(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # the server closed with our bytes still unread
            chunk = b""
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def raw_exchange(t: Tracker, data: bytes) -> bytes:
    host, port = t.server.address
    with socket.create_connection((host, port), timeout=10) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return b""  # the server hung up before reading anything
        return receive_until_closed(sock)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x00\xff\xfe garbage \x01\r\n\r\n", b"400"),
        (b"GET /announce HTTP/1.0\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n", b"400"),
        (b"GET / HTTP/1.0\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"431"),
        (b"BREW /announce HTTP/1.0\r\n\r\n", b"405"),
    ],
)
def test_raw_garbage_gets_an_error_and_server_keeps_serving(
    make_tracker: Callable[..., Tracker], data: bytes, status: bytes
) -> None:
    t = make_tracker()
    reply = raw_exchange(t, data)
    assert reply.split(b" ")[1] == status
    assert b"failure reason" in reply
    assert t.announce(n=1)[b"incomplete"] == 1


def test_oversized_head_reason(make_tracker: Callable[..., Tracker]) -> None:
    reply = raw_exchange(make_tracker(), b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n")
    body = reply.split(b"\r\n\r\n", 1)[1]
    assert bencoding.decode(body) == {b"failure reason": b"request head is more than 16384 bytes"}


def test_slowloris_does_not_block_others_and_is_cut_off(
    make_tracker: Callable[..., Tracker],
) -> None:
    t = make_tracker({"request_timeout": 1.0})
    host, port = t.server.address
    with socket.create_connection((host, port), timeout=15) as slow:
        slow.sendall(b"GET /announce?info_hash=")
        assert t.announce(n=1)[b"incomplete"] == 1
        slow.sendall(b"a")  # still trickling, yet the deadline covers the whole head
        assert receive_until_closed(slow) == b""  # the server hung up without a reply
    assert t.announce(n=2)[b"incomplete"] == 2


def _hold_slots(t: Tracker, count: int) -> list[socket.socket]:
    """Connections that send half a request head and hold a slot until cut off."""
    host, port = t.server.address
    held = [socket.create_connection((host, port), timeout=30) for _ in range(count)]
    for sock in held:
        sock.sendall(b"GET /stats")
    return held


def test_a_connection_over_the_cap_waits_for_a_slot(
    make_tracker: Callable[..., Tracker],
) -> None:
    """Both slots held by clients that never finish their head: a third request is
    answered once the head deadline cuts them off, not refused at once."""
    t = make_tracker({"max_connections": 2, "request_timeout": 1.0})
    held = _hold_slots(t, 2)
    try:
        reply = raw_exchange(t, b"GET /stats.json HTTP/1.0\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 200"), reply[:80]
        assert [receive_until_closed(sock) for sock in held] == [b"", b""]  # cut, no reply
    finally:
        for sock in held:
            sock.close()


def test_a_burst_of_announces_past_the_cap_is_answered_in_full(
    make_tracker: Callable[..., Tracker],
) -> None:
    """A fleet's first announces come at once: 300 clients against 4 slots all get their
    peers. With over-cap connections closed at once, most got an empty reply."""
    t = make_tracker({"max_connections": 4})
    replies: list[bytes] = []
    lock = threading.Lock()

    def announce(n: int) -> None:
        request = f"GET /announce?{announce_query(HASH, n)} HTTP/1.0\r\n\r\n".encode()
        reply = raw_exchange(t, request)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=announce, args=(n,)) for n in range(1, 301)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(replies) == 300
    assert [r[:12] for r in replies if not r.startswith(b"HTTP/1.0 200")] == []
    assert t.stats()["torrents"][HASH.hex]["leechers"] == 300


def test_stop_does_not_wait_for_a_slot(make_tracker: Callable[..., Tracker]) -> None:
    """The accept loop waiting for a slot still notices a stop, long before the slow
    client holding that slot reaches its 60 s head deadline (a hang check, not a timing)."""
    t = make_tracker({"max_connections": 1, "request_timeout": 60.0})
    host, port = t.server.address
    held = _hold_slots(t, 1)
    waiting = socket.create_connection((host, port), timeout=30)
    try:
        waiting.sendall(b"GET /stats.json HTTP/1.0\r\n\r\n")
        time.sleep(0.2)  # the accept loop is now waiting for the held slot
        stopper = threading.Thread(target=t.server.stop)
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive(), "stop() waited for the slot"
    finally:
        waiting.close()
        held[0].close()


def test_bind_failure_is_a_tracker_error(make_tracker: Callable[..., Tracker]) -> None:
    _, port = make_tracker().server.address
    server = TrackerServer(TrackerConfig(port=port, bind="127.0.0.1"))
    with pytest.raises(TrackerError) as info:
        server.start()
    assert str(info.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
    server.stop()


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this host")
def test_ipv6_bind_and_peers6(tmp_path: Path) -> None:
    server = TrackerServer(TrackerConfig(port=0, bind="::1", logfile=str(tmp_path / "log")))
    server.start()
    try:
        host, port = server.address
        assert host == "::1"
        for n in (1, 2):
            url = f"http://[::1]:{port}/announce?{announce_query(HASH, n)}"
            body = bencoding.decode(urllib.request.urlopen(url, timeout=10).read())
        assert body[b"peers"] == b""
        assert body[b"peers6"] == bytes(15) + b"\x01" + (6001).to_bytes(2, "big")
    finally:
        server.stop()


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this host")
def test_ipv6_wildcard_also_serves_ipv4(tmp_path: Path) -> None:
    server = TrackerServer(TrackerConfig(port=0, bind="::", logfile=str(tmp_path / "log")))
    server.start()
    try:
        _, port = server.address
        url = f"http://127.0.0.1:{port}/announce?{announce_query(HASH, 1)}"
        urllib.request.urlopen(url, timeout=10).read()
        # The dual-stack socket saw ::ffff:127.0.0.1; peers are told plain IPv4.
        assert server.stats()["torrents"][HASH.hex]["peers"][0]["ip"] == "127.0.0.1"
    finally:
        server.stop()


def test_run_tracker_until_sigterm(tmp_path: Path) -> None:
    pidfile, dfile = tmp_path / "tracker.pid", tmp_path / "state.json"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import sys; from murder_core.tracker import TrackerConfig, run_tracker; "
        f"sys.exit(run_tracker(TrackerConfig(port={port}, bind='127.0.0.1', "
        f"dfile={str(dfile)!r}), pidfile={str(pidfile)!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        assert wait_for(pidfile.exists), "tracker never wrote its pidfile"
        assert pidfile.read_text().strip() == str(proc.pid)
        url = f"http://127.0.0.1:{port}/announce?{announce_query(HASH, 1)}"
        assert b"incomplete" in urllib.request.urlopen(url, timeout=10).read()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, stderr
    assert not pidfile.exists()
    assert HASH.hex in json.loads(dfile.read_text())["torrents"]
    assert b"announce 127.0.0.1:6001" in stderr


# --- interop: real BitTorrent clients find each other through our tracker ----------------


def _libtorrent() -> Any:
    found = importlib.util.find_spec("libtorrent") is not None
    need(found, "needs the libtorrent Python bindings (pip install libtorrent)")
    return importlib.import_module("libtorrent")


@pytest.mark.interop
@pytest.mark.slow
def test_libtorrent_clients_swarm_through_our_tracker(
    make_tracker: Callable[..., Tracker], tmp_path: Path
) -> None:
    lt = _libtorrent()
    t = make_tracker()
    payload = os.urandom(300_000)
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "release.bin").write_bytes(payload)
    meta = write_torrent(
        tmp_path / "seed" / "release.bin", t.base + "/announce", tmp_path / "r.torrent"
    )
    sessions = []
    for where in ("seed", "leech"):
        session = lt.session(
            {
                "listen_interfaces": "127.0.0.1:0",
                "enable_dht": False,
                "enable_lsd": False,
                "enable_upnp": False,
                "enable_natpmp": False,
                "allow_multiple_connections_per_ip": True,
            }
        )
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(str(tmp_path / "r.torrent"))
        params.save_path = str(tmp_path / where)
        session.add_torrent(params)
        sessions.append(session)
    try:
        done = wait_for(
            lambda: (
                (tmp_path / "leech" / "release.bin").exists()
                and sessions[1].get_torrents()[0].status().is_seeding
            ),
            timeout=60,
        )
        assert done, t.log()
        assert (tmp_path / "leech" / "release.bin").read_bytes() == payload
        # libtorrent sends its "completed" announce just after it starts seeding.
        assert wait_for(lambda: t.stats()["torrents"][meta.info_hash.hex]["seeders"] == 2)
        assert t.stats()["torrents"][meta.info_hash.hex]["completed"] == 1
    finally:
        for session in sessions:
            for handle in session.get_torrents():
                session.remove_torrent(handle)
