"""The HTTP tracker: routes requests to the pure ``Swarm``, persists it, runs it.

The HTTP plumbing (timeouts, caps, bind) is in ``httpd``; the lifecycle (load the
dfile, serve, save every few seconds, save at stop) and the routes are here.
"""

from __future__ import annotations

import html
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable

from .. import daemon
from ..errors import TrackerError, TrackerRequestError
from ..lease import Lease
from ..values import InfoHash, PeerAddr
from .httpd import (
    BENCODE_TYPE,
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT,
    HTTPServer,
    Response,
    failure,
    listen,
)
from .requests import (
    encode_announce,
    encode_scrape,
    parse_announce,
    parse_auth,
    parse_query,
    parse_scrape,
    redact,
)
from .state import AllowedTorrents, load_swarm, save_json_atomic
from .swarm import MAX_NUMWANT, Swarm

#: Save the dfile at most this often (seconds) while the swarm keeps changing.
SAVE_EVERY = 2.0
#: The failure reason for a request without the token its torrent requires.
AUTH_FAILURE = "missing or wrong auth token"


@dataclass
class TrackerConfig:
    port: int = 8998
    bind: str = "0.0.0.0"
    dfile: str | None = None
    logfile: str | None = None
    allowed_dir: str | None = None
    allow: tuple[str, ...] = ()
    interval: int = 10
    min_interval: int = 2
    peer_ttl: int | None = None
    max_numwant: int = MAX_NUMWANT


def _make_logger(logfile: str | None) -> logging.Logger:
    # A private logger per server (not in the logging tree): two trackers in one
    # process, as in tests, must not write each other's lines.
    logger = logging.Logger("murder.tracker", logging.INFO)
    try:
        handler: logging.Handler = (
            logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
        )
    except OSError as exc:
        raise TrackerError(f"cannot open logfile {logfile}: {exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger


def _parse_allow(text: str) -> InfoHash:
    try:
        return InfoHash.from_hex(text)
    except ValueError:
        raise TrackerError(f"--allow must be a 40-digit hex info_hash, got {text!r}") from None


class TrackerServer:
    """A running tracker: ``start()`` serves in a background thread, ``stop()`` ends it."""

    def __init__(
        self,
        config: TrackerConfig,
        *,
        clock: Callable[[], float] = time.time,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if not 0 <= config.port <= 65535:
            raise TrackerError(f"port must be in 0..65535, got {config.port}")
        self.config = config
        self._clock = clock
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._swarm_options: dict[str, Any] = {
            "interval": config.interval,
            # `--interval 1` alone must not trip over the default min interval of 2.
            "min_interval": min(config.min_interval, config.interval),
            "peer_ttl": config.peer_ttl,
            "max_numwant": config.max_numwant,
        }
        Swarm(**self._swarm_options)  # fail on bad intervals now, not at start()
        allow = [_parse_allow(h) for h in config.allow]
        self.log = _make_logger(config.logfile)
        self._allowed = AllowedTorrents(config.allowed_dir, allow, logger=self.log)
        self._lock = threading.Lock()  # guards the swarm
        self._swarm = Swarm(**self._swarm_options)
        self._httpd: HTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._stopped = False
        self._saved_version = -1
        self._last_save = 0.0

    def allow(self, info_hash: InfoHash | str, token: bytes | None = None) -> None:
        """Serve this torrent (and stop serving unlisted ones, if the tracker was open).

        With ``token``, only requests carrying ``auth=TOKEN`` may use or see it.
        """
        parsed = _parse_allow(info_hash) if isinstance(info_hash, str) else info_hash
        self._allowed.allow(parsed, token=token)

    @property
    def address(self) -> tuple[str, int]:
        if self._httpd is None:
            raise TrackerError("tracker is not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self._httpd is not None or self._stopped:
            raise TrackerError("tracker can only be started once")
        httpd = listen(
            self.config.bind,
            self.config.port,
            self,
            timeout=self._request_timeout,
            max_connections=self._max_connections,
        )
        self._swarm = load_swarm(self.config.dfile, self.log, **self._swarm_options)
        self._saved_version = self._swarm.version
        self._allowed.scan()
        if self._allowed.open:
            self.log.warning(
                "no --allowed-dir and no --allow given: serving ANY torrent announced here"
            )
        self._httpd = httpd
        host, port = self.address
        self.log.info("tracker listening on %s", PeerAddr(host, port) if port else host)
        for target, name in ((self._serve, "serve"), (self._maintain, "maintain")):
            thread = threading.Thread(target=target, name=f"tracker-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self) -> None:
        assert self._httpd is not None
        # shutdown() waits for this loop to look: a stop should not wait long for that.
        self._httpd.serve_forever(poll_interval=0.05)

    def _maintain(self) -> None:
        while not self._stopping.wait(1.0):
            with self._lock:
                self._swarm.expire(self._clock())
            self._save(force=False)

    def _save(self, *, force: bool) -> None:
        if self.config.dfile is None:
            return
        with self._lock:
            version = self._swarm.version
            due = time.monotonic() - self._last_save >= SAVE_EVERY
            if not force and (version == self._saved_version or not due):
                return
            data = self._swarm.to_json()
        try:
            save_json_atomic(self.config.dfile, data)
        except TrackerError as exc:
            self.log.error("%s", exc)
            return
        self._saved_version = version
        self._last_save = time.monotonic()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=30)
        if self._httpd is not None:
            self._save(force=True)
            self.log.info("tracker stopped")
        for handler in self.log.handlers:
            handler.close()

    def respond(self, target: str, remote_ip: str) -> Response:
        """Answer one GET; never raises for anything the client sent."""
        path, _, query_text = target.partition("?")
        # http.server decoded the request line as latin-1; this gets the raw bytes back.
        query = query_text.encode("latin-1", "replace")
        try:
            if path == "/announce":
                return self._announce(query, remote_ip)
            if path == "/scrape":
                return self._scrape(query)
            if path == "/stats.json":
                body = json.dumps(self.stats(parse_auth(parse_query(query)))).encode()
                return Response(200, "application/json", body)
            if path == "/":
                page = render_status_html(self.stats(parse_auth(parse_query(query))))
                return Response(200, "text/html; charset=utf-8", page)
            return failure(404, f"no such path {path[:100]!r}")
        except TrackerRequestError as exc:
            self.log.warning("bad request from %s: %s", remote_ip, exc)
            return failure(400, str(exc))
        except Exception:
            self.log.exception("internal error answering %r", redact(target[:200]))
            return failure(500, "internal tracker error")

    def _announce(self, query: bytes, remote_ip: str) -> Response:
        request = parse_announce(query, remote_ip)
        if not self._allowed.is_allowed(request.info_hash):
            return failure(200, f"torrent {request.info_hash.hex} is not allowed on this tracker")
        if not self._allowed.token_ok(request.info_hash, request.auth):
            self.log.warning(
                "announce for %s from %s: %s", request.info_hash.hex[:8], remote_ip, AUTH_FAILURE
            )
            return failure(200, AUTH_FAILURE)
        try:
            with self._lock:
                reply = self._swarm.announce(request, self._clock())
        except TrackerError as exc:
            return failure(200, str(exc))
        self.log.info(
            "announce %s %s %s left=%d",
            request.addr,
            request.info_hash.hex[:8],
            request.event.value or "-",
            request.left,
        )
        body = encode_announce(reply, compact=request.compact, no_peer_id=request.no_peer_id)
        return Response(200, BENCODE_TYPE, body)

    def _scrape(self, query: bytes) -> Response:
        request = parse_scrape(query)
        allowed = self._allowed
        if request.info_hashes:
            wanted: list[InfoHash] | None = [
                h for h in request.info_hashes if allowed.is_allowed(h)
            ]
            if any(not allowed.token_ok(h, request.auth) for h in wanted or ()):
                return failure(200, AUTH_FAILURE)
        elif allowed.open:
            wanted = None
        else:
            # "Everything you serve" means everything this caller's token opens.
            every = sorted(allowed.allowed(), key=str)
            wanted = [h for h in every if allowed.token_ok(h, request.auth)]
        with self._lock:
            entries = self._swarm.scrape(wanted, now=self._clock())
        return Response(200, BENCODE_TYPE, encode_scrape(entries))

    def stats(self, auth: bytes | None = None) -> dict[str, Any]:
        """The ``/stats.json`` document, showing only what ``auth`` may see.

        A deploy's torrent (one with a token) appears only to a caller with its token:
        its info_hash and peer list are all an outsider needs to fetch the payload.
        """
        labels = self._allowed.labels()
        include = sorted(self._allowed.allowed(), key=str)
        with self._lock:
            doc = self._swarm.stats(self._clock(), labels, include)
        doc["torrents"] = {
            hex_hash: torrent
            for hex_hash, torrent in doc["torrents"].items()
            if self._allowed.visible(InfoHash.from_hex(hex_hash), auth)
        }
        return doc


def render_status_html(stats: dict[str, Any]) -> bytes:
    """A small human-readable page of ``stats`` (everything printed is escaped)."""
    rows = []
    for hex_hash, torrent in stats["torrents"].items():
        cells = [torrent["name"] or "", hex_hash, torrent["length"] if torrent["length"] else ""]
        cells += [torrent["seeders"], torrent["leechers"], torrent["completed"]]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stats["time"]))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>murder tracker</title></head>
<body><h1>murder tracker</h1>
<p>{len(rows)} torrents, announce interval {html.escape(str(stats["interval"]))} s, at {when}.
<a href="/stats.json">stats.json</a></p>
<table border="1"><tr><th>name</th><th>info_hash</th><th>bytes</th><th>seeders</th>
<th>leechers</th><th>completed</th></tr>
{"".join(rows)}
</table></body></html>
"""
    return page.encode("utf-8")


def run_tracker(
    config: TrackerConfig, pidfile: str | None = None, lease: Lease | None = None
) -> int:
    """Serve in the foreground until SIGTERM/SIGINT, or until ``lease`` expires; the
    pidfile exists while we listen."""
    server = TrackerServer(config)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    # Before listening: once we answer, a caller may stop us at once, and a SIGTERM
    # taken by the default action would kill us without saving the state file.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        with daemon.pidfile(pidfile):
            while not done.wait(0.5):
                why = lease.expired() if lease is not None else ""
                if why:
                    server.log.warning("stopping: %s", why)
                    break
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
