"""The peer-wire messages of BEP 3, BEP 6 (fast extension) and BEP 10, as plain values.

Each message is a frozen record (``records.record``) that knows nothing about bytes
(that is ``framing``) or about connection state (that is ``connection``). Constructing a
message with a field the wire cannot carry (a negative index, a 19-byte
info_hash) raises ``LocalProtocolError`` here, so a driver bug surfaces where
the message is built rather than deep inside ``struct``.
"""

from __future__ import annotations

from typing import Union

from ..errors import LocalProtocolError
from ..records import record

#: The protocol string every BitTorrent handshake starts with (after its length byte).
PROTOCOL = b"BitTorrent protocol"
#: 1 length byte + protocol string + 8 reserved + 20 info_hash + 20 peer_id.
HANDSHAKE_LENGTH = 1 + len(PROTOCOL) + 8 + 20 + 20
#: BEP 6: the fast extension is the 0x04 bit of the last reserved byte.
FAST_BIT = 0x04
#: What we put in the reserved bytes: only the fast extension.
FAST_RESERVED = bytes(7) + bytes([FAST_BIT])
#: Reserved bytes that advertise no extension at all.
NO_EXTENSIONS = bytes(8)

_U32_MAX = 0xFFFFFFFF


def _check_u32(owner: str, field: str, value: int) -> None:
    if not 0 <= value <= _U32_MAX:
        raise LocalProtocolError(f"{owner}.{field} must be in 0..{_U32_MAX}, got {value}")


def _check_length(owner: str, field: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise LocalProtocolError(f"{owner}.{field} must be {length} bytes, got {len(value)}")


@record
class Handshake:
    """The 68-byte greeting both sides send first; not length-prefixed."""

    info_hash: bytes
    peer_id: bytes
    reserved: bytes = FAST_RESERVED

    def __post_init__(self) -> None:
        _check_length("Handshake", "info_hash", self.info_hash, 20)
        _check_length("Handshake", "peer_id", self.peer_id, 20)
        _check_length("Handshake", "reserved", self.reserved, 8)

    @property
    def fast(self) -> bool:
        """Whether this side advertises the BEP 6 fast extension."""
        return bool(self.reserved[7] & FAST_BIT)


@record
class KeepAlive:
    """A zero-length message: only says the connection is alive."""


@record
class Choke:
    """The sender will not serve requests (BEP 6: pending ones get Piece or Reject)."""


@record
class Unchoke:
    """The sender will serve requests."""


@record
class Interested:
    """The sender wants pieces the receiver has."""


@record
class NotInterested:
    """The sender wants nothing the receiver has."""


@record
class Have:
    """The sender has just completed and verified piece ``index``."""

    index: int

    def __post_init__(self) -> None:
        _check_u32("Have", "index", self.index)


@record
class Bitfield:
    """Which pieces the sender has, high bit of byte 0 first; only as the first message."""

    bits: bytes


@record
class Request:
    """Ask for ``length`` bytes of piece ``index`` starting at ``begin``."""

    index: int
    begin: int
    length: int

    def __post_init__(self) -> None:
        _check_u32("Request", "index", self.index)
        _check_u32("Request", "begin", self.begin)
        _check_u32("Request", "length", self.length)


@record
class Piece:
    """A block of data: ``block`` is piece ``index`` from offset ``begin``.

    Decoded blocks are read-only memoryviews into the received bytes (they
    compare equal to the same bytes); ``bytes(block)`` makes a copy to keep.
    """

    index: int
    begin: int
    block: bytes | memoryview

    def __post_init__(self) -> None:
        _check_u32("Piece", "index", self.index)
        _check_u32("Piece", "begin", self.begin)


@record
class Cancel:
    """Withdraw an earlier Request (endgame)."""

    index: int
    begin: int
    length: int

    def __post_init__(self) -> None:
        _check_u32("Cancel", "index", self.index)
        _check_u32("Cancel", "begin", self.begin)
        _check_u32("Cancel", "length", self.length)


@record
class Port:
    """The sender's DHT port (BEP 5); we carry it but run no DHT."""

    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise LocalProtocolError(f"Port.port must be in 0..65535, got {self.port}")


@record
class SuggestPiece:
    """BEP 6: the sender suggests downloading piece ``index`` (cheap for it to serve)."""

    index: int

    def __post_init__(self) -> None:
        _check_u32("SuggestPiece", "index", self.index)


@record
class HaveAll:
    """BEP 6: the sender is a seed; replaces Bitfield as the first message."""


@record
class HaveNone:
    """BEP 6: the sender has nothing; replaces Bitfield as the first message."""


@record
class RejectRequest:
    """BEP 6: the sender will not serve this Request."""

    index: int
    begin: int
    length: int

    def __post_init__(self) -> None:
        _check_u32("RejectRequest", "index", self.index)
        _check_u32("RejectRequest", "begin", self.begin)
        _check_u32("RejectRequest", "length", self.length)


@record
class AllowedFast:
    """BEP 6: the receiver may request piece ``index`` even while choked."""

    index: int

    def __post_init__(self) -> None:
        _check_u32("AllowedFast", "index", self.index)


@record
class Extended:
    """BEP 10 message (id 20): carried through so the driver can ignore it knowingly."""

    ext_id: int
    payload: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.ext_id <= 0xFF:
            raise LocalProtocolError(f"Extended.ext_id must be in 0..255, got {self.ext_id}")


Message = Union[
    Handshake,
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have,
    Bitfield,
    Request,
    Piece,
    Cancel,
    Port,
    SuggestPiece,
    HaveAll,
    HaveNone,
    RejectRequest,
    AllowedFast,
    Extended,
]
