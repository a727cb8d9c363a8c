"""Loopback benchmark: one seeder -> one peer on 127.0.0.1, ours against aria2c and libtorrent.

``python -m murder_dev.bench_loopback --size-mb 1024`` (``invoke bench --loopback``) runs each
method in turn, each with its own tracker (ours), times the peer from its start to its exit,
checks the sha256 of what it wrote (a fast wrong answer is a failure), and measures CPU and
peak memory on both sides. It prints a table and writes ``bench-results/loopback.json``.

- seconds, MiB/s: peer process start to exit, start-up and shutdown included.
- steady MiB/s: the peer's write rate between 10% and 90% of the file (``wchar`` in
  ``/proc/PID/io``, sampled), which leaves out fixed start and finish costs.
- CPU s/GB: the peer's from ``wait4`` (its whole life); the seeder's is the growth of
  utime+stime in ``/proc/PID/stat`` while the peer ran, so its start-up check of the
  payload does not count. GB is 10^9 bytes.
- peak RSS: ``ru_maxrss`` of the peer, ``VmHWM`` of the seeder.

``--profile`` adds one untimed run of ours with py-spy attached to both sides and writes
``loopback-{seeder,peer}.collapsed`` and ``.top.txt`` next to the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence, cast

from murder_dev.localswarm import ROOT, LocalSwarm, free_port, make_payload, sha256

METHODS = ("murder", "aria2c", "libtorrent")
GB = 10**9
MIB = 2**20
_TICK = os.sysconf("SC_CLK_TCK")
Popen = subprocess.Popen


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def proc_field(pid: int, name: str, kind: str = "status") -> int:
    """One number from /proc/PID/status (kB values come back in bytes) or /proc/PID/io."""
    for line in Path(f"/proc/{pid}/{kind}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            number, *unit = value.split()
            return int(number) * (1024 if unit == ["kB"] else 1)
    raise RuntimeError(f"no {name} in /proc/{pid}/{kind}")


def watch(proc: Popen[bytes], timeout: float) -> dict[str, Any]:
    """Reap ``proc`` with wait4, sampling how much it has written on the way."""
    start = time.monotonic()
    samples: list[tuple[float, int]] = []
    code: int | None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        now = time.monotonic()
        if pid == proc.pid:
            proc.returncode = code = os.waitstatus_to_exitcode(status)
            break
        with contextlib.suppress(OSError, RuntimeError):  # exiting now: wait4 reaps it next
            samples.append((now - start, proc_field(proc.pid, "wchar", "io")))
        if now - start > timeout:
            proc.kill()
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode, code = -signal.SIGKILL, None
            break
        time.sleep(0.01)
    return {
        "code": code,
        "seconds": time.monotonic() - start,
        "cpu": (usage.ru_utime, usage.ru_stime),
        "rss": usage.ru_maxrss * 1024,
        "samples": samples,
    }


def when_written(samples: list[tuple[float, int]], amount: float) -> float | None:
    return next((t for t, written in samples if written >= amount), None)


# -- how each method seeds and fetches -------------------------------------------------------


def aria2c_cmd(*args: str) -> list[str]:
    """aria2c on loopback only: no DHT, LPD or PEX, no config file, and it dies with us."""
    return [
        *("aria2c", "--no-conf=true", "--enable-dht=false", "--enable-dht6=false"),
        *("--bt-enable-lpd=false", "--enable-peer-exchange=false", "--interface=127.0.0.1"),
        *("--disable-ipv6=true", f"--listen-port={free_port()}", "--file-allocation=none"),
        *(f"--stop-with-process={os.getpid()}", "--summary-interval=0"),
        *("--console-log-level=warn", *args),
    ]


def lt_loopback_settings() -> dict[str, Any]:
    """libtorrent on 127.0.0.1 over TCP only, with no way to find peers but the tracker."""
    return {
        "listen_interfaces": f"127.0.0.1:{free_port()}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
    }


def _lt_session(role: str, torrent: str, directory: str) -> Any:
    """A libtorrent session on loopback holding ``torrent``, as a seeder or a downloader."""
    import libtorrent as lt

    settings = lt.high_performance_seed() if role == "seed" else lt.default_settings()
    settings.update(cast("lt.settings_pack", lt_loopback_settings()))
    settings["alert_mask"] = lt.alert.category_t.status_notification
    session = lt.session(settings)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = directory
    if role == "seed":
        params.flags |= lt.torrent_flags.seed_mode  # trusts the file, as aria2c's seeder does
    session.add_torrent(params)
    return session


def _lt_finished(session: Any, deadline: float, stop: Sequence[int] = ()) -> bool:
    """Wait on libtorrent's alerts (no polling) until the download is complete and verified."""
    import libtorrent as lt

    while not stop and time.monotonic() < deadline:
        session.wait_for_alert(200)
        if any(isinstance(a, lt.torrent_finished_alert) for a in session.pop_alerts()):
            return True
    return False


def lt_download(torrent: str, directory: str, timeout: float) -> bool:
    """Download ``torrent`` into ``directory`` with libtorrent in this process; True if done.

    The session is gone (its files flushed and closed) when this returns.
    """
    session = _lt_session("peer", torrent, directory)
    try:
        return _lt_finished(session, time.monotonic() + timeout)
    finally:
        for handle in session.get_torrents():
            session.remove_torrent(handle)
        del session


def lt_child(role: str, torrent: str, directory: str, timeout: float) -> int:
    """A libtorrent session as a process of its own: seed until SIGTERM, or download."""
    session = _lt_session(role, torrent, directory)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    deadline = time.monotonic() + timeout
    if role == "peer":
        return 0 if _lt_finished(session, deadline, stop) else 1
    while not stop and time.monotonic() < deadline:
        session.wait_for_alert(200)
        session.pop_alerts()
    return 0


def _lt(sw: LocalSwarm, name: str, role: str, directory: Path, timeout: float) -> Popen[bytes]:
    cmd = [sys.executable, "-m", "murder_dev.bench_loopback", "--lt-child", role]
    cmd += [str(sw.torrent), str(directory), "--timeout", str(timeout)]
    return sw.spawn_program(name, cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)))


Seed = Callable[[LocalSwarm, Path], "Popen[bytes]"]
Peer = Callable[[LocalSwarm, Path, float], "Popen[bytes]"]
RUNNERS: dict[str, tuple[Seed, Peer]] = {
    "murder": (
        lambda sw, src: sw.start_seeder(),
        lambda sw, dst, t: sw.start_peer("peer", dst, "--linger", "0", "--timeout", str(t)),
    ),
    "aria2c": (
        lambda sw, src: sw.spawn_program(
            "seeder",
            aria2c_cmd(
                *("--bt-seed-unverified=true", "--seed-ratio=0.0", "--seed-time=600"),
                *("-d", str(src.parent), str(sw.torrent)),
            ),
        ),
        lambda sw, dst, t: sw.spawn_program(
            "peer",
            aria2c_cmd(
                *("--seed-time=0", f"--bt-stop-timeout={int(t)}", "-d", str(dst.parent)),
                str(sw.torrent),
            ),
        ),
    ),
    "libtorrent": (
        lambda sw, src: _lt(sw, "seeder", "seed", src.parent, 24 * 3600),
        lambda sw, dst, t: _lt(sw, "peer", "peer", dst.parent, t),
    ),
}


def unavailable(method: str) -> str | None:
    """Why ``method`` cannot run on this machine, or None."""
    if method == "aria2c" and shutil.which("aria2c") is None:
        return "aria2c is not installed (Debian package aria2)"
    if method == "libtorrent":
        try:
            import libtorrent  # noqa: F401
        except ImportError:
            return "the libtorrent Python module is not installed (pip install libtorrent)"
    return None


def run_method(
    method: str, payload: Path, want_sha: str, work: Path, timeout: float, profile: Path | None
) -> dict[str, Any]:
    """One transfer of ``payload`` by ``method``: the result, with ``ok`` and ``error``."""
    seed, peer = RUNNERS[method]
    size = payload.stat().st_size
    target = work / "peer" / payload.name
    target.parent.mkdir(parents=True)
    with LocalSwarm(work / "run", payload) as sw:
        sw.start_tracker()
        sw.make_torrent()
        seeder = seed(sw, payload)
        sw.wait_for_seeders(1, timeout=max(120.0, size / (100 * MIB)))
        cpu0 = proc_cpu(seeder.pid)
        leecher = peer(sw, target, timeout)
        spies = spy(profile, {"seeder": seeder.pid, "peer": leecher.pid}, work)
        run = watch(leecher, timeout + 30)
        alive = seeder.poll() is None
        cpu1 = proc_cpu(seeder.pid) if alive else (float("nan"), float("nan"))
        seeder_cpu = (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
        seeder_rss = proc_field(seeder.pid, "VmHWM") if alive else 0
        logs = {"seeder": sw.log("seeder")[-1500:], "peer": sw.log("peer")[-1500:]}
        sw.close()
        spy_finish(spies, profile)
    got = sha256(target) if target.is_file() else None
    shutil.rmtree(work / "peer", ignore_errors=True)
    error = None
    if run["code"] != 0:
        error = f"peer exited with {run['code']}" if run["code"] is not None else "timed out"
    elif got != want_sha:
        error = f"sha256 mismatch: got {got}, want {want_sha}"
    elif not alive:
        error = "seeder died during the transfer"
    t10, t90 = (when_written(run["samples"], size * f) for f in (0.1, 0.9))
    steady = 0.8 * size / MIB / (t90 - t10) if t10 is not None and t90 and t90 > t10 else 0.0
    return {
        "ok": error is None,
        "error": error,
        "seconds": round(run["seconds"], 3),
        "mib_per_s": round(size / MIB / run["seconds"], 1),
        "steady_mib_per_s": round(steady, 1),
        "seeder_cpu_s_per_gb": round(sum(seeder_cpu) / (size / GB), 3),
        "peer_cpu_s_per_gb": round(sum(run["cpu"]) / (size / GB), 3),
        # user and system parts: on loopback the kernel's TCP work is much of the cost
        "seeder_user_sys_s_per_gb": [round(t / (size / GB), 3) for t in seeder_cpu],
        "peer_user_sys_s_per_gb": [round(t / (size / GB), 3) for t in run["cpu"]],
        "seeder_peak_rss_mib": round(seeder_rss / MIB, 1),
        "peer_peak_rss_mib": round(run["rss"] / MIB, 1),
        "sha256_ok": got == want_sha,
        **({"logs": logs} if error else {}),
    }


# -- profiling with py-spy -------------------------------------------------------------------

Spies = list[tuple[str, "Popen[bytes]", Path]]


def spy(profile: Path | None, pids: dict[str, int], work: Path) -> Spies:
    if profile is None:
        return []
    spies = []
    for name, pid in pids.items():
        raw = work / f"{name}.collapsed"
        cmd = ["py-spy", "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", str(raw)]
        quiet = subprocess.DEVNULL
        spies.append((name, Popen([*cmd, "-p", str(pid)], stdout=quiet, stderr=quiet), raw))
    return spies


def spy_finish(spies: Spies, profile: Path | None) -> None:
    for name, proc, raw in spies:
        try:
            proc.wait(30)  # py-spy writes its file once the process it watches has exited
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        if profile is not None and raw.exists():
            shutil.copy(raw, profile / f"loopback-{name}.collapsed")
            (profile / f"loopback-{name}.top.txt").write_text(hot_spots(raw.read_text()))


def hot_spots(collapsed: str, top: int = 25) -> str:
    """Functions by own samples and by samples anywhere on the stack, from py-spy's raw output."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples += int(count)
        # One entry per function, not per line: "f (file.py:12)" -> "f (file.py)".
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + int(count)
    out = [f"{samples} samples"]
    for title, counts in (("own", own), ("total (anywhere on the stack)", total)):
        out += ["", f"{title} %  function"]
        for frame, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"{100 * n / max(samples, 1):5.1f}  {frame}")
    return "\n".join(out) + "\n"


# -- the whole benchmark ---------------------------------------------------------------------

COLUMNS = (
    ("seconds", "s"),
    ("mib_per_s", "MiB/s"),
    ("steady_mib_per_s", "steady MiB/s"),
    ("seeder_cpu_s_per_gb", "seed CPU s/GB"),
    ("peer_cpu_s_per_gb", "peer CPU s/GB"),
    ("seeder_peak_rss_mib", "seed RSS MiB"),
    ("peer_peak_rss_mib", "peer RSS MiB"),
)


def median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by seconds; any failed run fails the method."""
    failed = [r for r in results if not r["ok"]]
    ordered = sorted(results, key=lambda r: float(r["seconds"]))
    chosen = failed[0] if failed else ordered[(len(ordered) - 1) // 2]
    return {**chosen, "runs_seconds": [r["seconds"] for r in results]}


def ratios(methods: dict[str, dict[str, Any]], base: str) -> dict[str, float]:
    ours, theirs = methods.get("murder", {}), methods.get(base, {})
    if not (ours.get("ok") and theirs.get("ok")):
        return {}
    return {key: round(ours[key] / theirs[key], 3) for key, _ in COLUMNS if theirs[key]}


def run(
    size_mb: int = 1024,
    methods: Sequence[str] = METHODS,
    out: Path | None = ROOT / "bench-results" / "loopback.json",
    workdir: Path | None = None,
    timeout: float = 600,
    profile: bool = False,
    repeat: int = 1,
) -> dict[str, Any]:
    """Run the benchmark; returns (and writes to ``out``) the results as a dict.

    With ``repeat`` > 1 each method reports its median run by seconds (any failed run
    fails it), and ``runs_seconds`` lists them all.
    """
    base = Path(tempfile.mkdtemp(prefix="murder-bench-", dir=workdir))
    profile_dir = (out.parent if out is not None else ROOT / "bench-results") if profile else None
    report: dict[str, Any] = {
        "size_bytes": size_mb * MIB,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": f"python -m murder_dev.bench_loopback --size-mb {size_mb} --repeat {repeat}",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": os.getloadavg()[0],
        },
        "methods": {},
    }
    try:
        (base / "src").mkdir()
        payload = make_payload(base / "src" / "release.bin", size_mb * MIB, seed=size_mb)
        report["sha256"] = want = sha256(payload)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for attempt in range(repeat):  # methods take turns, so a noisy minute hits them all
            for method in methods:
                why = unavailable(method)
                if why:
                    report["methods"][method] = {"ok": False, "skipped": why}
                    continue
                work = base / f"{method}-{attempt}"
                runs[method].append(run_method(method, payload, want, work, timeout, None))
        for method, results in runs.items():
            if results:
                report["methods"][method] = median_run(results)
        if profile_dir is not None and "murder" in methods:
            profile_dir.mkdir(parents=True, exist_ok=True)
            run_method("murder", payload, want, base / "profiled", timeout, profile_dir)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report["machine"]["loadavg_after"] = os.getloadavg()[0]
    report["ratios"] = {
        "murder/aria2c": ratios(report["methods"], "aria2c"),
        "murder/libtorrent": ratios(report["methods"], "libtorrent"),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def table(report: dict[str, Any]) -> str:
    rows = [["method", *[label for _, label in COLUMNS], "sha256"]]
    notes = []
    for method, res in report["methods"].items():
        if "skipped" in res:
            notes.append(f"{method}: skipped, {res['skipped']}")
            continue
        cells = [f"{res[key]:g}" for key, _ in COLUMNS]
        rows.append([method, *cells, "ok" if res["sha256_ok"] else "WRONG"])
        if res["error"]:
            notes.append(f"{method}: FAILED, {res['error']}")
    for name, values in report["ratios"].items():
        if values:
            rows.append([name, *[f"{values.get(key, 0):.2f}" for key, _ in COLUMNS], ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    size = report["size_bytes"] / MIB
    return "\n".join([f"{size:g} MiB, one seeder -> one peer on 127.0.0.1", *lines, *notes])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m murder_dev.bench_loopback", description="Loopback benchmark."
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="payload size in MiB")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "loopback.json")
    parser.add_argument("--workdir", type=Path, help="where the payload and the copies go")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per transfer")
    parser.add_argument("--profile", action="store_true", help="one more run of ours, py-spy")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; median is kept")
    parser.add_argument("--lt-child", nargs=3, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lt_child:
        role, torrent, directory = args.lt_child
        return lt_child(role, torrent, directory, args.timeout)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {','.join(unknown)}; choose from {','.join(METHODS)}")
    report = run(
        args.size_mb, methods, args.out, args.workdir, args.timeout, args.profile, args.repeat
    )
    print(table(report))
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] or "skipped" in r for r in report["methods"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
