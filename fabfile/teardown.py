"""Stop every process a deploy started and remove its temp files, whatever happened.

Runs from a ``finally``: it must not raise for one bad host, so each step's failure is
collected and returned for the report instead.
"""

from __future__ import annotations

import threading
from typing import Callable, Collection, Iterable, List, Optional, Sequence, Set

from fabfile.inventory import Inventory
from fabfile.remote import Connections, HostError, sh, stop_script
from fabfile.settings import Settings

TEARDOWN_TIMEOUT = 60


def clean_script(settings: Settings) -> str:
    """Murder's clean_temp_files for one tag; logs stay for the post-mortem."""
    files = [
        settings.payload,
        settings.payload + ".part",
        settings.torrent,
        settings.tracker_torrent,
        settings.pidfile("peer-fg"),
        settings.lease_file,
    ]
    files.append(settings.manifest if settings.tree else settings.unpack_map)
    # A download beside the releases (a tree, or a tarball's unpacked files) that never
    # became releases/TAG: the install renames it away.
    trees = [settings.incoming_dir, settings.incoming_dir + ".part"]
    return f"rm -f -- {sh(*files)} && rm -rf -- {sh(*trees)}"


def clean_temp_files(conns: Connections, settings: Settings, host: str) -> None:
    conns.run(host, clean_script(settings))


def host_script(settings: Settings, inv: Inventory, peers: Sequence[str], host: str) -> str:
    """One round trip that stops whatever of ours runs on ``host`` and cleans up there."""
    files = [settings.pidfile("peer-fg"), settings.pidfile("peer")] if host in peers else []
    if host == inv.seeder.name:
        files.append(settings.pidfile("seeder"))
    if host == inv.tracker.name:
        files.append(settings.pidfile("tracker"))
    return stop_script(files, then=clean_script(settings))


def teardown(
    conns: Connections, settings: Settings, peers: Sequence[str], skip: Collection[str] = ()
) -> List[str]:
    """Stop peering, seeding and the tracker, clean temp files; return the problems.

    Only hosts we reached during this run are visited: nothing of ours runs elsewhere.
    ``skip`` names hosts already torn down (see :class:`EarlyTeardown`).
    """
    # Stopping takes seconds; a host that stopped answering must not hold teardown for
    # the full command timeout.
    conns.command_timeout = min(conns.command_timeout, TEARDOWN_TIMEOUT)
    inv = conns.inventory
    visit = set(conns.reached()).difference(skip)
    # One round trip per host, all at once. The tracker may go while peers still say
    # "stopped": their announce is then refused at once, and nobody needs it.
    everyone = [h.name for h in inv.all_hosts if h.name in visit]
    outcomes = conns.map(
        everyone,
        lambda h: conns.run(h, host_script(settings, inv, peers, h)),
        skip_failed=False,
    )
    return [f"{o.host}: stop and clean: {o.error}" for o in outcomes.values() if not o.ok]


class EarlyTeardown:
    """Tears each host down as soon as the deploy needs nothing more from it.

    Once every peer has its payload, the tracker, the seeder and the peers' linger-seeding
    serve nobody in this deploy; a peer's temp files are needed until its own install is
    done. So the tracker's and seeder's hosts go when the last download ends (after
    ``before``, which stops whatever still watches or renews them), and each peer when its
    install is done too. The stops then overlap the extraction, the longest step after
    the swarm, instead of following it.

    Only the end of the happy path is handled here. A host whose download or install
    failed, one whose stop failed, and everything after Ctrl-C are left to the final
    :func:`teardown`, which skips only the hosts :meth:`close` returns.
    """

    def __init__(
        self,
        conns: Connections,
        settings: Settings,
        peers: Sequence[str],
        downloading: Iterable[str],
        before: Callable[[], None],
    ) -> None:
        self.conns = conns
        self.settings = settings
        self.peers = list(peers)
        self._done: Set[str] = set()
        self._waiting = set(downloading)
        self._before = before
        self._installed: List[str] = []
        self._open = False  # before() has run: installed peers stop at once
        self._closed = False  # the final teardown has the rest
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def download_ended(self, host: str) -> bool:
        """``host``'s download is over, however it went; True when it was the last one."""
        with self._lock:
            if self._closed or host not in self._waiting:
                return False
            self._waiting.discard(host)
            if self._waiting:
                return False
            self._thread = threading.Thread(
                target=self._release, name="murder-release", daemon=True
            )
            self._thread.start()
        return True

    def installed(self, host: str) -> None:
        """``host`` has its release in place: stop it now, or as soon as the swarm is over."""
        with self._lock:
            if self._closed:
                return
            if not self._open:
                self._installed.append(host)
                return
        self._stop(host)

    def close(self, timeout: float) -> Set[str]:
        """Start no more stops, wait up to ``timeout`` for those under way; the hosts done.

        After Ctrl-C a download may still end, and its stops would otherwise run behind
        (or after) the final teardown.
        """
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            return set(self._done)

    def _release(self) -> None:
        self._before()
        inv = self.conns.inventory
        with self._lock:
            if self._closed:
                return
            self._open = True
            hosts = [h for h in (inv.tracker.name, inv.seeder.name) if h not in self.peers]
            hosts = list(dict.fromkeys(hosts + self._installed))
        self.conns.map(hosts, self._stop, skip_failed=False)

    def _stop(self, host: str) -> None:
        script = host_script(self.settings, self.conns.inventory, self.peers, host)
        try:
            self.conns.run(host, script, timeout=TEARDOWN_TIMEOUT)
        except HostError:
            return  # the final teardown tries again, and reports it
        with self._lock:
            self._done.add(host)
