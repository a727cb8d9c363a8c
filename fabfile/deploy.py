"""``fab deploy`` and ``fab rollback``, and :func:`run_deploy` for programs (``invoke demo``).

Order, as in Murder's deploy strategy: start tracker (while the seeder stages and
hashes), create torrent, start seeding, peers download in parallel, extract, stop
seeding, stop tracker, clean temp files. Everything after the first remote step runs
inside ``try/finally`` so teardown happens whatever fails, Ctrl-C included.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, TextIO

from fabric import Config  # type: ignore[import-untyped]
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from fabfile.helptext import (
    H_DEST,
    H_INV,
    H_JSON,
    H_KEEP,
    H_MURDER,
    H_PATH_IS_FILE,
    H_PORT,
    H_TEMP,
)
from fabfile.install import check_python, distribute_files
from fabfile.inventory import load_inventory
from fabfile.lease import LeaseKeeper
from fabfile.peers import download, upload_torrents
from fabfile.progress import SwarmProgress, fetch_direct, fetch_over_ssh
from fabfile.release import install_release, payload_name, rollback_all
from fabfile.remote import Connections, HostError, Outcome
from fabfile.report import OK, DeployReport, format_table
from fabfile.seed import start_seeding
from fabfile.settings import Settings, settings_from_config
from fabfile.teardown import TEARDOWN_TIMEOUT, EarlyTeardown, teardown
from fabfile.torrent import (
    download_companion,
    download_torrent,
    make_payload,
    make_torrent,
    publish_torrent,
    stage_local,
    stats_path,
)
from fabfile.tracker import start_tracker
from fabfile.watch import SeederWatch
from murder_core.errors import DeployError, MurderError
from murder_core.metainfo import read_metainfo

MB = 1_000_000


def make_config(ssh_config: Optional[str | Path] = None) -> Config:
    """A fabric Config reading ``ssh_config`` (or ~/.ssh/config and /etc/ssh/ssh_config)."""
    if ssh_config is None:
        return Config()
    return Config(runtime_ssh_path=str(ssh_config))


def open_connections(settings: Settings, config: Config) -> Connections:
    return Connections(
        load_inventory(settings.inventory),
        config,
        connect_timeout=settings.connect_timeout,
        command_timeout=settings.command_timeout,
        max_parallel=settings.max_parallel,
    )


def _check_deployable(settings: Settings) -> None:
    settings.require_tag()
    if settings.files_path is None and settings.local_path is None:
        raise DeployError(
            "deploy needs --files-path (a directory on the seeder) or --local-path "
            "(a directory or file on this workstation)"
        )
    if settings.no_tag_directory:
        raise DeployError("no_tag_directory is for murder.peer; deploy always uses releases/TAG")


def run_deploy(
    settings: Settings,
    *,
    config: Optional[Config] = None,
    ssh_config: Optional[str | Path] = None,
    out: TextIO = sys.stderr,
) -> DeployReport:
    """Deploy ``settings.tag`` to every peer of ``settings.inventory``; never leaves processes.

    Returns the per-host report (``report.ok`` tells success). Raises DeployError
    before touching anything for bad settings, and for a tag that already exists on
    some peer unless ``settings.force``. Ctrl-C runs teardown, then propagates.
    """
    _check_deployable(settings)
    conns = open_connections(settings, config or make_config(ssh_config))
    peers = [h.name for h in conns.inventory.peers]
    report = DeployReport(tag=settings.require_tag())
    for name in peers:
        report.host(name)
    started = time.monotonic()
    pyz_hashes: dict[str, str] = {}  # host -> sha256 of its murder.pyz
    try:
        live = _preflight(conns, settings, report, pyz_hashes)
    except BaseException:
        conns.close()
        raise
    _mark(report, started, "preflight")
    if live is None:
        conns.close()
        report.seconds = time.monotonic() - started
        if settings.json:
            report.write_json(settings.json)
        return report
    inv = conns.inventory
    aside = _Aside(LeaseKeeper(conns, settings, [inv.tracker.name, inv.seeder.name]))
    aside.lease.start()
    try:
        _deploy(conns, settings, report, live, pyz_hashes, aside, out, started)
    except MurderError as exc:
        report.error = str(exc)
        report.fail_pending(str(exc))
    except KeyboardInterrupt:
        report.error = "interrupted"
        report.fail_pending("interrupted")
        raise
    except BaseException as exc:  # a bug or a local I/O error: record it, tear down, re-raise
        report.error = f"{type(exc).__name__}: {exc}"
        report.fail_pending(report.error)
        raise
    finally:
        aside.stop()  # before teardown, which removes the lease file a late touch would recreate
        done = aside.early.close(TEARDOWN_TIMEOUT) if aside.early is not None else set()
        report.teardown_problems = teardown(conns, settings, peers, skip=done)
        _mark(report, started, "teardown")
        conns.close()
        report.ssh_connections = conns.opens
        report.seconds = time.monotonic() - started
        if settings.json:
            report.write_json(settings.json)
    return report


@dataclass
class _Aside:
    """What runs beside the deploy: stopped however it ends, before the final teardown."""

    lease: LeaseKeeper
    bars: list[SwarmProgress] = field(default_factory=list)
    early: Optional[EarlyTeardown] = None
    # The early teardown's thread and the deploy's ``finally`` may both stop them.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        with self._lock:
            for bar in self.bars:
                bar.stop()
            self.lease.stop()


def _mark(report: DeployReport, started: float, stage: str) -> None:
    report.stages[stage] = round(time.monotonic() - started, 3)


def _mark_done(job: Future[Any], report: DeployReport, started: float, stage: str) -> None:
    """``_mark`` for a stage run in the background, when (and only if) it succeeded."""
    if not job.cancelled() and job.exception() is None:
        _mark(report, started, stage)


def _preflight(
    conns: Connections, settings: Settings, report: DeployReport, pyz_hashes: dict[str, str]
) -> Optional[list[str]]:
    """Reach every host, check python3, learn addresses; refuse an existing tag.

    Nothing is started yet, so a refusal here needs no teardown. Returns the peers
    still in the game, or None (report filled in) when the tracker or seeder is out.
    """
    inv = conns.inventory
    peers = {h.name for h in inv.peers}
    having: list[str] = []  # peers that already hold this release

    def probe(host: str) -> str:
        release = settings.release_dir if host in peers and not settings.force else None
        found = check_python(conns, host, settings, release)
        pyz_hashes[host] = found.pyz_sha256
        if found.release_exists:
            having.append(host)
        return conns.ip_of(host)

    ips = conns.map([h.name for h in inv.all_hosts], probe)
    for role, host in (("tracker", inv.tracker.name), ("seeder", inv.seeder.name)):
        if not ips[host].ok:
            error = f"{role} {host}: {ips[host].error}"
            report.error = error
            report.fail_pending(error)
            return None
    live = []
    for name in (h.name for h in inv.peers):
        if ips[name].ok:
            live.append(name)
        else:
            report.host(name).fail(ips[name].error or "unreachable")
    existing = [h for h in live if h in having]
    if existing:
        raise DeployError(
            f"release {settings.require_tag()} already exists in {settings.releases_dir} "
            f"on {', '.join(existing)}; pass --force to deploy it again"
        )
    return live


def _deploy(
    conns: Connections,
    settings: Settings,
    report: DeployReport,
    live: list[str],
    pyz_hashes: dict[str, str],
    aside: _Aside,
    out: TextIO,
    started: float,
) -> None:
    inv = conns.inventory
    everyone = [h.name for h in inv.all_hosts]
    ips = {
        h: conns.ip_of(h) for h in everyone if h in live or h in (inv.tracker.name, inv.seeder.name)
    }

    def drop_failed(outcomes: Dict[str, Outcome[Any]]) -> None:
        for name, outcome in outcomes.items():
            if not outcome.ok and name in live:
                report.host(name).fail(outcome.error or "failed")
                live.remove(name)

    installed = distribute_files(
        conns,
        settings,
        [h for h in everyone if h in live or h in (inv.tracker.name, inv.seeder.name)],
        clear=False,
        installed=pyz_hashes,  # what _preflight's probe found
    )
    for role, host in (("tracker", inv.tracker.name), ("seeder", inv.seeder.name)):
        if not installed[host].ok:
            raise DeployError(f"{role} {host}: {installed[host].error}")
    drop_failed({h: o for h, o in installed.items() if h in live})
    _mark(report, started, "install")

    # The tracker starts while the seeder packs and hashes: nothing needs it running
    # before the .torrent is handed to it, and its start is a round trip and a wait.
    with ThreadPoolExecutor(max_workers=1) as pool:
        tracker_started = pool.submit(start_tracker, conns, settings, leased=True)
        tracker_started.add_done_callback(lambda f: _mark_done(f, report, started, "tracker"))
        if settings.local_path is not None:
            path_is_file = stage_local(conns, settings, settings.local_path)
            source: Optional[str] = settings.local_path
        else:
            make_payload(conns, settings)
            path_is_file, source = settings.path_is_file, settings.files_path
        _mark(report, started, "payload")
        unpack = settings.unpacks(path_is_file)
        info_hash = make_torrent(conns, settings, unpack_map=unpack)
        tracker = tracker_started.result()
    print(f"tracker on {inv.tracker.name} ({tracker})", file=out)
    local_torrent = download_torrent(conns, settings)
    meta = read_metainfo(local_torrent)
    report.info_hash, report.payload_bytes = info_hash, meta.total_length

    # What the peers need beside the .torrent: a tree's manifest, a plain tarball's map.
    remote = settings.manifest if settings.tree else settings.unpack_map if unpack else None

    def hand_out() -> Dict[str, Outcome[None]]:
        companion = (
            None if remote is None else (download_companion(conns, settings, remote), remote)
        )
        return upload_torrents(conns, settings, local_torrent, list(live), companion)

    # The peers get their copy while the seeder starts: no peer starts before both.
    with ThreadPoolExecutor(max_workers=1) as pool:
        handed_out = pool.submit(hand_out)
        publish_torrent(conns, settings, local_torrent)  # before the seeder announces it
        _mark(report, started, "torrent")
        # make_torrent hashed the payload just now, so each piece is checked as it first
        # leaves; and the seeder, like the tracker, stops itself if the lease lapses.
        start_seeding(conns, settings, lazy_check=True, leased=True)
        _mark(report, started, "seeding")
        drop_failed(handed_out.result())
    print(f"seeding {meta.total_length / MB:.1f} MB from {inv.seeder.name}", file=out)

    peer_ips = {ips[h] for h in live if h != inv.seeder.name}
    tracker_ip = ips[inv.tracker.name]
    transport = conns.connection(inv.tracker.name).transport
    # The tracker shows this deploy's torrent only to holders of its token.
    path = stats_path(meta.announce)
    bar = SwarmProgress(
        [
            lambda: fetch_over_ssh(transport, tracker_ip, settings.tracker_port, path=path),
            lambda: fetch_direct(tracker_ip, settings.tracker_port, path=path),
        ],
        info_hash,
        peer_ips,
        meta.total_length,
        interval=settings.stats_interval,
        enabled=settings.progress,
        file=out,
    )
    aside.bars.append(bar)
    bar.start()
    file_name = payload_name(settings, source)

    def bytes_done() -> Optional[int]:
        snap = bar.poll()
        return None if snap is None else snap.bytes_done

    watch = SeederWatch(conns, settings, bytes_done)

    def swarm_over() -> None:
        watch.stop()  # it would take the seeder's stop for a death
        aside.stop()

    early = EarlyTeardown(
        conns,
        settings,
        [h.name for h in inv.peers],
        [h for h in live if h not in conns.failed],  # the hosts conns.map will run
        before=swarm_over,
    )
    aside.early = early

    def deploy_host(host: str) -> Optional[float]:
        begun = time.monotonic()
        try:
            if not watch.begin(host):
                raise HostError(host, f"murder peer not started: {watch.verdict}")
            try:
                fetched = download(conns, settings, host, unpack)
            except HostError:
                if watch.verdict is not None:
                    raise HostError(host, f"murder peer stopped: {watch.verdict}") from None
                raise
            finally:
                watch.end(host)
        finally:
            if early.download_ended(host):
                _mark(report, started, "swarm")
        seconds = time.monotonic() - begun if fetched else None
        install_release(
            conns,
            host,
            settings,
            path_is_file=path_is_file,
            file_name=file_name,
            downloaded=fetched,
        )
        early.installed(host)
        return seconds

    watch.start()
    try:
        outcomes = conns.map(list(live), deploy_host, all_at_once=True)
    finally:
        watch.stop()
    _mark(report, started, "hosts")
    bar.stop()
    if watch.verdict is not None:
        report.error = watch.verdict
    for name, outcome in outcomes.items():
        row = report.host(name)
        if outcome.ok:
            row.status = OK
            row.seconds = outcome.value if outcome.value is not None else 0.0
            if outcome.value:
                row.mbps = meta.total_length / MB / outcome.value
        else:
            row.fail(outcome.error or "failed")
            row.seconds = outcome.seconds


def run_rollback(
    settings: Settings, *, config: Optional[Config] = None, ssh_config: Optional[str | Path] = None
) -> DeployReport:
    """Point ``current`` back at the previous release (or at ``settings.tag``) on every peer."""
    conns = open_connections(settings, config or make_config(ssh_config))
    report = DeployReport(tag=settings.tag or "(previous)")
    started = time.monotonic()
    try:
        peers = [h.name for h in conns.inventory.peers]
        for name, outcome in rollback_all(conns, settings, peers, settings.tag or "").items():
            row = report.host(name)
            row.seconds = outcome.seconds
            if outcome.ok:
                row.status = OK
                row.error = outcome.value  # "old -> new": shown in the table's last column
            else:
                row.fail(outcome.error or "failed")
    finally:
        conns.close()
        report.seconds = time.monotonic() - started
        if settings.json:
            report.write_json(settings.json)
    return report


def _finish(report: DeployReport, what: str) -> None:
    print(format_table(report))
    if not report.ok:
        failed = ", ".join(report.failed_hosts) or "-"
        raise Exit(f"{what} failed on: {failed}", code=1)


@task(
    help={
        "tag": "release name (no '/'); becomes releases/TAG on every peer",
        "files_path": "directory (or file, with --path-is-file) on the seeder to deploy",
        "local_path": "directory or file on this workstation, staged onto the seeder",
        "path_is_file": H_PATH_IS_FILE,
        "force": "deploy even if releases/TAG exists already (replaces it)",
        "json": H_JSON,
        "inventory": H_INV,
        "destination_path": H_DEST,
        "temp_path": H_TEMP,
        "remote_murder_path": H_MURDER,
        "tracker_port": H_PORT,
        "keep_releases": H_KEEP,
        "transfer": "tarball (default: one tarball, extracted on every peer) or tree (the "
        "release's own files, downloaded straight into releases/TAG)",
    }
)
def deploy(
    c: Context,
    tag: Optional[str] = None,
    files_path: Optional[str] = None,
    local_path: Optional[str] = None,
    path_is_file: bool = False,
    force: bool = False,
    json: Optional[str] = None,
    inventory: Optional[str] = None,
    destination_path: Optional[str] = None,
    temp_path: Optional[str] = None,
    remote_murder_path: Optional[str] = None,
    tracker_port: Optional[str] = None,
    keep_releases: Optional[str] = None,
    transfer: Optional[str] = None,
) -> None:
    """Deploy a release to every peer through the swarm (tracker, seed, peers, switch)."""
    try:
        settings = settings_from_config(
            c.config.murder,
            tag=tag,
            files_path=files_path,
            local_path=local_path,
            path_is_file=path_is_file,
            force=force,
            json=json,
            inventory=inventory,
            destination_path=destination_path,
            temp_path=temp_path,
            remote_murder_path=remote_murder_path,
            tracker_port=tracker_port,
            keep_releases=keep_releases,
            transfer=transfer,
        )
        report = run_deploy(settings, config=c.config)
    except MurderError as exc:
        raise Exit(f"deploy: {exc}", code=1) from exc
    except KeyboardInterrupt:
        raise Exit("deploy: interrupted; teardown done", code=130) from None
    _finish(report, "deploy")


@task(
    name="rollback",
    help={
        "tag": "release to switch to (default: the one before current)",
        "inventory": H_INV,
        "destination_path": H_DEST,
        "json": H_JSON,
    },
)
def rollback_task(
    c: Context,
    tag: Optional[str] = None,
    inventory: Optional[str] = None,
    destination_path: Optional[str] = None,
    json: Optional[str] = None,
) -> None:
    """Point `current` back at the previous release on every peer."""
    try:
        settings = settings_from_config(
            c.config.murder,
            tag=tag,
            inventory=inventory,
            destination_path=destination_path,
            json=json,
        )
        report = run_rollback(settings, config=c.config)
    except MurderError as exc:
        raise Exit(f"rollback: {exc}", code=1) from exc
    _finish(report, "rollback")
