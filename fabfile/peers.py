"""peer / stop_peering / stop_all_peering: the swarm download on every peer host."""

from __future__ import annotations

import signal
from concurrent.futures import CancelledError, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from pathlib import Path
from typing import Dict, Optional, Sequence

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


def upload_torrent(
    conns: Connections, settings: Settings, local: Path, host: str, manifest: Optional[Path] = None
) -> None:
    """The manifest first: a peer already waiting starts the moment its .torrent lands,
    and its install reads the manifest once the download is done."""
    conns.run(host, f"mkdir -p -m 700 {sh(settings.temp_path)}")
    if manifest is not None:
        conns.put(host, str(manifest), settings.manifest)
    conns.put(host, str(local), settings.torrent)


def upload_torrents(
    conns: Connections,
    settings: Settings,
    local: Path,
    hosts: Sequence[str],
    manifest: Optional[Path] = None,
) -> Dict[str, Outcome[None]]:
    """Copy the .torrent (and a tree's manifest) to every peer in parallel.

    The seeder made both and has them already."""
    seeder = conns.inventory.seeder.name
    return conns.map(
        hosts,
        lambda h: None if h == seeder else upload_torrent(conns, settings, local, h, manifest),
    )


def peer_script(settings: Settings, ip: str, wait: float = 0) -> str:
    """``exec`` keeps our pid, so the fg pidfile names the engine's parent process.

    ``wait`` > 0 starts the peer before its .torrent is there: it waits that long for it.
    """
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
    if wait > 0:
        argv += ["--wait-torrent", f"{wait:g}"]
    # A tree downloads beside the releases, whose directory gets the usual modes: the
    # umask 077 that keeps the temp files private comes after it.
    releases = f"mkdir -p {sh(settings.releases_dir)} && " if settings.tree else ""
    return (
        f"{releases}mkdir -p -m 700 {sh(settings.temp_path)} && umask 077 && "
        f"echo $$ > {sh(settings.pidfile('peer-fg'))} && exec {sh(*argv)}"
    )


def download(conns: Connections, settings: Settings, host: str, wait: float = 0) -> bool:
    """Run the swarm download on ``host``; False when it already holds the payload (seeder).

    ``wait``: seconds the peer may wait for its .torrent to arrive (see peer_script);
    peer_timeout bounds the wait and the download together.
    """
    if host == conns.inventory.seeder.name:
        return False
    script = peer_script(settings, conns.ip_of(host), wait)
    limit = settings.peer_timeout + SSH_SLACK_SECONDS
    # The peer gives up by itself after peer_timeout, its wait for the torrent included;
    # silence past that plus the slack means the host or its link is gone.
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


class EarlyDownloads:
    """Every peer's download, started before its .torrent exists.

    Starting a peer is an SSH session and python's imports: over a second of a deploy
    when 16 peers share two cores, and the seeder's packing and hashing leave CPU idle
    meanwhile. So the peers start then and wait for their torrent (``--wait-torrent``);
    the deploy hands each outcome to the stage that installs it (``result``), and after
    teardown has stopped what still runs, ``close`` waits for the threads.
    """

    def __init__(
        self, conns: Connections, settings: Settings, hosts: Sequence[str], wait: float
    ) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(conns.max_parallel, len(hosts))),
            thread_name_prefix="murder-peer",
        )
        self._jobs = {h: self._pool.submit(download, conns, settings, h, wait) for h in hosts}

    def result(self, host: str) -> bool:
        """What ``download`` returned for ``host``, once it has; HostError as it raised."""
        job = self._jobs.get(host)
        if job is None:
            raise HostError(host, "murder peer was not started")
        try:
            return job.result()
        except CancelledError:
            raise HostError(host, "murder peer not started: the deploy stopped first") from None

    def stop_starting(self) -> None:
        """Start no more peers (hosts past ``max_parallel`` wait their turn)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def join(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` for every download to end; the hosts still running."""
        wait_all(list(self._jobs.values()), timeout)
        return sorted(h for h, job in self._jobs.items() if not job.done())


#: How long the downloads get to end after teardown stopped their peers.
STRAGGLER_WAIT = 5.0


def stop_stragglers(
    conns: Connections, settings: Settings, downloads: EarlyDownloads, timeout: float
) -> list[str]:
    """After teardown: stop the peers it missed, and wait for every download to end.

    A peer whose SSH command was issued just before teardown reached its host may have
    written its pidfile only after the stop looked for it, and it would then wait for
    its torrent for as long as ``--wait-torrent`` allows. Returns the hosts whose
    download still has not ended.
    """
    downloads.stop_starting()
    late = downloads.join(STRAGGLER_WAIT)
    if late:
        conns.map(late, lambda h: stop_peering(conns, settings, h), skip_failed=False)
        late = downloads.join(timeout)
    return late


def stop_peering(conns: Connections, settings: Settings, host: str, then: str = "") -> None:
    """Stop the download and the linger-seeding on ``host``; then run ``then`` there."""
    pidfiles = [settings.pidfile("peer-fg"), settings.pidfile("peer")]
    conns.run(host, stop_script(pidfiles, then=then))


def stop_all_peering(conns: Connections, settings: Settings, host: str) -> None:
    pattern = f"{sh(settings.temp_path)}/peer-*.pid"
    conns.run(host, stop_script([], globs=[pattern]))
