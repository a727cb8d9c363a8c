"""Keeps ``fab deploy``'s lease alive on the tracker's and the seeder's hosts.

The deploy starts them with ``--lease`` (see ``murder_core.lease``); while this thread
touches the lease file they run, and if the workstation dies or their host is cut off
from it they stop by themselves within ``lease_seconds`` instead of running forever.
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence

from fabfile.remote import Connections, HostError, sh
from fabfile.settings import Settings


class LeaseKeeper:
    def __init__(self, conns: Connections, settings: Settings, hosts: Sequence[str]) -> None:
        self.conns = conns
        self.settings = settings
        self.hosts = list(dict.fromkeys(hosts))  # tracker and seeder may be one host
        # Touch four times per lease, each look bounded to a quarter lease: a host that
        # hangs cannot make another's lease lapse (4 + 1 quarters per round at worst,
        # for two hosts: still within the lease).
        self.interval = max(1.0, settings.lease_seconds / 4)
        self.renewals = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="murder-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval * (1 + len(self.hosts)) + 10)
            self._thread = None

    def _loop(self) -> None:
        script = f"touch {sh(self.settings.lease_file)}"
        while not self._stop.wait(self.interval):
            for host in self.hosts:
                try:
                    self.conns.run(host, script, timeout=self.interval)
                    self.renewals += 1
                except HostError:
                    pass  # not started there yet, or cut off: the lease does its job
