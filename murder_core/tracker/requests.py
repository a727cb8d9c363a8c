"""Tracker messages: query strings in, typed requests out; typed replies in, bencode out.

Pure: no sockets, no clock. Every parse failure is a ``TrackerRequestError`` whose
message names the parameter and shows (a prefix of) what we got, so a client author
can fix their side from the reply alone.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence
from urllib.parse import unquote_to_bytes, urlsplit

from .. import bencoding
from ..errors import TrackerRequestError
from ..values import InfoHash, PeerAddr, PeerId

#: Longer query strings are refused before parsing (BEP 3 requests are ~250 bytes).
MAX_QUERY_BYTES = 4096
#: A scrape for ~60 hashes already fills MAX_QUERY_BYTES; more fields means abuse.
MAX_QUERY_FIELDS = 128
#: 2**63 - 1 has 19 digits; anything longer is not a byte count a real client sends.
MAX_INT_DIGITS = 19
#: The ``key`` parameter is a short client-chosen token; cap what we store.
MAX_KEY_BYTES = 64
#: The ``auth`` parameter carries a deploy's secret (32 hex digits from make-torrent).
MAX_AUTH_BYTES = 128

_DIGITS = re.compile(rb"[0-9]{1,%d}" % MAX_INT_DIGITS)
_AUTH_VALUE = re.compile(r"(?i)(\bauth=)[^&#\s]*")


class Event(Enum):
    """The ``event`` parameter of an announce."""

    NONE = ""
    STARTED = "started"
    COMPLETED = "completed"
    STOPPED = "stopped"


# "empty" is BEP 3's spelling of no event; "paused" (BEP 21) is what libtorrent sends
# for a paused torrent that stays in the swarm, which for us is a plain re-announce.
_EVENTS = {
    b"": Event.NONE,
    b"empty": Event.NONE,
    b"paused": Event.NONE,
    b"started": Event.STARTED,
    b"completed": Event.COMPLETED,
    b"stopped": Event.STOPPED,
}


@dataclass(frozen=True)
class AnnounceRequest:
    """One parsed ``GET /announce``; ``addr`` is where other peers should connect."""

    info_hash: InfoHash
    peer_id: PeerId
    addr: PeerAddr
    uploaded: int
    downloaded: int
    left: int
    event: Event = Event.NONE
    numwant: int | None = None
    compact: bool = True
    no_peer_id: bool = False
    key: bytes | None = None
    #: The deploy secret the client read from its .torrent's announce URL, if any.
    auth: bytes | None = dataclasses.field(default=None, repr=False)


@dataclass(frozen=True)
class ScrapeRequest:
    """One parsed ``GET /scrape``; no hashes means "every torrent you serve"."""

    info_hashes: tuple[InfoHash, ...] = ()
    auth: bytes | None = dataclasses.field(default=None, repr=False)


@dataclass(frozen=True)
class ReplyPeer:
    """A peer as handed out in an announce reply."""

    peer_id: PeerId
    addr: PeerAddr


@dataclass(frozen=True)
class AnnounceReply:
    interval: int
    min_interval: int
    complete: int
    incomplete: int
    peers: tuple[ReplyPeer, ...] = ()


@dataclass(frozen=True)
class ScrapeEntry:
    complete: int
    incomplete: int
    downloaded: int


def _show(value: bytes) -> str:
    """A printable, bounded rendering of a bad value for an error message."""
    text = value[:40].decode("latin-1")
    return repr(text + "...") if len(value) > 40 else repr(text)


def parse_query(query: bytes) -> list[tuple[str, bytes]]:
    """Split a raw query string into (name, raw bytes value) pairs, in order.

    We do this by hand because ``urllib.parse.parse_qsl`` decodes values as text and
    info_hash / peer_id are arbitrary bytes.
    """
    if len(query) > MAX_QUERY_BYTES:
        raise TrackerRequestError(
            f"query string is {len(query)} bytes, more than the cap of {MAX_QUERY_BYTES}",
            value=len(query),
        )
    pairs: list[tuple[str, bytes]] = []
    for field in query.split(b"&"):
        if not field:
            continue
        if len(pairs) == MAX_QUERY_FIELDS:
            raise TrackerRequestError(
                f"query string has more than {MAX_QUERY_FIELDS} parameters",
                value=MAX_QUERY_FIELDS,
            )
        raw_name, _, raw_value = field.partition(b"=")
        name_bytes = unquote_to_bytes(raw_name.replace(b"+", b" "))
        value = unquote_to_bytes(raw_value.replace(b"+", b" "))
        # Parameter names we know are ASCII; anything else can never match one.
        pairs.append((name_bytes.decode("latin-1"), value))
    return pairs


def _single(pairs: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    found = [value for key, value in pairs if key == name]
    if len(found) > 1:
        raise TrackerRequestError(f"{name} given {len(found)} times, expected once", param=name)
    return found[0] if found else None


def _required(pairs: Sequence[tuple[str, bytes]], name: str) -> bytes:
    value = _single(pairs, name)
    if value is None:
        raise TrackerRequestError(f"missing {name}", param=name)
    return value


def parse_auth(pairs: Sequence[tuple[str, bytes]]) -> bytes | None:
    """The ``auth`` parameter (at most once, capped); None when absent or empty.

    The value itself never goes into an error message: it is a secret.
    """
    auth = _single(pairs, "auth")
    if auth is not None and len(auth) > MAX_AUTH_BYTES:
        raise TrackerRequestError(
            f"auth must be at most {MAX_AUTH_BYTES} bytes, got {len(auth)}", param="auth"
        )
    return auth or None


def announce_auth(announce: str) -> bytes | None:
    """The ``auth`` a .torrent's announce URL carries, read exactly as a request's would be.

    Clients append their parameters to the announce URL with ``&``, so the tracker
    receives this very value in every announce and scrape for that torrent.
    """
    return parse_auth(parse_query(urlsplit(announce).query.encode("utf-8")))


def redact(text: str) -> str:
    """``text`` (a request target or line) fit for a log: ``auth`` values are hidden."""
    return _AUTH_VALUE.sub(r"\1<redacted>", text)


def _info_hash(raw: bytes, name: str = "info_hash") -> InfoHash:
    if len(raw) != 20:
        raise TrackerRequestError(f"{name} must be 20 bytes, got {len(raw)}", param=name, value=raw)
    return InfoHash(raw)


def _count(pairs: Sequence[tuple[str, bytes]], name: str) -> int:
    raw = _required(pairs, name)
    return _non_negative(raw, name)


def _non_negative(raw: bytes, name: str) -> int:
    # int() would accept "+5", " 5", "5_0" and non-ASCII digits; clients send plain digits.
    if not _DIGITS.fullmatch(raw):
        raise TrackerRequestError(
            f"{name} must be a non-negative integer, got {_show(raw)}", param=name, value=raw
        )
    return int(raw)


def _flag(pairs: Sequence[tuple[str, bytes]], name: str, default: bool) -> bool:
    raw = _single(pairs, name)
    if raw is None or raw == b"":
        return default
    if raw not in (b"0", b"1"):
        raise TrackerRequestError(f"{name} must be 0 or 1, got {_show(raw)}", param=name, value=raw)
    return raw == b"1"


def normalize_ip(text: str) -> str:
    """Canonical text of an IP address; IPv4-mapped IPv6 (dual-stack socket) -> IPv4.

    Raises ``ValueError`` for anything that is not an IP literal.
    """
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        # A zone id ("%eth0") names an interface on the announcer; it means nothing
        # to the peers we hand this address to.
        return str(ipaddress.IPv6Address(text.split("%", 1)[0]))
    return str(address)


def parse_announce(query: bytes, remote_ip: str) -> AnnounceRequest:
    """Parse the raw query string of ``GET /announce``.

    ``remote_ip`` is the connection's address, used when the client sends no ``ip``.
    A deploy fleet is trusted, so an explicit ``ip`` is honoured (Murder's clients
    send ``--ip``); it must be an IP literal because compact replies cannot carry names.
    """
    pairs = parse_query(query)
    info_hash = _info_hash(_required(pairs, "info_hash"))
    raw_peer_id = _required(pairs, "peer_id")
    if len(raw_peer_id) != 20:
        raise TrackerRequestError(
            f"peer_id must be 20 bytes, got {len(raw_peer_id)}", param="peer_id", value=raw_peer_id
        )
    raw_port = _required(pairs, "port")
    port = int(raw_port) if _DIGITS.fullmatch(raw_port) else -1
    if not 0 < port < 65536:
        raise TrackerRequestError(
            f"port must be an integer in 1..65535, got {_show(raw_port)}",
            param="port",
            value=raw_port,
        )
    uploaded = _count(pairs, "uploaded")
    downloaded = _count(pairs, "downloaded")
    left = _count(pairs, "left")

    raw_event = _single(pairs, "event") or b""
    event = _EVENTS.get(raw_event)
    if event is None:
        raise TrackerRequestError(
            f"event must be one of started, completed, stopped or empty, got {_show(raw_event)}",
            param="event",
            value=raw_event,
        )

    raw_numwant = _single(pairs, "numwant")
    numwant = None if raw_numwant in (None, b"") else _non_negative(raw_numwant, "numwant")

    raw_ip = _single(pairs, "ip")
    try:
        ip = normalize_ip(raw_ip.decode("ascii") if raw_ip else remote_ip)
    except (ValueError, UnicodeDecodeError):
        if not raw_ip:
            raise TrackerRequestError(
                f"cannot use the connection's address {remote_ip!r} as a peer address",
                param="ip",
                value=remote_ip,
            ) from None
        raise TrackerRequestError(
            f"ip must be an IPv4 or IPv6 address, got {_show(raw_ip)}", param="ip", value=raw_ip
        ) from None

    key = _single(pairs, "key")
    if key is not None and len(key) > MAX_KEY_BYTES:
        raise TrackerRequestError(
            f"key must be at most {MAX_KEY_BYTES} bytes, got {len(key)}", param="key", value=key
        )
    return AnnounceRequest(
        info_hash=info_hash,
        peer_id=PeerId(raw_peer_id),
        addr=PeerAddr(ip, port),
        uploaded=uploaded,
        downloaded=downloaded,
        left=left,
        event=event,
        numwant=numwant,
        compact=_flag(pairs, "compact", default=True),
        no_peer_id=_flag(pairs, "no_peer_id", default=False),
        key=key or None,
        auth=parse_auth(pairs),
    )


def parse_scrape(query: bytes) -> ScrapeRequest:
    """Parse the raw query string of ``GET /scrape`` (BEP 48): repeated ``info_hash``."""
    hashes: list[InfoHash] = []
    pairs = parse_query(query)
    for name, value in pairs:
        if name == "info_hash":
            info_hash = _info_hash(value)
            if info_hash not in hashes:
                hashes.append(info_hash)
    return ScrapeRequest(tuple(hashes), auth=parse_auth(pairs))


def compact_peers(peers: Sequence[ReplyPeer]) -> tuple[bytes, bytes]:
    """BEP 23 ``peers`` (6 bytes per IPv4 peer) and BEP 7 ``peers6`` (18 bytes per IPv6)."""
    packed = [_packed(peer.addr.ip, peer.addr.port) for peer in peers]
    return b"".join(p for p in packed if len(p) == 6), b"".join(p for p in packed if len(p) == 18)


@functools.lru_cache(maxsize=65536)
def _packed(ip: str, port: int) -> bytes:
    # Every reply packs up to numwant addresses, and the same few thousand recur:
    # ipaddress parses one in microseconds, a cache hit costs a dict lookup.
    return ipaddress.ip_address(ip).packed + struct.pack(">H", port)


def encode_announce(
    reply: AnnounceReply, *, compact: bool = True, no_peer_id: bool = False
) -> bytes:
    """Bencode an announce reply, in compact form or as BEP 3's list of dicts."""
    body: dict[str, Any] = {
        "interval": reply.interval,
        "min interval": reply.min_interval,
        "complete": reply.complete,
        "incomplete": reply.incomplete,
    }
    if compact:
        v4, v6 = compact_peers(reply.peers)
        body["peers"] = v4
        if v6:
            body["peers6"] = v6
    else:
        listed: list[dict[str, Any]] = []
        for peer in reply.peers:
            entry: dict[str, Any] = {"ip": peer.addr.ip, "port": peer.addr.port}
            if not no_peer_id:
                entry["peer id"] = peer.peer_id.raw
            listed.append(entry)
        body["peers"] = listed
    return bencoding.encode(body)


def encode_scrape(entries: Mapping[InfoHash, ScrapeEntry]) -> bytes:
    """Bencode a BEP 48 scrape reply: ``files`` keyed by the raw 20-byte info_hash."""
    files = {
        info_hash.raw: {
            "complete": entry.complete,
            "incomplete": entry.incomplete,
            "downloaded": entry.downloaded,
        }
        for info_hash, entry in entries.items()
    }
    return bencoding.encode({"files": files})


def encode_failure(reason: str) -> bytes:
    """Bencode a ``failure reason`` reply (clients show it to the user)."""
    return bencoding.encode({"failure reason": reason})
