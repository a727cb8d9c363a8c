from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from murder_core.errors import LocalProtocolError, RemoteProtocolError
from murder_core.wire import messages as m
from murder_core.wire.connection import (
    CLOSED,
    NEED_DATA,
    ChokeState,
    HandshakePhase,
    InterestState,
    PeerConnection,
)
from murder_core.wire.framing import encode

IH = bytes(range(20))
OTHER_IH = bytes(range(1, 21))
PID_A = b"-MU0001-aaaaaaaaaaaa"
PID_B = b"-MU0001-bbbbbbbbbbbb"
NUM = 10  # two bitfield bytes, six spare bits
FAST_MESSAGES = [
    m.SuggestPiece(0),
    m.HaveAll(),
    m.HaveNone(),
    m.RejectRequest(0, 0, 1),
    m.AllowedFast(0),
]


def events(conn: PeerConnection) -> list[m.Message]:
    """Every event up to (not including) NEED_DATA or CLOSED."""
    out: list[m.Message] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is CLOSED:
            return out
        out.append(event)


def reserved(fast: bool) -> bytes:
    return m.FAST_RESERVED if fast else m.NO_EXTENSIONS


class ConnectionPair:
    """Two PeerConnections wired back to back (after h11's test helper of that name)."""

    def __init__(self, *, fast_a: bool = True, fast_b: bool = True, num: int = NUM) -> None:
        self.a = PeerConnection(IH, PID_A, num, enable_fast=fast_a)
        self.b = PeerConnection(IH, PID_B, num, enable_fast=fast_b)
        self.hello_a = m.Handshake(IH, PID_A, reserved(fast_a))
        self.hello_b = m.Handshake(IH, PID_B, reserved(fast_b))

    def other(self, conn: PeerConnection) -> PeerConnection:
        return self.b if conn is self.a else self.a

    def handshake(self) -> None:
        """a dials b; b answers only after it has seen a's handshake."""
        self.b.receive_data(self.a.initiate())
        assert events(self.b) == [self.hello_a]
        self.a.receive_data(self.b.initiate())
        assert events(self.a) == [self.hello_b]

    def send(self, sender: PeerConnection, *msgs: m.Message) -> list[m.Message]:
        """Send ``msgs`` from ``sender``; check the other side decodes exactly them."""
        receiver = self.other(sender)
        receiver.receive_data(b"".join(sender.send(msg) for msg in msgs))
        got = events(receiver)
        assert got == list(msgs)
        return got


def handshaken(*, fast: bool = True, remote_fast: bool = True, **kwargs: int) -> PeerConnection:
    """A connection whose handshakes are both done, for feeding it raw remote bytes."""
    conn = PeerConnection(IH, PID_A, NUM, enable_fast=fast, **kwargs)
    conn.initiate()
    conn.receive_data(encode(m.Handshake(IH, PID_B, reserved(remote_fast))))
    assert isinstance(conn.next_event(), m.Handshake)
    return conn


def feed(conn: PeerConnection, *msgs: m.Message) -> list[m.Message]:
    conn.receive_data(b"".join(encode(msg) for msg in msgs))
    return events(conn)


def remote_error(conn: PeerConnection, *msgs: m.Message) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, *msgs)
    return str(info.value)


def local_error(conn: PeerConnection, msg: m.Message) -> str:
    with pytest.raises(LocalProtocolError) as info:
        conn.send(msg)
    return str(info.value)


# -- handshake ---------------------------------------------------------------------------


def phases(*conns: PeerConnection) -> tuple[HandshakePhase, ...]:
    return tuple(conn.handshake_phase for conn in conns)


def test_handshake_phases_on_the_dialling_and_the_accepting_side() -> None:
    a = PeerConnection(IH, PID_A, NUM)
    b = PeerConnection(IH, PID_B, NUM)
    assert phases(a, b) == (HandshakePhase.NOT_STARTED, HandshakePhase.NOT_STARTED)
    hello = a.initiate()
    assert len(hello) == 68
    b.receive_data(hello)
    assert phases(a, b) == (HandshakePhase.SENT, HandshakePhase.NOT_STARTED)  # not decoded yet
    assert b.next_event() == m.Handshake(IH, PID_A)
    assert phases(a, b) == (HandshakePhase.SENT, HandshakePhase.RECEIVED)
    assert b.remote_peer_id == PID_A
    assert b.next_event() is NEED_DATA
    a.receive_data(b.initiate())
    assert phases(a, b) == (HandshakePhase.SENT, HandshakePhase.COMPLETE)
    assert a.remote_peer_id is None
    assert events(a) == [m.Handshake(IH, PID_B)]
    assert phases(a, b) == (HandshakePhase.COMPLETE, HandshakePhase.COMPLETE)
    assert a.remote_peer_id == PID_B


def test_both_sides_may_initiate_at_once() -> None:
    a = PeerConnection(IH, PID_A, NUM)
    b = PeerConnection(IH, PID_B, NUM)
    to_b, to_a = a.initiate(), b.initiate()
    a.receive_data(to_a)
    b.receive_data(to_b)
    assert events(a) == [m.Handshake(IH, PID_B)]
    assert events(b) == [m.Handshake(IH, PID_A)]
    assert phases(a, b) == (HandshakePhase.COMPLETE, HandshakePhase.COMPLETE)


@pytest.mark.parametrize(
    ("fast_a", "fast_b", "fast"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_fast_needs_the_bit_on_both_sides(fast_a: bool, fast_b: bool, fast: bool) -> None:
    pair = ConnectionPair(fast_a=fast_a, fast_b=fast_b)
    assert pair.a.fast is pair.b.fast is False
    pair.handshake()
    assert pair.a.fast is pair.b.fast is fast


def test_the_accepting_side_may_pipeline_once_it_has_initiated() -> None:
    # The dialler's handshake and its Bitfield arrive together; the acceptor answers
    # between the two events, as a driver does.
    a = PeerConnection(IH, PID_A, NUM)
    b = PeerConnection(IH, PID_B, NUM)
    a.initiate()
    a.receive_data(encode(m.Handshake(IH, PID_B)))
    a.next_event()
    b.receive_data(encode(m.Handshake(IH, PID_A)) + a.send(m.HaveAll()))
    assert b.next_event() == m.Handshake(IH, PID_A)
    b.initiate()
    assert b.next_event() == m.HaveAll()
    assert b.peer_piece_count == NUM


# -- state transitions -------------------------------------------------------------------


CHOKED, UNCHOKED = ChokeState.CHOKED, ChokeState.UNCHOKED
YES, NO = InterestState.INTERESTED, InterestState.NOT_INTERESTED


def flags(conn: PeerConnection) -> tuple[ChokeState, InterestState, ChokeState, InterestState]:
    """(am_choking, am_interested, peer_choking, peer_interested)"""
    return conn.am_choking, conn.am_interested, conn.peer_choking, conn.peer_interested


def test_initial_state_is_choked_and_not_interested_both_ways() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    assert flags(conn) == (CHOKED, NO, CHOKED, NO)
    assert conn.peer_pieces == bytearray(2)
    assert conn.peer_piece_count == 0


def test_choke_and_interest_update_the_sender_and_the_receiver() -> None:
    pair = ConnectionPair()
    pair.handshake()
    a, b = pair.a, pair.b
    pair.send(a, m.Interested())
    assert (flags(a), flags(b)) == ((CHOKED, YES, CHOKED, NO), (CHOKED, NO, CHOKED, YES))
    pair.send(b, m.Unchoke())
    assert (flags(a), flags(b)) == ((CHOKED, YES, UNCHOKED, NO), (UNCHOKED, NO, CHOKED, YES))
    pair.send(a, m.Request(3, 0, 16384))
    pair.send(b, m.Piece(3, 0, b"x" * 16384), m.Choke())
    assert (flags(a), flags(b)) == ((CHOKED, YES, CHOKED, NO), (CHOKED, NO, CHOKED, YES))
    pair.send(a, m.NotInterested(), m.Unchoke())
    pair.send(b, m.Interested())
    assert (flags(a), flags(b)) == ((UNCHOKED, NO, CHOKED, YES), (CHOKED, YES, UNCHOKED, NO))


def test_bitfield_and_have_fill_peer_pieces() -> None:
    pair = ConnectionPair()
    pair.handshake()
    a, b = pair.a, pair.b
    pair.send(b, m.Bitfield(b"\xa0\x40"))  # pieces 0, 2 and 9
    assert a.peer_pieces == bytearray(b"\xa0\x40")
    assert [i for i in range(NUM) if a.peer_has(i)] == [0, 2, 9]
    assert a.peer_piece_count == 3
    pair.send(b, m.Have(1), m.Have(2), m.Have(8))  # piece 2 again: no double count
    assert a.peer_pieces == bytearray(b"\xe0\xc0")
    assert a.peer_piece_count == 5
    assert a.peer_has(10) is False
    assert a.peer_has(-1) is False
    assert b.peer_piece_count == 0  # sending says nothing about what the other side has


def test_have_all_and_have_none() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.send(pair.a, m.HaveAll())
    assert pair.b.peer_pieces == bytearray(b"\xff\xc0")  # spare bits stay clear
    assert pair.b.peer_piece_count == NUM
    assert all(pair.b.peer_has(i) for i in range(NUM))
    pair.send(pair.b, m.HaveNone())
    assert pair.a.peer_pieces == bytearray(2)
    assert pair.a.peer_piece_count == 0


def test_every_message_crosses_the_pair() -> None:
    pair = ConnectionPair()
    pair.handshake()
    a, b = pair.a, pair.b
    pair.send(a, m.Extended(0, b"d1:md11:ut_metadatai3eee"), m.Port(6881), m.KeepAlive())
    pair.send(a, m.Bitfield(b"\x00\x00"), m.AllowedFast(4), m.SuggestPiece(5))
    pair.send(b, m.HaveNone(), m.Interested(), m.Request(4, 0, 16384), m.Cancel(4, 0, 16384))
    pair.send(a, m.RejectRequest(4, 0, 16384), m.Unchoke(), m.Have(9))
    # A Piece nobody asked for is the driver's business (endgame duplicates look like this).
    pair.send(a, m.Piece(9, 16384, b"late"), m.Piece(9, 16384, b"late"))
    assert b.peer_has(9)


def test_bytes_one_at_a_time_give_the_same_events_as_all_at_once() -> None:
    sender = PeerConnection(IH, PID_B, NUM)
    sender.receive_data(encode(m.Handshake(IH, PID_A)))
    sender.next_event()
    msgs: list[m.Message] = [
        m.Bitfield(b"\x80\x00"),
        m.Unchoke(),
        m.Have(3),
        m.Piece(0, 0, bytes(range(256)) * 8),
        m.KeepAlive(),
        m.RejectRequest(1, 0, 16384),
        m.Choke(),
    ]
    wire = sender.initiate() + b"".join(sender.send(msg) for msg in msgs)
    whole = PeerConnection(IH, PID_A, NUM)
    whole.initiate()
    whole.receive_data(wire)
    trickle = PeerConnection(IH, PID_A, NUM)
    trickle.initiate()
    got: list[m.Message] = []
    for i in range(len(wire)):
        trickle.receive_data(wire[i : i + 1])
        got.extend(events(trickle))
    expected = [m.Handshake(IH, PID_B), *msgs]
    assert events(whole) == expected
    assert got == expected
    for conn in (whole, trickle):
        assert conn.peer_pieces == bytearray(b"\x90\x00")
        assert conn.peer_choking is ChokeState.CHOKED


def test_a_bitfield_may_be_as_large_as_the_torrent_needs() -> None:
    num = 2_000_000  # 250 000 bitfield bytes, more than any block
    conn = PeerConnection(IH, PID_A, num)
    assert conn.max_message_length == 250_001
    conn.initiate()
    conn.receive_data(encode(m.Handshake(IH, PID_B)))
    conn.next_event()
    assert feed(conn, m.Bitfield(b"\xff" * 250_000)) == [m.Bitfield(b"\xff" * 250_000)]
    assert conn.peer_piece_count == num


def test_the_cap_follows_max_block() -> None:
    assert PeerConnection(IH, PID_A, NUM).max_message_length == 9 + 128 * 1024
    assert PeerConnection(IH, PID_A, NUM, max_block=16384).max_message_length == 16393
    conn = handshaken(max_block=16384)
    assert remote_error(conn, m.Piece(0, 0, bytes(16385))) == (
        "message length 16394 exceeds the cap of 16393 bytes"
    )


# -- end of stream -----------------------------------------------------------------------


def test_clean_eof_gives_closed_after_the_buffered_events() -> None:
    conn = handshaken()
    conn.receive_data(encode(m.Unchoke()))
    conn.receive_data(b"")
    assert conn.next_event() == m.Unchoke()
    assert conn.next_event() is CLOSED
    assert conn.next_event() is CLOSED


def test_eof_before_any_byte_is_closed() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED


@pytest.mark.parametrize(("cut", "left"), [(10, 10), (68 + 3, 3), (68 + 12, 12)])
def test_eof_in_the_middle_of_a_message_is_a_remote_error(cut: int, left: int) -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    conn.initiate()
    conn.receive_data((encode(m.Handshake(IH, PID_B)) + encode(m.Request(1, 0, 16384)))[:cut])
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        events(conn)
    assert str(info.value) == (
        f"connection closed in the middle of a message ({left} bytes left undecoded)"
    )


# -- what the remote may not do ----------------------------------------------------------


def test_wrong_protocol_string() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    conn.receive_data(b"\x13BitTorrent Protocol" + bytes(48))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert str(info.value) == (
        "handshake protocol string must be b'BitTorrent protocol', got b'BitTorrent Protocol'"
    )


def test_a_message_where_the_handshake_should_be() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    conn.receive_data(encode(m.Interested()))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert str(info.value) == "handshake must start with the length byte 19, got 0"


def test_different_info_hash_names_both_hashes() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    conn.initiate()
    conn.receive_data(encode(m.Handshake(OTHER_IH, PID_B)))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert str(info.value) == (
        "handshake info_hash 0102030405060708090a0b0c0d0e0f1011121314 does not match "
        "ours 000102030405060708090a0b0c0d0e0f10111213"
    )
    assert conn.remote_peer_id is None


def test_a_message_before_our_handshake_went_out() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    conn.receive_data(encode(m.Handshake(IH, PID_B)) + encode(m.Bitfield(b"\xff\xc0")))
    assert conn.next_event() == m.Handshake(IH, PID_B)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert str(info.value) == "received Bitfield before the handshake completed"


@pytest.mark.parametrize(
    ("msgs", "message"),
    [
        (
            [m.KeepAlive(), m.HaveNone(), m.HaveNone()],
            "HaveNone is only allowed as the first message after the handshake, not after HaveNone",
        ),
        (
            [m.Bitfield(b"\x00\x00"), m.HaveNone()],
            "HaveNone is only allowed as the first message after the handshake, not after Bitfield",
        ),
        (
            [m.Interested(), m.HaveNone()],
            "HaveNone is only allowed as the first message after the handshake, "
            "not after Interested",
        ),
        (
            [m.Have(3), m.HaveNone()],
            "HaveNone is only allowed as the first message after the handshake, not after Have",
        ),
    ],
)
def test_have_none_only_as_the_first_message(msgs: list[m.Message], message: str) -> None:
    assert remote_error(handshaken(), *msgs) == message


@pytest.mark.parametrize(
    ("msgs", "pieces", "count"),
    [
        # aria2 sends HaveNone, then, once it holds a few pieces, a Bitfield instead of Haves.
        ([m.HaveNone(), m.Interested(), m.Bitfield(b"\x90\x00")], b"\x90\x00", 2),
        ([m.Bitfield(b"\x80\x00"), m.Have(9), m.Bitfield(b"\x40\x00")], b"\xc0\x40", 3),
        ([m.Have(1), m.HaveAll()], b"\xff\xc0", NUM),
        ([m.Bitfield(b"\x00\x00"), m.Unchoke(), m.HaveAll()], b"\xff\xc0", NUM),
    ],
)
def test_late_bitfield_or_have_all_from_the_remote_only_adds_pieces(
    msgs: list[m.Message], pieces: bytes, count: int
) -> None:
    conn = handshaken()
    assert feed(conn, *msgs) == msgs
    assert conn.peer_pieces == bytearray(pieces)
    assert conn.peer_piece_count == count


def test_late_bitfield_from_the_remote_is_still_checked() -> None:
    conn = handshaken()
    feed(conn, m.HaveNone())
    assert remote_error(conn, m.Bitfield(b"\x00\x01")) == (
        "Bitfield has spare bits set after piece 9: last byte is 0x01"
    )


@pytest.mark.parametrize(
    ("bits", "message"),
    [
        (b"\xff", "Bitfield must be 2 bytes for 10 pieces, got 1"),
        (b"\xff\xc0\x00", "Bitfield must be 2 bytes for 10 pieces, got 3"),
        (b"", "Bitfield must be 2 bytes for 10 pieces, got 0"),
        (b"\x00\x20", "Bitfield has spare bits set after piece 9: last byte is 0x20"),
        (b"\xff\xc1", "Bitfield has spare bits set after piece 9: last byte is 0xc1"),
    ],
)
def test_bitfield_shape(bits: bytes, message: str) -> None:
    conn = handshaken()
    assert remote_error(conn, m.Bitfield(bits)) == message
    assert conn.peer_piece_count == 0


@pytest.mark.parametrize("num", [8, 16])
def test_bitfield_without_spare_bits(num: int) -> None:
    conn = PeerConnection(IH, PID_A, num)
    conn.initiate()
    conn.receive_data(encode(m.Handshake(IH, PID_B)))
    conn.next_event()
    feed(conn, m.Bitfield(b"\xff" * (num // 8)))
    assert conn.peer_piece_count == num


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (m.Have(10), "Have index 10 is out of range for 10 pieces"),
        (m.Request(11, 0, 16384), "Request index 11 is out of range for 10 pieces"),
        (m.Piece(10, 0, b"x"), "Piece index 10 is out of range for 10 pieces"),
        (m.Cancel(2**32 - 1, 0, 1), "Cancel index 4294967295 is out of range for 10 pieces"),
        (m.RejectRequest(10, 0, 1), "RejectRequest index 10 is out of range for 10 pieces"),
        (m.SuggestPiece(10), "SuggestPiece index 10 is out of range for 10 pieces"),
        (m.AllowedFast(99), "AllowedFast index 99 is out of range for 10 pieces"),
    ],
)
def test_index_out_of_range(msg: m.Message, message: str) -> None:
    assert remote_error(handshaken(), msg) == message


@pytest.mark.parametrize(
    ("length", "message"),
    [
        (0, "Request length must be in 1..16384, got 0"),
        (16385, "Request length must be in 1..16384, got 16385"),
    ],
)
def test_request_length(length: int, message: str) -> None:
    conn = handshaken(max_block=16384)
    assert remote_error(conn, m.Request(0, 0, length)) == message


def test_request_at_max_block_is_fine() -> None:
    conn = handshaken(max_block=16384)
    assert feed(conn, m.Request(9, 0, 16384)) == [m.Request(9, 0, 16384)]


@pytest.mark.parametrize(
    "msg",
    [m.SuggestPiece(0), m.HaveAll(), m.HaveNone(), m.RejectRequest(0, 0, 1), m.AllowedFast(0)],
)
@pytest.mark.parametrize(("fast", "remote_fast"), [(True, False), (False, True), (False, False)])
def test_fast_messages_without_the_fast_extension(
    msg: m.Message, fast: bool, remote_fast: bool
) -> None:
    conn = handshaken(fast=fast, remote_fast=remote_fast)
    name = type(msg).__name__
    assert remote_error(conn, msg) == f"{name} needs the fast extension, which was not negotiated"


def test_unknown_message_id_through_the_connection() -> None:
    conn = handshaken()
    conn.receive_data(b"\x00\x00\x00\x01\x15")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert str(info.value) == "unknown message id 21 (length 1)"


def test_after_a_remote_error_the_connection_stays_failed() -> None:
    conn = handshaken()
    assert remote_error(conn, m.Have(10)) == "Have index 10 is out of range for 10 pieces"
    conn.receive_data(encode(m.Unchoke()))
    with pytest.raises(RemoteProtocolError, match="Have index 10 is out of range"):
        conn.next_event()
    assert conn.peer_choking is ChokeState.CHOKED


# -- what we may not do ------------------------------------------------------------------


def test_sending_before_initiate() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    assert local_error(conn, m.Interested()) == "cannot send Interested before initiate()"
    assert conn.am_interested is InterestState.NOT_INTERESTED


def test_sending_before_the_remote_handshake() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    conn.initiate()
    assert local_error(conn, m.Bitfield(b"\xff\xc0")) == (
        "cannot send Bitfield before the remote handshake arrives"
    )


def test_handshakes_go_through_initiate_once() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    assert local_error(conn, m.Handshake(IH, PID_A)) == (
        "the handshake is sent by initiate(), not send()"
    )
    conn.initiate()
    with pytest.raises(LocalProtocolError) as info:
        conn.initiate()
    assert str(info.value) == "initiate() was already called"


@pytest.mark.parametrize(
    ("first", "then", "message"),
    [
        (
            m.Bitfield(b"\xff\xc0"),
            m.Bitfield(b"\xff\xc0"),
            "Bitfield is only allowed as the first message after the handshake, not after Bitfield",
        ),
        (
            m.Unchoke(),
            m.Bitfield(b"\xff\xc0"),
            "Bitfield is only allowed as the first message after the handshake, not after Unchoke",
        ),
        (
            m.HaveAll(),
            m.HaveNone(),
            "HaveNone is only allowed as the first message after the handshake, not after HaveAll",
        ),
    ],
)
def test_sending_availability_twice_or_late(
    first: m.Message, then: m.Message, message: str
) -> None:
    conn = handshaken()
    conn.send(m.KeepAlive())  # does not count as a message before the bitfield
    conn.send(first)
    assert local_error(conn, then) == message


@pytest.mark.parametrize(
    "msg",
    [m.SuggestPiece(0), m.HaveAll(), m.HaveNone(), m.RejectRequest(0, 0, 1), m.AllowedFast(0)],
)
def test_sending_fast_messages_without_the_fast_extension(msg: m.Message) -> None:
    conn = handshaken(remote_fast=False)
    name = type(msg).__name__
    assert local_error(conn, msg) == f"{name} needs the fast extension, which was not negotiated"


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (m.Have(10), "Have index 10 is out of range for 10 pieces"),
        (m.Bitfield(b"\xff\xff"), "Bitfield has spare bits set after piece 9: last byte is 0xff"),
        (m.Request(0, 0, 0), "Request length must be in 1..131072, got 0"),
    ],
)
def test_sending_what_the_remote_would_refuse(msg: m.Message, message: str) -> None:
    assert local_error(handshaken(), msg) == message


def test_receive_data_after_eof() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError) as info:
        conn.receive_data(b"x")
    assert str(info.value) == "receive_data() called after EOF"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_pieces": 0}, "num_pieces must be at least 1, got 0"),
        ({"max_block": 0}, "max_block must be at least 1, got 0"),
        ({"info_hash": IH[:19]}, "Handshake.info_hash must be 20 bytes, got 19"),
        ({"peer_id": b"short"}, "Handshake.peer_id must be 20 bytes, got 5"),
    ],
)
def test_constructor_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"info_hash": IH, "peer_id": PID_A, "num_pieces": NUM, **kwargs}
    with pytest.raises(LocalProtocolError) as info:
        PeerConnection(**args)  # type: ignore[arg-type]
    assert str(info.value) == message


# -- hostile input -----------------------------------------------------------------------


@pytest.mark.parametrize("fill", [0x00, 0x01, 0xFF])
@pytest.mark.parametrize("remote_fast", [True, False])
def test_every_id_with_every_short_payload_is_an_event_or_a_remote_error(
    fill: int, remote_fast: bool
) -> None:
    for msg_id in range(256):
        for size in range(21):
            conn = handshaken(remote_fast=remote_fast)
            wire = (1 + size).to_bytes(4, "big") + bytes([msg_id]) + bytes([fill]) * size
            conn.receive_data(wire)
            try:
                got = events(conn)
            except RemoteProtocolError:
                continue
            assert [encode(msg) for msg in got] == [wire]


_SMALL_BLOCK = 64
_SIMPLE: list[m.Message] = [
    m.Choke(),
    m.Unchoke(),
    m.Interested(),
    m.NotInterested(),
    m.HaveAll(),
    m.HaveNone(),
    m.KeepAlive(),
    m.Port(1),
    m.Extended(1, b"x"),
    m.AllowedFast(3),
    m.SuggestPiece(11),
    m.RejectRequest(2, 0, 1),
    m.Cancel(1, 0, 1),
]
_messages: st.SearchStrategy[m.Message] = st.one_of(
    st.builds(m.Have, st.integers(0, 12)),
    st.builds(m.Request, st.integers(0, 12), st.integers(0, 2**20), st.integers(0, 80)),
    st.builds(m.Piece, st.integers(0, 12), st.integers(0, 2**20), st.binary(max_size=70)),
    st.builds(m.Bitfield, st.binary(max_size=3)),
    st.sampled_from(_SIMPLE),
)
# A well-framed message with any id and payload reaches the per-message checks that
# plain random bytes (nearly always an over-the-cap length prefix) never get to.
_framed = st.builds(
    lambda msg_id, payload: (1 + len(payload)).to_bytes(4, "big") + bytes([msg_id]) + payload,
    st.integers(0, 22) | st.integers(0, 255),
    st.binary(max_size=30),
)
_wire_pieces = st.one_of(_messages.map(encode), _framed, st.binary(min_size=1, max_size=90))


@given(
    pieces=st.lists(_wire_pieces, max_size=12),
    cut=st.integers(1, 50),
    remote_fast=st.booleans(),
)
def test_arbitrary_bytes_after_the_handshake_only_raise_remote_protocol_error(
    pieces: list[bytes], cut: int, remote_fast: bool
) -> None:
    conn = handshaken(remote_fast=remote_fast, max_block=_SMALL_BLOCK)
    wire = b"".join(pieces)
    try:
        for i in range(0, len(wire), cut):
            conn.receive_data(wire[i : i + cut])
            events(conn)
            assert conn.buffered < 4 + conn.max_message_length
        conn.receive_data(b"")
        events(conn)
    except RemoteProtocolError:
        pass
    assert conn.peer_piece_count == bin(int.from_bytes(conn.peer_pieces, "big")).count("1")
    assert conn.peer_pieces[-1] & 0x3F == 0


# -- Haves in bulk -----------------------------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=NUM - 1), max_size=30))
def test_send_haves_is_send_of_each_have(indices: list[int]) -> None:
    bulk, single = ConnectionPair(), ConnectionPair()
    bulk.handshake()
    single.handshake()
    wire = bulk.a.send_haves(indices)
    assert wire == b"".join(single.a.send(m.Have(i)) for i in indices)
    bulk.b.receive_data(wire)
    assert events(bulk.b) == [m.Have(i) for i in indices]
    assert bulk.b.peer_piece_count == len(set(indices))


def test_send_haves_counts_as_the_first_message() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.a.send_haves([4, 2])
    assert local_error(pair.a, m.HaveNone()) == (
        "HaveNone is only allowed as the first message after the handshake, not after Have"
    )


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([0, NUM], f"Have index {NUM} is out of range for {NUM} pieces"),
        ([-1, 3], f"Have index -1 is out of range for {NUM} pieces"),
    ],
)
def test_send_haves_refuses_an_index_outside_the_torrent(indices: list[int], message: str) -> None:
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(LocalProtocolError) as info:
        pair.a.send_haves(indices)
    assert str(info.value) == message
    assert pair.a.send_haves([]) == b""


def test_send_haves_before_the_handshakes_is_refused_like_send() -> None:
    conn = PeerConnection(IH, PID_A, NUM)
    conn.initiate()
    with pytest.raises(LocalProtocolError) as info:
        conn.send_haves([1])
    assert str(info.value) == local_error(conn, m.Have(1))
