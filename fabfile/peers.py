"""peer / stop_peering / stop_all_peering: the swarm download on every peer host."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

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


def describe_exit(code: int) -> str:
    """What a ``murder peer`` exit status says, for the report's error column.

    128+N is the shell's way to say "killed by signal N" (the engine's own parent
    process passes its worker's death on that way too); -1 is paramiko's "the channel
    closed without an exit status", which means the session died under the command.
    """
    if code in PEER_EXIT:
        return f"{PEER_EXIT[code]} (exit {code})"
    if code == -1:
        return "ended without an exit status (the SSH session died under it)"
    if 128 < code <= 128 + 64:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"killed by {name} (exit {code})"
    return f"failed (exit {code})"


#: A file made on the seeder that peers need beside the .torrent: (local copy, remote path).
Companion = Tuple[Path, str]


def upload_torrent(
    conns: Connections,
    settings: Settings,
    local: Path,
    host: str,
    companion: Optional[Companion] = None,
) -> None:
    conns.run(host, f"mkdir -p -m 700 {sh(settings.temp_path)}")
    conns.put(host, str(local), settings.torrent)
    if companion is not None:
        conns.put(host, str(companion[0]), companion[1])


def upload_torrents(
    conns: Connections,
    settings: Settings,
    local: Path,
    hosts: Sequence[str],
    companion: Optional[Companion] = None,
) -> Dict[str, Outcome[None]]:
    """Copy the .torrent (and a tree's manifest or a tarball's map) to every peer in parallel.

    The seeder made both and has them already."""
    seeder = conns.inventory.seeder.name
    return conns.map(
        hosts,
        lambda h: None if h == seeder else upload_torrent(conns, settings, local, h, companion),
    )


def peer_script(settings: Settings, ip: str, unpack: bool = False) -> str:
    """``exec`` keeps our pid, so the fg pidfile names the engine's parent process."""
    argv = [
        *settings.python_argv,
        settings.pyz_remote,
        "peer",
        settings.torrent,
        settings.download_target,
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
    if unpack:
        argv += ["--unpack-map", settings.unpack_map, "--unpack-dir", settings.incoming_dir]
    # A tree (or a tarball's unpacked files) downloads beside the releases, whose directory
    # gets the usual modes: the umask 077 that keeps the temp files private comes after it.
    beside = settings.tree or unpack
    releases = f"mkdir -p {sh(settings.releases_dir)} && " if beside else ""
    return (
        f"{releases}mkdir -p -m 700 {sh(settings.temp_path)} && umask 077 && "
        f"echo $$ > {sh(settings.pidfile('peer-fg'))} && exec {sh(*argv)}"
    )


def download(conns: Connections, settings: Settings, host: str, unpack: bool = False) -> bool:
    """Run the swarm download on ``host``; False when it already holds the payload (seeder)."""
    if host == conns.inventory.seeder.name:
        return False
    script = peer_script(settings, conns.ip_of(host), unpack)
    limit = settings.peer_timeout + SSH_SLACK_SECONDS
    # The peer gives up by itself after peer_timeout; silence past that plus the slack
    # means the host or its link is gone, not the download.
    silent = (
        f"murder peer: no answer from the host for {limit:g}s "
        f"(peer_timeout {settings.peer_timeout:g}s + {SSH_SLACK_SECONDS}s): "
        "host unreachable or hung"
    )
    try:
        result = conns.run(host, script, timeout=limit, check=False)
    except HostError as exc:
        if exc.reason.startswith("command timed out"):
            raise HostError(host, silent) from exc
        raise
    if result.exited != 0:
        detail = last_line(result.stderr) or last_line(result.stdout)
        message = f"murder peer: {describe_exit(result.exited)}"
        raise HostError(host, f"{message}: {detail}" if detail else message)
    return True


def stop_peering(conns: Connections, settings: Settings, host: str, then: str = "") -> None:
    """Stop the download and the linger-seeding on ``host``; then run ``then`` there."""
    pidfiles = [settings.pidfile("peer-fg"), settings.pidfile("peer")]
    conns.run(host, stop_script(pidfiles, then=then))


def stop_all_peering(conns: Connections, settings: Settings, host: str) -> None:
    pattern = f"{sh(settings.temp_path)}/peer-*.pid"
    conns.run(host, stop_script([], globs=[pattern]))
