"""start_seeding / stop_seeding / stop_all_seeding on the seeder."""

from __future__ import annotations

from fabfile.lease import touch_script
from fabfile.remote import Connections, sh, start_detached_script, stop_script
from fabfile.settings import Settings


def seed_argv(
    settings: Settings, ip: str, *, lazy_check: bool = False, leased: bool = False
) -> list[str]:
    """``lazy_check`` when the torrent was made from this very file moments ago (``fab
    deploy``): the seeder then checks each piece as it first serves it instead of the
    whole payload again before it starts. ``fab murder.start_seeding`` may come long
    after ``create_torrent``, so it checks everything first."""
    return [
        *settings.python_argv,
        settings.pyz_remote,
        "seed",
        settings.torrent,
        settings.seed_source,
        "--ip",
        ip,
        "--bind",
        ip,
        "--pidfile",
        settings.pidfile("seeder"),
        "--logfile",
        settings.logfile("seeder"),
        "--quiet",
        *(["--lazy-check"] if lazy_check else []),
        *(settings.lease_args() if leased else []),
    ]


def seeder_output(settings: Settings) -> str:
    """Where the detached seeder's stdout and stderr go (its error line ends up here)."""
    return f"{settings.temp_path}/seeder-{settings.require_tag()}.out"


def start_seeding(
    conns: Connections, settings: Settings, *, lazy_check: bool = False, leased: bool = False
) -> None:
    """``leased``: as for the tracker (see ``tracker_argv``), for ``fab deploy``."""
    host = conns.inventory.seeder.name
    ip = conns.ip_of(host)
    start = start_detached_script(
        seed_argv(settings, ip, lazy_check=lazy_check, leased=leased),
        workdir=settings.temp_path,
        pidfile=settings.pidfile("seeder"),
        output=seeder_output(settings),
    )
    if leased:
        start = f"{touch_script(settings)} || exit 1\n{start}"
    conns.run(host, stop_script([settings.pidfile("seeder")], then=start))


def stop_seeding(conns: Connections, settings: Settings) -> None:
    conns.run(conns.inventory.seeder.name, stop_script([settings.pidfile("seeder")]))


def stop_all_seeding(conns: Connections, settings: Settings) -> None:
    pattern = f"{sh(settings.temp_path)}/seeder-*.pid"
    conns.run(conns.inventory.seeder.name, stop_script([], globs=[pattern]))
