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
from .metainfo import BLOCK_SIZE
from .sendfile import AVAILABLE as SENDFILE_AVAILABLE
from .sendfile import send_direct
from .wire.connection import CLOSED, NEED_DATA, PeerConnection
from .wire.framing import encode_piece_header
from .wire.messages import Cancel, Handshake, Message, Request

if TYPE_CHECKING:
    from .session import Session
    from .storage import Storage
    from .values import PeerAddr

Block = tuple[int, int, int]

#: What BEP 3 clients ask for and serve; the most we request from a peer that is not ours.
STANDARD_BLOCK = BLOCK_SIZE
#: Our peer ids start with this (Azureus style). Every murder release serves Requests of
#: up to 128 KiB, so between murder peers one message carries 8 standard blocks: an eighth
#: of the per-message Python work on the download hot path.
MURDER_PEER_ID_PREFIX = b"-MU"

#: Kernel socket buffers big enough to keep a fast link full without a deep Python queue.
SOCKET_BUFFER = 4 * 1024 * 1024
#: Unsent bytes the kernel takes per link (TCP_NOTSENT_LOWAT) before a send stops short;
#: what is left waits in the transport, and the link holds an upload slot until it has
#: gone (see uploads.py). A deep unsent queue per link would let TCP interleave every
#: link's blocks again. Bytes in flight are not counted: the window still fills.
UNSENT_LOWAT = 64 * 1024
#: While a message over this size is half-received, the kernel is asked (SO_RCVLOWAT)
#: to wake us only once the rest of it is in. On a link shared by many peers, bytes
#: otherwise arrive a packet or two per read, each read a trip through the event loop
#: and the decoder.
LOWAT_FROM = 8 * 1024
#: Seconds a Have waits for company (see PeerLink.queue_have).
HAVE_DELAY = 0.05


class PeerLink(asyncio.Protocol):
    def __init__(self, session: Session, addr: PeerAddr | None, outgoing: bool) -> None:
        self.session = session
        self.addr = addr  # the peer's listening address, when we dialled it
        self.outgoing = outgoing
        self.conn = PeerConnection(session.info_hash, session.peer_id, session.num_pieces)
        self.transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None
        self._direct_fd = -1  # the socket's descriptor, when uploads may use sendfile
        self._lowat = 1
        self.remote: str = str(addr) if addr else "?"
        self.remote_id: bytes | None = None
        self.ready = False
        self.closed = False
        self.paused = False
        self.resume_handle: asyncio.TimerHandle | None = None
        self._haves: list[int] = []
        self._have_timer: asyncio.TimerHandle | None = None
        # Requests in the picker's units. A peer that is not murder gets each unit as
        # standard blocks: ``parts`` maps each block in flight to its unit and ``parts_left``
        # counts the blocks each unit still waits for.
        self.outstanding: set[Block] = set()
        self.split = True  # until the handshake says the remote is murder
        self.parts: dict[Block, Block] = {}
        self.parts_left: dict[Block, int] = {}
        self.uploads: deque[Block] = deque()
        now = time.monotonic()
        self.last_recv = now
        self.last_send = now
        self.last_block = now
        self.downloaded = 0
        self.uploaded = 0
        self.counted = 0  # ``downloaded`` at the session's last tick
        self.rate = 0.0  # bytes/s received lately
        self.depth = 1  # requests to keep in flight; the session sizes it

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self._sock = sock
        if sock is not None and SENDFILE_AVAILABLE and sock.type == socket.SOCK_STREAM:
            self._direct_fd = sock.fileno()
        if sock is not None:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):  # the kernel caps it; defaults still work
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
            if lowat is not None and sock.type == socket.SOCK_STREAM:
                with contextlib.suppress(OSError):  # not TCP, or an old kernel: still works
                    sock.setsockopt(socket.IPPROTO_TCP, lowat, UNSENT_LOWAT)
        peername = transport.get_extra_info("peername")
        if peername and self.addr is None:
            self.remote = f"{peername[0]}:{peername[1]}"
        # Paused while anything at all waits in the transport: the upload order counts
        # such a link as still sending.
        transport.set_write_buffer_limits(high=0)
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
            return
        self._wait_for_rest()

    def _wait_for_rest(self) -> None:
        # Only bytes the peer has already started to send are waited for, so this can
        # never hold back a message; a peer that stops mid-message is dropped by the
        # session's idle timer, and EOF wakes us whatever the low-water mark.
        missing = self.conn.missing
        lowat = missing if missing >= LOWAT_FROM else 1
        if lowat != self._lowat and self._sock is not None and not self.closed:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            except OSError:
                self._sock = None  # not supported here: read as data comes
                return
            self._lowat = lowat

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
        self.session.serve_uploads()

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

    def send_haves(self, indices: list[int]) -> None:
        if indices and not self.closed:
            self._write(self.conn.send_haves(indices))

    # -- requests in flight ------------------------------------------------------------
    def identify(self, peer_id: bytes) -> None:
        self.remote_id = peer_id
        self.split = not peer_id.startswith(MURDER_PEER_ID_PREFIX)

    def request(self, units: list[Block]) -> None:
        """Ask for each unit, as itself or as standard blocks."""
        self.outstanding.update(units)
        if not self.split:
            self.send_many([Request(*u) for u in units])
            return
        msgs: list[Message] = []
        for unit in units:
            blocks = _blocks_of(unit)
            for block in blocks:
                self.parts[block] = unit
            self.parts_left[unit] = len(blocks)
            msgs.extend(Request(*b) for b in blocks)
        self.send_many(msgs)

    def arrived(self, block: Block) -> Block | None:
        """The unit that ``block`` completes; None if it completes none or was not asked for."""
        if not self.split:
            if block not in self.outstanding:
                return None
            self.outstanding.discard(block)
            return block
        unit = self.parts.pop(block, None)
        if unit is None:
            return None
        left = self.parts_left[unit] - 1
        if left:
            self.parts_left[unit] = left
            return None
        del self.parts_left[unit]
        self.outstanding.discard(unit)
        return unit

    def expects(self, block: Block) -> bool:
        """Whether ``block`` is (part of) a request still in flight."""
        return block in self.parts if self.split else block in self.outstanding

    def rejected(self, block: Block) -> Block | None:
        """BEP 6 reject of ``block``: forget its unit, cancelling the rest; returns the unit."""
        unit = self.parts.pop(block, None) if self.split else block
        if unit is None or unit not in self.outstanding:
            return None
        self.withdraw(unit, cancel=True)
        return unit

    def withdraw(self, unit: Block, *, cancel: bool) -> None:
        """Forget ``unit``; with ``cancel``, tell the peer not to send what is left of it."""
        if unit not in self.outstanding:
            return
        self.outstanding.discard(unit)
        pending = [unit]
        if self.split:
            pending = [b for b in _blocks_of(unit) if self.parts.pop(b, None) is not None]
            self.parts_left.pop(unit, None)
        if cancel and pending:
            self.send_many([Cancel(*b) for b in pending])

    def clear_requests(self) -> None:
        self.outstanding.clear()
        self.parts.clear()
        self.parts_left.clear()

    def send_piece(self, storage: Storage, index: int, begin: int, length: int) -> None:
        """A Piece message with a block of a verified piece; StorageError if it cannot be read.

        Straight from the page cache when nothing is queued in the transport (see
        ``sendfile``); what the socket did not take, and every upload while the transport
        holds a backlog, goes as one buffer of header and block.
        """
        transport = self.transport
        if transport is None or self.closed:
            return
        head = encode_piece_header(index, begin, length)
        if self._direct_fd < 0 or transport.get_write_buffer_size():
            transport.write(storage.read_frame(head, index, begin, length))
        else:
            extents = storage.upload_extents(index, begin, length)
            try:
                head_sent, sent = send_direct(self._direct_fd, head, extents)
            except OSError as exc:
                self.session.drop(self, f"cannot send: {exc.strerror or exc}")
                return
            if head_sent < len(head):
                frame = storage.read_frame(head, index, begin, length)
                transport.write(memoryview(frame)[head_sent:])
            elif sent < length:
                transport.write(storage.read_frame(b"", index, begin + sent, length - sent))
        self.last_send = time.monotonic()
        self.uploaded += length

    def queue_have(self, index: int, *, now: bool = False) -> None:
        """Announce piece ``index`` soon, with any others that pass meanwhile (or ``now``).

        One Have per piece per peer costs a packet and a wake-up at both ends for
        9 bytes; in a 16-host swarm that is thousands a second. A short wait bundles them.
        """
        if not self.ready or self.closed:
            return
        self._haves.append(index)
        if now:
            if self._have_timer is not None:
                self._have_timer.cancel()
            self._flush_haves()
        elif self._have_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # driven by hand, without a loop: no one to wait for
                self._flush_haves()
                return
            self._have_timer = loop.call_later(HAVE_DELAY, self._flush_haves)

    def _flush_haves(self) -> None:
        self._have_timer = None
        haves, self._haves = self._haves, []
        self.send_haves(haves)

    def close(self) -> None:
        if self._have_timer is not None:
            self._have_timer.cancel()
            self._have_timer = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


def _blocks_of(unit: Block) -> list[Block]:
    index, begin, length = unit
    end = begin + length
    return [(index, at, min(STANDARD_BLOCK, end - at)) for at in range(begin, end, STANDARD_BLOCK)]
