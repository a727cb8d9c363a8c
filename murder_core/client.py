"""The asyncio driver: sockets, timers and announces around a Session.

``seed`` serves a complete payload until told to stop. ``peer`` downloads, verifies,
renames into place, reports success, then keeps serving for ``linger`` seconds so
late peers are not left to the seeder alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from typing import Callable

from . import __version__, announce
from .errors import DownloadError, MurderError, StorageError, TrackerBusyError, TrackerError
from .lease import Lease
from .metainfo import Metainfo, read_metainfo
from .peer import MURDER_PEER_ID_PREFIX, PeerLink
from .progress import Progress
from .records import record
from .session import Session, SessionConfig
from .storage import Storage
from .unpack_map import read_unpack_map
from .values import PeerAddr

log = logging.getLogger("murder.client")


@record(frozen=False)
class ClientConfig:
    mode: str  # "seed" or "peer"
    torrent: str
    path: str
    ip: str | None = None
    bind: str = "0.0.0.0"
    minport: int = 10000
    maxport: int = 10500
    max_upload_rate: float = 0
    max_download_rate: float = 0
    linger: float = 30.0
    timeout: float = 0.0  # 0: no limit on the download
    tracker_timeout: float = 60.0  # give up when the tracker never answered for this long
    announce_timeout: float = 10.0
    status_every: float = 5.0
    quiet: bool = False
    lazy_check: bool = False  # seed: hash each piece on its first upload, not all at start
    lease: Lease | None = None  # seed: stop by itself once nobody renews this
    unpack_map: str | None = None  # peer: see unpack_map.py
    unpack_dir: str | None = None


def make_peer_id() -> bytes:
    # Azureus-style prefix so other clients (and our tracker's stats) can tell who we are.
    major, minor = ([*__version__.split("."), "0"])[:2]
    version = f"{int(major):02d}{int(minor):02d}-".encode()
    return MURDER_PEER_ID_PREFIX + version + os.urandom(6).hex().encode()


def open_storage(config: ClientConfig, meta: Metainfo, progress: Progress) -> Storage:
    """Open the payload; verify what is already on disk so a restart only fetches the rest."""
    if config.mode == "seed":
        storage = Storage.for_seed(meta, config.path)
        if config.lazy_check:
            storage.assume_complete()
            return storage
        progress.phase("checking", meta.total_length)
        good = storage.verify_all(progress.advance)
        progress.end_phase()
        if good != meta.num_pieces:
            storage.close()
            raise StorageError(
                f"{config.path} does not match the torrent: {meta.num_pieces - good} of "
                f"{meta.num_pieces} pieces fail their SHA-1 check"
            )
        return storage
    unpack = None
    if config.unpack_map is not None and config.unpack_dir is not None:
        entries = read_unpack_map(config.unpack_map, meta.total_length)
        unpack = (entries, config.unpack_dir)
        placed = sum(e.length for e in entries)
        log.info(
            "unpack map: %d files, %d of %d bytes, written straight into %s",
            len(entries),
            placed,
            meta.total_length,
            config.unpack_dir,
        )
    resuming = os.path.exists(config.path + ".part")
    parent = os.path.dirname(os.path.abspath(config.path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create directory {parent}: {exc.strerror}") from None
    storage = Storage.for_download(meta, config.path, unpack)
    if resuming:
        progress.phase("checking", meta.total_length)
        good = storage.verify_all(progress.advance)
        progress.end_phase()
        progress.note(f"resuming: {good} of {meta.num_pieces} pieces already on disk")
    return storage


class Client:
    def __init__(
        self,
        config: ClientConfig,
        *,
        on_complete: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.meta = read_metainfo(config.torrent)
        self.peer_id = make_peer_id()
        self.key = os.urandom(4).hex()
        self._rng = random.Random()  # seeded from the OS: each host its own retry times
        self.progress = Progress(self.meta.name, quiet=config.quiet, every=config.status_every)
        self.storage = open_storage(config, self.meta, self.progress)
        self.session = Session(
            self.meta,
            self.storage,
            self.peer_id,
            SessionConfig(
                max_upload_rate=config.max_upload_rate, max_download_rate=config.max_download_rate
            ),
            on_complete=self._on_pieces_complete,
            on_fatal=self._fail,
        )
        self._user_on_complete = on_complete
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._stop = asyncio.Event()
        self._completed = asyncio.Event()
        self._announce_now = asyncio.Event()
        self._fatal: MurderError | None = None
        self._event = "started"
        self._announced_ok = False

    # -- network plumbing --------------------------------------------------------------
    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for port in range(self.config.minport, self.config.maxport + 1):
            try:
                self._server = await loop.create_server(
                    lambda: PeerLink(self.session, None, False),
                    host=self.config.bind,
                    port=port,
                    reuse_address=True,
                    backlog=256,
                )
            except OSError as exc:
                last = exc
                continue
            self.port = port
            if self.config.ip:
                self.session.own_addrs.add(PeerAddr(self.config.ip, port))
            return
        raise MurderError(
            f"no free port to listen on in {self.config.minport}-{self.config.maxport} "
            f"on {self.config.bind}: {last}"
        )

    def _announce_url(self, event: str) -> str:
        left = self.session.left
        return announce.announce_query(
            self.meta.announce,
            info_hash=self.meta.info_hash.raw,
            peer_id=self.peer_id,
            port=self.port,
            uploaded=self.session.stats.uploaded,
            downloaded=self.session.stats.downloaded,
            left=left,
            event=event,
            ip=self.config.ip,
            key=self.key,
        )

    async def _announce_once(self, event: str, timeout: float) -> announce.AnnounceReply:
        return await announce.fetch_async(self._announce_url(event), timeout)

    async def _announcer(self) -> None:
        """Announce ``started``, then on the tracker's interval; retry with backoff."""
        loop = asyncio.get_running_loop()
        # Until the first answer, tracker_timeout counts from the last sign that the
        # tracker is there at all: a connection it took but answered too late (a whole
        # fleet announcing at once) is such a sign, and worth waiting on; a tracker that
        # takes no connection for that long is down or out of reach.
        there_at = time.monotonic()
        failures = 0
        while not self._stop.is_set():
            try:
                reply = await self._announce_once(self._event, self.config.announce_timeout)
            except TrackerError as exc:
                failures += 1
                if isinstance(exc, TrackerBusyError):
                    there_at = time.monotonic()
                elif (
                    not self._announced_ok
                    and time.monotonic() - there_at > self.config.tracker_timeout
                ):
                    self._fail(
                        TrackerError(f"{exc} (gave up after {self.config.tracker_timeout:.0f} s)")
                    )
                    return
                log.warning("announce failed (%s); retrying", exc)
                await self._wait(announce.retry_delay(failures, self._rng), self._stop)
                continue
            failures = 0
            self._announced_ok = True
            if reply.warning:
                log.warning("tracker: %s", reply.warning)
            self._event = ""
            self.session.add_peers(reply.peers)
            self.session.connect_more(loop)
            interval = max(reply.min_interval, min(reply.interval, 60))
            self._announce_now.clear()
            await self._wait(interval, self._announce_now, self._stop)

    async def _announce_completed(self) -> None:
        try:
            await self._announce_once("completed", self.config.announce_timeout)
        except TrackerError as exc:
            log.warning("could not announce completion: %s", exc)

    @staticmethod
    async def _wait(seconds: float, *events: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            self.session.tick(loop)
            self.progress.update(
                done=self.meta.total_length - self.session.left,
                total=self.meta.total_length,
                uploaded=self.session.stats.uploaded,
                peers=len(self.session.links),
            )
            if self.config.lease is not None:
                why = self.config.lease.expired()
                if why:
                    log.warning("stopping: %s", why)
                    self._stop.set()
            await self._wait(1.0, self._stop)

    # -- completion --------------------------------------------------------------------
    def _on_pieces_complete(self) -> None:
        try:
            self.storage.finalize()
        except StorageError as exc:
            self._fail(exc)
            return
        self._completed.set()

    def _fail(self, exc: MurderError) -> None:
        if self._fatal is None:
            self._fatal = exc
        self._stop.set()

    # -- the two modes -----------------------------------------------------------------
    async def run(self) -> None:
        """Run until done; raises a MurderError when the job failed."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self._listen()
        log.info(
            "%s %s: listening on %s:%d",
            self.config.mode,
            self.meta.name,
            self.config.bind,
            self.port,
        )
        tasks = [loop.create_task(self._announcer()), loop.create_task(self._ticker())]
        try:
            if self.config.mode == "peer":
                await self._run_peer()
            else:
                await self._stop.wait()
        finally:
            self._stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._shutdown()
        if self._fatal is not None:
            raise self._fatal

    async def _run_peer(self) -> None:
        if self.session.complete:
            self._on_pieces_complete()
        deadline = self.config.timeout or None
        waiter = asyncio.ensure_future(self._completed.wait())
        stopper = asyncio.ensure_future(self._stop.wait())
        _done, _ = await asyncio.wait(
            [waiter, stopper], timeout=deadline, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        stopper.cancel()
        if not self._completed.is_set():
            if self._fatal is None:
                missing = self.session.picker.missing_count
                why = (
                    "interrupted"
                    if self._stop.is_set()
                    else f"timed out after {self.config.timeout:.0f} s"
                )
                self._fatal = DownloadError(
                    f"download {why}: {missing} of {self.meta.num_pieces} pieces missing"
                )
            return
        self.progress.finish()
        await self._announce_completed()
        if self._user_on_complete is not None:
            self._user_on_complete()
        if self.config.linger > 0:
            log.info("complete; seeding for %.0f s more", self.config.linger)
            await self._wait(self.config.linger, self._stop)

    async def _shutdown(self) -> None:
        self.session.close_all()
        if self._server is not None:
            self._server.close()
        if self._announced_ok:
            try:
                await self._announce_once("stopped", 3.0)
            except TrackerError as exc:
                log.info("could not announce stop: %s", exc)
        st = self.session.stats
        self.progress.note(
            f"totals: uploaded={st.uploaded} downloaded={st.downloaded} "
            f"wasted={st.wasted} hash_failures={st.hash_failures}"
        )
        self.progress.close()
        self.storage.close()
