"""Swarm bookkeeping: who is in which torrent, who to hand out, who has gone quiet.

Pure: no sockets, no threads, no clock. Every call that depends on time takes
``now`` (unix seconds, float) so tests drive expiry by passing numbers, and the
whole state round-trips through JSON for the tracker's dfile.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import TrackerError
from ..values import InfoHash, PeerAddr, PeerId
from .requests import AnnounceReply, AnnounceRequest, Event, ReplyPeer, ScrapeEntry

DEFAULT_INTERVAL = 10
DEFAULT_MIN_INTERVAL = 2
DEFAULT_NUMWANT = 200
#: Murder's tracker handed out up to 500 peers; more only costs bandwidth.
MAX_NUMWANT = 500
#: Announces a second one torrent's peers are asked for, at most: a swarm bigger than
#: this many times the interval is told to announce less often (a deploy tracker's 2 s
#: interval at 5,000 hosts would be 2,500 a second, a few CPU-seconds each second).
ANNOUNCES_PER_SECOND = 250
#: Caps so an open tracker cannot be made to grow without bound.
MAX_PEERS_PER_TORRENT = 50_000
MAX_TORRENTS = 10_000
DFILE_VERSION = 1


@dataclass(frozen=True)
class TorrentLabel:
    """What the tracker knows about a torrent from its .torrent file."""

    name: str
    length: int


@dataclass
class PeerRecord:
    peer_id: PeerId
    addr: PeerAddr
    uploaded: int
    downloaded: int
    left: int
    last_seen: float
    key: bytes | None = None

    @property
    def seeder(self) -> bool:
        return self.left == 0


@dataclass
class _Torrent:
    """One torrent's peers, indexed so that an announce costs the same at any swarm size.

    A deploy swarm of thousands announcing every few seconds cannot afford a walk over
    every peer per announce (it made the tracker a few hundred announces a second at
    1,000 peers): ``peers`` is kept oldest announce first, so expiry looks only at the
    front, and seeders, leechers and addresses have their own indexes.
    """

    peers: dict[PeerId, PeerRecord] = field(default_factory=dict)  # oldest announce first
    seeds: dict[PeerId, PeerRecord] = field(default_factory=dict)
    leeches: dict[PeerId, PeerRecord] = field(default_factory=dict)
    at: dict[tuple[str, int], PeerId] = field(default_factory=dict)  # who is at ip:port
    completed: int = 0
    # Who already counted toward ``completed``, so a re-sent event counts once.
    completed_by: set[PeerId] = field(default_factory=set)
    # The longest interval handed out here: peers told to wait that long must not
    # expire before they are due, even once the swarm has shrunk.
    longest_interval: int = 0

    def counts(self) -> tuple[int, int]:
        return len(self.seeds), len(self.leeches)

    def evict(self, record: PeerRecord) -> PeerRecord | None:
        """Remove what ``record`` replaces; returns the peer's previous record, if any.

        A peer restarted with a fresh peer_id on the same ip:port replaces its old
        record too; otherwise the ghost would be counted (and handed out) until it expires.
        """
        previous = self.remove(record.peer_id)
        ghost = self.at.get((record.addr.ip, record.addr.port))
        if ghost is not None:
            self.remove(ghost)
        return previous

    def add(self, record: PeerRecord) -> None:
        """Append ``record`` (newest announce last); ``evict`` it first."""
        self.peers[record.peer_id] = record
        (self.seeds if record.seeder else self.leeches)[record.peer_id] = record
        self.at[(record.addr.ip, record.addr.port)] = record.peer_id

    def remove(self, peer_id: PeerId) -> PeerRecord | None:
        record = self.peers.pop(peer_id, None)
        if record is not None:
            (self.seeds if record.seeder else self.leeches).pop(peer_id, None)
            if self.at.get((record.addr.ip, record.addr.port)) == peer_id:
                del self.at[(record.addr.ip, record.addr.port)]
        return record

    def expire(self, cutoff: float, *, everyone: bool) -> int:
        """Drop peers last seen before ``cutoff``: the oldest only, or (``everyone``) all.

        Announces append, so the front holds the oldest; a wall clock stepped back can
        leave one out of place, which the periodic ``everyone`` pass catches.
        """
        if everyone:
            stale = [pid for pid, p in self.peers.items() if p.last_seen < cutoff]
        else:
            stale = []
            for pid, p in self.peers.items():
                if p.last_seen >= cutoff:
                    break
                stale.append(pid)
        for peer_id in stale:
            self.remove(peer_id)
        return len(stale)


class Swarm:
    """Every torrent's peers, with announce/scrape/stats/expiry over them."""

    def __init__(
        self,
        *,
        interval: int = DEFAULT_INTERVAL,
        min_interval: int = DEFAULT_MIN_INTERVAL,
        peer_ttl: float | None = None,
        default_numwant: int = DEFAULT_NUMWANT,
        max_numwant: int = MAX_NUMWANT,
        max_peers_per_torrent: int = MAX_PEERS_PER_TORRENT,
        max_torrents: int = MAX_TORRENTS,
        rng: random.Random | None = None,
    ) -> None:
        if interval < 1:
            raise TrackerError(f"interval must be at least 1 second, got {interval}")
        if not 0 <= min_interval <= interval:
            raise TrackerError(f"min interval must be in 0..{interval}, got {min_interval}")
        if max_numwant < 0:
            raise TrackerError(f"max numwant must not be negative, got {max_numwant}")
        self.interval = interval
        self.min_interval = min_interval
        self.peer_ttl = float(3 * interval + 5 if peer_ttl is None else peer_ttl)
        if self.peer_ttl <= 0:
            raise TrackerError(f"peer ttl must be positive, got {peer_ttl}")
        self.default_numwant = min(default_numwant, max_numwant)
        self.max_numwant = max_numwant
        self.max_peers_per_torrent = max_peers_per_torrent
        self.max_torrents = max_torrents
        self._rng = rng if rng is not None else random.Random()
        self._torrents: dict[InfoHash, _Torrent] = {}
        self._version = 0

    @property
    def version(self) -> int:
        """Bumped on every change, so a saver can tell whether there is anything to write."""
        return self._version

    def torrents(self) -> tuple[InfoHash, ...]:
        return tuple(self._torrents)

    def peers(self, info_hash: InfoHash) -> tuple[PeerRecord, ...]:
        torrent = self._torrents.get(info_hash)
        return tuple(torrent.peers.values()) if torrent else ()

    def announce(self, request: AnnounceRequest, now: float) -> AnnounceReply:
        """Record one announce and choose peers for the announcer."""
        torrent = self._torrents.get(request.info_hash)
        if torrent is None:
            if len(self._torrents) >= self.max_torrents:
                self.expire(now)
            if len(self._torrents) >= self.max_torrents:
                raise TrackerError(
                    f"tracker already serves {self.max_torrents} torrents, the most it will"
                )
            torrent = self._torrents[request.info_hash] = _Torrent()
        torrent.expire(now - self._ttl(torrent), everyone=False)
        self._version += 1  # an announce always changes something (last_seen at least)

        record = PeerRecord(
            peer_id=request.peer_id,
            addr=request.addr,
            uploaded=request.uploaded,
            downloaded=request.downloaded,
            left=request.left,
            last_seen=now,
            key=request.key,
        )
        previous = torrent.evict(record)
        if request.event is Event.STOPPED:
            seeders, leechers = torrent.counts()
            return AnnounceReply(self.interval, self.min_interval, seeders, leechers, ())

        if len(torrent.peers) >= self.max_peers_per_torrent:
            raise TrackerError(
                f"torrent {request.info_hash.hex} already has {self.max_peers_per_torrent} peers, "
                "the most this tracker keeps"
            )
        torrent.add(record)
        finished = request.event is Event.COMPLETED or (previous is not None and previous.left > 0)
        if request.left == 0 and finished and request.peer_id not in torrent.completed_by:
            torrent.completed += 1
            # Past this many we stop remembering; a later duplicate then counts twice,
            # which is better than unbounded memory.
            if len(torrent.completed_by) < 4 * self.max_peers_per_torrent:
                torrent.completed_by.add(request.peer_id)

        numwant = self.default_numwant if request.numwant is None else request.numwant
        chosen = self._choose(torrent, record, min(numwant, self.max_numwant))
        seeders, leechers = torrent.counts()
        interval = self._interval(torrent)
        return AnnounceReply(interval, self.min_interval, seeders, leechers, chosen)

    def _interval(self, torrent: _Torrent) -> int:
        """The configured interval, longer where the swarm would otherwise announce more
        than ANNOUNCES_PER_SECOND times a second."""
        interval = max(self.interval, -(-len(torrent.peers) // ANNOUNCES_PER_SECOND))
        torrent.longest_interval = max(torrent.longest_interval, interval)
        return interval

    def _ttl(self, torrent: _Torrent) -> float:
        # Three missed announces, as peer_ttl allows at the configured interval.
        return self.peer_ttl + 3.0 * max(0, torrent.longest_interval - self.interval)

    def _choose(self, torrent: _Torrent, me: PeerRecord, numwant: int) -> tuple[ReplyPeer, ...]:
        seeders, leechers = len(torrent.seeds), len(torrent.leeches)
        if me.seeder:
            # A seeder has nothing to fetch from other seeders.
            chosen = self._sample(torrent.leeches, min(numwant, leechers), me)
        else:
            leechers -= 1  # not itself
            # Leechers get a quarter of seeders (at least one if any exist) so the
            # origin is always reachable, the rest leechers to spread the load; when one
            # side runs short the other fills the gap.
            seed_share = min(seeders, max(1, numwant // 4)) if numwant else 0
            leech_share = min(leechers, numwant - seed_share)
            seed_share = min(seeders, numwant - leech_share)
            chosen = self._sample(torrent.seeds, seed_share, me)
            chosen += self._sample(torrent.leeches, leech_share, me)
        return tuple(ReplyPeer(p.peer_id, p.addr) for p in chosen)

    def _sample(self, pool: dict[PeerId, PeerRecord], k: int, me: PeerRecord) -> list[PeerRecord]:
        """``k`` peers of ``pool`` other than ``me``, at random: O(k), not O(len(pool))."""
        if k <= 0:
            return []
        picked = self._rng.sample(list(pool.values()), min(k + 1, len(pool)))
        return [p for p in picked if p is not me][:k]

    def scrape(
        self, info_hashes: Iterable[InfoHash] | None = None, *, now: float
    ) -> dict[InfoHash, ScrapeEntry]:
        """Counts for the given torrents (zeros for unknown ones), or for all known."""
        self.expire(now)
        wanted = list(self._torrents) if info_hashes is None else list(info_hashes)
        entries: dict[InfoHash, ScrapeEntry] = {}
        for info_hash in wanted:
            torrent = self._torrents.get(info_hash)
            if torrent is None:
                entries[info_hash] = ScrapeEntry(0, 0, 0)
            else:
                seeders, leechers = torrent.counts()
                entries[info_hash] = ScrapeEntry(seeders, leechers, torrent.completed)
        return entries

    def stats(
        self,
        now: float,
        labels: Mapping[InfoHash, TorrentLabel] | None = None,
        include: Iterable[InfoHash] = (),
    ) -> dict[str, Any]:
        """The ``/stats.json`` document: every known torrent plus ``include``."""
        self.expire(now)
        labels = labels or {}
        torrents: dict[str, Any] = {}
        for info_hash in [*self._torrents, *include]:
            if info_hash.hex in torrents:
                continue
            torrent = self._torrents.get(info_hash) or _Torrent()
            seeders, leechers = torrent.counts()
            label = labels.get(info_hash)
            torrents[info_hash.hex] = {
                "name": label.name if label else None,
                "length": label.length if label else None,
                "seeders": seeders,
                "leechers": leechers,
                "completed": torrent.completed,
                "peers": [
                    {
                        "peer_id": p.peer_id.hex,
                        "ip": p.addr.ip,
                        "port": p.addr.port,
                        "left": p.left,
                        "uploaded": p.uploaded,
                        "downloaded": p.downloaded,
                        "last_seen": p.last_seen,
                        "seeder": p.seeder,
                    }
                    for p in torrent.peers.values()
                ],
            }
        return {"time": now, "interval": self.interval, "torrents": torrents}

    def expire(self, now: float) -> int:
        """Drop peers silent for longer than ``peer_ttl``; return how many went."""
        removed = 0
        for info_hash, torrent in list(self._torrents.items()):
            removed += self._expire_torrent(torrent, now)
            if not torrent.peers and not torrent.completed:
                del self._torrents[info_hash]
                self._version += 1
        return removed

    def _expire_torrent(self, torrent: _Torrent, now: float) -> int:
        stale = torrent.expire(now - self._ttl(torrent), everyone=True)
        if stale:
            self._version += 1
        return stale

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the whole swarm (the dfile's content)."""
        return {
            "version": DFILE_VERSION,
            "torrents": {
                info_hash.hex: {
                    "completed": torrent.completed,
                    "completed_by": sorted(p.hex for p in torrent.completed_by),
                    "peers": [
                        {
                            "peer_id": p.peer_id.hex,
                            "ip": p.addr.ip,
                            "port": p.addr.port,
                            "uploaded": p.uploaded,
                            "downloaded": p.downloaded,
                            "left": p.left,
                            "last_seen": p.last_seen,
                            "key": p.key.hex() if p.key is not None else None,
                        }
                        for p in torrent.peers.values()
                    ],
                }
                for info_hash, torrent in self._torrents.items()
            },
        }

    @classmethod
    def from_json(cls, data: Any, **options: Any) -> Swarm:
        """Rebuild a swarm from ``to_json`` output; anything off raises ``TrackerError``.

        ``options`` are the constructor's keyword arguments.
        """
        swarm = cls(**options)
        root = _Reader(data, "dfile")
        if root.get("version", int) != DFILE_VERSION:
            raise TrackerError(f"dfile: version must be {DFILE_VERSION}, got {data['version']!r}")
        torrents = root.get("torrents", dict)
        if len(torrents) > swarm.max_torrents:
            raise TrackerError(f"dfile: more than {swarm.max_torrents} torrents")
        for hex_hash, body in torrents.items():
            info_hash = _Reader(hex_hash, f"dfile: torrent {hex_hash!r}").hex_bytes(InfoHash)
            where = _Reader(body, f"dfile: torrents.{hex_hash}")
            torrent = _Torrent(completed=where.get("completed", int))
            for i, text in enumerate(where.get("completed_by", list)):
                reader = _Reader(text, f"{where.where}.completed_by[{i}]")
                torrent.completed_by.add(reader.hex_bytes(PeerId))
            peers = where.get("peers", list)
            if len(peers) > swarm.max_peers_per_torrent:
                raise TrackerError(f"{where.where}: more than {swarm.max_peers_per_torrent} peers")
            records = [
                _Reader(item, f"{where.where}.peers[{i}]").peer() for i, item in enumerate(peers)
            ]
            for record in sorted(records, key=lambda r: r.last_seen):  # oldest first
                torrent.evict(record)
                torrent.add(record)
            swarm._torrents[info_hash] = torrent
        return swarm


class _Reader:
    """Typed access into untrusted JSON with error messages that say where."""

    def __init__(self, value: Any, where: str) -> None:
        self.value = value
        self.where = where

    def get(self, key: str, kind: type, *, allow_none: bool = False) -> Any:
        if not isinstance(self.value, dict):
            raise TrackerError(f"{self.where} must be an object, got {type(self.value).__name__}")
        if key not in self.value:
            raise TrackerError(f"{self.where}.{key} is missing")
        found = self.value[key]
        if found is None and allow_none:
            return None
        # bool is an int subclass; True is never a byte count.
        ok = isinstance(found, kind) and not (kind is not bool and isinstance(found, bool))
        if kind is float:
            # NaN would never compare as stale, so such a peer would never expire.
            ok = isinstance(found, (int, float)) and not isinstance(found, bool)
            ok = ok and math.isfinite(found)
        if not ok or (kind is int and found < 0):
            want = "a non-negative int" if kind is int else kind.__name__
            raise TrackerError(f"{self.where}.{key} must be {want}, got {found!r}")
        return float(found) if kind is float else found

    def hex_bytes(self, kind: Any) -> Any:
        try:
            return kind(bytes.fromhex(self.value))
        except (TypeError, ValueError):
            raise TrackerError(f"{self.where} must be 40 hex digits, got {self.value!r}") from None

    def peer(self) -> PeerRecord:
        peer_id = _Reader(self.get("peer_id", str), f"{self.where}.peer_id").hex_bytes(PeerId)
        ip, port = self.get("ip", str), self.get("port", int)
        try:
            addr = PeerAddr(ip, port)
        except ValueError:
            raise TrackerError(f"{self.where} has a bad address {ip!r} port {port!r}") from None
        key_hex = self.get("key", str, allow_none=True)
        try:
            key = None if key_hex is None else bytes.fromhex(key_hex)
        except ValueError:
            raise TrackerError(f"{self.where}.key must be hex, got {key_hex!r}") from None
        return PeerRecord(
            peer_id=peer_id,
            addr=addr,
            uploaded=self.get("uploaded", int),
            downloaded=self.get("downloaded", int),
            left=self.get("left", int),
            last_seen=self.get("last_seen", float),
            key=key,
        )
