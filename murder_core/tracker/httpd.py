"""HTTP plumbing for the tracker: the stdlib threading server, hardened.

Why threads and not asyncio: a tracker request is one short line in and a few hundred
bytes out, the swarm is a plain object behind one lock, and the stdlib server already
parses HTTP. What it lacks we add here: a byte budget and one wall-clock deadline for
the whole request head (a slowloris client cannot hold a thread past it), a cap on
connections served at once (more wait their turn), bencoded error bodies (405 for
non-GET), and bind errors as TrackerError.
"""

from __future__ import annotations

import io
import logging
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, Protocol

from ..errors import TrackerError
from .requests import encode_failure, redact

#: Whole request head (request line + headers) must arrive within this many seconds.
REQUEST_TIMEOUT = 10.0
#: ... and fit in this many bytes (the query itself is capped at 4 KiB by requests.py).
MAX_HEAD_BYTES = 16 * 1024
#: Connections served at once, each on a thread; more wait for a slot (see HTTPServer).
MAX_CONNECTIONS = 256
#: Connections the kernel holds for us, accepted or not, while every slot is taken: a
#: fleet's first announces all come within a second or two. Linux caps it at somaxconn.
LISTEN_BACKLOG = 4096
#: Seconds between looks at the shutdown flag while waiting for a slot.
SLOT_POLL = 0.05
BENCODE_TYPE = "text/plain"


class Responder(Protocol):
    """What the server needs from the tracker: answers, and somewhere to log."""

    log: logging.Logger

    def respond(self, target: str, remote_ip: str) -> Response: ...


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def failure(status: int, reason: str) -> Response:
    return Response(status, BENCODE_TYPE, encode_failure(reason))


class _HeadTooLarge(Exception):
    """Internal signal from _HeadReader to Handler; never leaves this module."""


class _HeadReader:
    """Stands in for the handler's ``rfile`` while the request head is read.

    The socket timeout alone restarts on every byte, so a client trickling one byte
    every few seconds would hold the thread forever; here each read gets only what is
    left of one deadline for the whole head, and the head has a byte budget.
    """

    def __init__(self, raw: Any, sock: socket.socket, deadline: float, budget: int) -> None:
        self._raw = raw
        self._sock = sock
        self._deadline = deadline
        self._budget = budget

    def readline(self, limit: int = -1) -> bytes:
        line = bytearray()
        while limit < 0 or len(line) < limit:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("request head not received in time")
            self._sock.settimeout(remaining)
            chunk = self._raw.peek(1)
            if not chunk:
                break
            end = chunk.find(b"\n")
            take = len(chunk) if end < 0 else end + 1
            if limit >= 0:
                take = min(take, limit - len(line))
            if take > self._budget:
                raise _HeadTooLarge(f"request head is more than {MAX_HEAD_BYTES} bytes")
            self._budget -= take
            line += self._raw.read(take)
            if line.endswith(b"\n"):
                break
        return bytes(line)

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)

    def close(self) -> None:
        self._raw.close()


class Handler(BaseHTTPRequestHandler):
    server: HTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: nothing idles on keep-alive
    server_version = "murder-tracker"

    def version_string(self) -> str:
        return self.server_version  # not the Python version: no need to advertise it

    def setup(self) -> None:
        super().setup()
        # Defaults so an error before the request line is parsed can still be answered.
        self.requestline = ""
        self.request_version = "HTTP/1.0"
        self.command = ""
        deadline = time.monotonic() + self.server.request_timeout
        self.rfile: BinaryIO = _HeadReader(  # type: ignore[assignment]
            self.rfile, self.connection, deadline, MAX_HEAD_BYTES
        )

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _HeadTooLarge as exc:
            self.close_connection = True
            self._send(failure(400, str(exc)))

    def do_GET(self) -> None:
        self._send(self.server.responder.respond(self.path, self.client_address[0]))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server answers unknown methods with 501 and an HTML page; trackers speak
        # bencode, and the right status for "GET only" is 405.
        response = failure(code, message or self.responses.get(code, ("error",))[0])
        if code == 501:
            response = failure(405, f"method {self.command[:20]!r} not allowed, use GET")
            response.headers["Allow"] = "GET"
        self.close_connection = True
        # http.server treats a mangled request line as HTTP/0.9 and would then send a
        # bare body; every real tracker client speaks HTTP/1.x and wants a status line.
        self.request_version = "HTTP/1.0"
        self._send(response)

    def _send(self, response: Response) -> None:
        # The head's deadline may be nearly spent; the reply gets a fresh timeout.
        self.connection.settimeout(self.server.request_timeout)
        # Head and body leave in one send: each blocking call hands the GIL to the other
        # request threads and waits to get it back, which is what limits a busy tracker.
        wire, self.wfile = self.wfile, io.BytesIO()
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
            reply = self.wfile.getvalue()
        finally:
            self.wfile = wire
        self.wfile.write(reply)

    # Both get the request line, which carries a deploy's auth token: never log that.
    def log_message(self, format: str, *args: Any) -> None:
        self.server.responder.log.debug("%s %s", self.address_string(), redact(format % args))

    def log_error(self, format: str, *args: Any) -> None:
        self.server.responder.log.info("%s %s", self.address_string(), redact(format % args))


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self, responder: Responder, family: int, address: Any, timeout: float, max_connections: int
    ) -> None:
        self.address_family = family
        self.responder = responder
        self.request_timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closing = threading.Event()
        super().__init__(address, Handler, bind_and_activate=False)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # Listen on IPv4 too when bound to the IPv6 wildcard (dual stack).
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would call getfqdn(), a DNS lookup that can hang for
        # seconds on hosts with broken resolvers; we do not need the name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        # With every slot taken, wait: a slot frees soon (see _wait_for_slot), since a
        # request holds one only while its head arrives and its short reply goes out.
        # Closing at once instead turned a burst of announces (a fleet starting) into
        # seconds of client backoff and a second burst. Meanwhile later connections wait
        # in the listen backlog, unaccepted, which costs us nothing.
        if not self._wait_for_slot():
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def _wait_for_slot(self) -> bool:
        # A slot is held for at most a head deadline and then a reply timeout; waiting only
        # one deadline lost the race to a slot freed right at it, on a loaded machine.
        deadline = time.monotonic() + 2 * self.request_timeout
        while not self._closing.is_set():
            # In short waits: shutdown() must not sit out two deadlines for this loop.
            if self._slots.acquire(timeout=SLOT_POLL):
                return True
            if time.monotonic() >= deadline:
                break
        return False

    def shutdown(self) -> None:
        self._closing.set()
        super().shutdown()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr. A client hanging up mid-reply
        # is routine for a tracker and only worth a debug line; anything else is a bug.
        if isinstance(sys.exc_info()[1], OSError):
            self.responder.log.debug("connection from %s failed", client_address, exc_info=True)
        else:
            self.responder.log.exception("error serving %s", client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def listen(
    bind: str,
    port: int,
    responder: Responder,
    *,
    timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> HTTPServer:
    """A bound, listening (not yet serving) server; port 0 picks a free port."""
    where = f"{bind}:{port}"
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM)[0]
        httpd = HTTPServer(responder, family, sockaddr, timeout, max_connections)
    except (OSError, UnicodeError) as exc:
        raise TrackerError(f"cannot listen on {where}: {_reason(exc)}") from None
    try:
        httpd.server_bind()
        httpd.server_activate()
    except OSError as exc:
        httpd.server_close()
        raise TrackerError(f"cannot listen on {where}: {_reason(exc)}") from None
    return httpd


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
