"""Keeps ``fab deploy``'s lease alive on the tracker's and the seeder's hosts.

The deploy starts them with ``--lease`` (see ``murder_core.lease``); while this thread
touches the lease file they run, and if the workstation dies or their host is cut off
from it they stop by themselves within ``lease_seconds`` instead of running forever.
"""

from __future__ import annotations

from typing import Sequence

from fabfile.periodic import Periodic
from fabfile.remote import Connections, HostError, sh
from fabfile.settings import Settings


def touch_script(settings: Settings) -> str:
    """Renew the lease; also how a leased service's start creates it."""
    return f"touch {sh(settings.lease_file)}"


class LeaseKeeper(Periodic):
    def __init__(self, conns: Connections, settings: Settings, hosts: Sequence[str]) -> None:
        self.conns = conns
        self.settings = settings
        self.hosts = list(dict.fromkeys(hosts))  # tracker and seeder may be one host
        self.renewals = 0
        # Touch four times per lease, each look bounded to a quarter lease: a host that
        # hangs cannot make another's lease lapse (4 + 1 quarters per round at worst,
        # for two hosts: still within the lease).
        interval = max(1.0, settings.lease_seconds / 4)
        super().__init__("murder-lease", interval, interval * (1 + len(self.hosts)) + 10)

    def tick(self) -> None:
        for host in self.hosts:
            try:
                self.conns.run(host, touch_script(self.settings), timeout=self.interval)
                self.renewals += 1
            except HostError:
                pass  # not started there yet, or cut off: the lease does its job
