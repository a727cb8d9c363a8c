"""Bytes <-> peer-wire messages: ``encode`` one way, an incremental ``Decoder`` the other.

After the 68-byte handshake every message is ``<u32 length><u8 id><payload>``
(BEP 3); a zero length is a keep-alive. The decoder trusts nothing: a length
prefix above its cap is refused as soon as its four bytes are in, before any
payload is awaited or stored, and fixed-size messages must have exactly their
size.

The hot path is ``Piece``. Received chunks are queued and joined only once
enough bytes are buffered to finish the message being waited for, so a
message trickling in one byte at a time costs linear, not quadratic, work;
only a message that straddles chunks is copied (just its own bytes), and a
Piece's block is a view into the received bytes, never a copy.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Callable, NoReturn, Union

from ..errors import LocalProtocolError, RemoteProtocolError
from .messages import (
    HANDSHAKE_LENGTH,
    PROTOCOL,
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Extended,
    Handshake,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    KeepAlive,
    Message,
    NotInterested,
    Piece,
    Port,
    RejectRequest,
    Request,
    SuggestPiece,
    Unchoke,
)

#: Message ids on the wire (BEP 3; 13-17 are BEP 6; 20 is BEP 10).
MESSAGE_IDS: dict[type, int] = {
    Choke: 0,
    Unchoke: 1,
    Interested: 2,
    NotInterested: 3,
    Have: 4,
    Bitfield: 5,
    Request: 6,
    Piece: 7,
    Cancel: 8,
    Port: 9,
    SuggestPiece: 13,
    HaveAll: 14,
    HaveNone: 15,
    RejectRequest: 16,
    AllowedFast: 17,
    Extended: 20,
}
_PIECE_ID = MESSAGE_IDS[Piece]
_HAVE_ID = MESSAGE_IDS[Have]
_BITFIELD_ID = MESSAGE_IDS[Bitfield]
_PORT_ID = MESSAGE_IDS[Port]
_EXTENDED_ID = MESSAGE_IDS[Extended]

_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">IB")  # length, id
_INDEX = struct.Struct(">IBI")  # Have, SuggestPiece, AllowedFast
_BLOCK = struct.Struct(">IBIII")  # Request, Cancel, RejectRequest
_PIECE_HEAD = struct.Struct(">IBII")
_PORT = struct.Struct(">IBH")
_EXTENDED_HEAD = struct.Struct(">IBB")
_TWO_U32 = struct.Struct(">II")
_THREE_U32 = struct.Struct(">III")

_KEEP_ALIVE_BYTES = bytes(4)
_KEEP_ALIVE = KeepAlive()

IndexMessage = Union[Have, SuggestPiece, AllowedFast]
BlockMessage = Union[Request, Cancel, RejectRequest]
_INDEX_TYPES = (Have, SuggestPiece, AllowedFast)
_BLOCK_TYPES = (Request, Cancel, RejectRequest)
_BARE_TYPES = (Choke, Unchoke, Interested, NotInterested, HaveAll, HaveNone)

# Messages without fields are equal to each other, so decoding hands out one instance per id.
_BARE: dict[int, Message] = {MESSAGE_IDS[cls]: cls() for cls in _BARE_TYPES}
_BY_INDEX: dict[int, Callable[[int], IndexMessage]] = {MESSAGE_IDS[c]: c for c in _INDEX_TYPES}
_BY_BLOCK: dict[int, Callable[[int, int, int], BlockMessage]] = {
    MESSAGE_IDS[c]: c for c in _BLOCK_TYPES
}
_NAMES: dict[int, str] = {msg_id: cls.__name__ for cls, msg_id in MESSAGE_IDS.items()}

#: Room for the largest fixed-size message (Request, Cancel, RejectRequest).
MIN_MAX_MESSAGE_LENGTH = 13


def encode_piece_header(index: int, begin: int, length: int) -> bytes:
    """The 13 bytes that precede a ``length``-byte block, so a driver can write both as-is."""
    try:
        return _PIECE_HEAD.pack(9 + length, _PIECE_ID, index, begin)
    except struct.error:
        raise LocalProtocolError(
            f"cannot frame a Piece with index {index}, begin {begin}, length {length}"
        ) from None


def encode_haves(indices: Sequence[int]) -> bytes:
    """The wire bytes of one Have per index, back to back.

    A swarm's most frequent message: each peer sends one per piece to every other peer.
    Packing them here skips a message object and ``encode``'s dispatch for each.
    """
    pack = _INDEX.pack
    try:
        return b"".join([pack(5, _HAVE_ID, i) for i in indices])
    except struct.error:
        bad = next((i for i in indices if not 0 <= i < 2**32), None)
        raise LocalProtocolError(f"cannot frame a Have with index {bad}") from None


def encode(msg: Message) -> bytes:
    """The wire bytes of one message (or of a handshake)."""
    if isinstance(msg, Piece):
        return encode_piece_header(msg.index, msg.begin, len(msg.block)) + msg.block
    if isinstance(msg, _BLOCK_TYPES):
        return _BLOCK.pack(13, MESSAGE_IDS[type(msg)], msg.index, msg.begin, msg.length)
    if isinstance(msg, _INDEX_TYPES):
        return _INDEX.pack(5, MESSAGE_IDS[type(msg)], msg.index)
    if isinstance(msg, KeepAlive):
        return _KEEP_ALIVE_BYTES
    if isinstance(msg, Bitfield):
        return _HEAD.pack(1 + len(msg.bits), _BITFIELD_ID) + msg.bits
    if isinstance(msg, Port):
        return _PORT.pack(3, _PORT_ID, msg.port)
    if isinstance(msg, Extended):
        return _EXTENDED_HEAD.pack(2 + len(msg.payload), _EXTENDED_ID, msg.ext_id) + msg.payload
    if isinstance(msg, Handshake):
        return bytes([len(PROTOCOL)]) + PROTOCOL + msg.reserved + msg.info_hash + msg.peer_id
    return _HEAD.pack(1, MESSAGE_IDS[type(msg)])


class Decoder:
    """Incremental decoder: ``feed()`` bytes, then iterate (or call ``next_message()``).

    Once it has raised ``RemoteProtocolError`` it raises the same error on every
    later call: the stream is out of sync and nothing after it can be trusted.
    """

    def __init__(self, max_message_length: int) -> None:
        if max_message_length < MIN_MAX_MESSAGE_LENGTH:
            raise LocalProtocolError(
                f"max_message_length must be at least {MIN_MAX_MESSAGE_LENGTH}, "
                f"got {max_message_length}"
            )
        self.max_message_length = max_message_length
        self._buf: bytes | memoryview = b""
        self._pos = 0
        self._chunks: deque[bytes | memoryview] = deque()
        self._chunks_len = 0
        self._want = 0  # bytes the message being waited for needs, once its length is known
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet decoded."""
        return len(self._buf) - self._pos + self._chunks_len

    @property
    def missing(self) -> int:
        """Bytes still to come before the message being waited for is whole (0: not known).

        A driver may wait for that many before reading again: they are the rest of
        a message the peer has started to send.
        """
        return max(0, self._want - self.buffered)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            # bytes(b) of a bytes object is the object itself; anything else is copied once
            # because the caller may reuse its buffer.
            chunk = bytes(data)
            self._chunks.append(chunk)
            self._chunks_len += len(chunk)

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        msg = self.next_message()
        if msg is None:
            raise StopIteration
        return msg

    def next_handshake(self) -> Handshake | None:
        """Decode the 68-byte handshake, or return None until all of it is buffered."""
        self._raise_if_failed()
        if not self._gather(1):
            return None
        if self._buf[self._pos] != len(PROTOCOL):
            self._fail(
                f"handshake must start with the length byte {len(PROTOCOL)}, "
                f"got {self._buf[self._pos]}"
            )
        if not self._gather(HANDSHAKE_LENGTH):
            return None
        buf, start = self._buf, self._pos
        self._pos = start + HANDSHAKE_LENGTH
        pstr = bytes(buf[start + 1 : start + 20])
        if pstr != PROTOCOL:
            self._fail(f"handshake protocol string must be {PROTOCOL!r}, got {pstr!r}")
        return Handshake(
            reserved=bytes(buf[start + 20 : start + 28]),
            info_hash=bytes(buf[start + 28 : start + 48]),
            peer_id=bytes(buf[start + 48 : start + 68]),
        )

    def next_message(self) -> Message | None:
        """Decode one length-prefixed message, or return None until all of it is buffered."""
        if self._error is not None:
            raise self._error
        if not self._gather(4):
            return None
        (length,) = _U32.unpack_from(self._buf, self._pos)
        if length > self.max_message_length:
            self._fail(
                f"message length {length} exceeds the cap of {self.max_message_length} bytes"
            )
        if not self._gather(4 + length):
            self._want = 4 + length
            return None
        self._want = 0
        buf = self._buf
        start = self._pos + 4  # the id byte
        end = start + length
        self._pos = end
        if length == 0:
            return _KEEP_ALIVE
        msg_id = buf[start]
        if msg_id == _HAVE_ID:  # the commonest message: one per piece from every peer
            self._check_size(msg_id, length, 4)
            return Have(_U32.unpack_from(buf, start + 1)[0])
        if msg_id == _PIECE_ID:
            if length < 9:
                self._fail(f"Piece payload must be at least 8 bytes, got {length - 1}")
            index, begin = _TWO_U32.unpack_from(buf, start + 1)
            # A view, not a copy: the chunk it lies in is immutable bytes.
            return Piece(index, begin, memoryview(buf)[start + 9 : end])
        make_block = _BY_BLOCK.get(msg_id)
        if make_block is not None:
            self._check_size(msg_id, length, 12)
            return make_block(*_THREE_U32.unpack_from(buf, start + 1))
        make_index = _BY_INDEX.get(msg_id)
        if make_index is not None:
            self._check_size(msg_id, length, 4)
            return make_index(_U32.unpack_from(buf, start + 1)[0])
        bare = _BARE.get(msg_id)
        if bare is not None:
            self._check_size(msg_id, length, 0)
            return bare
        if msg_id == _BITFIELD_ID:
            return Bitfield(bytes(buf[start + 1 : end]))
        if msg_id == _PORT_ID:
            self._check_size(msg_id, length, 2)
            return Port(int.from_bytes(bytes(buf[start + 1 : end]), "big"))
        if msg_id == _EXTENDED_ID:
            if length < 2:
                self._fail("Extended payload must be at least 1 byte, got 0")
            return Extended(buf[start + 1], bytes(buf[start + 2 : end]))
        self._fail(f"unknown message id {msg_id} (length {length})")

    def _gather(self, n: int) -> bool:
        """Make the next ``n`` unread bytes contiguous in ``_buf``; False if not all here yet.

        Copies at most those ``n`` bytes: when the next chunk alone holds them it
        becomes the buffer as it is, and a chunk that a message ends inside is
        kept from that point as a view.
        """
        unread = len(self._buf) - self._pos
        if unread >= n:
            return True
        if unread + self._chunks_len < n:
            return False
        chunks = self._chunks
        if not unread and len(chunks[0]) >= n:
            self._buf = chunks.popleft()
            self._chunks_len -= len(self._buf)
            self._pos = 0
            return True
        parts: list[bytes | memoryview] = [memoryview(self._buf)[self._pos :]] if unread else []
        need = n - unread
        while need:
            chunk = chunks[0]
            if len(chunk) <= need:
                parts.append(chunks.popleft())
                need -= len(chunk)
                self._chunks_len -= len(chunk)
            else:
                view = memoryview(chunk)
                parts.append(view[:need])
                chunks[0] = view[need:]
                self._chunks_len -= need
                need = 0
        self._buf = b"".join(parts)
        self._pos = 0
        return True

    def _check_size(self, msg_id: int, length: int, payload: int) -> None:
        if length != 1 + payload:
            self._fail(f"{_NAMES[msg_id]} payload must be {payload} bytes, got {length - 1}")

    def _fail(self, message: str) -> NoReturn:
        self._error = RemoteProtocolError(message)
        raise self._error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
