from __future__ import annotations

import typing

import pytest

from murder_core import records
from murder_core.errors import LocalProtocolError, MurderError
from murder_core.wire import messages as m

IH = bytes(range(20))
PID = b"-MU0001-abcdefghijkl"


def test_handshake_defaults_to_the_fast_bit_only() -> None:
    hs = m.Handshake(IH, PID)
    assert hs.reserved == b"\x00\x00\x00\x00\x00\x00\x00\x04"
    assert hs.fast is True


@pytest.mark.parametrize(
    ("reserved", "fast"),
    [
        (bytes(8), False),
        (b"\x00\x00\x00\x00\x00\x10\x00\x00", False),  # BEP 10 only
        (b"\x00\x00\x00\x00\x00\x00\x00\x05", True),  # DHT + fast
        (b"\xff" * 7 + b"\xfb", False),  # every bit but the fast one
    ],
)
def test_handshake_fast_reads_only_bit_2_of_byte_7(reserved: bytes, fast: bool) -> None:
    assert m.Handshake(IH, PID, reserved).fast is fast


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"info_hash": IH[:19]}, "Handshake.info_hash must be 20 bytes, got 19"),
        ({"peer_id": PID + b"x"}, "Handshake.peer_id must be 20 bytes, got 21"),
        ({"reserved": bytes(7)}, "Handshake.reserved must be 8 bytes, got 7"),
    ],
)
def test_handshake_rejects_wrong_field_sizes(kwargs: dict[str, bytes], message: str) -> None:
    fields = {"info_hash": IH, "peer_id": PID, **kwargs}
    with pytest.raises(LocalProtocolError) as info:
        m.Handshake(**fields)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: m.Have(-1), "Have.index must be in 0..4294967295, got -1"),
        (lambda: m.Have(2**32), "Have.index must be in 0..4294967295, got 4294967296"),
        (lambda: m.Request(0, -5, 16384), "Request.begin must be in 0..4294967295, got -5"),
        (lambda: m.Request(0, 0, 2**32), "Request.length must be in 0..4294967295, got 4294967296"),
        (lambda: m.Piece(-2, 0, b""), "Piece.index must be in 0..4294967295, got -2"),
        (lambda: m.Piece(0, 2**40, b""), "Piece.begin must be in 0..4294967295, got 1099511627776"),
        (lambda: m.Cancel(1, 2, -3), "Cancel.length must be in 0..4294967295, got -3"),
        (lambda: m.RejectRequest(-1, 0, 1), "RejectRequest.index must be in 0..4294967295, got -1"),
        (
            lambda: m.SuggestPiece(2**32),
            "SuggestPiece.index must be in 0..4294967295, got 4294967296",
        ),
        (lambda: m.AllowedFast(-7), "AllowedFast.index must be in 0..4294967295, got -7"),
        (lambda: m.Port(65536), "Port.port must be in 0..65535, got 65536"),
        (lambda: m.Port(-1), "Port.port must be in 0..65535, got -1"),
        (lambda: m.Extended(256, b""), "Extended.ext_id must be in 0..255, got 256"),
    ],
)
def test_fields_the_wire_cannot_carry_raise_local_protocol_error(
    build: typing.Callable[[], object], message: str
) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert str(info.value) == message
    assert isinstance(info.value, MurderError)


@pytest.mark.parametrize(
    "msg",
    [
        m.Have(0),
        m.Have(2**32 - 1),
        m.Request(1, 2, 3),
        m.Piece(4, 5, b"data"),
        m.Port(0),
        m.Port(65535),
        m.Extended(0, b"d1:md11:ut_metadatai1eee"),
    ],
)
def test_boundary_values_are_accepted_and_messages_are_frozen(msg: object) -> None:
    field = records.fields(msg)[0]
    with pytest.raises(records.FrozenRecordError):
        setattr(msg, field, 1)


def test_messages_compare_by_value() -> None:
    bare: list[m.Message] = [m.Choke(), m.Choke(), m.Unchoke()]
    assert bare[0] == bare[1]
    assert bare[0] != bare[2]
    assert m.Piece(1, 0, b"ab") == m.Piece(1, 0, b"ab")
    assert m.Piece(1, 0, b"ab") != m.Piece(1, 0, b"ac")
    assert len({m.Have(3), m.Have(3), m.Have(4)}) == 2


def test_message_union_lists_every_message_class() -> None:
    expected = {
        "Handshake",
        "KeepAlive",
        "Choke",
        "Unchoke",
        "Interested",
        "NotInterested",
        "Have",
        "Bitfield",
        "Request",
        "Piece",
        "Cancel",
        "Port",
        "SuggestPiece",
        "HaveAll",
        "HaveNone",
        "RejectRequest",
        "AllowedFast",
        "Extended",
    }
    assert {cls.__name__ for cls in typing.get_args(m.Message)} == expected
