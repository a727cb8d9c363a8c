"""One TCP connection to a peer: bytes in and out of the sans-IO wire state machine.

The link owns per-connection bookkeeping (what we asked this peer for, what it
asked us for, idle times); every decision about the swarm is the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

from .errors import ProtocolError
from .wire.connection import CLOSED, NEED_DATA, PeerConnection
from .wire.framing import encode_piece_header
from .wire.messages import Handshake, Message

if TYPE_CHECKING:
    from .session import Session
    from .values import PeerAddr

Block = tuple[int, int, int]

#: Kernel socket buffers big enough to keep a fast link full without a deep Python queue.
SOCKET_BUFFER = 4 * 1024 * 1024
WRITE_HIGH_WATER = 2 * 1024 * 1024


class PeerLink(asyncio.Protocol):
    def __init__(self, session: Session, addr: PeerAddr | None, outgoing: bool) -> None:
        self.session = session
        self.addr = addr  # the peer's listening address, when we dialled it
        self.outgoing = outgoing
        self.conn = PeerConnection(session.info_hash, session.peer_id, session.num_pieces)
        self.transport: asyncio.Transport | None = None
        self.remote: str = str(addr) if addr else "?"
        self.remote_id: bytes | None = None
        self.ready = False
        self.closed = False
        self.paused = False
        self.resume_handle: asyncio.TimerHandle | None = None
        self.outstanding: set[Block] = set()
        self.uploads: deque[Block] = deque()
        now = time.monotonic()
        self.last_recv = now
        self.last_send = now
        self.last_block = now
        self.downloaded = 0
        self.uploaded = 0

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):  # the kernel caps it; defaults still work
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        peername = transport.get_extra_info("peername")
        if peername and self.addr is None:
            self.remote = f"{peername[0]}:{peername[1]}"
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        # An accepted connection answers only once the dialler's handshake has named our
        # info_hash: ours would tell anyone who connects which torrent to ask for.
        if self.outgoing:
            self._write(self.conn.initiate())
        self.session.link_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_recv = time.monotonic()
        try:
            self.conn.receive_data(data)
            while not self.closed:
                event = self.conn.next_event()
                if event is NEED_DATA or event is CLOSED:
                    break
                if isinstance(event, Handshake) and not self.outgoing:
                    self._write(self.conn.initiate())  # its info_hash matched ours
                self.session.handle(self, event)
        except ProtocolError as exc:
            self.session.drop(self, f"protocol error: {exc}")

    def eof_received(self) -> bool | None:
        self.session.drop(self, "peer closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.session.link_closed(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.session.serve_uploads(self)

    # -- sending -----------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)
            self.last_send = time.monotonic()

    def send(self, msg: Message) -> None:
        if not self.closed:
            self._write(self.conn.send(msg))

    def send_many(self, msgs: list[Message]) -> None:
        if msgs and not self.closed:
            self._write(b"".join(self.conn.send(m) for m in msgs))

    def send_block(self, index: int, begin: int, data: bytes) -> None:
        # Header and payload go out separately so the 16 KiB block is never copied again.
        if self.transport is None or self.closed:
            return
        self.transport.write(encode_piece_header(index, begin, len(data)))
        self.transport.write(data)
        self.last_send = time.monotonic()
        self.uploaded += len(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
