"""Murder's Capistrano tasks, same names and parameters, as ``fab murder.TASK``.

Manual use, in the order of Murder's README::

    fab murder.distribute_files
    fab murder.start_tracker
    fab murder.create_torrent --tag=T --files-path=/path/on/seeder
    fab murder.start_seeding --tag=T
    fab murder.peer --tag=T --destination-path=/srv/app
    fab murder.stop_seeding --tag=T
    fab murder.stop_tracker
    fab murder.clean_temp_files --tag=T
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Dict, Iterator, Optional, Tuple

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from fabfile import install, peers, release, seed, teardown, torrent, tracker
from fabfile.deploy import open_connections
from fabfile.helptext import H_INV, H_MURDER, H_PATH_IS_FILE, H_PORT, H_TAG, H_TEMP
from fabfile.remote import Connections, Outcome
from fabfile.settings import Settings, settings_from_config
from murder_core.errors import DeployError, MurderError


@contextmanager
def _session(c: Context, **flags: Any) -> Iterator[Tuple[Settings, Connections]]:
    """Settings + connections for one task; murder errors become a clean non-zero exit."""
    try:
        # Murder's tasks are Murder's workflow: a tarball, whatever fab deploy's transfer.
        settings = replace(settings_from_config(c.config.murder, **flags), transfer="tarball")
        conns = open_connections(settings, c.config)
    except MurderError as exc:
        raise Exit(f"murder: {exc}", code=1) from exc
    try:
        yield settings, conns
    except MurderError as exc:
        raise Exit(f"murder: {exc}", code=1) from exc
    finally:
        conns.close()


def _outcomes(what: str, outcomes: Dict[str, Outcome[Any]]) -> None:
    for name, outcome in outcomes.items():
        shown = "" if outcome.value is None else f" {outcome.value}"
        print(f"{name}: ok{shown}" if outcome.ok else f"{name}: FAILED {outcome.error}")
    failed = [n for n, o in outcomes.items() if not o.ok]
    if failed:
        raise Exit(f"{what} failed on: {', '.join(failed)}", code=1)


def _all(conns: Connections) -> list[str]:
    return [h.name for h in conns.inventory.all_hosts]


def _peers(conns: Connections) -> list[str]:
    return [h.name for h in conns.inventory.peers]


@task(aliases=("install",), help={"inventory": H_INV, "remote_murder_path": H_MURDER})
def distribute_files(
    c: Context, inventory: Optional[str] = None, remote_murder_path: Optional[str] = None
) -> None:
    """Put murder.pyz (and Murder's script names) in remote_murder_path on every host."""
    with _session(c, inventory=inventory, remote_murder_path=remote_murder_path) as (s, conns):
        _outcomes("distribute_files", install.distribute_files(conns, s, _all(conns), clear=True))


@task(
    help={
        "inventory": H_INV,
        "temp_path": H_TEMP,
        "tracker_port": H_PORT,
        "remote_murder_path": H_MURDER,
    }
)
def start_tracker(
    c: Context,
    inventory: Optional[str] = None,
    temp_path: Optional[str] = None,
    remote_murder_path: Optional[str] = None,
    tracker_port: Optional[str] = None,
) -> None:
    """Start the tracker on the tracker host (detached, with a pidfile)."""
    flags = dict(inventory=inventory, temp_path=temp_path, tracker_port=tracker_port)
    with _session(c, remote_murder_path=remote_murder_path, **flags) as (s, conns):
        print(f"tracker running at {tracker.start_tracker(conns, s)}")


@task(help={"inventory": H_INV, "temp_path": H_TEMP})
def stop_tracker(
    c: Context, inventory: Optional[str] = None, temp_path: Optional[str] = None
) -> None:
    """Stop the tracker by its pidfile."""
    with _session(c, inventory=inventory, temp_path=temp_path) as (s, conns):
        tracker.stop_tracker(conns, s)


@task(
    help={
        "tag": H_TAG,
        "files_path": "directory (or file, with --path-is-file) on the seeder",
        "path_is_file": H_PATH_IS_FILE,
        "inventory": H_INV,
        "temp_path": H_TEMP,
        "remote_murder_path": H_MURDER,
        "tracker_port": H_PORT,
    }
)
def create_torrent(
    c: Context,
    tag: Optional[str] = None,
    files_path: Optional[str] = None,
    path_is_file: bool = False,
    inventory: Optional[str] = None,
    temp_path: Optional[str] = None,
    remote_murder_path: Optional[str] = None,
    tracker_port: Optional[str] = None,
) -> None:
    """Tar files_path on the seeder, make the .torrent, download it, give it to the tracker."""
    flags = dict(tag=tag, files_path=files_path, path_is_file=path_is_file, inventory=inventory)
    more = dict(
        temp_path=temp_path, remote_murder_path=remote_murder_path, tracker_port=tracker_port
    )
    with _session(c, **flags, **more) as (s, conns):
        s.require_tag()
        info_hash, local = torrent.create_torrent(conns, s)
        print(f"{info_hash} {local}")


@task(help={"tag": H_TAG, "inventory": H_INV, "temp_path": H_TEMP})
def download_torrent(
    c: Context,
    tag: Optional[str] = None,
    inventory: Optional[str] = None,
    temp_path: Optional[str] = None,
) -> None:
    """Fetch TAG's .torrent from the seeder to this workstation again."""
    with _session(c, tag=tag, inventory=inventory, temp_path=temp_path) as (s, conns):
        s.require_tag()
        print(torrent.download_torrent(conns, s))


@task(help={"tag": H_TAG, "inventory": H_INV, "temp_path": H_TEMP, "remote_murder_path": H_MURDER})
def start_seeding(
    c: Context,
    tag: Optional[str] = None,
    inventory: Optional[str] = None,
    temp_path: Optional[str] = None,
    remote_murder_path: Optional[str] = None,
) -> None:
    """Start seeding TAG on the seeder (detached, with a pidfile)."""
    flags = dict(tag=tag, inventory=inventory, temp_path=temp_path)
    with _session(c, remote_murder_path=remote_murder_path, **flags) as (s, conns):
        s.require_tag()
        seed.start_seeding(conns, s)


@task(help={"tag": H_TAG, "inventory": H_INV, "temp_path": H_TEMP})
def stop_seeding(
    c: Context,
    tag: Optional[str] = None,
    inventory: Optional[str] = None,
    temp_path: Optional[str] = None,
) -> None:
    """Stop seeding TAG."""
    with _session(c, tag=tag, inventory=inventory, temp_path=temp_path) as (s, conns):
        s.require_tag()
        seed.stop_seeding(conns, s)


@task(help={"inventory": H_INV, "temp_path": H_TEMP})
def stop_all_seeding(
    c: Context, inventory: Optional[str] = None, temp_path: Optional[str] = None
) -> None:
    """Stop every seeder murder started on the seeder host."""
    with _session(c, inventory=inventory, temp_path=temp_path) as (s, conns):
        seed.stop_all_seeding(conns, s)


@task(
    help={
        "tag": H_TAG,
        "destination_path": "extract into DESTINATION_PATH/TAG on every peer",
        "no_tag_directory": "extract straight into destination_path",
        "unsafe_please_delete": "replace a non-empty destination instead of refusing",
        "path_is_file": "the payload is one file, not a tarball",
        "files_path": "with --path-is-file: the file's original path (gives its name)",
        "inventory": H_INV,
        "temp_path": H_TEMP,
        "remote_murder_path": H_MURDER,
    }
)
def peer(
    c: Context,
    tag: Optional[str] = None,
    destination_path: Optional[str] = None,
    no_tag_directory: bool = False,
    unsafe_please_delete: bool = False,
    path_is_file: bool = False,
    files_path: Optional[str] = None,
    inventory: Optional[str] = None,
    temp_path: Optional[str] = None,
    remote_murder_path: Optional[str] = None,
) -> None:
    """Copy the .torrent to all peers, download in parallel, extract into destination_path."""
    flags = dict(
        tag=tag,
        destination_path=destination_path,
        no_tag_directory=no_tag_directory,
        unsafe_please_delete=unsafe_please_delete,
        path_is_file=path_is_file,
        files_path=files_path,
        inventory=inventory,
        temp_path=temp_path,
        remote_murder_path=remote_murder_path,
    )
    with _session(c, **flags) as (s, conns):
        local = torrent.local_torrent_path(s)
        if not local.is_file():
            raise DeployError(f"{local} not found: run murder.create_torrent or download_torrent")
        names = _peers(conns)
        name = release.payload_name(s, s.files_path)

        def one(host: str) -> str:
            peers.download(conns, s, host)
            release.extract_on(
                conns,
                host,
                s,
                s.murder_target,
                path_is_file=s.path_is_file,
                file_name=name,
                replace=s.unsafe_please_delete,
            )
            return s.murder_target

        try:
            uploaded = peers.upload_torrents(conns, s, local, names)
            ready = [n for n in names if uploaded[n].ok]
            results: Dict[str, Outcome[Any]] = {n: o for n, o in uploaded.items() if not o.ok}
            results.update(conns.map(ready, one, all_at_once=True))
        finally:
            # Every peer is done or failed: lingering helps no one now.
            conns.map(names, lambda h: peers.stop_peering(conns, s, h))
        _outcomes("peer", {n: results[n] for n in names})


@task(help={"tag": H_TAG, "inventory": H_INV, "temp_path": H_TEMP})
def stop_peering(
    c: Context,
    tag: Optional[str] = None,
    inventory: Optional[str] = None,
    temp_path: Optional[str] = None,
) -> None:
    """Stop TAG's download/lingering seeders on every peer (by pidfile)."""
    with _session(c, tag=tag, inventory=inventory, temp_path=temp_path) as (s, conns):
        s.require_tag()
        _outcomes(
            "stop_peering", conns.map(_peers(conns), lambda h: peers.stop_peering(conns, s, h))
        )


@task(help={"inventory": H_INV, "temp_path": H_TEMP})
def stop_all_peering(
    c: Context, inventory: Optional[str] = None, temp_path: Optional[str] = None
) -> None:
    """Stop every murder peer process on every peer (by pidfile)."""
    with _session(c, inventory=inventory, temp_path=temp_path) as (s, conns):
        _outcomes(
            "stop_all_peering",
            conns.map(_peers(conns), lambda h: peers.stop_all_peering(conns, s, h)),
        )


@task(help={"tag": H_TAG, "inventory": H_INV, "temp_path": H_TEMP})
def clean_temp_files(
    c: Context,
    tag: Optional[str] = None,
    inventory: Optional[str] = None,
    temp_path: Optional[str] = None,
) -> None:
    """Remove TAG's tarball, .torrent and pidfiles from temp_path on every host."""
    with _session(c, tag=tag, inventory=inventory, temp_path=temp_path) as (s, conns):
        s.require_tag()
        _outcomes(
            "clean_temp_files",
            conns.map(_all(conns), lambda h: teardown.clean_temp_files(conns, s, h)),
        )
