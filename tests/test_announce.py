from __future__ import annotations

import random
import urllib.parse

import pytest

from murder_core import bencoding
from murder_core.announce import RETRY_CAP, announce_query, parse_reply, retry_delay
from murder_core.errors import TrackerError
from murder_core.values import PeerAddr


def test_query_percent_encodes_raw_hashes_and_keeps_existing_query() -> None:
    url = announce_query(
        "http://t:1/announce?key=s3cret",
        info_hash=bytes(range(20)),
        peer_id=b"-MU0100-abcdefghijkl",
        port=10001,
        uploaded=1,
        downloaded=2,
        left=3,
        event="started",
        ip="10.0.0.1",
    )
    base, query = url.split("?", 1)
    assert base == "http://t:1/announce"
    params = urllib.parse.parse_qs(query, encoding="latin-1")
    assert params["key"] == ["s3cret"]
    assert params["info_hash"][0].encode("latin-1") == bytes(range(20))
    assert params["event"] == ["started"]
    assert params["left"] == ["3"] and params["port"] == ["10001"] and params["ip"] == ["10.0.0.1"]


def test_parse_compact_ipv4_and_ipv6_peers() -> None:
    body = bencoding.encode(
        {
            b"interval": 10,
            b"min interval": 2,
            b"peers": bytes([127, 0, 0, 1]) + (6881).to_bytes(2, "big"),
            b"peers6": bytes(15) + b"\x01" + (7000).to_bytes(2, "big"),
        }
    )
    reply = parse_reply(body)
    assert reply.interval == 10 and reply.min_interval == 2
    assert reply.peers == (PeerAddr("127.0.0.1", 6881), PeerAddr("::1", 7000))


def test_parse_dict_peers_skips_junk_entries() -> None:
    body = bencoding.encode(
        {
            b"interval": 5,
            b"peers": [
                {b"ip": b"10.1.2.3", b"port": 1234, b"peer id": b"x" * 20},
                {b"ip": b"not-an-ip", b"port": 1},
            ],
        }
    )
    assert parse_reply(body).peers == (PeerAddr("10.1.2.3", 1234),)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"d14:failure reason5:nope!e", "tracker refused the announce: nope!"),
        (b"<html>", "tracker sent an invalid reply: invalid bencoding"),
        (b"li1ee", "tracker reply is not a dictionary"),
        (b"d8:intervali-1ee", "tracker reply field 'interval' must be a non-negative integer"),
        (b"d5:peers5:abcdee", "compact peer list length 5 is not a multiple of 6"),
        (b"d5:peersi3ee", "tracker reply field 'peers' has the wrong type"),
    ],
)
def test_bad_replies_raise_tracker_error(body: bytes, message: str) -> None:
    with pytest.raises(TrackerError) as info:
        parse_reply(body)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("failures", "low", "high"), [(1, 1, 2), (2, 2, 4), (3, 4, 8), (9, 7.5, 15)]
)
def test_retry_delay_doubles_up_to_the_cap(failures: int, low: float, high: float) -> None:
    rng = random.Random(failures)
    delays = [retry_delay(failures, rng) for _ in range(200)]
    assert all(low <= d <= high <= RETRY_CAP for d in delays)


def test_retries_of_a_fleet_that_failed_together_spread_out() -> None:
    """Two hundred hosts each with their own generator, all at their third failure."""
    delays = sorted(retry_delay(3, random.Random(host)) for host in range(200))
    assert delays[-1] - delays[0] > 3  # over most of the 4..8 s step, not one instant
    assert len(set(delays)) == 200
