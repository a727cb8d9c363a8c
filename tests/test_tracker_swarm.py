from __future__ import annotations

import ipaddress
import json
import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from murder_core import bencoding
from murder_core.errors import TrackerError
from murder_core.tracker import swarm as swarm_module
from murder_core.tracker.requests import AnnounceRequest, Event, ScrapeEntry, encode_announce
from murder_core.tracker.swarm import Swarm, TorrentLabel
from murder_core.values import InfoHash, PeerAddr, PeerId

TORRENT = InfoHash(b"T" * 20)
OTHER = InfoHash(b"U" * 20)


def pid(n: int) -> PeerId:
    return PeerId(f"-MU0001-{n:012d}".encode())


def req(
    n: int,
    *,
    left: int = 100,
    event: Event = Event.NONE,
    ip: str | None = None,
    port: int | None = None,
    numwant: int | None = None,
    info_hash: InfoHash = TORRENT,
) -> AnnounceRequest:
    return AnnounceRequest(
        info_hash=info_hash,
        peer_id=pid(n),
        addr=PeerAddr(ip or f"10.0.{n // 250}.{n % 250 + 1}", port or 6881),
        uploaded=n,
        downloaded=2 * n,
        left=left,
        event=event,
        numwant=numwant,
    )


def swarm(**options: Any) -> Swarm:
    return Swarm(rng=random.Random(7), **options)


def test_first_announce_gets_nobody_not_even_itself() -> None:
    s = swarm()
    reply = s.announce(req(1, event=Event.STARTED), now=0.0)
    assert reply.peers == ()
    assert (reply.interval, reply.min_interval) == (10, 2)
    assert (reply.complete, reply.incomplete) == (0, 1)


def test_peers_see_each_other_never_themselves() -> None:
    s = swarm()
    s.announce(req(1, left=0), now=0.0)
    s.announce(req(2), now=0.0)
    reply = s.announce(req(3), now=1.0)
    assert {p.peer_id for p in reply.peers} == {pid(1), pid(2)}
    assert (reply.complete, reply.incomplete) == (1, 2)
    for n in (1, 2, 3):
        again = s.announce(req(n, left=0 if n == 1 else 100), now=2.0)
        assert pid(n) not in {p.peer_id for p in again.peers}


def test_same_address_with_new_peer_id_replaces_the_old_record() -> None:
    s = swarm()
    s.announce(req(1, ip="10.9.9.9", port=7000), now=0.0)
    s.announce(req(2), now=0.0)
    reply = s.announce(req(3, ip="10.9.9.9", port=7000), now=1.0)  # restarted client
    assert [p.peer_id for p in reply.peers] == [pid(2)]
    assert {p.peer_id for p in s.peers(TORRENT)} == {pid(2), pid(3)}


def test_peer_expires_after_ttl() -> None:
    s = swarm(interval=10)
    assert s.peer_ttl == 35.0
    s.announce(req(1), now=100.0)
    assert s.expire(now=135.0) == 0
    assert [p.peer_id for p in s.peers(TORRENT)] == [pid(1)]
    assert s.expire(now=135.5) == 1
    assert s.peers(TORRENT) == ()


def test_expired_peers_are_not_handed_out() -> None:
    s = swarm(peer_ttl=5)
    s.announce(req(1), now=0.0)
    s.announce(req(2), now=3.0)
    reply = s.announce(req(3), now=6.0)
    assert [p.peer_id for p in reply.peers] == [pid(2)]
    assert reply.incomplete == 2


def test_reannounce_keeps_a_peer_alive() -> None:
    s = swarm(peer_ttl=5)
    for now in (0.0, 4.0, 8.0, 12.0):
        s.announce(req(1), now=now)
    assert s.expire(now=16.0) == 0
    assert s.peers(TORRENT)[0].last_seen == 12.0


def test_stopped_removes_at_once() -> None:
    s = swarm()
    s.announce(req(1), now=0.0)
    s.announce(req(2), now=0.0)
    reply = s.announce(req(1, event=Event.STOPPED), now=1.0)
    assert reply.peers == ()
    assert (reply.complete, reply.incomplete) == (0, 1)
    assert [p.peer_id for p in s.peers(TORRENT)] == [pid(2)]
    assert [p.peer_id for p in s.announce(req(2), now=2.0).peers] == []


def test_stopped_from_unknown_peer_is_harmless() -> None:
    reply = swarm().announce(req(9, event=Event.STOPPED), now=0.0)
    assert (reply.complete, reply.incomplete, reply.peers) == (0, 0, ())


def completed(s: Swarm) -> int:
    return s.scrape([TORRENT], now=50.0)[TORRENT].downloaded


def test_completed_counts_once_per_peer() -> None:
    s = swarm()
    s.announce(req(1, event=Event.STARTED), now=0.0)
    s.announce(req(1, left=0, event=Event.COMPLETED), now=1.0)
    s.announce(req(1, left=0, event=Event.COMPLETED), now=2.0)
    assert completed(s) == 1
    s.announce(req(1, left=0, event=Event.STOPPED), now=3.0)
    s.announce(req(1, left=0, event=Event.STARTED), now=4.0)
    s.announce(req(1, left=0, event=Event.COMPLETED), now=5.0)
    assert completed(s) == 1
    s.announce(req(2, left=0, event=Event.COMPLETED), now=6.0)
    assert completed(s) == 2


def test_reaching_left_zero_without_the_event_counts_too() -> None:
    s = swarm()
    s.announce(req(1, left=5), now=0.0)
    s.announce(req(1, left=0), now=1.0)
    assert completed(s) == 1


def test_a_seeder_starting_is_not_a_completion() -> None:
    s = swarm()
    s.announce(req(1, left=0, event=Event.STARTED), now=0.0)
    s.announce(req(1, left=0), now=1.0)
    assert completed(s) == 0


def fill(s: Swarm, seeders: int, leechers: int) -> None:
    for n in range(seeders):
        s.announce(req(1000 + n, left=0), now=0.0)
    for n in range(leechers):
        s.announce(req(2000 + n), now=0.0)


@pytest.mark.parametrize(
    ("options", "numwant", "expected"),
    [
        ({}, None, 200),
        ({}, 1000, 500),
        ({}, 500, 500),
        ({}, 37, 37),
        ({}, 0, 0),
        ({"max_numwant": 50}, None, 50),
        ({"max_numwant": 50}, 80, 50),
    ],
)
def test_numwant_default_and_cap(
    options: dict[str, Any], numwant: int | None, expected: int
) -> None:
    s = swarm(**options)
    fill(s, seeders=100, leechers=500)
    reply = s.announce(req(1, numwant=numwant), now=1.0)
    assert len(reply.peers) == expected
    assert len({p.peer_id for p in reply.peers}) == expected


def seeder_ids(s: Swarm) -> set[PeerId]:
    return {p.peer_id for p in s.peers(TORRENT) if p.seeder}


def test_leechers_get_a_mix_of_seeders_and_leechers() -> None:
    s = swarm()
    fill(s, seeders=10, leechers=100)
    reply = s.announce(req(1, numwant=20), now=1.0)
    chosen = {p.peer_id for p in reply.peers}
    assert len(chosen) == 20
    assert len(chosen & seeder_ids(s)) == 5
    assert len(chosen - seeder_ids(s)) == 15


def test_a_lone_seeder_is_handed_to_every_leecher() -> None:
    s = swarm()
    fill(s, seeders=1, leechers=300)
    for n in range(20):
        reply = s.announce(req(5000 + n, numwant=10), now=1.0)
        assert pid(1000) in {p.peer_id for p in reply.peers}


def test_short_side_is_filled_from_the_other() -> None:
    s = swarm()
    fill(s, seeders=30, leechers=2)
    chosen = {p.peer_id for p in s.announce(req(1, numwant=20), now=1.0).peers}
    assert len(chosen) == 20
    assert {pid(2000), pid(2001)} <= chosen


def test_seeders_get_only_leechers() -> None:
    s = swarm()
    fill(s, seeders=10, leechers=5)
    reply = s.announce(req(1, left=0), now=1.0)
    assert {p.peer_id for p in reply.peers} == {pid(2000 + n) for n in range(5)}


def unpack(blob: bytes, width: int) -> set[PeerAddr]:
    out = set()
    for i in range(0, len(blob), width):
        (port,) = struct.unpack(">H", blob[i + width - 2 : i + width])
        out.add(PeerAddr(str(ipaddress.ip_address(blob[i : i + width - 2])), port))
    return out


def test_compact_and_dict_encodings_decode_back_to_the_peers() -> None:
    s = swarm()
    s.announce(req(1, ip="10.0.0.1", port=6000), now=0.0)
    s.announce(req(2, ip="2001:db8::2", port=6001, left=0), now=0.0)
    s.announce(req(3, ip="::1", port=6002), now=0.0)
    reply = s.announce(req(4, ip="10.0.0.4", port=6003), now=1.0)
    compact = bencoding.decode(encode_announce(reply, compact=True))
    assert unpack(compact[b"peers"], 6) == {PeerAddr("10.0.0.1", 6000)}
    assert unpack(compact[b"peers6"], 18) == {PeerAddr("2001:db8::2", 6001), PeerAddr("::1", 6002)}
    listed = bencoding.decode(encode_announce(reply, compact=False))[b"peers"]
    assert {(d[b"peer id"], d[b"ip"], d[b"port"]) for d in listed} == {
        (pid(1).raw, b"10.0.0.1", 6000),
        (pid(2).raw, b"2001:db8::2", 6001),
        (pid(3).raw, b"::1", 6002),
    }


def test_scrape_counts() -> None:
    s = swarm()
    s.announce(req(1, left=0, event=Event.COMPLETED), now=0.0)
    s.announce(req(2), now=0.0)
    s.announce(req(3, info_hash=OTHER), now=0.0)
    assert s.scrape([TORRENT, InfoHash(b"Z" * 20)], now=1.0) == {
        TORRENT: ScrapeEntry(complete=1, incomplete=1, downloaded=1),
        InfoHash(b"Z" * 20): ScrapeEntry(0, 0, 0),
    }
    assert set(s.scrape(None, now=1.0)) == {TORRENT, OTHER}


def test_torrent_without_peers_or_completions_is_forgotten() -> None:
    s = swarm(peer_ttl=5)
    s.announce(req(1), now=0.0)
    s.announce(req(2, left=0, event=Event.COMPLETED, info_hash=OTHER), now=0.0)
    s.expire(now=10.0)
    assert s.torrents() == (OTHER,)
    assert s.scrape(None, now=10.0) == {OTHER: ScrapeEntry(0, 0, 1)}


def test_stats_shape() -> None:
    s = swarm()
    s.announce(req(1, left=0, ip="10.0.0.1", port=7000), now=5.0)
    s.announce(req(2, left=42, ip="::1", port=7001), now=6.5)
    labels = {TORRENT: TorrentLabel("release.tgz", 1234)}
    stats = s.stats(7.0, labels, include=[OTHER])
    assert stats == {
        "time": 7.0,
        "interval": 10,
        "torrents": {
            TORRENT.hex: {
                "name": "release.tgz",
                "length": 1234,
                "seeders": 1,
                "leechers": 1,
                "completed": 0,
                "peers": [
                    {
                        "peer_id": pid(1).hex,
                        "ip": "10.0.0.1",
                        "port": 7000,
                        "left": 0,
                        "uploaded": 1,
                        "downloaded": 2,
                        "last_seen": 5.0,
                        "seeder": True,
                    },
                    {
                        "peer_id": pid(2).hex,
                        "ip": "::1",
                        "port": 7001,
                        "left": 42,
                        "uploaded": 2,
                        "downloaded": 4,
                        "last_seen": 6.5,
                        "seeder": False,
                    },
                ],
            },
            OTHER.hex: {
                "name": None,
                "length": None,
                "seeders": 0,
                "leechers": 0,
                "completed": 0,
                "peers": [],
            },
        },
    }
    assert json.loads(json.dumps(stats)) == stats


def test_json_round_trip_keeps_last_seen_and_completions() -> None:
    s = swarm(peer_ttl=20)
    s.announce(req(1, left=0, event=Event.COMPLETED), now=10.0)
    s.announce(AnnounceRequest(OTHER, pid(2), PeerAddr("::1", 9), 1, 2, 3, key=b"\x00k"), 12.5)
    data = json.loads(json.dumps(s.to_json()))
    back = Swarm.from_json(data, peer_ttl=20)
    assert back.to_json() == s.to_json()
    assert back.peers(OTHER)[0].key == b"\x00k"
    back.announce(req(1, left=0, event=Event.COMPLETED), now=13.0)
    assert back.scrape([TORRENT], now=13.0)[TORRENT] == ScrapeEntry(1, 0, 1)
    assert back.expire(now=32.5) == 0
    assert back.expire(now=32.6) == 1  # peer 2, last seen 12.5, expires on its old clock


def valid_dump() -> dict[str, Any]:
    s = swarm()
    s.announce(req(1), now=1.0)
    return s.to_json()


def peer0(d: dict[str, Any]) -> dict[str, Any]:
    peer: dict[str, Any] = d["torrents"][TORRENT.hex]["peers"][0]
    return peer


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "dfile: version must be 1, got 2"),
        (lambda d: d.pop("torrents"), "dfile.torrents is missing"),
        (lambda d: d.update(torrents=[]), "dfile.torrents must be dict, got []"),
        (
            lambda d: d["torrents"].update(zz={}),
            "dfile: torrent 'zz' must be 40 hex digits, got 'zz'",
        ),
        (
            lambda d: peer0(d).update(port=0),
            f"dfile: torrents.{TORRENT.hex}.peers[0] has a bad address '10.0.0.2' port 0",
        ),
        (
            lambda d: peer0(d).update(left=-1),
            f"dfile: torrents.{TORRENT.hex}.peers[0].left must be a non-negative int, got -1",
        ),
        (
            lambda d: peer0(d).update(left=True),
            f"dfile: torrents.{TORRENT.hex}.peers[0].left must be a non-negative int, got True",
        ),
        (
            lambda d: peer0(d).update(last_seen=float("nan")),
            f"dfile: torrents.{TORRENT.hex}.peers[0].last_seen must be float, got nan",
        ),
        (
            lambda d: peer0(d).update(peer_id="00"),
            f"dfile: torrents.{TORRENT.hex}.peers[0].peer_id must be 40 hex digits, got '00'",
        ),
        (
            lambda d: peer0(d).update(key="xyz"),
            f"dfile: torrents.{TORRENT.hex}.peers[0].key must be hex, got 'xyz'",
        ),
    ],
)
def test_from_json_rejects_bad_dumps(mutate: Any, message: str) -> None:
    data = valid_dump()
    mutate(data)
    with pytest.raises(TrackerError) as info:
        Swarm.from_json(data)
    assert str(info.value) == message


@pytest.mark.parametrize("junk", [None, [], "x", 3])
def test_from_json_rejects_non_objects(junk: Any) -> None:
    with pytest.raises(TrackerError, match=r"^dfile must be an object, got "):
        Swarm.from_json(junk)


def test_torrent_and_peer_caps() -> None:
    s = swarm(max_torrents=1, max_peers_per_torrent=2)
    s.announce(req(1), now=0.0)
    s.announce(req(2), now=0.0)
    with pytest.raises(TrackerError) as info:
        s.announce(req(3), now=0.0)
    assert str(info.value) == (
        f"torrent {TORRENT.hex} already has 2 peers, the most this tracker keeps"
    )
    s.announce(req(2), now=1.0)  # known peers still re-announce
    with pytest.raises(
        TrackerError, match=r"^tracker already serves 1 torrents, the most it will$"
    ):
        s.announce(req(4, info_hash=OTHER), now=0.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": 0}, "interval must be at least 1 second, got 0"),
        ({"min_interval": 11}, "min interval must be in 0..10, got 11"),
        ({"max_numwant": -1}, "max numwant must not be negative, got -1"),
        ({"peer_ttl": 0}, "peer ttl must be positive, got 0"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(TrackerError) as info:
        Swarm(**options)
    assert str(info.value) == message


def test_a_big_swarm_is_told_to_announce_less_often_and_kept_as_long() -> None:
    per_second = swarm_module.ANNOUNCES_PER_SECOND
    s = swarm(interval=2, peer_ttl=11)
    n = 5 * per_second  # at 2 s, 2.5x the announces a second the tracker asks for
    replies = [s.announce(req(i, numwant=0), now=0.0) for i in range(n)]
    assert replies[0].interval == 2 and replies[-1].interval == 5
    assert {r.min_interval for r in replies} == {2}
    # Told 5 s, a peer may miss three announces like one told 2 s: 11 + 3 * (5 - 2).
    assert s.expire(now=20.0) == 0
    assert s.expire(now=20.5) == n
    # Shrunk back, the swarm hears the configured interval again, but whoever still
    # waits out the long one is not dropped before it is due.
    s = swarm(interval=2, peer_ttl=11)
    for i in range(n):
        s.announce(req(i, numwant=0), now=0.0)
    for i in range(n - 2):
        s.announce(req(i, event=Event.STOPPED), now=1.0)
    assert s.announce(req(n - 2), now=4.0).interval == 2
    assert s.expire(now=20.0) == 0  # peer n-1, told 5 s at 0.0
    assert [p.peer_id for p in s.peers(TORRENT)] == [pid(n - 1), pid(n - 2)]
    assert s.expire(now=20.5) == 1


def test_version_moves_on_change_only() -> None:
    s = swarm(peer_ttl=5)
    v0 = s.version
    s.stats(0.0)
    assert s.version == v0
    s.announce(req(1), now=0.0)
    v1 = s.version
    assert v1 > v0
    s.expire(now=1.0)
    assert s.version == v1
    s.expire(now=10.0)
    assert s.version > v1


# An announce must not walk the whole swarm (thousands of deploy peers announce every few
# seconds), so the tracker keeps indexes beside the peer table. Random runs of announces,
# restarts on a used address, stops and expiry check them against the table itself.
_STEP = st.tuples(
    st.integers(0, 11),  # peer number
    st.sampled_from([0, 100]),  # left
    st.sampled_from([Event.NONE, Event.STARTED, Event.COMPLETED, Event.STOPPED]),
    st.integers(0, 5),  # address: fewer addresses than peers, so restarts replace ghosts
    st.floats(0, 4),  # seconds since the previous step
    st.integers(0, 12),  # numwant
    st.booleans(),  # also run the periodic expiry
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_STEP, max_size=60))
def test_indexes_match_the_peer_table_and_replies_follow_the_rules(steps: list[Any]) -> None:
    s = swarm(peer_ttl=5)
    now = 0.0
    for n, left, event, where, gap, numwant, sweep in steps:
        now += gap
        request = req(n, left=left, event=event, ip=f"10.1.0.{where + 1}", numwant=numwant)
        reply = s.announce(request, now=now)
        if sweep:
            s.expire(now)
        torrent = s._torrents.get(TORRENT)
        if torrent is None:
            continue
        peers = torrent.peers
        assert dict(torrent.seeds) == {k: p for k, p in peers.items() if p.left == 0}
        assert dict(torrent.leeches) == {k: p for k, p in peers.items() if p.left > 0}
        assert torrent.at == {(p.addr.ip, p.addr.port): k for k, p in peers.items()}
        seen = [p.last_seen for p in peers.values()]
        assert seen == sorted(seen)  # oldest first: expiry looks only at the front
        assert all(now - t <= 5 for t in seen)  # nobody stale is kept or handed out
        assert (reply.complete, reply.incomplete) == torrent.counts()
        if event is Event.STOPPED:
            assert request.peer_id not in peers and reply.peers == ()
            continue
        handed = [p.peer_id for p in reply.peers]
        assert len(handed) == len(set(handed)) and request.peer_id not in handed
        assert all(h in peers for h in handed)
        others = [p for k, p in peers.items() if k != request.peer_id]
        if left == 0:
            assert all(peers[h].left > 0 for h in handed)  # a seeder gets leechers only
            assert len(handed) == min(numwant, sum(p.left > 0 for p in others))
        else:
            assert len(handed) == min(numwant, len(others))
            if numwant and any(p.left == 0 for p in others):
                assert any(peers[h].left == 0 for h in handed)  # the origin stays reachable
