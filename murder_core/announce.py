"""Talking to the tracker: build announce URLs, parse replies, fetch them.

The URL building and reply parsing are pure functions (tested without a network);
``fetch_async`` does the GET on the client's event loop (``httpget``), and ``fetch`` is
the blocking urllib version, used for https:// trackers and by tools.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import urllib.parse
from typing import Any

from . import __version__, bencoding, httpget
from .errors import BencodeError, MetainfoError, TrackerBusyError, TrackerError
from .records import record
from .values import PeerAddr

#: A tracker reply bigger than this is not a deploy tracker talking.
MAX_REPLY_BYTES = 2 * 1024 * 1024
#: Never trust more peers than this from one reply (Murder's tracker sent up to 500).
MAX_PEERS_PER_REPLY = 1000
#: Random bytes in a deploy's auth token (hex-encoded in the URL: 32 characters).
AUTH_TOKEN_BYTES = 16

USER_AGENT = f"murder/{__version__}"
#: The longest wait between two tries of a failed announce.
RETRY_CAP = 15.0


@record
class AnnounceReply:
    interval: int
    min_interval: int
    peers: tuple[PeerAddr, ...]
    complete: int | None = None
    incomplete: int | None = None
    warning: str | None = None


def announce_query(
    announce: str,
    *,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    uploaded: int,
    downloaded: int,
    left: int,
    event: str = "",
    ip: str | None = None,
    numwant: int = 200,
    key: str | None = None,
) -> str:
    """The full announce URL, keeping any query the .torrent's announce already carries."""
    params: list[tuple[str, str | bytes]] = [
        ("info_hash", info_hash),
        ("peer_id", peer_id),
        ("port", str(port)),
        ("uploaded", str(uploaded)),
        ("downloaded", str(downloaded)),
        ("left", str(left)),
        ("compact", "1"),
        ("numwant", str(numwant)),
    ]
    if event:
        params.append(("event", event))
    if ip:
        params.append(("ip", ip))
    if key:
        params.append(("key", key))
    query = "&".join(f"{k}={urllib.parse.quote_from_bytes(_b(v), safe='')}" for k, v in params)
    sep = "&" if "?" in announce else "?"
    return announce + sep + query


def with_auth_token(announce: str, token: str | None = None) -> str:
    """``announce`` plus ``auth=TOKEN`` (a fresh random one unless given).

    The tracker learns the token from the .torrent and refuses requests without it;
    clients keep it because they append their parameters to the URL with ``&``.
    """
    parts = urllib.parse.urlsplit(announce)
    names = [name for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    if "auth" in names:
        raise MetainfoError(
            f"announce URL already has an auth parameter: {_origin(announce)}{parts.path}",
            key="announce",
        )
    if parts.fragment:
        # A client would append its parameters after the fragment, where no server sees them.
        raise MetainfoError(
            f"announce URL must not have a #fragment, got {announce!r}",
            key="announce",
            value=announce,
        )
    if token is None:
        import secrets  # only make-torrent needs it: not on every peer's start

        token = secrets.token_hex(AUTH_TOKEN_BYTES)
    if not token or not all(c.isalnum() or c in "-._~" for c in token):
        raise MetainfoError("auth token must be URL-safe characters only", key="announce")
    sep = "&" if parts.query else ("" if announce.endswith("?") else "?")
    return f"{announce}{sep}auth={token}"


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _int_field(reply: dict[bytes, Any], key: bytes, default: int | None) -> int | None:
    value = reply.get(key, default)
    if value is not None and (not isinstance(value, int) or value < 0):
        raise TrackerError(f"tracker reply field {key.decode()!r} must be a non-negative integer")
    return value


def _compact_peers(blob: bytes, width: int) -> list[PeerAddr]:
    if len(blob) % width:
        raise TrackerError(f"compact peer list length {len(blob)} is not a multiple of {width}")
    peers = []
    for off in range(0, min(len(blob), width * MAX_PEERS_PER_REPLY), width):
        raw_ip, raw_port = blob[off : off + width - 2], blob[off + width - 2 : off + width]
        port = int.from_bytes(raw_port, "big")
        if port:
            peers.append(PeerAddr(str(ipaddress.ip_address(raw_ip)), port))
    return peers


def _dict_peers(items: list[Any]) -> list[PeerAddr]:
    peers = []
    for item in items[:MAX_PEERS_PER_REPLY]:
        if not isinstance(item, dict):
            raise TrackerError("tracker peer list entry is not a dictionary")
        ip, port = item.get(b"ip"), item.get(b"port")
        if not isinstance(ip, bytes) or not isinstance(port, int):
            raise TrackerError("tracker peer entry lacks a valid ip/port")
        try:
            peers.append(PeerAddr(ip.decode(), port))
        except (ValueError, UnicodeDecodeError):
            continue  # hostnames and junk entries: skip rather than fail the announce
    return peers


def parse_reply(body: bytes) -> AnnounceReply:
    """Decode a tracker's bencoded reply; a ``failure reason`` becomes a TrackerError."""
    try:
        reply = bencoding.decode(body, max_size=MAX_REPLY_BYTES)
    except BencodeError as exc:
        raise TrackerError(f"tracker sent an invalid reply: {exc}") from None
    if not isinstance(reply, dict):
        raise TrackerError("tracker reply is not a dictionary")
    failure = reply.get(b"failure reason")
    if failure is not None:
        text = failure.decode("utf-8", "replace") if isinstance(failure, bytes) else str(failure)
        raise TrackerError(f"tracker refused the announce: {text}")
    interval = _int_field(reply, b"interval", 30) or 30
    min_interval = _int_field(reply, b"min interval", 1) or 1
    peers: list[PeerAddr] = []
    raw = reply.get(b"peers", b"")
    if isinstance(raw, bytes):
        peers += _compact_peers(raw, 6)
    elif isinstance(raw, list):
        peers += _dict_peers(raw)
    else:
        raise TrackerError("tracker reply field 'peers' has the wrong type")
    raw6 = reply.get(b"peers6", b"")
    if isinstance(raw6, bytes):
        peers += _compact_peers(raw6, 18)
    warning = reply.get(b"warning message")
    return AnnounceReply(
        interval=interval,
        min_interval=min_interval,
        peers=tuple(peers[:MAX_PEERS_PER_REPLY]),
        complete=_int_field(reply, b"complete", None),
        incomplete=_int_field(reply, b"incomplete", None),
        warning=warning.decode("utf-8", "replace") if isinstance(warning, bytes) else None,
    )


def retry_delay(failures: int, rng: random.Random) -> float:
    """Seconds to wait after the ``failures``-th failed announce in a row.

    Doubling up to RETRY_CAP, each wait drawn from the upper half of its step: a fleet
    whose first announces failed together (a tracker swamped by all of them at once)
    must not come back all at once again.
    """
    ceiling = min(2.0 ** max(failures, 1), RETRY_CAP)
    return rng.uniform(ceiling / 2, ceiling)


async def fetch_async(url: str, timeout: float) -> AnnounceReply:
    """One announce on the running loop; every failure is a TrackerError saying what."""
    if not url.startswith("http://"):
        return await asyncio.get_running_loop().run_in_executor(None, fetch, url, timeout)
    try:
        body = await httpget.get(url, timeout, MAX_REPLY_BYTES, USER_AGENT)
    except httpget.HttpStatus as exc:
        raise _status_error(exc.code, exc.body) from None
    except httpget.HttpProtocolError as exc:
        raise TrackerError(f"tracker {_origin(url)} sent a bad reply: {exc}") from None
    except httpget.NoReply as exc:
        raise TrackerBusyError(f"tracker {_origin(url)} is busy: {exc}") from None
    except (TimeoutError, asyncio.TimeoutError):  # the same class only from Python 3.11 on
        raise TrackerError(
            f"cannot reach tracker {_origin(url)}: no connection within {timeout:g} s"
        ) from None
    except OSError as exc:
        # asyncio's connect errors say "Connect call failed (...)" in place of strerror.
        reason = os.strerror(exc.errno) if exc.errno else exc.strerror or exc
        raise TrackerError(f"cannot reach tracker {_origin(url)}: {reason}") from None
    return _reply_of(body)


def fetch(url: str, timeout: float) -> AnnounceReply:
    """One blocking announce with urllib; every failure is a TrackerError saying what."""
    import urllib.error
    import urllib.request

    # Trackers are internal services: never announce through an http_proxy from the env.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            body = resp.read(MAX_REPLY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise _status_error(exc.code, exc.read(MAX_REPLY_BYTES + 1)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackerError(f"cannot reach tracker {_origin(url)}: {reason}") from None
    return _reply_of(body)


def _reply_of(body: bytes) -> AnnounceReply:
    if len(body) > MAX_REPLY_BYTES:
        raise TrackerError(f"tracker reply exceeds {MAX_REPLY_BYTES} bytes")
    return parse_reply(body)


def _status_error(code: int, body: bytes) -> TrackerError:
    """A non-200 reply, with the tracker's failure reason when its body gives one."""
    if not body.strip():
        return TrackerError(f"tracker answered HTTP {code}")
    try:
        parse_reply(body)
    except TrackerError as inner:
        return TrackerError(f"tracker answered HTTP {code}: {inner}")
    return TrackerError(f"tracker answered HTTP {code}")


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
