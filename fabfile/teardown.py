"""Stop every process a deploy started and remove its temp files, whatever happened.

Runs from a ``finally``: it must not raise for one bad host, so each step's failure is
collected and returned for the report instead.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Sequence

from fabfile.peers import stop_peering
from fabfile.remote import Connections, HostError, sh
from fabfile.seed import stop_seeding
from fabfile.settings import Settings
from fabfile.tracker import stop_tracker

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
    if not settings.tree:
        return f"rm -f -- {sh(*files)}"
    # A tree download that never became releases/TAG (the install renames it away).
    trees = [settings.download_target, settings.download_target + ".part"]
    return f"rm -f -- {sh(*files, settings.manifest)} && rm -rf -- {sh(*trees)}"


def clean_temp_files(conns: Connections, settings: Settings, host: str) -> None:
    conns.run(host, clean_script(settings))


def teardown(conns: Connections, settings: Settings, peers: Sequence[str]) -> List[str]:
    """Stop peering, stop seeding, stop the tracker, clean temp files; return problems.

    Only hosts we reached during this run are visited: nothing of ours runs elsewhere.
    """
    problems: List[str] = []
    # Stopping takes seconds; a host that stopped answering must not hold teardown for
    # the full command timeout.
    conns.command_timeout = min(conns.command_timeout, TEARDOWN_TIMEOUT)
    reached = set(conns.reached())
    inv = conns.inventory

    def attempt(host: str, step: str, action: Callable[[], None]) -> None:
        if host not in reached:
            return
        try:
            action()
        except HostError as exc:
            problems.append(f"{host}: {step}: {exc.reason}")
            if exc.reason.startswith("ssh:"):
                reached.discard(host)  # it will not answer the next step either

    # Peers and the seeder first, tracker last: everyone can still announce "stopped" on
    # the way out. A plain peer host is stopped and cleaned in one round trip, the
    # tracker's host too; the seeder's, once its services are down.
    infra = {inv.tracker.name, inv.seeder.name}
    targets = [h for h in peers if h in reached]
    clean = clean_script(settings)

    def stop_peer(host: str) -> None:
        stop_peering(conns, settings, host, then="" if host in infra else clean)

    with ThreadPoolExecutor(max_workers=1) as pool:
        seeder_stopped = pool.submit(
            attempt, inv.seeder.name, "stop_seeding", lambda: stop_seeding(conns, settings)
        )
        outcomes = conns.map(targets, stop_peer, skip_failed=False)
        seeder_stopped.result()
    problems.extend(f"{o.host}: stop_peering: {o.error}" for o in outcomes.values() if not o.ok)
    # A host SSH cannot reach now will not answer the next step either: skip it rather
    # than wait out another timeout on it.
    gone = {o.host for o in outcomes.values() if not o.ok and str(o.error).startswith("ssh:")}
    reached -= gone
    attempt(inv.tracker.name, "stop_tracker", lambda: stop_tracker(conns, settings, then=clean))
    cleaned = {h for h, o in outcomes.items() if o.ok and h not in infra} | {inv.tracker.name}
    everyone = [h.name for h in inv.all_hosts if h.name in reached and h.name not in cleaned]
    outcomes = conns.map(
        everyone, lambda h: clean_temp_files(conns, settings, h), skip_failed=False
    )
    problems.extend(f"{o.host}: clean_temp_files: {o.error}" for o in outcomes.values() if not o.ok)
    return problems
