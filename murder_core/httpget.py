"""A small HTTP/1.0 GET on asyncio streams, for announces to http:// trackers.

urllib.request costs every peer ~20 ms of imports at start (http.client, email, ssl)
and a worker thread per announce. A deploy starts a process on every host at once, and
on a box that runs many of them the swarm waits for that CPU. A tracker answers a GET
with a small body, so this is all the HTTP we need; https:// goes through urllib.
"""

from __future__ import annotations

import asyncio
import urllib.parse

#: A status line and headers longer than this are not a tracker talking.
MAX_HEAD_BYTES = 16 * 1024


class HttpStatus(Exception):
    """The server answered with a status other than 200; ``body`` is what it sent."""

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code
        self.body = body


class HttpProtocolError(Exception):
    """The reply is not HTTP we understand."""


class NoReply(Exception):
    """The server took the connection but its whole reply did not come in time."""


async def get(url: str, timeout: float, limit: int, user_agent: str) -> bytes:
    """The body of ``url`` (at most ``limit`` + 1 bytes, so the caller can tell it was cut).

    Raises HttpStatus, HttpProtocolError, OSError, asyncio.TimeoutError (``timeout`` ran
    out before we connected) or NoReply (we connected, then ``timeout`` ran out).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise HttpProtocolError(f"not an http:// URL: {parts.scheme}://{parts.netloc}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, parts.port or 80, limit=MAX_HEAD_BYTES), timeout
    )
    try:
        return await asyncio.wait_for(
            _exchange(parts, reader, writer, limit, user_agent), deadline - loop.time()
        )
    except (TimeoutError, asyncio.TimeoutError):  # one class only from Python 3.11 on
        raise NoReply(f"connected, but no reply within {timeout:g} s") from None


async def _exchange(
    parts: urllib.parse.SplitResult,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    limit: int,
    user_agent: str,
) -> bytes:
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        # HTTP/1.0 and Connection: close: the body ends where the connection does, and
        # a server may not answer in chunks.
        writer.write(
            f"GET {target} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
            f"User-Agent: {user_agent}\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        head = await _read_head(reader)
        code, length = _parse_head(head)
        if length is not None:
            if length > limit:
                raise HttpProtocolError(f"reply of {length} bytes is over {limit}")
            body = await _read_exactly(reader, length)
        else:
            body = b""
            while len(body) <= limit:
                more = await reader.read(limit + 1 - len(body))
                if not more:
                    break
                body += more
    finally:
        writer.close()
    if code != 200:
        raise HttpStatus(code, body)
    return body


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise HttpProtocolError("connection closed before the reply's headers ended") from None
    except asyncio.LimitOverrunError:
        raise HttpProtocolError(f"reply headers over {MAX_HEAD_BYTES} bytes") from None


async def _read_exactly(reader: asyncio.StreamReader, length: int) -> bytes:
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise HttpProtocolError(
            f"connection closed after {len(exc.partial)} of {length} bytes"
        ) from None


def _parse_head(head: bytes) -> tuple[int, int | None]:
    """(status code, Content-Length or None) of a status line and headers."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].isdigit():
        raise HttpProtocolError(f"not an HTTP status line: {lines[0][:80]!r}")
    length: int | None = None
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip()
        if name == "transfer-encoding" and value.lower() != "identity":
            raise HttpProtocolError(f"unsupported transfer-encoding {value!r}")
        if name == "content-length":
            if not value.isdigit():
                raise HttpProtocolError(f"bad content-length {value[:40]!r}")
            length = int(value)
    return int(status[1]), length
