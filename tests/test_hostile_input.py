"""Hostile and broken input, as property tests (issue 5).

Everything that comes from outside (bencoded data, .torrent files, tracker query
strings, peer-wire bytes) is fed random and mutated input. The properties: only our own
error type for that input comes out (never another exception), nothing hangs (the
hypothesis deadline of the profile in conftest.py), and lengths read from the input are
capped before anything is allocated for them (the tracemalloc cases at the end).

``HYPOTHESIS_PROFILE=nightly`` runs 10,000 cases per property; CI runs the "ci" profile.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tracemalloc
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote_from_bytes, unquote_to_bytes

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from murder_core import announce, bencoding
from murder_core.errors import (
    BencodeError,
    MetainfoError,
    RemoteProtocolError,
    TrackerError,
    TrackerRequestError,
)
from murder_core.metainfo import BLOCK_SIZE, parse_metainfo
from murder_core.payload_files import payload_layout
from murder_core.tracker import TrackerConfig, TrackerServer
from murder_core.tracker.requests import parse_announce, parse_scrape
from murder_core.values import InfoHash
from murder_core.wire import messages as m
from murder_core.wire.connection import CLOSED, NEED_DATA, PeerConnection
from murder_core.wire.framing import Decoder, encode

# -- shared strategies ----------------------------------------------------------------------

_leaves = (
    st.integers(min_value=-(10**25), max_value=10**25)
    | st.binary(max_size=24)
    | st.sampled_from([b"", b"..", b".", b"/", b"/etc", b"a/b", b"\x00", b"\xff"])
)
#: Any bencodable value; dict keys are bytes, as in a decoded document.
bvalues = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=12), inner),
    max_leaves=20,
)
_cuts = st.lists(st.integers(1, 97), min_size=1, max_size=8)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the (cycled) sizes in ``cuts``: how TCP might deliver it."""
    out, i, k = [], 0, 0
    while i < len(data):
        out.append(data[i : i + cuts[k % len(cuts)]])
        i += cuts[k % len(cuts)]
        k += 1
    return out


# -- bencode ------------------------------------------------------------------------------

_TOKENS = [b"i", b"e", b"l", b"d", b"0", b"1", b"9", b":", b"-", b"4294967296:", b"i-0e"]


def _mutated(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: flip, truncate, insert, delete a byte."""
    buf = bytearray(data)
    for kind, pos, value in ops:
        if not buf:
            break
        at = pos % len(buf)
        if kind == 0:
            buf[at] ^= value or 1
        elif kind == 1:
            del buf[at:]
        elif kind == 2:
            buf.insert(at, value)
        else:
            del buf[at]
    return bytes(buf)


_ops = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)), max_size=4
)


@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(st.sampled_from(_TOKENS), max_size=40).map(b"".join),
        st.tuples(bvalues.map(bencoding.encode), _ops).map(lambda t: _mutated(*t)),
    )
)
def test_bencode_decoding_raises_only_bencode_error(data: bytes) -> None:
    try:
        value, spans = bencoding.decode_with_spans(data)
    except BencodeError:
        event("refused")
        return
    event("accepted")
    # Accepted means canonical, apart from dict key order: re-encoding cannot grow it.
    assert len(bencoding.encode(value)) == len(data)
    for start, end in spans.values():
        assert 0 <= start < end <= len(data)


# -- .torrent parsing ---------------------------------------------------------------------

_names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=8
).filter(lambda s: s not in (".", ".."))


@st.composite
def valid_torrents(draw: st.DrawFn) -> bytes:
    """A well-formed single- or multi-file torrent (no payload needed: hashes are random)."""
    piece_length = BLOCK_SIZE * draw(st.integers(1, 4))
    info: dict[bytes, Any] = {b"name": draw(_names).encode(), b"piece length": piece_length}
    if draw(st.booleans()):
        total = draw(st.integers(1, 5 * piece_length))
        info[b"length"] = total
    else:
        paths = draw(st.lists(st.lists(_names, min_size=1, max_size=3), min_size=1, max_size=4))
        files: list[dict[bytes, Any]] = []
        seen: list[tuple[str, ...]] = []
        for path in map(tuple, paths):
            # No duplicates, and no file that is also another file's directory.
            if any(path[: len(o)] == o or o[: len(path)] == path for o in seen):
                continue
            seen.append(path)
            length = draw(st.integers(0, 2 * piece_length))
            files.append({b"length": length, b"path": [p.encode() for p in path]})
        total = sum(f[b"length"] for f in files)
        if total == 0:
            files[0][b"length"] = 1
            total = 1
        info[b"files"] = files
    info[b"pieces"] = draw(st.binary(min_size=20, max_size=20)) * (-(-total // piece_length))
    url = b"http://127.0.0.1:6969/announce" + draw(st.sampled_from([b"", b"?auth=0a1b2c"]))
    return bencoding.encode({b"announce": url, b"info": info})


def _slots(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) in a decoded document, so one value can be swapped."""
    if isinstance(value, dict):
        for key, child in value.items():
            out.append((value, key))
            _slots(child, out)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out.append((value, index))
            _slots(child, out)
    return out


@st.composite
def type_swapped(draw: st.DrawFn) -> bytes:
    """A valid torrent with one value anywhere replaced by a value of any type."""
    doc = bencoding.decode(draw(valid_torrents()))
    slots = _slots(doc, [])
    container, key = draw(st.sampled_from(slots))
    container[key] = draw(bvalues)
    return bencoding.encode(doc)


def _check_accepted(data: bytes) -> None:
    try:
        meta = parse_metainfo(data)
    except MetainfoError as exc:
        event(f"refused: {exc.key or 'document'}".split("[")[0])
        return
    event("accepted")
    assert meta.total_length > 0 and meta.piece_length % BLOCK_SIZE == 0
    assert meta.num_pieces == -(-meta.total_length // meta.piece_length)
    info = bencoding.decode_with_spans(data)[1][b"info"]
    assert meta.info_hash == InfoHash(hashlib.sha1(data[slice(*info)]).digest())
    for entry in meta.files:
        assert all(p not in ("", ".", "..") and "/" not in p and "\0" not in p for p in entry.path)
    # What the parser accepts, storage can lay out under a root without escaping it.
    layout = payload_layout(meta, Path("/nonexistent/root"))
    assert all(str(f.path).startswith("/nonexistent/root") for f in layout)


@given(st.one_of(st.binary(max_size=300), bvalues.map(bencoding.encode)))
def test_random_torrents_raise_only_metainfo_error(data: bytes) -> None:
    _check_accepted(data)


@given(
    st.one_of(
        st.tuples(valid_torrents(), _ops).map(lambda t: _mutated(*t)),
        type_swapped(),
        st.tuples(valid_torrents(), valid_torrents(), st.integers(0, 10**4)).map(
            lambda t: t[0][: t[2] % len(t[0])] + t[1][t[2] % len(t[1]) :]  # spliced
        ),
    )
)
def test_mutated_torrents_raise_only_metainfo_error(data: bytes) -> None:
    _check_accepted(data)


# -- tracker query strings ----------------------------------------------------------------

HASH = InfoHash(b"\x01" * 20)
_OPEN_HEX = "02" * 20
TOKEN = b"0123456789abcdef0123456789abcdef"
_tracker = TrackerServer(TrackerConfig(port=0, logfile=os.devnull, allow=(_OPEN_HEX,)))
_tracker.allow(HASH, token=TOKEN)

_raw_values = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([HASH.raw, TOKEN, b"-MU0001-000000000001", b"6881", b"0", b"1", b"-1"]),
    st.integers(-5, 10**21).map(lambda n: str(n).encode()),
)
_params = st.sampled_from(
    ["info_hash", "peer_id", "port", "uploaded", "downloaded", "left", "event", "numwant",
     "compact", "no_peer_id", "ip", "key", "auth", "x", ""]
)  # fmt: skip
_query = st.lists(st.tuples(_params, _raw_values), max_size=14).map(
    lambda pairs: "&".join(
        f"{k}={''.join(f'%{b:02x}' if b > 0x7E or b < 0x21 else chr(b) for b in v)}"
        for k, v in pairs
    )
)


_OPEN = InfoHash.from_hex(_OPEN_HEX)


def _encoded(pairs: list[tuple[str, bytes]]) -> str:
    return "&".join(f"{k}={quote_from_bytes(v, safe='')}" for k, v in pairs)


@st.composite
def _mostly_valid(draw: st.DrawFn) -> str:
    """A well-formed announce or scrape, then a few fields dropped, repeated or changed."""
    fields: dict[str, bytes] = {
        "info_hash": draw(st.sampled_from([HASH.raw, _OPEN.raw, b"\x03" * 20])),
        "peer_id": b"-MU0001-%012d" % draw(st.integers(0, 99)),
        "port": b"%d" % draw(st.integers(1, 65535)),
        "uploaded": b"0",
        "downloaded": b"0",
        "left": b"%d" % draw(st.integers(0, 10**12)),
        "auth": draw(st.sampled_from([TOKEN, TOKEN[:-1], TOKEN + b"x", b"", TOKEN.upper()])),
    }
    pairs = list(fields.items())
    for _ in range(draw(st.integers(0, 3))):
        name = draw(_params)
        pairs = [p for p in pairs if p[0] != name] if draw(st.booleans()) else pairs
        pairs.append((name, draw(_raw_values)))
    return _encoded(pairs)


@given(
    st.sampled_from(["/announce", "/scrape", "/stats.json", "/", "/nope"]),
    st.one_of(_query, _mostly_valid(), st.binary(max_size=600).map(lambda b: b.decode("latin-1"))),
    st.sampled_from(["10.0.0.1", "::1", "::ffff:10.0.0.9", "fe80::1%eth0", "not-an-ip"]),
)
def test_tracker_answers_any_query_without_an_internal_error(
    path: str, query: str, remote: str
) -> None:
    response = _tracker.respond(f"{path}?{query}", remote)
    assert response.status in (200, 400, 404)
    served = b"failure reason" not in response.body
    event(f"{path} {response.status} {'served' if served else 'refused'}")
    raw = query.encode("latin-1", "replace")
    if TOKEN not in unquote_to_bytes(raw):  # an error may quote what the caller sent
        assert TOKEN not in response.body
    for parse in (lambda: parse_announce(raw, remote), lambda: parse_scrape(raw)):
        with contextlib.suppress(TrackerRequestError):
            parse()
    if path == "/announce" and response.status == 200:
        body = bencoding.decode(response.body)
        if b"interval" in body:  # served: the protected torrent only with its token
            request = parse_announce(raw, remote)
            assert request.info_hash != HASH or request.auth == TOKEN
    if path in ("/announce", "/scrape") or response.status != 200:
        bencoding.decode(response.body)  # always a bencoded reply a client can show


# -- peer wire ----------------------------------------------------------------------------

_CAP = 9 + 128 * 1024  # what a PeerConnection allows with the default max_block
_messages = st.one_of(
    st.builds(m.Have, st.integers(0, 2**32 - 1)),
    st.builds(m.Request, st.integers(0, 3000), st.integers(0, 2**32 - 1), st.integers(0, 2**18)),
    st.builds(m.Cancel, st.integers(0, 3000), st.integers(0, 2**20), st.integers(0, 2**18)),
    st.builds(m.RejectRequest, st.integers(0, 3000), st.integers(0, 2**20), st.integers(1, 99)),
    st.builds(m.Piece, st.integers(0, 3000), st.integers(0, 2**20), st.binary(max_size=40)),
    st.builds(m.Bitfield, st.binary(max_size=300)),
    st.builds(m.AllowedFast, st.integers(0, 3000)),
    st.builds(m.SuggestPiece, st.integers(0, 3000)),
    st.builds(m.Port, st.integers(0, 65535)),
    st.builds(m.Extended, st.integers(0, 255), st.binary(max_size=40)),
    st.sampled_from(
        [
            m.Choke(),
            m.Unchoke(),
            m.Interested(),
            m.NotInterested(),
            m.HaveAll(),
            m.HaveNone(),
            m.KeepAlive(),
        ]
    ),
)
_frames = st.one_of(
    _messages.map(encode),
    st.builds(  # any id, any payload, correctly framed
        lambda i, p: struct.pack(">IB", 1 + len(p), i) + p,
        st.integers(0, 255),
        st.binary(max_size=40),
    ),
    st.integers(_CAP + 1, 2**32 - 1).map(lambda n: struct.pack(">I", n)),  # over the cap
    st.binary(min_size=1, max_size=60),
)


@given(st.lists(_frames, max_size=16), _cuts)
def test_wire_frames_raise_only_remote_protocol_error(frames: list[bytes], cuts: list[int]) -> None:
    decoder = Decoder(_CAP)
    try:
        for chunk in chunks(b"".join(frames), cuts):
            decoder.feed(chunk)
            for _ in decoder:
                pass
            assert decoder.buffered < 4 + _CAP
        event("clean")
    except RemoteProtocolError as first:
        event("protocol error")
        with pytest.raises(RemoteProtocolError) as again:
            decoder.next_message()
        assert again.value is first  # out of sync for good


@given(
    st.integers(1, 2500),
    st.booleans(),
    st.booleans(),
    st.lists(_frames, max_size=16),
    _cuts,
    st.booleans(),
)
def test_peer_connection_after_a_valid_handshake_raises_only_remote_protocol_error(
    num_pieces: int, fast: bool, remote_fast: bool, frames: list[bytes], cuts: list[int], eof: bool
) -> None:
    info_hash, ours, theirs = b"I" * 20, b"A" * 20, b"B" * 20
    conn = PeerConnection(info_hash, ours, num_pieces, enable_fast=fast)
    conn.initiate()
    reserved = m.FAST_RESERVED if remote_fast else m.NO_EXTENSIONS
    conn.receive_data(encode(m.Handshake(info_hash, theirs, reserved)))
    assert isinstance(conn.next_event(), m.Handshake)
    try:
        for chunk in [*chunks(b"".join(frames), cuts), *([b""] if eof else [])]:
            conn.receive_data(chunk)
            while conn.next_event() not in (NEED_DATA, CLOSED):
                pass
            assert conn.buffered < 4 + conn.max_message_length
        event("clean")
    except RemoteProtocolError as first:
        event("protocol error")
        with pytest.raises(RemoteProtocolError) as again:
            conn.next_event()
        assert again.value is first
    pieces = conn.peer_pieces
    assert conn.peer_piece_count == bin(int.from_bytes(pieces, "big")).count("1")
    assert conn.peer_piece_count <= num_pieces


@given(st.binary(max_size=140), _cuts)
def test_handshake_bytes_raise_only_remote_protocol_error(data: bytes, cuts: list[int]) -> None:
    conn = PeerConnection(b"I" * 20, b"A" * 20, 8)
    conn.initiate()
    try:
        for chunk in chunks(data, cuts):
            conn.receive_data(chunk)
            while conn.next_event() not in (NEED_DATA, CLOSED):
                pass
        event("incomplete" if conn.remote_peer_id is None else "handshake accepted")
    except RemoteProtocolError:
        event("protocol error")


# -- caps before allocation ----------------------------------------------------------------

GIB4 = 2**32 - 1  # the largest u32 length prefix


def _handshaken() -> PeerConnection:
    conn = PeerConnection(b"I" * 20, b"A" * 20, 100)
    conn.initiate()
    conn.receive_data(encode(m.Handshake(b"I" * 20, b"B" * 20, m.FAST_RESERVED)))
    conn.next_event()
    return conn


def _decoder_case(prefix: int) -> Callable[[], None]:
    def run() -> None:
        decoder = Decoder(_CAP)
        decoder.feed(struct.pack(">IB", prefix, 7) + b"x" * 100)
        decoder.next_message()

    return run


def _connection_case() -> None:
    conn = _handshaken()
    conn.receive_data(struct.pack(">IB", GIB4, 7) + b"x" * 100)
    conn.next_event()


def _under_the_cap_waits_with_what_it_has() -> None:
    conn = _handshaken()
    conn.receive_data(struct.pack(">IBII", conn.max_message_length, 7, 0, 0) + b"x" * 100)
    assert conn.next_event() is NEED_DATA and conn.buffered < 200


HUGE: list[tuple[str, Callable[[], object], type[Exception] | None]] = [
    ("wire: 4 GiB length prefix", _decoder_case(GIB4), RemoteProtocolError),
    ("wire: 2 GiB length prefix", _decoder_case(2**31), RemoteProtocolError),
    ("connection: 4 GiB length prefix", _connection_case, RemoteProtocolError),
    ("connection: a length at the cap waits", _under_the_cap_waits_with_what_it_has, None),
    ("bencode: 4 GiB string", lambda: bencoding.decode(b"4294967296:abc"), BencodeError),
    ("bencode: 4 GiB dict key", lambda: bencoding.decode(b"d4294967296:ae"), BencodeError),
    ("bencode: 31-digit length", lambda: bencoding.decode(b"9" * 31 + b":x"), BencodeError),
    ("bencode: 10^5-digit integer", lambda: bencoding.decode(b"i" + b"9" * 10**5 + b"e"),
     BencodeError),
    ("bencode: 100k-deep nesting", lambda: bencoding.decode(b"l" * 100_000), BencodeError),
    ("torrent: 4 GiB pieces string",
     lambda: parse_metainfo(b"d8:announce9:http://a/4:infod6:pieces4294967296:"), MetainfoError),
    ("torrent: 2^62-byte payload",
     lambda: parse_metainfo(bencoding.encode({b"announce": b"http://a/", b"info": {
         b"name": b"x", b"piece length": 2**26, b"length": 2**62, b"pieces": b"x" * 20}})),
     MetainfoError),
    ("tracker reply: 4 GiB peers string",
     lambda: announce.parse_reply(b"d5:peers4294967296:abc"), TrackerError),
]  # fmt: skip


@pytest.mark.parametrize(("case", "run", "error"), HUGE, ids=[c[0] for c in HUGE])
def test_huge_lengths_are_refused_without_allocating_them(
    case: str, run: Callable[[], object], error: type[Exception] | None
) -> None:
    tracemalloc.start()
    try:
        if error is None:
            run()
        else:
            with pytest.raises(error):
                run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"{case}: peak {peak} bytes"
