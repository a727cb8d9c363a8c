"""Watch the seeder during ``fab deploy``'s swarm, so a dead seeder cannot stall it for long.

The peers only give up after ``peer_timeout`` (30 minutes by default). A seeder that
exits early (its payload failed a check, it crashed, someone killed it) would leave
the whole deploy waiting that long. Its death alone is no reason to stop: once every
piece has left it, the peers finish from each other. So the verdict is "the seeder
is gone *and* the swarm has moved no byte for ``stall_timeout`` seconds"; then the
peers still downloading are stopped and their hosts fail with the seeder's last words.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Set

from fabfile.peers import stop_peering
from fabfile.periodic import Periodic
from fabfile.remote import Connections, HostError, sh
from fabfile.seed import seeder_output
from fabfile.settings import Settings

#: Seconds between looks at the seeder's process (one SSH exec on its host each).
CHECK_INTERVAL = 2.0
#: Seconds one look may take before the seeder's host counts as not answering.
CHECK_TIMEOUT = 15
_ALIVE = "alive"


def check_script(settings: Settings) -> str:
    """Print ``alive``, or the last line the seeder wrote before it went.

    Alive means the pidfile names a process whose command line names murder.pyz, the
    same test teardown's stop uses, so a recycled pid does not count.
    """
    pidfile, out = sh(settings.pidfile("seeder")), sh(seeder_output(settings))
    return "\n".join(
        [
            f"pid=$(head -c 32 {pidfile} 2>/dev/null | tr -dc 0-9)",
            'if [ -n "$pid" ] && grep -q murder.pyz "/proc/$pid/cmdline" 2>/dev/null; then',
            f"  echo {_ALIVE}; exit 0",
            "fi",
            f"tail -n 20 {out} 2>/dev/null | grep -v '^[[:space:]]*$' | tail -n 1",
            "exit 0",
        ]
    )


class StallJudge:
    """Decides, from the seeder's liveness and the swarm's progress, when to give up.

    Pure bookkeeping over the times it is given, so its rule can be tested exactly.
    """

    def __init__(self, stall_timeout: float) -> None:
        self.stall_timeout = stall_timeout
        self.gone_since: Optional[float] = None
        self.last_words = ""
        self._best = -1
        self._moved_at = 0.0

    def seeder_gone(self, now: float, last_words: str) -> None:
        if self.gone_since is None:
            self.gone_since = now
            self._moved_at = now
            self.last_words = last_words

    def progress(self, now: float, bytes_done: Optional[int]) -> bool:
        """Record the swarm's total (None: the tracker did not answer); True means give up.

        Only a total above the best seen so far counts as movement: a tracker that
        restarts and reports less must not look like progress.
        """
        if bytes_done is not None and bytes_done > self._best:
            self._best = bytes_done
            if self.gone_since is not None:
                self._moved_at = now
        if self.gone_since is None:
            return False
        return now - self._moved_at >= self.stall_timeout


class SeederWatch(Periodic):
    """A background thread applying :class:`StallJudge` during the swarm; stop() joins it.

    ``progress`` returns the swarm's bytes done from the tracker (None when unknown).
    ``downloading`` holds the hosts between begin() and end(); once the verdict is in,
    they are stopped every round and begin() turns new ones away.
    """

    def __init__(
        self,
        conns: Connections,
        settings: Settings,
        progress: Callable[[], Optional[int]],
        *,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        super().__init__("murder-seeder-watch", interval, settings.command_timeout + 10)
        self.conns = conns
        self.settings = settings
        self.progress = progress
        self.judge = StallJudge(settings.stall_timeout)
        self.downloading: Set[str] = set()
        self.verdict: Optional[str] = None
        self._lock = threading.Lock()

    def begin(self, host: str) -> bool:
        """Register ``host``'s download; False once the verdict is in (do not start it)."""
        with self._lock:
            if self.verdict is not None:
                return False
            self.downloading.add(host)
            return True

    def end(self, host: str) -> None:
        with self._lock:
            self.downloading.discard(host)

    def _seeder_alive(self) -> tuple[bool, str]:
        host = self.conns.inventory.seeder.name
        try:
            out = self.conns.run(host, check_script(self.settings), timeout=CHECK_TIMEOUT)
        except HostError as exc:
            # A host we cannot reach counts as gone: its seeder most likely is, for the
            # peers too, and the verdict still waits for the swarm to stall.
            return False, f"its host does not answer: {exc.reason}"
        words = str(out.stdout).strip()
        return words == _ALIVE, words

    def tick(self) -> None:
        if self.verdict is None and not self._judge():
            return
        # Every round, not once: a host registered just before the verdict may not
        # have started its peer yet when the first stop reaches it.
        with self._lock:
            hosts = sorted(self.downloading)
        self.conns.map(hosts, lambda h: stop_peering(self.conns, self.settings, h))

    def _judge(self) -> bool:
        """One look at the seeder (until it is gone) and the swarm; True: give up now."""
        if self.judge.gone_since is None:
            alive, words = self._seeder_alive()
            if alive:
                return False
            self.judge.seeder_gone(time.monotonic(), words)
        if not self.judge.progress(time.monotonic(), self.progress()):
            return False
        seeder = self.conns.inventory.seeder.name
        words = self.judge.last_words or "no error in its output"
        with self._lock:
            self.verdict = (
                f"the seeder on {seeder} is gone ({words}) and the swarm moved no byte for "
                f"{self.settings.stall_timeout}s after it"
            )
        return True
