from __future__ import annotations

import ipaddress
import struct
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from murder_core import bencoding
from murder_core.errors import TrackerError, TrackerRequestError
from murder_core.tracker.requests import (
    MAX_QUERY_BYTES,
    AnnounceReply,
    Event,
    ReplyPeer,
    ScrapeEntry,
    encode_announce,
    encode_failure,
    encode_scrape,
    parse_announce,
    parse_query,
    parse_scrape,
)
from murder_core.tracker.swarm import Swarm
from murder_core.values import InfoHash, PeerAddr, PeerId

HASH = bytes(range(20))
PEER = b"-MU0001-" + b"\x00\xff&=+% ?#abc"


def query(**params: Any) -> bytes:
    """Percent-encode every byte the way BitTorrent clients do for binary fields."""
    parts = []
    for name, value in params.items():
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(f"{name}={quote_from_bytes(raw, safe='')}")
    return "&".join(parts).encode()


def good(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "info_hash": HASH,
        "peer_id": PEER,
        "port": 6881,
        "uploaded": 10,
        "downloaded": 20,
        "left": 30,
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def test_parse_announce_full_request() -> None:
    q = query(**good(event="started", numwant=50, compact=0, ip="10.1.2.3", key=b"k\x01"))
    req = parse_announce(q, "192.0.2.9")
    assert req.info_hash == InfoHash(HASH)
    assert req.peer_id == PeerId(PEER)
    assert req.addr == PeerAddr("10.1.2.3", 6881)
    assert (req.uploaded, req.downloaded, req.left) == (10, 20, 30)
    assert req.event is Event.STARTED
    assert req.numwant == 50
    assert req.compact is False
    assert req.key == b"k\x01"


def test_parse_announce_defaults() -> None:
    req = parse_announce(query(**good()), "192.0.2.9")
    assert req.addr == PeerAddr("192.0.2.9", 6881)
    assert req.event is Event.NONE
    assert req.numwant is None
    assert req.compact is True
    assert req.no_peer_id is False
    assert req.key is None


@pytest.mark.parametrize(
    ("remote", "ip_param", "expected"),
    [
        ("::ffff:10.0.0.7", None, "10.0.0.7"),
        ("2001:db8::1", None, "2001:db8::1"),
        ("127.0.0.1", "2001:DB8:0:0::5", "2001:db8::5"),
        ("fe80::1%eth0", None, "fe80::1"),
        ("127.0.0.1", "::ffff:10.9.9.9", "10.9.9.9"),
    ],
)
def test_parse_announce_addresses(remote: str, ip_param: str | None, expected: str) -> None:
    req = parse_announce(query(**good(ip=ip_param)), remote)
    assert req.addr.ip == expected


@pytest.mark.parametrize("event", ["", "empty", "paused"])
def test_parse_announce_no_event_spellings(event: str) -> None:
    assert parse_announce(query(**good(event=event)), "10.0.0.1").event is Event.NONE


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        (good(info_hash=None), "info_hash", "missing info_hash"),
        (good(info_hash=HASH[:19]), "info_hash", "info_hash must be 20 bytes, got 19"),
        (good(info_hash=HASH + b"x"), "info_hash", "info_hash must be 20 bytes, got 21"),
        (good(peer_id=None), "peer_id", "missing peer_id"),
        (good(peer_id=b"abc"), "peer_id", "peer_id must be 20 bytes, got 3"),
        (good(port=None), "port", "missing port"),
        (good(port=0), "port", "port must be an integer in 1..65535, got '0'"),
        (good(port=65536), "port", "port must be an integer in 1..65535, got '65536'"),
        (good(port="-1"), "port", "port must be an integer in 1..65535, got '-1'"),
        (good(port="http"), "port", "port must be an integer in 1..65535, got 'http'"),
        (good(uploaded="-5"), "uploaded", "uploaded must be a non-negative integer, got '-5'"),
        (
            good(downloaded="1.5"),
            "downloaded",
            "downloaded must be a non-negative integer, got '1.5'",
        ),
        (good(left=""), "left", "left must be a non-negative integer, got ''"),
        (good(left="+1"), "left", "left must be a non-negative integer, got '+1'"),
        (good(left="1_000"), "left", "left must be a non-negative integer, got '1_000'"),
        (good(left="9" * 20), "left", f"left must be a non-negative integer, got '{'9' * 20}'"),
        (good(left=None), "left", "missing left"),
        (
            good(event="bogus"),
            "event",
            "event must be one of started, completed, stopped or empty, got 'bogus'",
        ),
        (good(numwant="-1"), "numwant", "numwant must be a non-negative integer, got '-1'"),
        (good(compact="2"), "compact", "compact must be 0 or 1, got '2'"),
        (
            good(ip="tracker.example"),
            "ip",
            "ip must be an IPv4 or IPv6 address, got 'tracker.example'",
        ),
        (good(key=b"k" * 65), "key", "key must be at most 64 bytes, got 65"),
    ],
)
def test_parse_announce_rejects(params: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(TrackerRequestError) as info:
        parse_announce(query(**params), "10.0.0.1")
    assert str(info.value) == message
    assert info.value.param == param


def test_parse_announce_duplicate_parameter() -> None:
    q = query(**good()) + b"&info_hash=" + quote_from_bytes(HASH).encode()
    with pytest.raises(TrackerRequestError, match=r"^info_hash given 2 times, expected once$"):
        parse_announce(q, "10.0.0.1")


def test_long_bad_value_is_shown_truncated() -> None:
    with pytest.raises(TrackerRequestError) as info:
        parse_announce(query(**good(event="x" * 100)), "10.0.0.1")
    assert str(info.value).endswith(f"got '{'x' * 40}...'")
    assert info.value.value == b"x" * 100


def test_unusable_remote_address() -> None:
    with pytest.raises(TrackerRequestError) as info:
        parse_announce(query(**good()), "not-an-ip")
    assert str(info.value) == "cannot use the connection's address 'not-an-ip' as a peer address"


def test_query_size_cap() -> None:
    parse_query(b"a" * MAX_QUERY_BYTES)
    with pytest.raises(TrackerRequestError) as info:
        parse_query(b"a" * (MAX_QUERY_BYTES + 1))
    assert str(info.value) == "query string is 4097 bytes, more than the cap of 4096"


def test_query_field_count_cap() -> None:
    with pytest.raises(TrackerRequestError, match=r"^query string has more than 128 parameters$"):
        parse_query(b"&".join([b"a=1"] * 129))


def test_parse_query_raw_bytes_and_plus() -> None:
    assert parse_query(b"a=%00%FF+x&&b&c=\xe9") == [
        ("a", b"\x00\xff x"),
        ("b", b""),
        ("c", b"\xe9"),
    ]


def test_parse_scrape() -> None:
    other = bytes(20)
    q = query(info_hash=HASH) + b"&" + query(info_hash=other) + b"&" + query(info_hash=HASH)
    assert parse_scrape(q).info_hashes == (InfoHash(HASH), InfoHash(other))
    assert parse_scrape(b"").info_hashes == ()
    with pytest.raises(TrackerRequestError, match=r"^info_hash must be 20 bytes, got 2$"):
        parse_scrape(b"info_hash=ab")


def decode_compact(blob: bytes, width: int) -> list[PeerAddr]:
    peers = []
    for i in range(0, len(blob), width):
        ip = str(ipaddress.ip_address(blob[i : i + width - 2]))
        (port,) = struct.unpack(">H", blob[i + width - 2 : i + width])
        peers.append(PeerAddr(ip, port))
    return peers


PEERS = (
    ReplyPeer(PeerId(b"a" * 20), PeerAddr("10.0.0.1", 6881)),
    ReplyPeer(PeerId(b"b" * 20), PeerAddr("2001:db8::2", 51413)),
    ReplyPeer(PeerId(b"c" * 20), PeerAddr("192.168.1.255", 1)),
)
REPLY = AnnounceReply(interval=10, min_interval=2, complete=1, incomplete=2, peers=PEERS)


def test_encode_announce_compact_with_peers6() -> None:
    body = bencoding.decode(encode_announce(REPLY))
    assert body[b"interval"] == 10
    assert body[b"min interval"] == 2
    assert (body[b"complete"], body[b"incomplete"]) == (1, 2)
    assert decode_compact(body[b"peers"], 6) == [PEERS[0].addr, PEERS[2].addr]
    assert decode_compact(body[b"peers6"], 18) == [PEERS[1].addr]


def test_encode_announce_compact_without_v6_peers_has_no_peers6() -> None:
    body = bencoding.decode(encode_announce(AnnounceReply(10, 2, 0, 0, PEERS[:1])))
    assert b"peers6" not in body
    assert len(body[b"peers"]) == 6


def test_encode_announce_dict_list() -> None:
    body = bencoding.decode(encode_announce(REPLY, compact=False))
    assert body[b"peers"] == [
        {b"peer id": b"a" * 20, b"ip": b"10.0.0.1", b"port": 6881},
        {b"peer id": b"b" * 20, b"ip": b"2001:db8::2", b"port": 51413},
        {b"peer id": b"c" * 20, b"ip": b"192.168.1.255", b"port": 1},
    ]
    bare = bencoding.decode(encode_announce(REPLY, compact=False, no_peer_id=True))
    assert bare[b"peers"][0] == {b"ip": b"10.0.0.1", b"port": 6881}


def test_encode_scrape_and_failure() -> None:
    body = bencoding.decode(encode_scrape({InfoHash(HASH): ScrapeEntry(3, 4, 5)}))
    assert body == {b"files": {HASH: {b"complete": 3, b"incomplete": 4, b"downloaded": 5}}}
    assert bencoding.decode(encode_failure("nope")) == {b"failure reason": b"nope"}


NAMES = st.sampled_from(
    ["info_hash", "peer_id", "port", "uploaded", "downloaded", "left", "event", "numwant",
     "compact", "ip", "key", "no_peer_id", "x"]
)  # fmt: skip
RAW_VALUES = st.one_of(
    st.binary(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode()),
    st.integers(min_value=-2, max_value=70_000).map(lambda n: str(n).encode()),
    st.sampled_from([b"started", b"stopped", b"completed", b"::1", b"10.0.0.1", b"0", b"1"]),
)
FIELDS = st.lists(st.tuples(NAMES, RAW_VALUES), max_size=12)


def _assemble(fields: list[tuple[str, bytes]], quoted: bool) -> bytes:
    joined = [
        name.encode() + b"=" + (quote_from_bytes(value, safe="").encode() if quoted else value)
        for name, value in fields
    ]
    return b"&".join(joined)


# A valid announce with a few parameters replaced by junk.
MOSTLY_VALID = st.builds(
    lambda o: query(**{**good(), **o}), st.dictionaries(NAMES, RAW_VALUES, max_size=3)
)
# Valid announces across the parameter space, so replies get built and encoded too.
VALID = st.builds(
    lambda o: query(**{**good(), **o}),
    st.fixed_dictionaries(
        {},
        optional={
            "peer_id": st.binary(min_size=20, max_size=20),
            "port": st.integers(1, 65535),
            "left": st.integers(0, 2**63 - 1),
            "event": st.sampled_from(["", "started", "completed", "stopped", "empty", "paused"]),
            "numwant": st.integers(0, 10**6),
            "compact": st.sampled_from(["0", "1", ""]),
            "no_peer_id": st.sampled_from(["0", "1"]),
            "ip": st.ip_addresses().map(str),
            "key": st.binary(max_size=64),
        },
    ),
)


@settings(deadline=None)
@given(
    st.one_of(
        st.binary(max_size=5000),
        st.builds(_assemble, FIELDS, st.booleans()),
        MOSTLY_VALID,
        VALID,
    ),
    st.sampled_from(["10.0.0.1", "10.0.0.3", "::1", "::ffff:1.2.3.4", "garbage"]),
)
def test_random_queries_give_a_reply_or_a_tracker_error(raw: bytes, remote: str) -> None:
    swarm = Swarm()
    swarm.announce(parse_announce(query(**good(peer_id=b"o" * 20, left=0)), "10.0.0.2"), 0.0)
    try:
        request = parse_announce(raw, remote)
        reply = swarm.announce(request, 1.0)
        body = bencoding.decode(encode_announce(reply, compact=request.compact))
        assert body[b"interval"] == 10
        scrape = parse_scrape(raw)
        encode_scrape(swarm.scrape(scrape.info_hashes or None, now=2.0))
    except TrackerError:
        pass
