from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from murder_core.errors import LocalProtocolError, RemoteProtocolError
from murder_core.wire import messages as m
from murder_core.wire.framing import Decoder, encode, encode_haves, encode_piece_header

IH = bytes(range(20))
PID = b"-MU0001-abcdefghijkl"
CAP = 16 * 1024 + 9

# Byte-exact wire forms from BEP 3 (ids 0-9), BEP 6 (13-17) and BEP 10 (20).
VECTORS: list[tuple[m.Message, str]] = [
    (m.KeepAlive(), "00000000"),
    (m.Choke(), "00000001 00"),
    (m.Unchoke(), "00000001 01"),
    (m.Interested(), "00000001 02"),
    (m.NotInterested(), "00000001 03"),
    (m.Have(0x01020304), "00000005 04 01020304"),
    (m.Bitfield(b"\xf0\x01"), "00000003 05 f001"),
    (m.Request(1, 0x4000, 0x4000), "0000000d 06 00000001 00004000 00004000"),
    (m.Piece(1, 0x4000, b"abc"), "0000000c 07 00000001 00004000 616263"),
    (m.Piece(2, 0, b""), "00000009 07 00000002 00000000"),
    (m.Cancel(0xFFFFFFFF, 0, 1), "0000000d 08 ffffffff 00000000 00000001"),
    (m.Port(6881), "00000003 09 1ae1"),
    (m.SuggestPiece(7), "00000005 0d 00000007"),
    (m.HaveAll(), "00000001 0e"),
    (m.HaveNone(), "00000001 0f"),
    (m.RejectRequest(3, 0x8000, 0x4000), "0000000d 10 00000003 00008000 00004000"),
    (m.AllowedFast(9), "00000005 11 00000009"),
    (m.Extended(0, b"de"), "00000004 14 00 6465"),
]


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def _drain(decoder: Decoder) -> list[m.Message]:
    return list(decoder)


@pytest.mark.parametrize(("msg", "wire"), VECTORS)
def test_encode_matches_the_spec_bytes(msg: m.Message, wire: str) -> None:
    assert encode(msg) == _hex(wire)


@pytest.mark.parametrize(("msg", "wire"), VECTORS)
def test_decode_of_the_spec_bytes_gives_the_message(msg: m.Message, wire: str) -> None:
    decoder = Decoder(CAP)
    decoder.feed(_hex(wire))
    assert _drain(decoder) == [msg]
    assert decoder.buffered == 0


def test_handshake_encodes_to_68_bytes_and_decodes_back() -> None:
    hs = m.Handshake(IH, PID, b"\x00\x00\x00\x00\x00\x10\x00\x05")
    wire = encode(hs)
    assert wire == b"\x13BitTorrent protocol" + hs.reserved + IH + PID
    decoder = Decoder(CAP)
    decoder.feed(wire + encode(m.Interested()))
    assert decoder.next_handshake() == hs
    assert _drain(decoder) == [m.Interested()]


def test_handshake_needs_all_68_bytes() -> None:
    wire = encode(m.Handshake(IH, PID))
    decoder = Decoder(CAP)
    decoder.feed(wire[:67])
    assert decoder.next_handshake() is None
    assert decoder.buffered == 67
    decoder.feed(wire[67:])
    assert decoder.next_handshake() == m.Handshake(IH, PID)


def test_a_message_instead_of_a_handshake_fails_on_its_first_byte() -> None:
    decoder = Decoder(CAP)
    decoder.feed(b"\x00")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_handshake()
    assert str(info.value) == "handshake must start with the length byte 19, got 0"


def test_a_wrong_protocol_string_is_refused() -> None:
    decoder = Decoder(CAP)
    decoder.feed(b"\x13BitTorrent protocoX" + bytes(48))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_handshake()
    assert str(info.value) == (
        "handshake protocol string must be b'BitTorrent protocol', got b'BitTorrent protocoX'"
    )


def _stream() -> tuple[bytes, list[m.Message]]:
    msgs = [msg for msg, _ in VECTORS] + [m.Piece(5, 0x4000, bytes(range(256)) * 64)]
    return b"".join(encode(msg) for msg in msgs), msgs


def test_bytes_fed_one_at_a_time_decode_like_all_at_once() -> None:
    wire, msgs = _stream()
    whole = Decoder(CAP)
    whole.feed(wire)
    trickle = Decoder(CAP)
    got: list[m.Message] = []
    for i in range(len(wire)):
        trickle.feed(wire[i : i + 1])
        got.extend(trickle)
    assert _drain(whole) == msgs
    assert got == msgs
    assert whole.buffered == trickle.buffered == 0


@pytest.mark.parametrize("chunk", [3, 64, 1000, 65536])
def test_chunked_feeding_decodes_every_message(chunk: int) -> None:
    wire, msgs = _stream()
    decoder = Decoder(CAP)
    got: list[m.Message] = []
    for i in range(0, len(wire), chunk):
        decoder.feed(wire[i : i + chunk])
        got.extend(decoder)
    assert got == msgs


def test_feed_copies_mutable_buffers() -> None:
    buf = bytearray(encode(m.Have(1)))
    decoder = Decoder(CAP)
    decoder.feed(memoryview(buf))
    buf[8] = 2  # the caller reuses its buffer before we decode
    assert _drain(decoder) == [m.Have(1)]


def test_a_4_gib_length_prefix_is_refused_as_soon_as_it_arrives() -> None:
    decoder = Decoder(CAP)
    decoder.feed(b"\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_message()
    assert str(info.value) == "message length 4294967295 exceeds the cap of 16393 bytes"
    assert decoder.buffered == 4


def test_a_message_exactly_at_the_cap_is_accepted_and_one_more_byte_is_not() -> None:
    at_cap = m.Piece(0, 0, bytes(CAP - 9))
    decoder = Decoder(CAP)
    decoder.feed(encode(at_cap))
    assert _drain(decoder) == [at_cap]
    decoder.feed(encode(m.Piece(0, 0, bytes(CAP - 8)))[:4])
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_message()
    assert str(info.value) == "message length 16394 exceeds the cap of 16393 bytes"


@pytest.mark.parametrize("msg_id", [10, 11, 12, 18, 19, 21, 255])
def test_unknown_message_ids_are_named(msg_id: int) -> None:
    decoder = Decoder(CAP)
    decoder.feed(b"\x00\x00\x00\x03" + bytes([msg_id]) + b"xy")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_message()
    assert str(info.value) == f"unknown message id {msg_id} (length 3)"


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("00000002 00 00", "Choke payload must be 0 bytes, got 1"),
        ("00000005 01 00000000", "Unchoke payload must be 0 bytes, got 4"),
        ("00000002 02 ff", "Interested payload must be 0 bytes, got 1"),
        ("00000002 03 ff", "NotInterested payload must be 0 bytes, got 1"),
        ("00000004 04 000000", "Have payload must be 4 bytes, got 3"),
        ("00000006 04 0000000000", "Have payload must be 4 bytes, got 5"),
        ("0000000c 06 00000000 00000000 000040", "Request payload must be 12 bytes, got 11"),
        ("00000008 07 00000000 000000", "Piece payload must be at least 8 bytes, got 7"),
        ("00000001 07", "Piece payload must be at least 8 bytes, got 0"),
        ("0000000e 08 00000000 00000000 00004000 00", "Cancel payload must be 12 bytes, got 13"),
        ("00000002 09 1a", "Port payload must be 2 bytes, got 1"),
        ("00000001 0d", "SuggestPiece payload must be 4 bytes, got 0"),
        ("00000002 0e 00", "HaveAll payload must be 0 bytes, got 1"),
        ("00000002 0f 00", "HaveNone payload must be 0 bytes, got 1"),
        ("00000001 10", "RejectRequest payload must be 12 bytes, got 0"),
        ("00000006 11 0000000000", "AllowedFast payload must be 4 bytes, got 5"),
        ("00000001 14", "Extended payload must be at least 1 byte, got 0"),
    ],
)
def test_wrong_payload_sizes_are_refused(wire: str, message: str) -> None:
    decoder = Decoder(CAP)
    decoder.feed(_hex(wire))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_message()
    assert str(info.value) == message


def test_after_an_error_the_decoder_stays_failed() -> None:
    decoder = Decoder(CAP)
    decoder.feed(_hex("00000001 63"))
    with pytest.raises(RemoteProtocolError, match="unknown message id 99"):
        decoder.next_message()
    decoder.feed(encode(m.Choke()))
    with pytest.raises(RemoteProtocolError, match="unknown message id 99"):
        decoder.next_message()
    with pytest.raises(RemoteProtocolError, match="unknown message id 99"):
        decoder.next_handshake()


def test_buffered_counts_bytes_not_yet_decoded() -> None:
    decoder = Decoder(CAP)
    wire = encode(m.Have(1)) + encode(m.Request(1, 0, 16384))
    decoder.feed(wire[:12])
    assert decoder.buffered == 12
    assert decoder.next_message() == m.Have(1)
    assert decoder.buffered == 3
    assert decoder.next_message() is None
    decoder.feed(wire[12:])
    assert decoder.next_message() == m.Request(1, 0, 16384)
    assert decoder.buffered == 0


def test_missing_counts_the_rest_of_a_started_message_only() -> None:
    """What a driver may wait for: bytes of a message whose length has arrived, no more."""
    decoder = Decoder(CAP)
    wire = encode(m.Piece(0, 0, b"x" * 16384)) + encode(m.Have(2))
    assert decoder.missing == 0
    decoder.feed(wire[:3])  # the length prefix is not whole yet: nothing is known
    assert decoder.next_message() is None and decoder.missing == 0
    decoder.feed(wire[3:1000])
    assert decoder.next_message() is None
    assert decoder.missing == 4 + 9 + 16384 - 1000
    decoder.feed(wire[1000:-3])
    piece = decoder.next_message()
    assert isinstance(piece, m.Piece) and bytes(piece.block) == b"x" * 16384
    assert decoder.next_message() is None
    assert decoder.missing == 3  # the Have's length is in: its last 3 bytes are due
    decoder.feed(wire[-3:])
    assert decoder.next_message() == m.Have(2)
    assert decoder.missing == 0


def test_a_block_straddling_chunks_decodes_whole_and_the_rest_follows() -> None:
    """Chunks split a stream of pieces at every offset the decoder copies around."""
    pieces = [m.Piece(1, i * 100, bytes([i]) * 100) for i in range(5)]
    wire = b"".join(encode(p) for p in pieces)
    for cut in range(1, 120):
        decoder = Decoder(CAP)
        got = []
        for at in range(0, len(wire), cut):
            decoder.feed(wire[at : at + cut])
            got.extend(iter(decoder))
        assert got == pieces, cut
        assert decoder.buffered == 0


def test_piece_header_is_the_prefix_of_an_encoded_piece() -> None:
    block = b"x" * 16384
    assert encode_piece_header(3, 32768, len(block)) + block == encode(m.Piece(3, 32768, block))
    assert encode_piece_header(3, 32768, 16384) == _hex("00004009 07 00000003 00008000")


def test_piece_header_refuses_values_the_wire_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_piece_header(-1, 0, 16384)
    assert str(info.value) == "cannot frame a Piece with index -1, begin 0, length 16384"


def test_decoder_cap_must_fit_a_request() -> None:
    with pytest.raises(LocalProtocolError) as info:
        Decoder(12)
    assert str(info.value) == "max_message_length must be at least 13, got 12"


@pytest.mark.parametrize("fill", [0x00, 0x01, 0xFF])
def test_every_id_with_every_short_payload_decodes_or_raises_remote_error(fill: int) -> None:
    for msg_id in range(256):
        for size in range(21):
            wire = (1 + size).to_bytes(4, "big") + bytes([msg_id]) + bytes([fill]) * size
            decoder = Decoder(CAP)
            # Nothing after the message, so a decoder that reads past its end cannot
            # borrow the next message's bytes.
            decoder.feed(wire)
            try:
                msg = decoder.next_message()
            except RemoteProtocolError:
                continue
            assert msg is not None
            assert encode(msg) == wire


_SMALL_CAP = 40
_messages = st.one_of(
    st.builds(m.Have, st.integers(0, 2**32 - 1)),
    st.builds(m.Request, st.integers(0, 9), st.integers(0, 2**20), st.integers(0, 2**15)),
    st.builds(m.Piece, st.integers(0, 9), st.integers(0, 2**20), st.binary(max_size=31)),
    st.builds(m.Bitfield, st.binary(max_size=39)),
    st.sampled_from([msg for msg, _ in VECTORS]),
)
# A well-framed message with any id and payload reaches the per-message checks that
# plain random bytes (nearly always an over-the-cap length prefix) never get to.
_framed = st.builds(
    lambda msg_id, payload: (1 + len(payload)).to_bytes(4, "big") + bytes([msg_id]) + payload,
    st.integers(0, 22) | st.integers(0, 255),
    st.binary(max_size=30),
)
_wire_pieces = st.one_of(_messages.map(encode), _framed, st.binary(min_size=1, max_size=60))


@given(pieces=st.lists(_wire_pieces, max_size=12), cut=st.integers(1, 50))
def test_arbitrary_bytes_only_ever_raise_remote_protocol_error(
    pieces: list[bytes], cut: int
) -> None:
    wire = b"".join(pieces)
    decoder = Decoder(_SMALL_CAP)
    try:
        for i in range(0, len(wire), cut):
            decoder.feed(wire[i : i + cut])
            for _ in decoder:
                pass
            # Whatever is left is one partial message: its prefix plus less than the cap.
            assert decoder.buffered < 4 + _SMALL_CAP
    except RemoteProtocolError:
        pass


@given(st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=20))
def test_encode_haves_is_the_haves_back_to_back(indices: list[int]) -> None:
    wire = encode_haves(indices)
    assert wire == b"".join(encode(m.Have(i)) for i in indices)
    decoder = Decoder(16)
    decoder.feed(wire)
    assert list(decoder) == [m.Have(i) for i in indices]


@pytest.mark.parametrize("bad", [-1, 2**32])
def test_encode_haves_refuses_an_index_that_does_not_fit(bad: int) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_haves([7, bad])
    assert str(info.value) == f"cannot frame a Have with index {bad}"
