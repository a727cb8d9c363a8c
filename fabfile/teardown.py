"""Stop every process a deploy started and remove its temp files, whatever happened.

Runs from a ``finally``: it must not raise for one bad host, so each step's failure is
collected and returned for the report instead.
"""

from __future__ import annotations

from typing import List, Sequence

from fabfile.remote import Connections, sh, stop_script
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
    if not settings.tree:
        return f"rm -f -- {sh(*files)}"
    # A tree download that never became releases/TAG (the install renames it away).
    trees = [settings.download_target, settings.download_target + ".part"]
    return f"rm -f -- {sh(*files, settings.manifest)} && rm -rf -- {sh(*trees)}"


def clean_temp_files(conns: Connections, settings: Settings, host: str) -> None:
    conns.run(host, clean_script(settings))


def teardown(conns: Connections, settings: Settings, peers: Sequence[str]) -> List[str]:
    """Stop peering, seeding and the tracker, clean temp files; return the problems.

    Only hosts we reached during this run are visited: nothing of ours runs elsewhere.
    """
    problems: List[str] = []
    # Stopping takes seconds; a host that stopped answering must not hold teardown for
    # the full command timeout.
    conns.command_timeout = min(conns.command_timeout, TEARDOWN_TIMEOUT)
    reached = set(conns.reached())
    inv = conns.inventory

    # One round trip per host, all at once: each host stops whatever of ours runs there
    # (its peer, the seeder, the tracker) and cleans up. The tracker may go while peers
    # still say "stopped": their announce is then refused at once, and nobody needs it.
    def pidfiles(host: str) -> List[str]:
        files = [settings.pidfile("peer-fg"), settings.pidfile("peer")] if host in peers else []
        if host == inv.seeder.name:
            files.append(settings.pidfile("seeder"))
        if host == inv.tracker.name:
            files.append(settings.pidfile("tracker"))
        return files

    clean = clean_script(settings)
    everyone = [h.name for h in inv.all_hosts if h.name in reached]
    outcomes = conns.map(
        everyone,
        lambda h: conns.run(h, stop_script(pidfiles(h), then=clean)),
        skip_failed=False,
    )
    problems.extend(f"{o.host}: stop and clean: {o.error}" for o in outcomes.values() if not o.ok)
    return problems
