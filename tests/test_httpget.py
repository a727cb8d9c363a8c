"""The announce GET against a real socket server that answers whatever a test scripts:
good replies, failures the tracker explains, and replies no tracker should send."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from murder_core import announce, bencoding
from murder_core.errors import TrackerBusyError, TrackerError

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
PEERS = bencoding.encode({b"interval": 30, b"peers": b"\x7f\x00\x00\x01\x1a\xe1"})


def _serve(reply: Reply, query: str = "/announce?info_hash=%00x", timeout: float = 5.0) -> object:
    """Run ``announce.fetch_async`` against a one-shot server answering with ``reply``;
    returns the AnnounceReply, or the TrackerError it raised."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        try:
            await reply(reader, writer)
        finally:
            writer.close()

    async def main() -> object:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await announce.fetch_async(f"http://127.0.0.1:{port}{query}", timeout)
        except TrackerError as exc:
            return exc
        finally:
            server.close()

    result = asyncio.run(main())
    if not isinstance(result, TrackerError):
        head = requests[0].decode()
        assert head.startswith(f"GET {query} HTTP/1.0\r\n"), head
        assert "\r\nHost: 127.0.0.1:" in head and "\r\nConnection: close\r\n" in head
    return result


def _send(data: bytes) -> Reply:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return reply


def test_a_reply_with_a_length_is_read_to_its_end() -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(PEERS)}\r\n\r\n".encode()
    reply = _serve(_send(head + PEERS))
    assert isinstance(reply, announce.AnnounceReply), reply
    assert reply.interval == 30 and [str(p) for p in reply.peers] == ["127.0.0.1:6881"]


def test_a_reply_without_a_length_ends_with_the_connection() -> None:
    reply = _serve(_send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + PEERS))
    assert isinstance(reply, announce.AnnounceReply) and reply.interval == 30


def test_an_error_status_carries_the_trackers_reason() -> None:
    body = bencoding.encode({b"failure reason": b"unregistered torrent"})
    head = f"HTTP/1.0 403 Forbidden\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    err = _serve(_send(head + body))
    assert isinstance(err, TrackerError)
    assert "tracker answered HTTP 403" in str(err) and "unregistered torrent" in str(err)
    plain = _serve(_send(b"HTTP/1.0 302 Found\r\nLocation: http://elsewhere/\r\n\r\n"))
    assert isinstance(plain, TrackerError) and str(plain) == "tracker answered HTTP 302"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP status line"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "chunked",
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n" + b"d" * 10, "after 10 of 100 bytes"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n", "bad content-length"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 99999999\r\n\r\n", "over"),
        (b"HTTP/1.0 200 OK\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n", "headers over"),
        (b"HTTP/1.0 200 OK\r\n", "before the reply's headers ended"),
    ],
)
def test_replies_no_tracker_sends_are_refused_by_name(data: bytes, message: str) -> None:
    err = _serve(_send(data))
    assert isinstance(err, TrackerError), err
    assert "sent a bad reply" in str(err) and message in str(err)


def test_a_body_past_the_cap_is_refused() -> None:
    big = b"d" + b"x" * (announce.MAX_REPLY_BYTES + 10)
    err = _serve(_send(b"HTTP/1.0 200 OK\r\n\r\n" + big))
    assert isinstance(err, TrackerError) and "exceeds" in str(err)


def test_a_tracker_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    err = _serve(silent, timeout=0.3)
    assert isinstance(err, TrackerBusyError), err
    assert str(err).endswith("is busy: connected, but no reply within 0.3 s")


def test_a_closed_port_is_named_with_the_reason() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{port}/announce"
        with pytest.raises(TrackerError) as info:
            asyncio.run(announce.fetch_async(url, 5.0))
    assert str(info.value) == f"cannot reach tracker http://127.0.0.1:{port}: Connection refused"
    assert not isinstance(info.value, TrackerBusyError)


def test_a_tracker_that_takes_no_connection_is_not_busy_but_unreachable() -> None:
    """A listener whose accept queue is full drops further SYNs: the connect itself
    times out, which says nothing about the tracker being there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(0)
        port = s.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # more than any kernel queues for a backlog of 0
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            url = f"http://127.0.0.1:{port}/announce"
            with pytest.raises(TrackerError) as info:
                asyncio.run(announce.fetch_async(url, 0.5))
        finally:
            for filler in fillers:
                filler.close()
    assert str(info.value).endswith(": no connection within 0.5 s")
    assert not isinstance(info.value, TrackerBusyError)
