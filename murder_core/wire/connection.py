"""One peer connection as a state machine: bytes in, events and bytes out (like h11).

The driver feeds received bytes to ``receive_data()``, pulls events with
``next_event()`` until ``NEED_DATA``, and writes whatever ``send()`` and
``initiate()`` return. Nothing here touches a socket or a clock.

Order on the wire: each side sends its handshake (``initiate()``), then, once
it has the other side's handshake, ordinary messages. The remote's handshake
arrives as a ``Handshake`` event; an accepting driver calls ``initiate()``
right after that event, before pulling more. A remote message decoded while
our own handshake is still unsent is a violation: a correct peer waits for our
handshake (it needs our reserved bits to know whether HaveAll is allowed).

Every rule is checked the same way for both directions; only the error class
differs: ``RemoteProtocolError`` for what the peer sent (drop it),
``LocalProtocolError`` for what our driver tried to send (a bug here). One
exception: a remote may repeat Bitfield or HaveAll later in the connection, as
aria2 does instead of a burst of Haves; it only ever adds pieces. We never send one late.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Final, Union

from ..errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .framing import Decoder, encode, encode_haves
from .messages import (
    FAST_RESERVED,
    NO_EXTENSIONS,
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


class Sentinel(Enum):
    """What ``next_event()`` returns when it has no message to give."""

    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
CLOSED: Final = Sentinel.CLOSED

Event = Union[Message, Sentinel]


class ChokeState(Enum):
    CHOKED = "choked"
    UNCHOKED = "unchoked"


class InterestState(Enum):
    INTERESTED = "interested"
    NOT_INTERESTED = "not interested"


class HandshakePhase(Enum):
    NOT_STARTED = "not started"  # neither handshake seen
    SENT = "sent"  # ours is out, theirs has not arrived
    RECEIVED = "received"  # theirs arrived, ours is not out yet
    COMPLETE = "complete"  # messages may flow both ways


_FAST_ONLY = (SuggestPiece, HaveAll, HaveNone, RejectRequest, AllowedFast)
_AVAILABILITY = (Bitfield, HaveAll, HaveNone)
_LATE_AVAILABILITY = (Bitfield, HaveAll)  # accepted from a remote after its first message
# May come before the Bitfield without taking its "first message" place: BEP 10 asks for
# the extension handshake right after the BitTorrent handshake, and Port is informational.
_UNORDERED = (KeepAlive, Extended, Port)
_INDEXED = (Have, Request, Piece, Cancel, RejectRequest, SuggestPiece, AllowedFast)

#: The block size every client requests; we accept up to 8 of them in one Request.
DEFAULT_MAX_BLOCK = 128 * 1024


class _Side:
    """What one direction of the connection has said so far."""

    def __init__(self) -> None:
        self.choke = ChokeState.CHOKED
        self.interest = InterestState.NOT_INTERESTED
        self.first: Message | None = None  # first ordered message after the handshake

    def note(self, msg: Message) -> None:
        """Track the choke and interest state this side's ``msg`` announces."""
        if isinstance(msg, Choke):
            self.choke = ChokeState.CHOKED
        elif isinstance(msg, Unchoke):
            self.choke = ChokeState.UNCHOKED
        elif isinstance(msg, Interested):
            self.interest = InterestState.INTERESTED
        elif isinstance(msg, NotInterested):
            self.interest = InterestState.NOT_INTERESTED


class PeerConnection:
    """The peer-wire protocol state of one connection, for a torrent of ``num_pieces``.

    ``max_block`` caps the ``length`` of a Request and, with the bitfield size,
    the length of any incoming message. ``enable_fast=False`` leaves the BEP 6
    bit out of our handshake.
    """

    def __init__(
        self,
        info_hash: bytes,
        peer_id: bytes,
        num_pieces: int,
        *,
        max_block: int = DEFAULT_MAX_BLOCK,
        enable_fast: bool = True,
    ) -> None:
        if num_pieces < 1:
            raise LocalProtocolError(f"num_pieces must be at least 1, got {num_pieces}")
        if max_block < 1:
            raise LocalProtocolError(f"max_block must be at least 1, got {max_block}")
        reserved = FAST_RESERVED if enable_fast else NO_EXTENSIONS
        self._handshake = Handshake(info_hash=info_hash, peer_id=peer_id, reserved=reserved)
        self.num_pieces = num_pieces
        self.max_block = max_block
        self._bitfield_len = (num_pieces + 7) // 8
        self._spare_mask = 0xFF >> (num_pieces % 8 or 8)  # spare low bits of the last byte
        self._decoder = Decoder(max(9 + max_block, 1 + self._bitfield_len))
        self._initiated = False
        self._remote_handshake: Handshake | None = None
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._us = _Side()
        self._them = _Side()
        self._peer_pieces = bytearray(self._bitfield_len)
        self._peer_piece_count = 0

    # -- state -------------------------------------------------------------------------
    @property
    def handshake_phase(self) -> HandshakePhase:
        if self._remote_handshake is None:
            return HandshakePhase.SENT if self._initiated else HandshakePhase.NOT_STARTED
        return HandshakePhase.COMPLETE if self._initiated else HandshakePhase.RECEIVED

    @property
    def remote_peer_id(self) -> bytes | None:
        return None if self._remote_handshake is None else self._remote_handshake.peer_id

    @property
    def fast(self) -> bool:
        """Both handshakes carry the BEP 6 bit (False until the remote's has arrived)."""
        remote = self._remote_handshake
        return remote is not None and remote.fast and self._handshake.fast

    @property
    def am_choking(self) -> ChokeState:
        return self._us.choke

    @property
    def am_interested(self) -> InterestState:
        return self._us.interest

    @property
    def peer_choking(self) -> ChokeState:
        return self._them.choke

    @property
    def peer_interested(self) -> InterestState:
        return self._them.interest

    @property
    def peer_pieces(self) -> bytearray:
        """The remote's pieces as a bitfield (high bit of byte 0 is piece 0).

        One bytearray for the connection's life, updated in place, so a picker may keep it.
        """
        return self._peer_pieces

    @property
    def peer_piece_count(self) -> int:
        return self._peer_piece_count

    def peer_has(self, index: int) -> bool:
        """Whether the remote has said it has piece ``index`` (False outside the torrent)."""
        if not 0 <= index < self.num_pieces:
            return False
        return bool(self._peer_pieces[index >> 3] & (0x80 >> (index & 7)))

    @property
    def max_message_length(self) -> int:
        """The largest incoming message accepted, not counting its 4-byte length prefix."""
        return self._decoder.max_message_length

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return self._decoder.buffered

    @property
    def missing(self) -> int:
        """Bytes still to come to finish the message in progress (0 if none is, or unknown)."""
        return self._decoder.missing if self._remote_handshake is not None else 0

    # -- sending -----------------------------------------------------------------------
    def initiate(self) -> bytes:
        """Our handshake; call once, before or after the remote's has arrived."""
        if self._initiated:
            raise LocalProtocolError("initiate() was already called")
        self._initiated = True
        return encode(self._handshake)

    def send(self, msg: Message) -> bytes:
        """Check ``msg`` against the protocol, note its effect on our state, and encode it."""
        name = type(msg).__name__
        if isinstance(msg, Handshake):
            raise LocalProtocolError("the handshake is sent by initiate(), not send()")
        if not self._initiated:
            raise LocalProtocolError(f"cannot send {name} before initiate()")
        if self._remote_handshake is None:
            raise LocalProtocolError(f"cannot send {name} before the remote handshake arrives")
        self._check(msg, self._us, LocalProtocolError)
        self._us.note(msg)
        return encode(msg)

    def send_haves(self, indices: Sequence[int]) -> bytes:
        """``send(Have(i))`` for each index, checked and encoded in one go.

        The checks are the ones ``send`` makes of a Have: after both handshakes, and
        every index inside the torrent.
        """
        if not indices:
            return b""
        if not self._initiated or self._remote_handshake is None:
            return self.send(Have(indices[0]))  # raises the error ``send`` gives
        if min(indices) < 0 or max(indices) >= self.num_pieces:
            bad = next(i for i in indices if not 0 <= i < self.num_pieces)
            raise self._out_of_range("Have", bad, LocalProtocolError)
        if self._us.first is None:
            self._us.first = Have(indices[0])
        return encode_haves(indices)

    # -- receiving ---------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer; an empty ``data`` means the peer closed its side."""
        if self._eof:
            raise LocalProtocolError("receive_data() called after EOF")
        if data:
            self._decoder.feed(data)
        else:
            self._eof = True

    def next_event(self) -> Event:
        """The next message from the peer, or NEED_DATA, or CLOSED after a clean EOF.

        Raises ``RemoteProtocolError`` when the peer broke the protocol, and
        the same error again on every later call.
        """
        if self._error is not None:
            raise self._error
        try:
            if self._remote_handshake is None:
                handshake = self._decoder.next_handshake()
                if handshake is None:
                    return self._out_of_data()
                self._on_handshake(handshake)
                return handshake
            msg = self._decoder.next_message()
            if msg is None:
                return self._out_of_data()
            self._on_message(msg)
            return msg
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _out_of_data(self) -> Sentinel:
        if not self._eof:
            return NEED_DATA
        if self._decoder.buffered:
            raise RemoteProtocolError(
                f"connection closed in the middle of a message "
                f"({self._decoder.buffered} bytes left undecoded)"
            )
        return CLOSED

    def _on_handshake(self, handshake: Handshake) -> None:
        ours = self._handshake.info_hash
        if handshake.info_hash != ours:
            raise RemoteProtocolError(
                f"handshake info_hash {handshake.info_hash.hex()} does not match ours {ours.hex()}"
            )
        self._remote_handshake = handshake

    def _on_message(self, msg: Message) -> None:
        if not self._initiated:
            raise RemoteProtocolError(
                f"received {type(msg).__name__} before the handshake completed"
            )
        if type(msg) is Have:
            # The commonest message by far (one per piece from every peer), so its
            # rules are checked here rather than through ``_check``: the same two.
            if msg.index >= self.num_pieces:
                raise self._out_of_range("Have", msg.index, RemoteProtocolError)
            if self._them.first is None:
                self._them.first = msg
            self._set_peer_piece(msg.index)
            return
        self._check(msg, self._them, RemoteProtocolError)
        self._them.note(msg)
        if isinstance(msg, Bitfield):
            # OR, not replace: a late bitfield must not take back pieces announced by Have.
            merged = int.from_bytes(self._peer_pieces, "big") | int.from_bytes(msg.bits, "big")
            self._peer_pieces[:] = merged.to_bytes(self._bitfield_len, "big")
            self._peer_piece_count = bin(merged).count("1")
        elif isinstance(msg, HaveAll):
            self._peer_pieces[:] = b"\xff" * self._bitfield_len
            self._peer_pieces[-1] &= 0xFF ^ self._spare_mask
            self._peer_piece_count = self.num_pieces

    def _set_peer_piece(self, index: int) -> None:
        byte, mask = index >> 3, 0x80 >> (index & 7)
        if not self._peer_pieces[byte] & mask:
            self._peer_pieces[byte] |= mask
            self._peer_piece_count += 1

    # -- the rules, for both directions ------------------------------------------------
    def _check(self, msg: Message, side: _Side, error: type[ProtocolError]) -> None:
        """Raise ``error`` if ``side`` may not send ``msg`` now; else note ordering."""
        name = type(msg).__name__
        if isinstance(msg, _FAST_ONLY) and not self.fast:
            raise error(f"{name} needs the fast extension, which was not negotiated")
        if isinstance(msg, _INDEXED) and msg.index >= self.num_pieces:
            raise self._out_of_range(name, msg.index, error)
        if isinstance(msg, Request) and not 0 < msg.length <= self.max_block:
            raise error(f"Request length must be in 1..{self.max_block}, got {msg.length}")
        if (
            isinstance(msg, _AVAILABILITY)
            and side.first is not None
            and not (side is self._them and isinstance(msg, _LATE_AVAILABILITY))
        ):
            raise error(
                f"{name} is only allowed as the first message after the handshake, "
                f"not after {type(side.first).__name__}"
            )
        if isinstance(msg, Bitfield):
            self._check_bitfield(msg.bits, error)
        if side.first is None and not isinstance(msg, _UNORDERED):
            side.first = msg

    def _out_of_range(self, name: str, index: int, error: type[ProtocolError]) -> ProtocolError:
        return error(f"{name} index {index} is out of range for {self.num_pieces} pieces")

    def _check_bitfield(self, bits: bytes, error: type[ProtocolError]) -> None:
        if len(bits) != self._bitfield_len:
            raise error(
                f"Bitfield must be {self._bitfield_len} bytes for {self.num_pieces} pieces, "
                f"got {len(bits)}"
            )
        if bits[-1] & self._spare_mask:
            raise error(
                f"Bitfield has spare bits set after piece {self.num_pieces - 1}: "
                f"last byte is 0x{bits[-1]:02x}"
            )
