"""The BitTorrent peer-wire protocol, sans-IO: messages, framing and per-peer state.

Nothing in this package opens a socket or reads a clock; the asyncio driver
feeds it bytes and writes out the bytes it returns.
"""

from __future__ import annotations

from .connection import (
    CLOSED,
    NEED_DATA,
    ChokeState,
    Event,
    HandshakePhase,
    InterestState,
    PeerConnection,
    Sentinel,
)
from .framing import Decoder, encode, encode_piece_header
from .messages import (
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

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "AllowedFast",
    "Bitfield",
    "Cancel",
    "Choke",
    "ChokeState",
    "Decoder",
    "Event",
    "Extended",
    "Handshake",
    "HandshakePhase",
    "Have",
    "HaveAll",
    "HaveNone",
    "InterestState",
    "Interested",
    "KeepAlive",
    "Message",
    "NotInterested",
    "PeerConnection",
    "Piece",
    "Port",
    "RejectRequest",
    "Request",
    "Sentinel",
    "SuggestPiece",
    "Unchoke",
    "encode",
    "encode_piece_header",
]
