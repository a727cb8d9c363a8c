"""The four ways the cluster benchmark puts one file on N peers, each timed and verified.

Every method starts from the same state (the payload on the seeder h1, nothing on the
peers), is timed from its first transfer process to the last peer holding the file,
and ends with a sha256 of the copy on every peer: a fast wrong answer is a failure.
The swarms are timed from the first peer's start; their tracker and seeder are
already up (`fab deploy`, the fourth method, times the whole pipeline instead, with
murder.pyz installed on the hosts beforehand as `fab murder.distribute_files` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from murder_core.errors import ClusterError
from murder_dev.bench_downlinks import downlink_metrics
from murder_dev.bench_hosts import (
    ENGINE_PYTHON,
    Procs,
    Sample,
    Sampler,
    cpu_seconds,
    cpu_times,
    host_path,
    peak_rss_kib,
    remove_private,
    sha256_on_hosts,
    wait_until_all,
)
from murder_dev.bench_seeder import seeder_metrics, series, share
from murder_dev.cluster import ClusterInfo

BENCH_DIR = "/srv/murder/bench"
RELEASE_DIR = f"{BENCH_DIR}/release"
SOURCE = f"{RELEASE_DIR}/payload.bin"
TORRENT = f"{BENCH_DIR}/payload.torrent"
ALLOWED_DIR = f"{BENCH_DIR}/allowed"
SEED_EVENTS = f"{BENCH_DIR}/seed-events.json"
DL_DIR = "/srv/murder/bench-dl"
TARGET = f"{DL_DIR}/payload.bin"
ARIA2_DONE = f"{DL_DIR}/.complete"
SSH_DIR = "/srv/murder/.bench-ssh"
TRACKER_PORT = 6969
PORTS = ("6881", "6899")
#: Everything a method may leave on a peer; removed before each method.
LEFTOVERS = (DL_DIR, "/srv/murder/app", "/srv/murder/bin", "/tmp/murder")
SEEDHOOK = Path(__file__).resolve().parent / "bench_seedhook.py"
METHODS = ("scp", "aria2c", "murder", "fab", "fab-tree")
LABELS = {
    "scp": "scp fan-out",
    "aria2c": "aria2c swarm",
    "murder": "murder swarm",
    "fab": "fab deploy",
    "fab-tree": "fab deploy, tree",
}


@dataclass
class Round:
    """One cluster size N inside the benchmark's cluster: h1 seeds, ``peers`` receive."""

    info: ClusterInfo
    n: int
    pyz: Path
    logs: Path
    inventory: Path
    aria2_hook: Path
    seedhook: Path  # bench_seedhook.py where the hosts see it (not under their private /tmp)
    payload_bytes: int
    sha256: str
    t_min: float
    link_bytes_per_s: float  # what a saturated link carries, as its counters see it
    fab_compress: bool = False  # the payload is random bytes: gzip would only cost time
    seeder: str = "h1"
    peers: list[str] = field(default_factory=list)

    def ip(self, host: str) -> str:
        return self.info.host(host).ip

    def timeout(self, method: str) -> float:
        if method == "scp":
            return 3 * self.n * self.t_min + 120
        return 10 * self.t_min + (300 if method.startswith("fab") else 120)


@dataclass
class MethodRun:
    method: str
    n: int
    rep: int
    ok: bool = False
    seconds: Optional[float] = None
    error: Optional[str] = None
    completions: dict[str, float] = field(default_factory=dict)  # host -> s after start
    sha256: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)


def run_method(r: Round, method: str, rep: int) -> MethodRun:
    runner: dict[str, Callable[[Round, MethodRun, Procs], None]] = {
        "scp": _scp,
        "aria2c": _aria2c,
        "murder": _murder,
        "fab": _fab,
        "fab-tree": lambda r, run, procs: _fab(r, run, procs, transfer="tree"),
    }
    run = MethodRun(method, r.n, rep)
    remove_private(r.info, [r.seeder, *r.peers], LEFTOVERS)
    for peer in r.peers:
        host_path(r.info, peer, DL_DIR).mkdir(parents=True)
    procs = Procs(r.info, r.logs / f"n{r.n}-r{rep}-{method}")
    try:
        runner[method](r, run, procs)
    except Exception as exc:  # one method failing must not lose the others' results
        run.error = run.error or f"{type(exc).__name__}: {exc}"
    finally:
        procs.stop()
    run.ok = run.error is None and all(v == r.sha256 for v in run.sha256.values())
    if run.error is None and not run.ok:
        bad = sorted(h for h, v in run.sha256.items() if v != r.sha256)
        run.error = f"sha256 mismatch or missing copy on {', '.join(bad)}"
    remove_private(r.info, [r.seeder, *r.peers], LEFTOVERS)
    return run


def _finish(
    r: Round,
    run: MethodRun,
    t0: float,
    done: dict[str, float],
    errors: dict[str, str],
    samples: Sequence[Sample],
    copies: dict[str, str],
) -> None:
    run.completions = {h: round(t - t0, 3) for h, t in sorted(done.items())}
    if errors:
        run.error = "; ".join(f"{h}: {e}" for h, e in sorted(errors.items()))
    elif done:
        run.seconds = round(max(done.values()) - t0, 3)
    run.series = series(samples, t0, r.seeder, r.peers)
    run.metrics.update(
        downlink_metrics(
            samples,
            t0,
            r.peers,
            run.completions,
            payload_bytes=r.payload_bytes,
            link_bytes_per_s=r.link_bytes_per_s,
        )
    )
    if len(samples) > 1 and samples[-1].cpu_total > samples[0].cpu_total:
        first, last = samples[0], samples[-1]
        jiffies = last.cpu_total - first.cpu_total
        run.metrics["machine_cpu_busy_pct"] = share(last.cpu_busy - first.cpu_busy, jiffies)
        run.metrics["machine_cpu_steal_pct"] = share(last.cpu_steal - first.cpu_steal, jiffies)
    run.metrics["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    run.sha256 = sha256_on_hosts(r.info, copies)


# -- scp fan-out ---------------------------------------------------------------------------
def _scp(r: Round, run: MethodRun, procs: Procs) -> None:
    """Parallel scp from the seeder to every peer, as a push from one server does."""
    config = f"{SSH_DIR}/ssh_config"
    sampler = Sampler(r.info, [r.seeder, *r.peers])
    sampler.start()
    t0 = time.monotonic()
    names = {p: f"scp-{p}" for p in r.peers}
    for peer, name in names.items():
        procs.spawn(r.seeder, name, ["scp", "-F", config, "-q", SOURCE, f"{peer}:{TARGET}"])

    def exited_ok(peer: str) -> Callable[[], bool]:
        return lambda: procs.running[names[peer]].poll() == 0

    def failed(peer: str) -> Optional[str]:
        code = procs.running[names[peer]].poll()
        return None if code in (None, 0) else f"scp exited {code}: {procs.log_tail(names[peer])}"

    done, errors = wait_until_all(
        {p: exited_ok(p) for p in r.peers}, r.timeout("scp"), failed=failed
    )
    _finish(r, run, t0, done, errors, sampler.stop(), {p: TARGET for p in r.peers})


# -- swarms: shared start-up ---------------------------------------------------------------
def _start_tracker(r: Round, procs: Procs, name: str) -> str:
    state = f"{BENCH_DIR}/{name}.state"
    with contextlib.suppress(FileNotFoundError):
        host_path(r.info, r.seeder, state).unlink()
    ip = r.ip(r.seeder)
    procs.spawn(
        r.seeder,
        name,
        [
            *(*ENGINE_PYTHON, str(r.pyz), "tracker", "--port", str(TRACKER_PORT), "--bind", ip),
            *("--dfile", state, "--allowed-dir", ALLOWED_DIR, "--interval", "2"),
        ],
    )
    url = f"http://{ip}:{TRACKER_PORT}/stats.json"
    deadline = time.monotonic() + 15
    while True:
        try:
            _stats(url)
            return url
        except OSError:
            if time.monotonic() > deadline or procs.running[name].poll() is not None:
                raise ClusterError(f"tracker did not come up: {procs.log_tail(name)}") from None
            time.sleep(0.1)


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as resp:
        data: dict[str, Any] = json.loads(resp.read(1 << 20))
    return data


def _wait_for_seeder(url: str, procs: Procs, seeder: str, timeout: float = 60) -> None:
    """A peer started before the tracker knows the seeder could find nobody at first."""
    deadline = time.monotonic() + timeout
    while True:
        torrents = _stats(url).get("torrents", {}).values()
        if sum(int(t.get("seeders", 0)) for t in torrents) >= 1:
            return
        if time.monotonic() > deadline or procs.running[seeder].poll() is not None:
            raise ClusterError(f"seeder never reached the tracker: {procs.log_tail(seeder)}")
        time.sleep(0.05)


def _swarm(
    r: Round,
    run: MethodRun,
    procs: Procs,
    peer_argv: Callable[[str], list[str]],
    done_path: str,
    seeder_name: str,
) -> tuple[float, list[Sample]]:
    """Start every peer, wait for each one's ``done_path``; returns (t0, link samples).

    Per-peer CPU seconds and peak RSS are read the moment each peer is seen done.
    """
    sampler = Sampler(r.info, [r.seeder, *r.peers])
    sampler.start()
    seeder_pid = procs.running[seeder_name].pid
    seeder_cpu0 = cpu_seconds(seeder_pid) or 0.0
    cpu: dict[str, float] = {}
    kernel: dict[str, float] = {}  # of cpu: in system calls (sockets, page cache)
    rss: dict[str, int] = {}
    t0 = time.monotonic()
    for peer in r.peers:
        procs.spawn(peer, f"peer-{peer}", peer_argv(peer))

    def on_done(peer: str, t: float) -> None:
        pid = procs.running[f"peer-{peer}"].pid
        user, kernel[peer] = cpu_times(pid) or (0.0, 0.0)
        cpu[peer] = user + kernel[peer]
        rss[peer] = peak_rss_kib(pid) or 0

    def failed(peer: str) -> Optional[str]:
        name = f"peer-{peer}"
        code = procs.running[name].poll()
        return None if code is None else f"exited {code} early: {procs.log_tail(name)}"

    paths = {p: host_path(r.info, p, done_path) for p in r.peers}
    done, errors = wait_until_all(
        {p: paths[p].exists for p in r.peers},
        r.timeout(run.method),
        failed=failed,
        on_done=on_done,
    )
    seeder_cpu = (cpu_seconds(seeder_pid) or seeder_cpu0) - seeder_cpu0
    samples = sampler.stop()
    procs.stop([f"peer-{p}" for p in r.peers])
    _finish(r, run, t0, done, errors, samples, {p: TARGET for p in r.peers})
    moved = {
        p: (samples[-1].up[p] - samples[0].up[p]) + (samples[-1].down[p] - samples[0].down[p])
        for p in r.peers
    }
    per_gb = [cpu[p] / (moved[p] / 1e9) for p in cpu if moved[p] > 0]
    seeder_sent = samples[-1].up[r.seeder] - samples[0].up[r.seeder]
    cpu_total = sum(cpu.values())
    run.metrics.update(
        peer_cpu_seconds=cpu,
        peer_cpu_seconds_total=round(cpu_total, 2),
        peer_cpu_kernel_pct=round(100 * sum(kernel.values()) / cpu_total, 1) if cpu_total else None,
        peer_peak_rss_kib=rss,
        peer_cpu_s_per_gb_median=_median(per_gb),
        peer_cpu_s_per_gb_max=round(max(per_gb), 2) if per_gb else None,
        peer_peak_rss_mib_max=round(max(rss.values()) / 1024, 1) if rss else None,
        seeder_cpu_seconds=round(seeder_cpu, 2),
        seeder_sent_bytes=seeder_sent,
        seeder_cpu_s_per_gb=round(seeder_cpu / (seeder_sent / 1e9), 2) if seeder_sent else None,
        seeder_sent_ratio=round(seeder_sent / r.payload_bytes, 3),
    )
    return t0, samples


def _median(values: Sequence[float]) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    value = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return round(value, 2)


# -- aria2c swarm --------------------------------------------------------------------------
def _aria2c_argv(r: Round, host: str, *extra: str) -> list[str]:
    """aria2c bound to the host's address: no DHT, LPD or PEX; dies with the benchmark."""
    return [
        "aria2c",
        "--no-conf=true",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        f"--interface={r.ip(host)}",
        "--disable-ipv6=true",
        f"--listen-port={PORTS[0]}",
        f"--stop-with-process={os.getpid()}",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--seed-ratio=0.0",
        "--seed-time=30",  # minutes: finished peers keep serving until we stop them
        *extra,
    ]


def _aria2c(r: Round, run: MethodRun, procs: Procs) -> None:
    url = _start_tracker(r, procs, "tracker")
    procs.spawn(
        r.seeder,
        "seeder",
        _aria2c_argv(r, r.seeder, "--check-integrity=true", "-d", RELEASE_DIR, TORRENT),
    )
    _wait_for_seeder(url, procs, "seeder")
    timeout = int(r.timeout("aria2c"))
    _swarm(
        r,
        run,
        procs,
        lambda peer: _aria2c_argv(
            r,
            peer,
            f"--bt-stop-timeout={timeout}",
            f"--on-bt-download-complete={r.aria2_hook}",
            "-d",
            DL_DIR,
            TORRENT,
        ),
        ARIA2_DONE,
        "seeder",
    )


# -- our swarm -----------------------------------------------------------------------------
def _murder(r: Round, run: MethodRun, procs: Procs) -> None:
    url = _start_tracker(r, procs, "tracker")
    events = host_path(r.info, r.seeder, SEED_EVENTS)
    with contextlib.suppress(FileNotFoundError):
        events.unlink()
    ip = r.ip(r.seeder)
    procs.spawn(
        r.seeder,
        "seeder",
        [
            *(*ENGINE_PYTHON, str(r.seedhook), str(r.pyz), SEED_EVENTS, "seed", TORRENT, SOURCE),
            *("--ip", ip, "--bind", ip, "--minport", PORTS[0], "--maxport", PORTS[1], "--quiet"),
        ],
    )
    _wait_for_seeder(url, procs, "seeder")
    timeout = str(int(r.timeout("murder")))

    def peer_argv(peer: str) -> list[str]:
        ip = r.ip(peer)
        return [
            *(*ENGINE_PYTHON, str(r.pyz), "peer", TORRENT, TARGET, "--ip", ip, "--bind", ip),
            *("--minport", PORTS[0], "--maxport", PORTS[1], "--foreground", "--linger", "1800"),
            *("--timeout", timeout, "--quiet"),
        ]

    t0, samples = _swarm(r, run, procs, peer_argv, TARGET, "seeder")
    procs.stop(["seeder"])  # it writes the send log as it exits
    with contextlib.suppress(OSError):
        shutil.copyfile(events, procs.logs / "seed-events.json")
    try:
        data = json.loads(events.read_text())
    except (OSError, ValueError) as exc:
        run.metrics["seeder_log_error"] = str(exc)
        return
    sent = [(float(t), int(i), int(b), int(n)) for t, i, b, n in data["events"]]
    run.metrics.update(
        seeder_metrics(
            sent,
            t0,
            [(s.t, s.up[r.seeder]) for s in samples],
            payload_bytes=r.payload_bytes,
            link_bytes_per_s=r.link_bytes_per_s,
        )
    )


# -- the whole fab deploy ------------------------------------------------------------------
def _fab(r: Round, run: MethodRun, procs: Procs, transfer: str = "tarball") -> None:
    """``transfer`` tree: the release's own files, no tarball (fab deploy --transfer tree)."""
    from fabfile import run_deploy, settings_from_config

    tag = f"bench-n{r.n}-r{run.rep}-{int(time.time())}"
    timeout = r.timeout("fab")
    settings = settings_from_config(
        {"compress": r.fab_compress},  # a False flag would mean "not given"
        tag=tag,
        files_path=RELEASE_DIR,
        inventory=str(r.inventory),
        pyz=str(r.pyz),
        progress=False,
        local_torrent_dir=str(r.info.workdir / "fab-torrents"),
        peer_timeout=int(timeout),
        force=True,
        transfer=transfer,
    )
    client_install_s = _install_client(settings, r.info)
    # A peer's download is done once murder peer renames TAG.tgz.part into place (a
    # tree's .TAG.incoming.part, which the install then renames to releases/TAG).
    done_paths = {
        p: [
            host_path(r.info, p, settings.download_target),
            host_path(r.info, p, settings.release_dir),
        ]
        for p in r.peers
    }
    finished = threading.Event()
    watched: dict[str, Any] = {}

    def downloaded(peer: str) -> Callable[[], bool]:
        return lambda: any(path.exists() for path in done_paths[peer])

    def watch() -> None:
        watched["done"], watched["errors"] = wait_until_all(
            {p: downloaded(p) for p in r.peers},
            timeout,
            failed=lambda p: (
                "deploy ended before its download was seen" if finished.is_set() else None
            ),
        )

    watcher = threading.Thread(target=watch, daemon=True)
    sampler = Sampler(r.info, [r.seeder, *r.peers])
    sampler.start()
    r.logs.mkdir(parents=True, exist_ok=True)
    with open(r.logs / f"n{r.n}-r{run.rep}-fab.log", "w") as log:
        t0 = time.monotonic()
        out = _Stamped(log, t0)
        watcher.start()
        report = run_deploy(settings, ssh_config=r.info.ssh_config, out=out)  # type: ignore[arg-type]
    finished.set()
    watcher.join(10)
    samples = sampler.stop()
    downloads = {h: round(t - t0, 3) for h, t in watched.get("done", {}).items()}
    releases = {p: f"{settings.release_dir}/payload.bin" for p in r.peers}
    _finish(r, run, t0, {}, {}, samples, releases)
    run.completions = downloads
    run.seconds = round(report.seconds, 3)
    run.metrics.update(
        report_ok=report.ok,
        payload_bytes=report.payload_bytes,
        download_seconds={h.host: h.seconds for h in report.hosts},
        first_download_done=min(downloads.values()) if downloads else None,
        last_download_done=max(downloads.values()) if downloads else None,
        ssh_connections=report.ssh_connections,
        deploy_stages=report.stages,
        client_install_s=client_install_s,
        compress=r.fab_compress,
        transfer=transfer,
    )
    run.metrics["stages"] = out.stages
    if not report.ok:
        failed = ", ".join(f"{h.host}: {h.error}" for h in report.hosts if h.status != "ok")
        run.error = f"fab deploy failed: {report.error or failed}"


def _install_client(settings: Any, info: ClusterInfo) -> float:
    """``fab murder.distribute_files`` before the clock starts; returns its seconds.

    Installing murder.pyz is a once-per-fleet step (Murder's own ``distribute_files``),
    not part of a deploy; the benchmark wipes it between methods, so without this every
    timed deploy would be a first one. The seconds go in the JSON for whoever wants them.
    """
    from fabfile.deploy import make_config, open_connections
    from fabfile.install import distribute_files

    conns = open_connections(settings, make_config(info.ssh_config))
    begun = time.monotonic()
    try:
        hosts = [h.name for h in conns.inventory.all_hosts]
        outcomes = distribute_files(conns, settings, hosts, clear=False)
        failed = {h: o.error for h, o in outcomes.items() if not o.ok}
    finally:
        conns.close()
    if failed:
        raise RuntimeError(f"installing murder.pyz before fab deploy failed: {failed}")
    return round(time.monotonic() - begun, 3)


class _Stamped:
    """A text sink for run_deploy's stage lines that notes when each one came."""

    def __init__(self, log: Any, t0: float) -> None:
        self.log, self.t0 = log, t0
        self.stages: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                at = round(time.monotonic() - self.t0, 3)
                self.stages.append((at, line.strip()))
                self.log.write(f"[{at:8.3f}] {line}\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
