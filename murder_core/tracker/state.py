"""The tracker's state on disk: the dfile it persists, and the allowed-torrents dir it reads.

The dfile is JSON (``Swarm.to_json``), written atomically so a crash mid-save leaves the
previous file intact. A dfile that cannot be read back is moved aside to
``DFILE.corrupt`` and the tracker starts empty: losing a few seconds of swarm state is
harmless (peers re-announce within one interval), refusing to start is not.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..errors import MurderError, TrackerError
from ..metainfo import read_metainfo
from ..values import InfoHash
from .requests import announce_auth
from .swarm import Swarm, TorrentLabel

#: A dfile larger than this is not ours (50k peers x 10 torrents is ~100 MiB of JSON).
MAX_DFILE_BYTES = 256 * 1024 * 1024
#: Files in the allowed dir beyond this many are ignored (and logged).
MAX_ALLOWED_FILES = 10_000


def save_json_atomic(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via tmp + fsync + rename."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        # The rename itself lives in the directory; sync it so it survives a power cut.
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise TrackerError(f"cannot write dfile {path}: {exc.strerror or exc}") from None


def load_swarm(path: str | None, logger: logging.Logger, **options: Any) -> Swarm:
    """The swarm saved in ``path``, or an empty one (missing or corrupt dfile)."""
    if path is None or not os.path.exists(path):
        return Swarm(**options)
    try:
        size = os.path.getsize(path)
        if size > MAX_DFILE_BYTES:
            raise TrackerError(f"dfile is {size} bytes, more than the cap of {MAX_DFILE_BYTES}")
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
        swarm = Swarm.from_json(data, **options)
    except (OSError, ValueError, RecursionError, TrackerError) as exc:
        # ValueError covers bad JSON and bad UTF-8; RecursionError, absurdly deep JSON.
        aside = f"{path}.corrupt"
        logger.error("dfile %s is unreadable (%s); moved to %s, starting empty", path, exc, aside)
        try:
            os.replace(path, aside)
        except OSError as move_exc:
            logger.error("cannot move %s aside: %s", path, move_exc)
        return Swarm(**options)
    peers = sum(len(swarm.peers(info_hash)) for info_hash in swarm.torrents())
    logger.info("loaded %d torrents, %d peers from %s", len(swarm.torrents()), peers, path)
    return swarm


@dataclass(frozen=True)
class _Seen:
    """One .torrent file as of its last stat, so unchanged files are not re-parsed."""

    stamp: tuple[int, int]
    info_hash: InfoHash | None
    label: TorrentLabel | None
    token: bytes | None = field(default=None, repr=False)


class AllowedTorrents:
    """Which torrents the tracker serves: an allowed dir, plus hashes registered in code.

    With neither, the tracker is open (serves any torrent), as Murder's was. The dir is
    rescanned when an unknown hash shows up, at most once per ``rescan_interval``, so a
    .torrent copied in later is served without a restart. Thread-safe.

    A torrent whose announce URL carries ``auth=TOKEN`` (``make-torrent --auth``) is a
    deploy's secret: only requests bearing that token may announce, scrape or see it.
    """

    def __init__(
        self,
        allowed_dir: str | None,
        allow: Iterable[InfoHash] = (),
        *,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        rescan_interval: float = 1.0,
    ) -> None:
        self._dir = allowed_dir
        self._log = logger
        self._clock = clock
        self._rescan_interval = rescan_interval
        self._scanned_stamp: int | None = None
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self._registered: dict[InfoHash, TorrentLabel | None] = dict.fromkeys(allow)
        self._registered_tokens: dict[InfoHash, bytes] = {}
        self._files: dict[str, _Seen] = {}
        self._last_scan: float | None = None
        # Rebuilt on every change, read on every announce.
        self._known: dict[InfoHash, TorrentLabel | None] = dict(self._registered)
        self._tokens: dict[InfoHash, frozenset[bytes]] = {}

    @property
    def open(self) -> bool:
        """True when any torrent is served (no allowed dir, nothing registered)."""
        with self._lock:
            return self._dir is None and not self._registered

    def allow(
        self, info_hash: InfoHash, label: TorrentLabel | None = None, token: bytes | None = None
    ) -> None:
        with self._lock:
            self._registered[info_hash] = label
            if token:
                self._registered_tokens[info_hash] = token
            self._rebuild()

    def _rebuild(self) -> None:
        known: dict[InfoHash, TorrentLabel | None] = {
            seen.info_hash: seen.label
            for seen in self._files.values()
            if seen.info_hash is not None
        }
        for info_hash, label in self._registered.items():
            if label is not None or info_hash not in known:
                known[info_hash] = label
        # Strict on purpose: once any source gives a torrent a token, a token is required,
        # even if another (token-less) copy of the same torrent sits in the dir.
        tokens: dict[InfoHash, set[bytes]] = {}
        for seen in self._files.values():
            if seen.info_hash is not None and seen.token is not None:
                tokens.setdefault(seen.info_hash, set()).add(seen.token)
        for info_hash, token in self._registered_tokens.items():
            tokens.setdefault(info_hash, set()).add(token)
        self._known = known
        self._tokens = {h: frozenset(t) for h, t in tokens.items()}

    def token_ok(self, info_hash: InfoHash, auth: bytes | None) -> bool:
        """Whether ``auth`` opens ``info_hash``: always for a torrent without a token.

        A changed dir is read again first: the next deploy of the same payload has the
        same info_hash but a new token, and the old one must stop working at once.
        """
        if self._dir is not None and self._dir_stamp() != self._scanned_stamp:
            with self._scan_lock:
                if self._dir_stamp() != self._scanned_stamp:
                    self._scan()
        with self._lock:
            tokens = self._tokens.get(info_hash)
        if not tokens:
            return True
        if auth is None:
            return False
        # Constant-time, and every token compared, so timing tells nothing about which.
        matches = [hmac.compare_digest(auth, token) for token in tokens]
        return any(matches)

    def visible(self, info_hash: InfoHash, auth: bytes | None) -> bool:
        """Whether a status page asked with ``auth`` may show ``info_hash`` at all.

        An open tracker shows everything (nothing there has a token); otherwise only
        torrents still allowed, and a deploy's only to holders of its token: its
        info_hash and peer list are all an outsider needs to fetch the payload.
        """
        if self.open:
            return True
        with self._lock:
            if info_hash not in self._known:
                return False
        return self.token_ok(info_hash, auth)

    def _contains(self, info_hash: InfoHash) -> bool:
        with self._lock:
            return info_hash in self._known

    def allowed(self) -> frozenset[InfoHash]:
        """Every torrent explicitly allowed (empty when the tracker is open)."""
        with self._lock:
            return frozenset(self._known)

    def labels(self) -> dict[InfoHash, TorrentLabel]:
        with self._lock:
            return {h: label for h, label in self._known.items() if label is not None}

    def is_allowed(self, info_hash: InfoHash) -> bool:
        if self.open or self._contains(info_hash):
            return True
        if self._dir is None:
            return False
        with self._scan_lock:
            # Another thread may have scanned while we waited for the lock.
            if self._contains(info_hash):
                return True
            # Rate-limit rescans, except when the directory itself changed: a deploy copies
            # its .torrent in right before the first announce and must not be refused.
            if (
                self._last_scan is not None
                and self._clock() - self._last_scan < self._rescan_interval
                and self._dir_stamp() == self._scanned_stamp
            ):
                return False
            self._scan()
        return self._contains(info_hash)

    def scan(self) -> None:
        """Read the allowed dir now (at start, and whenever ``is_allowed`` decides to)."""
        if self._dir is None:
            return
        with self._scan_lock:
            self._scan()

    def _dir_stamp(self) -> int | None:
        assert self._dir is not None
        try:
            return os.stat(self._dir).st_mtime_ns
        except OSError:
            return None

    def _scan(self) -> None:
        assert self._dir is not None
        self._last_scan = self._clock()
        self._scanned_stamp = self._dir_stamp()
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(self._dir)
                if entry.name.endswith(".torrent") and entry.is_file()
            )
        except OSError as exc:
            self._log.error("cannot read allowed dir %s: %s", self._dir, exc.strerror or exc)
            return
        if len(names) > MAX_ALLOWED_FILES:
            self._log.error(
                "allowed dir %s has %d .torrent files; only the first %d are served",
                self._dir,
                len(names),
                MAX_ALLOWED_FILES,
            )
            names = names[:MAX_ALLOWED_FILES]
        files: dict[str, _Seen] = {}
        for name in names:
            path = os.path.join(self._dir, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # removed between listing and stat
            stamp = (st.st_mtime_ns, st.st_size)
            previous = self._files.get(path)
            if previous is None or previous.stamp != stamp:
                previous = self._read(path, stamp)
            files[path] = previous
        with self._lock:
            self._files = files
            self._rebuild()

    def _read(self, path: str, stamp: tuple[int, int]) -> _Seen:
        try:
            meta = read_metainfo(path)
            # A torrent whose token we cannot read must not be served unprotected.
            token = announce_auth(meta.announce)
        except MurderError as exc:
            self._log.warning("skipping bad torrent: %s", exc)
            return _Seen(stamp, None, None)
        except OSError as exc:
            self._log.warning("skipping unreadable torrent %s: %s", path, exc)
            return _Seen(stamp, None, None)
        protected = " (auth token required)" if token else ""
        self._log.info("serving %s (%s) from %s%s", meta.info_hash.hex, meta.name, path, protected)
        label = TorrentLabel(meta.name, meta.total_length)
        return _Seen(stamp, meta.info_hash, label, token)
