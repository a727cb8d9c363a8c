"""Plumbing for the cluster benchmark: processes on hosts, counters, checksums.

Every process the benchmark starts goes through :class:`Procs`, which remembers it by
PID and stops it by PID. Nothing here guesses at processes by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from murder_core.errors import ClusterError
from murder_dev import netns, sshd
from murder_dev.cluster import ClusterInfo

#: The python3 a host's sshd would find on its default PATH, as `fab deploy` uses it.
HOST_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "python3"
#: How `fab deploy` starts the engine there (fabfile.settings.Settings.python_argv).
ENGINE_PYTHON = (HOST_PYTHON, "-S")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def holder_pid(info: ClusterInfo, host: str) -> int:
    """The PID whose namespaces are ``host`` (checked, not trusted from the file)."""
    path = info.hostdir(host) / "holder.pid"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        raise ClusterError(f"{host}: no namespace holder recorded in {path}") from None
    if not netns.pid_in_netns(pid, info.host(host).netns) or not sshd.is_holder(pid):
        raise ClusterError(f"{host}: namespace holder {pid} is gone; is the cluster up?")
    return pid


def host_path(info: ClusterInfo, host: str, path: str) -> Path:
    """Where a host's private path (under /srv/murder or /tmp) lives in the root namespace."""
    for private, sub in (("/srv/murder", "srv"), ("/tmp", "tmp")):
        if path == private or path.startswith(private + "/"):
            return info.hostdir(host) / sub / path[len(private) :].lstrip("/")
    raise ClusterError(f"{path!r} is not under one of the private dirs {info.private_dirs}")


@dataclass
class Procs:
    """Processes started on cluster hosts, each logged to LOGS/NAME.log."""

    info: ClusterInfo
    logs: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, host: str, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``; nsenter execs it, so the PID is the program's."""
        if name in self.running:
            raise ClusterError(f"a process named {name!r} is already running")
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [*sshd.enter_argv(holder_pid(self.info, host)), *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # away from the terminal's Ctrl-C: we stop it
            )
        self.running[name] = proc
        return proc

    def log_tail(self, name: str, limit: int = 1500) -> str:
        path = self.logs / f"{name}.log"
        with contextlib.suppress(OSError):
            return path.read_text(errors="replace")[-limit:]
        return ""

    def stop(self, names: Optional[Sequence[str]] = None, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; forgets the stopped ones."""
        chosen = list(self.running) if names is None else [n for n in names if n in self.running]
        procs = [self.running.pop(n) for n in chosen]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def cpu_times(pid: int) -> Optional[tuple[float, float]]:
    """(user, kernel) CPU seconds of a live process, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: field 14 (utime) and 15 (stime) sit at offsets 11 and 12.
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def cpu_seconds(pid: int) -> Optional[float]:
    """utime + stime of a live process, or None once it is gone."""
    times = cpu_times(pid)
    return None if times is None else times[0] + times[1]


def peak_rss_kib(pid: int) -> Optional[int]:
    """VmHWM: the most resident memory the process ever had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_jiffies(stat: str) -> tuple[int, int, int]:
    """(busy, stolen, total) jiffies from the text of /proc/stat, summed over all CPUs.

    Busy counts steal, as it always has here: the machine was not idle. Steal is apart
    too because on a shared VM it is time the hypervisor gave our vCPUs to someone
    else, and in a CPU-bound run it shows up as seconds that no code of ours spent.
    """
    fields = stat.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"not /proc/stat: {stat[:80]!r}")
    # user nice system idle iowait irq softirq steal; older kernels print fewer.
    parts = ([int(x) for x in fields[1:9]] + [0] * 8)[:8]
    total = sum(parts)
    return total - parts[3] - parts[4], parts[7], total


@dataclass
class Sample:
    t: float
    up: dict[str, int]  # host -> bytes the host has sent (its uplink)
    down: dict[str, int]  # host -> bytes the host has received
    cpu_busy: int
    cpu_total: int
    cpu_steal: int


class Sampler(threading.Thread):
    """Reads every host's link counters and the machine's CPU every ``interval`` seconds.

    The bridge-side veth of a host receives what the host sends, so its rx counter is
    the host's uplink and its tx counter the host's downlink: read in the root
    namespace, no process per sample.
    """

    def __init__(self, info: ClusterInfo, hosts: Sequence[str], interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.veths = {h: info.host(h).veth for h in hosts}
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()

    def sample(self) -> Sample:
        up, down = {}, {}
        for host, veth in self.veths.items():
            stats = Path("/sys/class/net", veth, "statistics")
            up[host] = int((stats / "rx_bytes").read_text())
            down[host] = int((stats / "tx_bytes").read_text())
        busy, steal, total = cpu_jiffies(Path("/proc/stat").read_text())
        return Sample(time.monotonic(), up, down, busy, total, steal)

    def run(self) -> None:
        self.samples.append(self.sample())
        while not self._stop_event.wait(self.interval):
            self.samples.append(self.sample())

    def stop(self) -> list[Sample]:
        self._stop_event.set()
        self.join(5)
        self.samples.append(self.sample())
        return self.samples


def wait_until_all(
    checks: dict[str, Callable[[], bool]],
    timeout: float,
    *,
    failed: Callable[[str], Optional[str]] = lambda host: None,
    on_done: Callable[[str, float], None] = lambda host, t: None,
    poll: float = 0.02,
) -> tuple[dict[str, float], dict[str, str]]:
    """Poll each host's check until all pass, one fails, or ``timeout`` runs out.

    Returns (host -> monotonic time it was first seen done, host -> error).
    """
    done: dict[str, float] = {}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    pending = dict(checks)
    while pending:
        for host, check in list(pending.items()):
            if check():
                now = time.monotonic()
                done[host] = now
                on_done(host, now)
                del pending[host]
                continue
            why = failed(host)
            if why is not None:
                errors[host] = why
                del pending[host]
        if pending and time.monotonic() > deadline:
            for host in pending:
                errors[host] = f"not done within {timeout:.0f} s"
            break
        if pending:
            time.sleep(poll)
    return done, errors


def sha256_on_hosts(
    info: ClusterInfo, paths: dict[str, str], timeout: float = 300.0
) -> dict[str, str]:
    """host -> sha256 of ``paths[host]``, computed by sha256sum on that host.

    Hosts are hashed in parallel; a host whose file is missing maps to ``error: ...``.
    """
    procs = {}
    for host, path in paths.items():
        procs[host] = subprocess.Popen(
            [*sshd.enter_argv(holder_pid(info, host)), "sha256sum", "--", path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    deadline = time.monotonic() + timeout
    out: dict[str, str] = {}
    for host, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[host] = f"error: sha256sum did not finish within {timeout:.0f} s"
            continue
        if proc.returncode != 0:
            out[host] = f"error: {stderr.strip() or 'sha256sum failed'}"
        else:
            out[host] = stdout.split(" ", 1)[0]
    return out


def remove_private(info: ClusterInfo, hosts: Sequence[str], paths: Sequence[str]) -> None:
    """Delete ``paths`` (under /srv/murder or /tmp) on each host, from the root namespace.

    Host dirs are plain directories of the cluster workdir, bind-mounted only inside
    the hosts, so removing through them never crosses a mount.
    """
    for host in hosts:
        for path in paths:
            target = host_path(info, host, path)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
