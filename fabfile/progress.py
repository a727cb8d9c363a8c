"""One tqdm bar for the whole swarm, fed by the tracker's ``/stats.json``.

The workstation may not reach the tracker's port directly (firewalls let SSH through,
not 8998), so the stats are fetched through the tracker host's SSH connection
(a ``direct-tcpip`` channel, as ``ssh -L`` does), falling back to plain HTTP.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Collection, Optional

from paramiko import Transport
from tqdm import tqdm

MAX_STATS_BYTES = 8 * 1024 * 1024
Fetch = Callable[[], bytes]


@dataclass(frozen=True)
class SwarmSnapshot:
    hosts_done: int
    hosts_total: int
    bytes_done: int
    bytes_total: int


def parse_stats(
    data: bytes, info_hash: str, peer_ips: Collection[str], payload_bytes: int
) -> SwarmSnapshot:
    """Progress of our torrent among the peer hosts (the seeder's own entry excluded).

    A peer not yet announced counts as nothing done; ``left`` is trusted only within
    0..payload_bytes so a confused client cannot push the bar backwards past zero.
    """
    total = len(peer_ips)
    empty = SwarmSnapshot(0, total, 0, total * payload_bytes)
    try:
        doc = json.loads(data.decode("utf-8"))
        torrent = doc["torrents"][info_hash.lower()]
        peers = torrent["peers"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return empty
    if not isinstance(peers, list):
        return empty
    best: dict[str, int] = {}
    for peer in peers:
        if not isinstance(peer, dict):
            continue
        ip, left = peer.get("ip"), peer.get("left")
        if not isinstance(ip, str) or ip not in peer_ips:
            continue
        if not isinstance(left, int) or isinstance(left, bool):
            continue
        left = min(max(left, 0), payload_bytes)
        best[ip] = min(best.get(ip, payload_bytes), left)
    done_bytes = sum(payload_bytes - left for left in best.values())
    done_hosts = sum(1 for left in best.values() if left == 0)
    return SwarmSnapshot(done_hosts, total, done_bytes, total * payload_bytes)


def _read_http_response(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2 or status[1] != b"200":
        raise OSError(f"tracker answered {head[:80]!r}")
    return body


def fetch_over_ssh(
    transport: Transport, ip: str, port: int, timeout: float = 5.0, path: str = "/stats.json"
) -> bytes:
    """GET ``path`` (``/stats.json``, with a token) over an SSH ``direct-tcpip`` channel."""
    chan = transport.open_channel("direct-tcpip", (ip, port), ("127.0.0.1", 0), timeout=timeout)
    try:
        chan.settimeout(timeout)
        host = f"[{ip}]" if ":" in ip else ip
        chan.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        raw = b""
        while len(raw) <= MAX_STATS_BYTES:
            chunk = chan.recv(65536)
            if not chunk:
                break
            raw += chunk
    finally:
        chan.close()
    if len(raw) > MAX_STATS_BYTES:
        raise OSError(f"stats.json larger than {MAX_STATS_BYTES} bytes")
    return _read_http_response(raw)


def fetch_direct(ip: str, port: int, timeout: float = 5.0, path: str = "/stats.json") -> bytes:
    host = f"[{ip}]" if ":" in ip else ip
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as resp:
        data: bytes = resp.read(MAX_STATS_BYTES + 1)
    if len(data) > MAX_STATS_BYTES:
        raise OSError(f"stats.json larger than {MAX_STATS_BYTES} bytes")
    return data


class SwarmProgress:
    """A background thread that polls the tracker and moves one bar; stop() joins it."""

    def __init__(
        self,
        fetchers: list[Fetch],
        info_hash: str,
        peer_ips: Collection[str],
        payload_bytes: int,
        *,
        interval: float = 1.0,
        enabled: bool = True,
        **tqdm_kwargs: Any,
    ) -> None:
        self.fetchers = list(fetchers)
        self.info_hash = info_hash
        self.peer_ips = set(peer_ips)
        self.payload_bytes = payload_bytes
        self.interval = interval
        self.enabled = enabled
        self.last: Optional[SwarmSnapshot] = None
        self.fetch_errors = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._bar: Optional[Any] = None
        self._tqdm_kwargs = tqdm_kwargs

    def poll(self) -> Optional[SwarmSnapshot]:
        """One fetch; the first fetcher that works is kept for the next polls."""
        for index, fetch in enumerate(self.fetchers):
            try:
                data = fetch()
            except Exception:  # progress is cosmetic: any failure means "try the next way"
                continue
            if index:
                self.fetchers = self.fetchers[index:]
            snap = parse_stats(data, self.info_hash, self.peer_ips, self.payload_bytes)
            self.last = snap
            return snap
        self.fetch_errors += 1
        return None

    def _update(self, snap: SwarmSnapshot) -> None:
        if self._bar is None:
            return
        # The tracker's numbers move only when peers announce (every announce_interval),
        # so most polls see no change. Only a change is fed to tqdm's rate, as bytes over
        # the time since the last one: a poll in between would count as a second in which
        # nothing moved, and the rate shown would swing by half from poll to poll.
        moved = snap.bytes_done - self._bar.n
        self._bar.set_postfix_str(f"hosts {snap.hosts_done}/{snap.hosts_total}", refresh=False)
        if moved:
            self._bar.update(moved)
        self._bar.refresh()  # the elapsed time still ticks between changes

    def _loop(self) -> None:
        while not self._stop.is_set():
            snap = self.poll()
            if snap is not None:
                self._update(snap)
            self._stop.wait(self.interval)

    def start(self) -> None:
        if not self.enabled or not self.peer_ips:
            return
        total = len(self.peer_ips) * self.payload_bytes
        # _update decides when the rate moves; each move spans a whole announce interval,
        # so the rate shown leans on the latest one (tqdm's default smoothing, 0.3, took
        # ten seconds to climb from the start-up's rate to the swarm's).
        kwargs = dict(unit="B", unit_scale=True, unit_divisor=1024, desc="swarm", total=total)
        kwargs.update(mininterval=0, miniters=0, smoothing=0.8)
        kwargs.update(self._tqdm_kwargs)  # the caller's win
        self._bar = tqdm(**kwargs)
        self._thread = threading.Thread(target=self._loop, name="murder-progress", daemon=True)
        self._thread.start()

    def stop(self) -> Optional[SwarmSnapshot]:
        """Stop polling; one last poll so the bar ends on the swarm's real final state."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 + self.interval)
            self._thread = None
        if self._bar is None:
            return self.last
        snap = self.poll()
        if snap is not None:
            self._update(snap)
        self._bar.close()
        self._bar = None
        return self.last
