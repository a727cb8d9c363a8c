"""Which queued upload goes on the wire next: oldest request first, a few links at a time.

When a peer has just verified a piece, the others all ask it for that piece at once.
With every link free to fill megabytes of kernel buffer, TCP interleaves all their
copies: each completes at the same moment, 15 x 256 KiB of uplink later on a 16-host
swarm, and none of those peers can pass the piece on before then. Served in the order
the requests came, with only a few links holding unsent data at a time (and little of
it each, see ``peer.UNSENT_LOWAT``), the first copies are done in a fraction of that
time and their new holders start relaying while the rest are still sent.

Six links at a time keep the uplink busy; two do not (a seeder 52% busy on the bench):
TCP paces each flow by the rate it saw lately, and a flow that mostly waits its turn
restarts slow.
A link whose data does not leave (a stalled or very slow peer) holds its slot only for
``SLOT_HOLD`` seconds, so it cannot stop the uploads to everyone else.

Pure bookkeeping over the links' state; the session sends and passes the clock.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Generic, Protocol, TypeVar

#: Links given data at once (see the module docstring; measured in SessionConfig).
UPLOAD_SLOTS = 6
#: Seconds a link keeps its slot while what it was given has not left: a 128 KiB block
#: takes 60 ms at a sixth of 100 Mbit/s, so only a link that is stuck holds it this long.
SLOT_HOLD = 0.3


class Uploader(Protocol):
    """What the order needs of a link: its queued blocks and its transport's state."""

    @property
    def uploads(self) -> Deque[tuple[int, int, int]]: ...

    @property
    def paused(self) -> bool: ...  # data given to it is still waiting in the transport

    @property
    def closed(self) -> bool: ...


L = TypeVar("L", bound=Uploader)


class UploadOrder(Generic[L]):
    def __init__(self, slots: int = UPLOAD_SLOTS, hold: float = SLOT_HOLD) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.slots = slots
        self.hold = hold
        self._queue: deque[L] = deque()  # one entry per request, in arrival order
        self._given: dict[L, float] = {}  # link -> when it was last given a block

    @property
    def waiting(self) -> bool:
        return bool(self._queue)

    def requested(self, link: L) -> None:
        """``link`` queued one more block (in ``link.uploads``)."""
        self._queue.append(link)

    def next_link(self, now: float) -> L | None:
        """The link whose oldest queued block goes out now, or None (slots full, or none).

        Entries of links that are closed or whose blocks were cancelled are dropped
        here; entries of a link still sending keep their place until it is done.
        """
        if self._held(now) >= self.slots:
            return None
        queue = self._queue
        at = 0
        while at < len(queue):
            link = queue[at]
            if link.closed or not link.uploads:
                del queue[at]
            elif link.paused:
                at += 1
            else:
                del queue[at]
                self._given[link] = now
                return link
        return None

    def retry_after(self, now: float) -> float | None:
        """Seconds until a held slot lapses, when requests wait only for a slot."""
        if not self._queue or self._held(now) < self.slots:
            return None
        return max(0.0, min(self._given.values()) + self.hold - now)

    def _held(self, now: float) -> int:
        given = self._given
        done = [k for k, t in given.items() if k.closed or not k.paused or now - t >= self.hold]
        for link in done:
            del given[link]
        return len(given)
