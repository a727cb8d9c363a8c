"""peer / stop_peering / stop_all_peering: the swarm download on every peer host."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

from fabfile.remote import Connections, HostError, Outcome, last_line, sh, stop_script
from fabfile.settings import Settings

#: What ``murder peer``'s exit status means (the CLI contract).
PEER_EXIT = {
    1: "download failed or timed out",
    2: "bad command line",
    3: "bad torrent, unwritable file or no disk space",
    4: "tracker unreachable",
}
#: Slack on top of the engine's own --timeout before SSH gives up on the command.
SSH_SLACK_SECONDS = 60


def upload_torrent(conns: Connections, settings: Settings, local: Path, host: str) -> None:
    conns.run(host, f"mkdir -p -m 700 {sh(settings.temp_path)}")
    conns.put(host, str(local), settings.torrent)


def upload_torrents(
    conns: Connections, settings: Settings, local: Path, hosts: Sequence[str]
) -> Dict[str, Outcome[None]]:
    """Copy the .torrent to every peer in parallel (the seeder already has it)."""
    seeder = conns.inventory.seeder.name
    return conns.map(
        hosts, lambda h: None if h == seeder else upload_torrent(conns, settings, local, h)
    )


def peer_script(settings: Settings, ip: str) -> str:
    """``exec`` keeps our pid, so the fg pidfile names the engine's parent process."""
    argv = [
        settings.python,
        settings.pyz_remote,
        "peer",
        settings.torrent,
        settings.payload,
        "--ip",
        ip,
        "--bind",
        ip,
        "--linger",
        str(settings.linger),
        "--pidfile",
        settings.pidfile("peer"),
        "--logfile",
        settings.logfile("peer"),
        "--timeout",
        str(settings.peer_timeout),
        "--quiet",
    ]
    return (
        f"mkdir -p -m 700 {sh(settings.temp_path)} && umask 077 && "
        f"echo $$ > {sh(settings.pidfile('peer-fg'))} && exec {sh(*argv)}"
    )


def download(conns: Connections, settings: Settings, host: str) -> bool:
    """Run the swarm download on ``host``; False when it already holds the payload (seeder)."""
    if host == conns.inventory.seeder.name:
        return False
    script = peer_script(settings, conns.ip_of(host))
    result = conns.run(host, script, timeout=settings.peer_timeout + SSH_SLACK_SECONDS, check=False)
    if result.exited != 0:
        meaning = PEER_EXIT.get(result.exited, "failed")
        detail = last_line(result.stderr) or last_line(result.stdout)
        raise HostError(host, f"murder peer: {meaning} (exit {result.exited}): {detail}")
    return True


def stop_peering(conns: Connections, settings: Settings, host: str) -> None:
    conns.run(host, stop_script([settings.pidfile("peer-fg"), settings.pidfile("peer")]))


def stop_all_peering(conns: Connections, settings: Settings, host: str) -> None:
    pattern = f"{sh(settings.temp_path)}/peer-*.pid"
    conns.run(host, stop_script([], globs=[pattern]))
