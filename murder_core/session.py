"""The swarm as one process sees it: which peers, who is choked, which block next.

The session reacts to events from its peer links and to a once-a-second tick. It
owns the picker (what to fetch) and the storage (where bytes go) and applies the
deploy-swarm policy: every interested peer is unchoked (no tit-for-tat inside a
trusted fleet), pieces are verified before they count, and a peer that sends a
bad piece is dropped and never dialled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Callable

from .errors import MurderError, PayloadMismatchError, StorageError
from .hashing import PieceHasher
from .metainfo import Metainfo
from .peer import PeerLink
from .picker import PiecePicker
from .ratelimit import TokenBucket
from .records import record
from .storage import Storage
from .superseed import SuperSeeder
from .uploads import UPLOAD_SLOTS, UploadOrder
from .values import PeerAddr
from .wire import messages as m
from .wire.connection import DEFAULT_MAX_BLOCK, ChokeState, InterestState

log = logging.getLogger("murder.session")

#: What the picker hands out. A murder peer gets it in one Request; any other client gets
#: it as standard 16 KiB blocks (see PeerLink.request).
REQUEST_UNIT = DEFAULT_MAX_BLOCK


@record(frozen=False)
class SessionConfig:
    max_uploads: int = 64  # peers we serve at once
    # Links given upload data at once, oldest request first (see uploads.py). On the
    # N = 16 bench, against every link at once: 15 of 18 alternating pairs won (one
    # tie), by 0.1-0.5 s, and the swarm's download rate ramps up about 0.4 s sooner;
    # four slots left the seeder 94-98% busy, two 52%.
    upload_slots: int = UPLOAD_SLOTS
    max_peers: int = 80  # connections we keep open
    # Requests (of up to REQUEST_UNIT bytes) in flight per peer: enough for about
    # queue_seconds of what that peer has been sending us. A deeper queue only makes
    # each of its uploads wait behind the others: at 16 per peer a 16-host swarm's
    # last pieces queued for seconds and the deploy took 18.5 s, at 4 it took 15.1 s;
    # a floor of 2 (one piece) took the swarm from 14.3-14.5 s to 13.3-13.8 s, a floor
    # of 1 left the seeder idle (93% busy). Until a peer's rate is measured (once a
    # second) it gets pipeline_start: the same swarm times as 2, and a lone fast link
    # fills its first second (loopback 585 MiB/s against 522).
    pipeline_start: int = 4
    pipeline_min: int = 2
    pipeline_max: int = 32
    queue_seconds: float = 0.25
    max_upload_rate: float = 0  # bytes/s, 0 = unlimited
    max_download_rate: float = 0
    connect_timeout: float = 10.0
    snub_after: float = 20.0  # no block for this long: give its requests to others
    idle_drop_after: float = 150.0  # nothing received at all: drop the peer
    keepalive_every: float = 60.0
    strikes_to_ban: int = 3  # shared bad pieces before a peer is banned
    super_seed: bool = True  # a complete seeder reveals pieces a few at a time


@record(frozen=False)
class Stats:
    uploaded: int = 0
    downloaded: int = 0
    wasted: int = 0
    hash_failures: int = 0


class Session:
    def __init__(
        self,
        meta: Metainfo,
        storage: Storage,
        peer_id: bytes,
        config: SessionConfig,
        *,
        on_complete: Callable[[], None] | None = None,
        on_fatal: Callable[[MurderError], None] | None = None,
    ) -> None:
        self.meta = meta
        self.info_hash = meta.info_hash.raw
        self.num_pieces = meta.num_pieces
        self.peer_id = peer_id
        self.storage = storage
        self.config = config
        self.on_complete = on_complete
        self.on_fatal = on_fatal  # errors that end the whole run, not one link
        self.picker = PiecePicker(
            meta.num_pieces, meta.piece_length, meta.total_length, block_size=REQUEST_UNIT
        )
        for index in range(meta.num_pieces):
            if storage.has(index):
                self.picker.mark_have(index)
        self.stats = Stats()
        self.verified_bytes = sum(
            meta.piece_size(i) for i in range(meta.num_pieces) if storage.has(i)
        )
        self.links: set[PeerLink] = set()
        self.by_id: dict[bytes, PeerLink] = {}
        self.unchoked: set[PeerLink] = set()
        self.known: set[PeerAddr] = set()
        self.connecting: set[PeerAddr] = set()
        self.banned_ids: set[bytes] = set()
        self.banned_addrs: set[PeerAddr] = set()
        self.own_addrs: set[PeerAddr] = set()
        self.addr_ids: dict[PeerAddr, bytes] = {}  # who answered when we dialled an address
        self.strikes: dict[bytes, int] = defaultdict(int)
        self.contributors: dict[int, set[PeerLink]] = defaultdict(set)
        now = time.monotonic()
        self.up_bucket = TokenBucket(config.max_upload_rate, now)
        self.down_bucket = TokenBucket(config.max_download_rate, now)
        self.upload_order: UploadOrder[PeerLink] = UploadOrder(config.upload_slots)
        self._serve_timer: asyncio.TimerHandle | None = None
        self.superseed = (
            SuperSeeder(
                meta.num_pieces,
                meta.piece_length,
                last_length=meta.piece_size(meta.num_pieces - 1),
            )
            if config.super_seed and storage.complete
            else None
        )
        self.hashes = PieceHasher(storage)
        self.stopping = False
        self._last_tick = time.monotonic()

    # -- state -------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.picker.complete

    @property
    def left(self) -> int:
        return self.meta.total_length - self.verified_bytes

    # -- peers coming and going --------------------------------------------------------
    def add_peers(self, addrs: list[PeerAddr] | tuple[PeerAddr, ...]) -> None:
        for addr in addrs:
            if addr not in self.own_addrs and addr not in self.banned_addrs:
                self.known.add(addr)

    def connect_more(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.stopping or self.complete:
            return  # a finished peer does not dial out: leechers find it via the tracker
        connected = {link.addr for link in self.links if link.addr is not None}
        # A peer that dialled us has no address here, only an id: without this map we
        # would dial it again every tick, and drop the duplicate every time.
        connected.update(addr for addr, rid in self.addr_ids.items() if rid in self.by_id)
        budget = self.config.max_peers - len(self.links) - len(self.connecting)
        for addr in list(self.known):
            if budget <= 0:
                break
            if addr in connected or addr in self.connecting or addr in self.banned_addrs:
                continue
            if addr in self.own_addrs:
                continue
            self.connecting.add(addr)
            budget -= 1
            loop.create_task(self._dial(loop, addr))

    async def _dial(self, loop: asyncio.AbstractEventLoop, addr: PeerAddr) -> None:
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: PeerLink(self, addr, True), addr.ip, addr.port),
                self.config.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            log.debug("cannot connect to %s: %s", addr, exc)
        finally:
            self.connecting.discard(addr)

    def link_opened(self, link: PeerLink) -> None:
        if self.stopping:
            link.close()
            return
        self.links.add(link)
        self.picker.add_peer(link)
        link.depth = self.config.pipeline_start

    def link_closed(self, link: PeerLink) -> None:
        if link not in self.links:
            return
        self.links.discard(link)
        self.unchoked.discard(link)
        if link.remote_id is not None and self.by_id.get(link.remote_id) is link:
            del self.by_id[link.remote_id]
        self.picker.remove_peer(link)
        if self.superseed is not None:
            self.superseed.remove_peer(link)
            if not self.stopping:
                self._refresh_offers()  # what it held may go to someone else now
        link.clear_requests()
        for peers in self.contributors.values():
            peers.discard(link)
        self._unchoke_waiting()
        if not self.stopping:
            self.serve_uploads()  # it may have held an upload slot

    def drop(self, link: PeerLink, reason: str) -> None:
        if not link.closed:
            log.info("dropping peer %s: %s", link.remote, reason)
        link.close()
        self.link_closed(link)

    def ban(self, link: PeerLink, reason: str) -> None:
        if link.remote_id is not None:
            self.banned_ids.add(link.remote_id)
        if link.addr is not None:
            self.banned_addrs.add(link.addr)
            self.known.discard(link.addr)
        log.warning("banning peer %s: %s", link.remote, reason)
        # Its bytes may sit in unfinished pieces too: fetch those whole again, or the
        # honest peer that completes one would fail its hash check and be banned for it.
        tainted = [index for index, peers in self.contributors.items() if link in peers]
        self.drop(link, reason)
        for index in tainted:
            del self.contributors[index]
            if not self.picker.have(index):
                self.hashes.forget(index)
                self.picker.piece_failed(index)

    # -- wire events -------------------------------------------------------------------
    def handle(self, link: PeerLink, event: object) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, link, event)

    def _on_handshake(self, link: PeerLink, hs: m.Handshake) -> None:
        rid = hs.peer_id
        link.identify(rid)
        if rid == self.peer_id:
            if link.addr is not None:
                self.own_addrs.add(link.addr)
                self.known.discard(link.addr)
            self.drop(link, "connected to ourselves")
            return
        if rid in self.banned_ids:
            self.drop(link, "banned peer")
            return
        if link.addr is not None:
            self.addr_ids[link.addr] = rid
        other = self.by_id.get(rid)
        if other is not None and other is not link:
            # Both sides dialled each other: keep the connection opened by the lower peer id,
            # which both ends compute the same way, so exactly one survives.
            opener = self.peer_id if link.outgoing else rid
            if other.outgoing == link.outgoing or opener != min(self.peer_id, rid):
                self.drop(link, "duplicate connection")
                return
            self.drop(other, "duplicate connection")
        self.by_id[rid] = link
        link.ready = True
        if self.superseed is not None:
            link.send(
                m.HaveNone() if link.conn.fast else m.Bitfield(bytes(len(self.storage.bitfield())))
            )
            self._reveal(self.superseed.add_peer(link, link.conn.peer_has, time.monotonic()), link)
            return
        link.send(self._have_message(link))

    def _reveal(self, pieces: list[int], link: PeerLink) -> None:
        link.send_haves(pieces)

    def _end_superseeding(self) -> None:
        """Every piece has left us once (sent whole, or reported by a peer): show everyone
        everything they lack from now on.

        Nothing can be sent twice ahead of another piece any more, and with only a few
        pieces on offer each, the swarm's last seconds left our uplink mostly idle: by
        then every peer had asked other peers for all it missed, and endgame could
        only ask us for the handful on offer.
        """
        assert self.superseed is not None
        superseed, self.superseed = self.superseed, None
        for link in list(self.links):
            if link.ready and not link.closed:
                shown = superseed.offered(link)
                has = link.conn.peer_has
                self._reveal(
                    [i for i in range(self.num_pieces) if i not in shown and not has(i)], link
                )

    def _refresh_offers(self) -> None:
        if self.superseed is None:
            return
        now = time.monotonic()
        for other in list(self.links):
            if other.ready:
                self._reveal(self.superseed.refresh(other, now), other)

    def _have_message(self, link: PeerLink) -> m.Message:
        count = self.storage.have_count
        if link.conn.fast and count == self.num_pieces:
            return m.HaveAll()
        if link.conn.fast and count == 0:
            return m.HaveNone()
        return m.Bitfield(self.storage.bitfield())

    def _on_bitfield(self, link: PeerLink, msg: m.Bitfield) -> None:
        self.picker.peer_bitfield(link, link.conn.peer_pieces)
        self._update_interest(link)
        if self.superseed is not None:
            self._reveal(self.superseed.refresh(link, time.monotonic()), link)

    def _on_have_all(self, link: PeerLink, msg: m.HaveAll) -> None:
        self.picker.peer_has_all(link)
        self._update_interest(link)

    def _on_have(self, link: PeerLink, msg: m.Have) -> None:
        self.picker.peer_has(link, msg.index)
        if self.superseed is not None:
            self.superseed.note_have(msg.index)
            if self.superseed.all_left:
                self._end_superseeding()
            else:
                self._reveal(self.superseed.refresh(link, time.monotonic()), link)
        if not self.picker.have(msg.index):
            # Also when already interested: this Have may be a super-seeder's next offer,
            # arriving after our last request round found nothing to ask for.
            self._update_interest(link)

    def _on_noop(self, link: PeerLink, msg: object) -> None:
        return None

    def _on_choke(self, link: PeerLink, msg: m.Choke) -> None:
        # Without the fast extension a choke silently cancels every pending request.
        if not link.conn.fast:
            self.picker.requests_dropped(link)
            link.clear_requests()

    def _on_unchoke(self, link: PeerLink, msg: m.Unchoke) -> None:
        self.request_more(link)

    def _on_reject(self, link: PeerLink, msg: m.RejectRequest) -> None:
        unit = link.rejected((msg.index, msg.begin, msg.length))
        if unit is not None:
            self.picker.request_rejected(link, unit)

    def _on_interested(self, link: PeerLink, msg: m.Interested) -> None:
        if len(self.unchoked) < self.config.max_uploads and link not in self.unchoked:
            self.unchoked.add(link)
            link.send(m.Unchoke())

    def _on_not_interested(self, link: PeerLink, msg: m.NotInterested) -> None:
        if link in self.unchoked:
            self.unchoked.discard(link)
            link.send(m.Choke())
            link.uploads.clear()
            self._unchoke_waiting()

    def _unchoke_waiting(self) -> None:
        for other in self.links:
            if len(self.unchoked) >= self.config.max_uploads:
                break
            if (
                other.ready
                and other.conn.peer_interested is InterestState.INTERESTED
                and other not in self.unchoked
            ):
                self.unchoked.add(other)
                other.send(m.Unchoke())

    def _on_request(self, link: PeerLink, msg: m.Request) -> None:
        block = (msg.index, msg.begin, msg.length)
        if link not in self.unchoked or not self.storage.has(msg.index):
            # Only ever serve verified pieces, and only to peers we unchoked.
            if link.conn.fast:
                link.send(m.RejectRequest(*block))
            return
        if self.superseed is not None:
            self.superseed.note_request(link, time.monotonic())
        link.uploads.append(block)
        self.upload_order.requested(link)
        self.serve_uploads()

    def _on_cancel(self, link: PeerLink, msg: m.Cancel) -> None:
        with contextlib.suppress(ValueError):
            link.uploads.remove((msg.index, msg.begin, msg.length))

    def serve_uploads(self) -> None:
        """Send queued blocks, oldest request first, while upload slots and the cap allow."""
        order, bucket = self.upload_order, self.up_bucket
        while order.waiting:
            now = time.monotonic()
            wait = bucket.delay(now)
            if wait > 0:
                self._serve_later(wait)
                return
            link = order.next_link(now)
            if link is None:
                retry = order.retry_after(now)
                if retry is not None:
                    self._serve_later(retry)
                return
            index, begin, length = link.uploads.popleft()
            try:
                link.send_piece(self.storage, index, begin, length)
            except PayloadMismatchError as exc:
                self.drop(link, f"cannot serve block: {exc}")
                if self.on_fatal is not None:
                    self.on_fatal(exc)
                return  # our payload is not what the torrent says: serve nothing more
            except StorageError as exc:
                self.drop(link, f"cannot serve block: {exc}")
                continue
            bucket.take(length, now)
            self.stats.uploaded += length
            if self.superseed is not None:
                self.superseed.note_sent(index, begin, length)
                if self.superseed.all_left:
                    self._end_superseeding()

    def _serve_later(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven by hand, without a loop: the caller calls again
            return
        timer = self._serve_timer
        when = loop.time() + delay
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()

        def again() -> None:
            self._serve_timer = None
            self.serve_uploads()

        self._serve_timer = loop.call_at(when, again)

    def _on_piece(self, link: PeerLink, msg: m.Piece) -> None:
        length = len(msg.block)
        block = (msg.index, msg.begin, length)
        if not link.expects(block):
            self.stats.wasted += length  # cancelled in endgame, or never asked for
            return
        link.last_block = time.monotonic()
        self.storage.write_block(msg.index, msg.begin, msg.block)
        self.hashes.block_written(msg.index, msg.begin, msg.block)
        link.downloaded += length
        self.stats.downloaded += length
        self.contributors[msg.index].add(link)
        if self.config.max_download_rate:
            self.down_bucket.take(length, time.monotonic())
            self._throttle_reading(link)
        unit = link.arrived(block)
        if unit is not None:
            complete, cancels = self.picker.block_received(link, unit)
            for other, dup in cancels:
                if isinstance(other, PeerLink):
                    other.withdraw(dup, cancel=True)
            if complete:
                self._piece_done(msg.index)
        if not self.complete:
            self.request_more(link)

    def _throttle_reading(self, link: PeerLink) -> None:
        wait = self.down_bucket.delay(time.monotonic())
        if wait <= 0 or link.transport is None:
            return
        # One pending resume per link, always for the latest debt: several timers would
        # each reopen the tap early and the cap would leak.
        if link.resume_handle is not None:
            link.resume_handle.cancel()
        link.transport.pause_reading()
        transport = link.transport

        def resume() -> None:
            link.resume_handle = None
            if not link.closed:
                transport.resume_reading()

        link.resume_handle = asyncio.get_running_loop().call_later(wait, resume)

    def _piece_done(self, index: int) -> None:
        contributors = self.contributors.pop(index, set())
        if self.hashes.verify(index):
            self.picker.piece_passed(index)
            before = self.verified_bytes
            self.verified_bytes += self.meta.piece_size(index)
            eighth = self.meta.total_length / 8
            if before // eighth != self.verified_bytes // eighth:
                self.storage.flush_in_background()  # see there: a shorter wait at the end
            # Tell everyone, even peers that have it. Whoever sent it hears at once: a
            # super-seeder offers its next piece on this Have. The rest may wait for
            # company (PeerLink.queue_have).
            for other in self.links:
                other.queue_have(index, now=other in contributors)
            if self.picker.complete:
                self._finished()
            return
        self.stats.hash_failures += 1
        self.picker.piece_failed(index)
        log.warning("piece %d failed its SHA-1 check; fetching it again", index)
        for link in contributors:
            assert link.remote_id is not None
            self.strikes[link.remote_id] += 1
            if len(contributors) == 1 or self.strikes[link.remote_id] >= self.config.strikes_to_ban:
                self.ban(link, f"sent data for piece {index} that failed its SHA-1 check")

    def _finished(self) -> None:
        for link in list(self.links):
            if _interested(link):
                link.send(m.NotInterested())
            if link.conn.peer_piece_count == self.num_pieces:
                self.drop(link, "both sides complete")
        if self.on_complete is not None:
            self.on_complete()

    # -- asking for blocks -------------------------------------------------------------
    def _update_interest(self, link: PeerLink) -> None:
        if not link.ready:
            return
        if _interested(link) and not _batch_room(link):
            # Requests in flight, so no NotInterested, and no room to ask for more: the
            # case of most Haves, which arrive one per piece from every peer.
            return
        wanted = not self.complete and self.picker.interesting(link)
        if wanted and not _interested(link):
            link.send(m.Interested())
        elif not wanted and _interested(link) and not link.outstanding:
            link.send(m.NotInterested())
        if wanted and link.conn.peer_choking is not ChokeState.CHOKED:
            self.request_more(link)

    def request_more(self, link: PeerLink) -> None:
        if link.closed or not link.ready or link.conn.peer_choking is ChokeState.CHOKED:
            return
        room = _batch_room(link)
        if not room:
            return
        blocks = self.picker.next_requests(link, room)
        if not blocks:
            if not link.outstanding:
                self._update_interest_quiet(link)
            return
        link.request(blocks)

    def _size_pipeline(self, link: PeerLink, elapsed: float) -> None:
        if elapsed <= 0:
            return
        received, link.counted = link.downloaded - link.counted, link.downloaded
        link.rate = (link.rate + received / elapsed) / 2
        want = -(-int(link.rate * self.config.queue_seconds) // REQUEST_UNIT)
        link.depth = max(self.config.pipeline_min, min(self.config.pipeline_max, want))

    def _update_interest_quiet(self, link: PeerLink) -> None:
        if _interested(link) and (self.complete or not self.picker.interesting(link)):
            link.send(m.NotInterested())

    # -- once a second -----------------------------------------------------------------
    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        elapsed, self._last_tick = now - self._last_tick, now
        for link in list(self.links):
            self._size_pipeline(link, elapsed)
            if now - link.last_recv > self.config.idle_drop_after:
                self.drop(link, f"silent for {int(now - link.last_recv)} s")
                continue
            if link.outstanding and now - link.last_block > self.config.snub_after:
                # A stalled peer must not hold blocks hostage: hand them to everyone else.
                self.picker.requests_dropped(link)
                link.clear_requests()
                link.last_block = now
            # Only after both handshakes: before that the wire allows nothing else.
            if link.ready and now - link.last_send > self.config.keepalive_every:
                link.send(m.KeepAlive())
            if link.ready and not self.complete:
                self._update_interest(link)
        if self.superseed is not None and self.superseed.expire(now):
            self._refresh_offers()
        self.connect_more(loop)

    def close_all(self) -> None:
        self.stopping = True
        if self._serve_timer is not None:
            self._serve_timer.cancel()
            self._serve_timer = None
        for link in list(self.links):
            link.close()


def _interested(link: PeerLink) -> bool:
    return link.conn.am_interested is InterestState.INTERESTED


def _batch_room(link: PeerLink) -> int:
    """Requests to send ``link`` now; 0 until a quarter of its pipeline is free.

    Refilling in batches makes fewer, larger writes.
    """
    room = link.depth - len(link.outstanding)
    return room if room >= max(1, link.depth // 4) else 0


_HANDLERS: dict[type, Callable[[Session, PeerLink, object], None]] = {
    m.Handshake: Session._on_handshake,  # type: ignore[dict-item]
    m.Bitfield: Session._on_bitfield,  # type: ignore[dict-item]
    m.HaveAll: Session._on_have_all,  # type: ignore[dict-item]
    m.HaveNone: Session._on_noop,
    m.Have: Session._on_have,  # type: ignore[dict-item]
    m.Choke: Session._on_choke,  # type: ignore[dict-item]
    m.Unchoke: Session._on_unchoke,  # type: ignore[dict-item]
    m.Interested: Session._on_interested,  # type: ignore[dict-item]
    m.NotInterested: Session._on_not_interested,  # type: ignore[dict-item]
    m.Request: Session._on_request,  # type: ignore[dict-item]
    m.Cancel: Session._on_cancel,  # type: ignore[dict-item]
    m.Piece: Session._on_piece,  # type: ignore[dict-item]
    m.RejectRequest: Session._on_reject,  # type: ignore[dict-item]
}
