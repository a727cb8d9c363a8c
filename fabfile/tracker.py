"""start_tracker / stop_tracker on the tracker host: detached, with a pidfile."""

from __future__ import annotations

from fabfile.lease import touch_script
from fabfile.remote import Connections, sh, start_detached_script, stop_script
from fabfile.settings import Settings


def tracker_argv(settings: Settings, bind_ip: str, *, leased: bool = False) -> list[str]:
    """The tracker serves only torrents copied into ``allowed_dir``: this deploy's.

    ``leased`` (``fab deploy``): it stops by itself once the deploy stops renewing
    ``settings.lease_file``; ``fab murder.start_tracker`` runs until stopped, as Murder's."""
    t = settings.temp_path
    return [
        *settings.python_argv,
        settings.pyz_remote,
        "tracker",
        "--port",
        str(settings.tracker_port),
        "--bind",
        bind_ip,
        "--dfile",
        f"{t}/tracker.state",
        "--logfile",
        settings.logfile("tracker"),
        "--allowed-dir",
        settings.allowed_dir,
        "--pidfile",
        settings.pidfile("tracker"),
        "--interval",
        str(settings.announce_interval),
        *(settings.lease_args() if leased else []),
    ]


def start_tracker(conns: Connections, settings: Settings, *, leased: bool = False) -> str:
    """Start the tracker (stopping one left by an earlier run); returns ``ip:port``."""
    host = conns.inventory.tracker.name
    ip = conns.ip_of(host)
    start = start_detached_script(
        tracker_argv(settings, ip, leased=leased),
        workdir=settings.temp_path,
        pidfile=settings.pidfile("tracker"),
        output=f"{settings.temp_path}/tracker.out",
    )
    # One round trip: on a fleet far from the workstation each one costs a network RTT.
    mkdir = f"mkdir -p -m 700 {sh(settings.temp_path)} {sh(settings.allowed_dir)} || exit 1"
    if leased:
        mkdir += f"\n{touch_script(settings)} || exit 1"
    conns.run(host, stop_script([settings.pidfile("tracker")], then=f"{mkdir}\n{start}"))
    return tracker_address(ip, settings.tracker_port)


def tracker_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def stop_tracker(conns: Connections, settings: Settings, then: str = "") -> None:
    """Stop the tracker, then run ``then`` on its host in the same round trip."""
    host = conns.inventory.tracker.name
    conns.run(host, stop_script([settings.pidfile("tracker")], then=then))
