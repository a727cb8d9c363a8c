"""A deploy's secret: ``make-torrent --auth`` and the tracker that enforces it (issue 5).

The token travels only inside the .torrent (its announce URL). The tracker learns it from
the copy in its allowed dir and, for that torrent, refuses announces and scrapes without
it and leaves it out of its status pages, since the info_hash and the peer list are all
an outsider would need to fetch the payload. Real clients keep the token because they
append their parameters to the announce URL with ``&``: ours, aria2c and libtorrent.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote_from_bytes

import pytest
from conftest import need, need_program

from fabfile.torrent import stats_path
from murder_core import bencoding
from murder_core.announce import announce_query, with_auth_token
from murder_core.errors import MetainfoError
from murder_core.metainfo import Metainfo, read_metainfo, write_torrent
from murder_core.tracker import TrackerConfig, TrackerServer
from murder_core.tracker.requests import announce_auth, redact
from murder_core.tracker.server import AUTH_FAILURE
from murder_dev.localswarm import LocalSwarm, child_env, make_payload, murder_cmd, sha256

TOKEN = "00112233445566778899aabbccddeeff"


class Tracker:
    """A started TrackerServer with an allowed dir, spoken to over real HTTP."""

    def __init__(self, tmp_path: Path) -> None:
        self.allowed = tmp_path / "allowed"
        self.allowed.mkdir()
        self.logfile = tmp_path / "tracker.log"
        config = TrackerConfig(
            port=0, bind="127.0.0.1", allowed_dir=str(self.allowed), logfile=str(self.logfile)
        )
        self.server = TrackerServer(config)
        self.server.start()
        host, port = self.server.address
        self.base = f"http://{host}:{port}"

    def get(self, target: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + target, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def announce(self, meta: Metainfo, n: int = 1, auth: str | None = None, **extra: Any) -> Any:
        url = announce_query(
            "/announce" + (f"?auth={auth}" if auth is not None else ""),
            info_hash=meta.info_hash.raw,
            peer_id=f"-MU0001-{n:012d}".encode(),
            port=6000 + n,
            uploaded=0,
            downloaded=0,
            left=extra.get("left", 100),
        )
        status, body = self.get(url)
        assert status == 200, body
        return bencoding.decode(body)

    def stats(self, auth: str | None = None) -> tuple[dict[str, Any], bytes]:
        status, body = self.get("/stats.json" + (f"?auth={auth}" if auth else ""))
        assert status == 200
        return json.loads(body), body


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    t = Tracker(tmp_path)
    yield t
    t.server.stop()


def torrent_in(tracker: Tracker, tmp_path: Path, name: str, token: str | None) -> Metainfo:
    payload = tmp_path / name
    payload.write_bytes(os.urandom(5000))
    url = "http://127.0.0.1:1/announce"
    if token is not None:
        url = with_auth_token(url, token)
    return write_torrent(payload, url, tracker.allowed / f"{name}.torrent")


def test_announces_need_the_token_of_their_torrent(tracker: Tracker, tmp_path: Path) -> None:
    deploy = torrent_in(tracker, tmp_path, "deploy", TOKEN)
    plain = torrent_in(tracker, tmp_path, "plain", None)
    refused = {b"failure reason": AUTH_FAILURE.encode()}
    assert tracker.announce(deploy, n=1) == refused
    assert tracker.announce(deploy, n=1, auth="") == refused
    assert tracker.announce(deploy, n=1, auth=TOKEN[:-1]) == refused
    assert tracker.announce(deploy, n=1, auth=TOKEN.upper()) == refused
    assert tracker.announce(plain, n=1, auth=TOKEN)[b"peers"] == b""  # no token needed there
    first = tracker.announce(deploy, n=1, auth=TOKEN, left=0)
    assert first[b"peers"] == b""
    second = tracker.announce(deploy, n=2, auth=TOKEN)
    assert second[b"peers"] == bytes([127, 0, 0, 1]) + (6001).to_bytes(2, "big")
    log = tracker.logfile.read_text()
    assert "(auth token required)" in log and AUTH_FAILURE in log
    assert TOKEN not in log


def test_scrape_and_status_pages_show_a_deploy_only_to_its_token(
    tracker: Tracker, tmp_path: Path
) -> None:
    deploy = torrent_in(tracker, tmp_path, "deploy", TOKEN)
    plain = torrent_in(tracker, tmp_path, "plain", None)
    tracker.announce(deploy, n=1, auth=TOKEN, left=0)
    q = f"info_hash={quote_from_bytes(deploy.info_hash.raw)}"
    assert tracker.get(f"/scrape?{q}") == (200, bencoding.encode({"failure reason": AUTH_FAILURE}))
    _, body = tracker.get(f"/scrape?auth={TOKEN}&{q}")
    assert bencoding.decode(body)[b"files"][deploy.info_hash.raw][b"complete"] == 1
    # "Everything you serve" is everything the caller's token opens.
    everything = bencoding.decode(tracker.get("/scrape")[1])[b"files"]
    assert set(everything) == {plain.info_hash.raw}
    with_token = bencoding.decode(tracker.get(f"/scrape?auth={TOKEN}")[1])[b"files"]
    assert set(with_token) == {plain.info_hash.raw, deploy.info_hash.raw}

    anonymous, raw = tracker.stats()
    assert set(anonymous["torrents"]) == {plain.info_hash.hex}
    assert deploy.info_hash.hex.encode() not in raw and b"127.0.0.1" not in raw
    holder, raw = tracker.stats(auth=TOKEN)
    assert set(holder["torrents"]) == {plain.info_hash.hex, deploy.info_hash.hex}
    assert [p["port"] for p in holder["torrents"][deploy.info_hash.hex]["peers"]] == [6001]
    assert TOKEN.encode() not in raw
    assert tracker.stats(auth="wrong")[0]["torrents"].keys() == {plain.info_hash.hex}
    page = tracker.get("/")[1]
    assert deploy.info_hash.hex.encode() not in page and plain.info_hash.hex.encode() in page
    assert deploy.info_hash.hex.encode() in tracker.get(f"/?auth={TOKEN}")[1]


def test_a_new_deploy_token_replaces_the_old_one(tracker: Tracker, tmp_path: Path) -> None:
    payload = tmp_path / "release"
    payload.write_bytes(os.urandom(5000))
    target = tracker.allowed / "release.torrent"
    first = write_torrent(payload, with_auth_token("http://127.0.0.1:1/announce", TOKEN), target)
    assert tracker.announce(first, auth=TOKEN)[b"peers"] == b""
    # Same payload, same info_hash, next deploy: a fresh token, and the old one is dead.
    fresh = with_auth_token("http://127.0.0.1:1/announce")
    second = write_torrent(payload, fresh, target)
    assert second.info_hash == first.info_hash
    token = fresh.split("auth=")[1]
    assert token != TOKEN and len(token) == 32
    refused = {b"failure reason": AUTH_FAILURE.encode()}
    assert tracker.announce(first, n=2, auth=TOKEN) == refused
    assert tracker.announce(first, n=3, auth=token)[b"interval"] > 0


def test_tokens_never_reach_the_log(tracker: Tracker) -> None:
    tracker.server.log.setLevel(logging.DEBUG)  # every request line is logged, redacted
    with socket.create_connection(tracker.server.address, timeout=10) as sock:
        sock.sendall(f"GET /announce?auth={TOKEN}&x HTTP/1.1 junk\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.0 400")
    assert tracker.get(f"/announce?auth={TOKEN}&auth={TOKEN}")[0] == 400
    assert tracker.get("/announce?auth=" + "a" * 129)[0] == 400
    tracker.server.stop()
    log = tracker.logfile.read_text()
    assert "auth=<redacted>" in log
    assert TOKEN not in log


@pytest.mark.parametrize(
    ("announce", "expected"),
    [
        ("http://t:1/announce", f"http://t:1/announce?auth={TOKEN}"),
        ("http://t:1/announce?", f"http://t:1/announce?auth={TOKEN}"),
        ("http://t:1/announce?passkey=x", f"http://t:1/announce?passkey=x&auth={TOKEN}"),
    ],
)
def test_with_auth_token(announce: str, expected: str) -> None:
    assert with_auth_token(announce, TOKEN) == expected
    assert announce_auth(expected) == TOKEN.encode()
    # What every client then sends keeps the token as a parameter of its own.
    sent = announce_query(
        expected, info_hash=b"i" * 20, peer_id=b"p" * 20, port=1, uploaded=0, downloaded=0, left=0
    )
    assert announce_auth(sent) == TOKEN.encode()
    assert redact(sent).count("auth=<redacted>&") == 1 and TOKEN not in redact(sent)


@pytest.mark.parametrize(
    ("announce", "token", "message"),
    [
        ("http://t:1/a?auth=x", None, "announce URL already has an auth parameter: http://t:1/a"),
        ("http://t:1/a#frag", None, "announce URL must not have a #fragment, got 'http://t:1/a#frag'"),
        ("http://t:1/a", "a&b", "auth token must be URL-safe characters only"),
        ("http://t:1/a", "", "auth token must be URL-safe characters only"),
    ],
)  # fmt: skip
def test_with_auth_token_refuses(announce: str, token: str | None, message: str) -> None:
    with pytest.raises(MetainfoError) as caught:
        with_auth_token(announce, token)
    assert str(caught.value) == message


def test_a_torrent_whose_token_cannot_be_read_is_not_served(
    tracker: Tracker, tmp_path: Path
) -> None:
    """Two auth parameters: which one counts is unclear, so the torrent is skipped."""
    payload = tmp_path / "p"
    payload.write_bytes(b"x" * 100)
    meta = write_torrent(payload, "http://t:1/a?auth=1&auth=2", tracker.allowed / "p.torrent")
    reason = f"torrent {meta.info_hash.hex} is not allowed on this tracker"
    assert tracker.announce(meta, auth="1") == {b"failure reason": reason.encode()}


# -- real clients with a token in the announce URL -------------------------------------------


def auth_swarm(sw: LocalSwarm) -> Metainfo:
    """Like ``LocalSwarm.make_torrent``, but with ``--auth`` (and the .torrent 0600)."""
    subprocess.run(
        [
            *(*murder_cmd(), "make-torrent", str(sw.payload)),
            *("--tracker", f"127.0.0.1:{sw.tracker_port}", "--auth", "--mode", "600"),
            *("-o", str(sw.torrent)),
        ],
        check=True,
        capture_output=True,
        env=child_env(None),
        timeout=120,
    )
    assert sw.torrent.stat().st_mode & 0o777 == 0o600
    (sw.workdir / "allowed" / sw.torrent.name).write_bytes(sw.torrent.read_bytes())
    meta = read_metainfo(sw.torrent)
    assert "?auth=" in meta.announce
    return meta


@pytest.mark.slow
def test_our_peer_needs_the_token_and_has_it(tmp_path: Path) -> None:
    payload = make_payload(tmp_path / "release.bin", 3 * 1024 * 1024 + 7)
    with LocalSwarm(tmp_path / "run", payload) as sw:
        sw.start_tracker()
        meta = auth_swarm(sw)
        sw.start_seeder()
        sw.wait_for_seeders(1, stats_path=stats_path(meta.announce))
        assert meta.info_hash.hex not in sw.stats()["torrents"]  # hidden without the token
        # A copy of the .torrent without the token: same info_hash, but refused.
        stripped = tmp_path / "stripped.torrent"
        doc = bencoding.decode(sw.torrent.read_bytes())
        doc[b"announce"] = doc[b"announce"].split(b"?")[0]
        stripped.write_bytes(bencoding.encode(doc))
        thief = subprocess.run(
            [
                *(*murder_cmd(), "peer", str(stripped), str(tmp_path / "stolen.bin")),
                *("--bind", "127.0.0.1", "--ip", "127.0.0.1", "--tracker-timeout", "3"),
                *("--timeout", "30", "--linger", "0", "--foreground", "--quiet"),
            ],
            capture_output=True,
            text=True,
            env=child_env(None),
            timeout=60,
        )
        assert thief.returncode == 4, thief.stderr
        assert f"tracker refused the announce: {AUTH_FAILURE}" in thief.stderr
        assert not (tmp_path / "stolen.bin").exists()
        sw.start_peer("peer", tmp_path / "got.bin", "--linger", "0", "--timeout", "60")
        assert sw.wait(["peer"], timeout=90) == {"peer": 0}, sw.log("peer")[-2000:]
    assert sha256(tmp_path / "got.bin") == sha256(payload)


@pytest.mark.interop
@pytest.mark.slow
def test_aria2c_and_libtorrent_keep_the_token(tmp_path: Path) -> None:
    need_program("aria2c")
    try:
        import libtorrent  # noqa: F401 - here only to skip with a reason when absent
    except ImportError as exc:
        need(False, f"needs the libtorrent Python module: {exc}")
        raise
    from murder_dev.bench_loopback import aria2c_cmd, lt_download

    payload = make_payload(tmp_path / "release.bin", 2 * 1024 * 1024 + 3)
    with LocalSwarm(tmp_path / "run", payload) as sw:
        sw.start_tracker()
        meta = auth_swarm(sw)
        sw.start_seeder()
        sw.wait_for_seeders(1, stats_path=stats_path(meta.announce))
        out = tmp_path / "aria2"
        done = subprocess.run(
            aria2c_cmd("--seed-time=0", "--bt-stop-timeout=60", "-d", str(out), str(sw.torrent)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert sha256(out / payload.name) == sha256(payload)

        assert lt_download(str(sw.torrent), str(tmp_path / "lt"), 120), sw.log("tracker")[-2000:]
        tracker_log = (sw.workdir / "tracker.log").read_text()
    assert sha256(tmp_path / "lt" / payload.name) == sha256(payload)
    # Both announced with the token: not one refusal in the tracker's log.
    assert AUTH_FAILURE not in tracker_log
