"""Development and CI tasks: `invoke --list` (or `./run --list`) shows them."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from murder_core.errors import MurderError

ROOT = Path(__file__).resolve().parent


@contextlib.contextmanager
def said_plainly(task_name: str) -> Iterator[None]:
    """Our own errors (no root, no cluster, a busy port) as one line and exit 1, not a
    traceback: they are about the machine, not a bug."""
    try:
        yield
    except MurderError as exc:
        raise Exit(f"{task_name}: {exc}", code=1) from None


@task(help={"k": "only tests matching this pytest -k expression", "x": "stop at the first failure"})
def test(c: Context, k: str = "", x: bool = False) -> None:
    """Run the whole test suite (cluster and interop tests need root)."""
    args = ["-q", "-p", "no:cacheprovider"]
    if k:
        args += ["-k", k]
    if x:
        args.append("-x")
    junit = os.environ.get("MURDER_JUNIT")
    if junit:
        args.append(f"--junitxml={junit}")
    c.run(f"{sys.executable} -m pytest {' '.join(args)}", pty=False)


@task
def lint(c: Context) -> None:
    """ruff and mypy over the code."""
    c.run(f"{sys.executable} -m ruff check murder_core murder_dev fabfile tests tasks.py")
    c.run(f"{sys.executable} -m mypy")


@task
def build(c: Context) -> None:
    """Build dist/murder.pyz (one file: the engine plus its pure-Python dependencies)."""
    from murder_dev.build import build_pyz

    out = build_pyz(ROOT / "dist" / "murder.pyz")
    print(f"built {out} ({out.stat().st_size // 1024} KiB)")


@task(help={"peers": "number of peer processes", "size_mb": "payload size in MiB"})
def swarm(c: Context, peers: int = 5, size_mb: int = 64) -> None:
    """Loopback swarm: a tracker, a seeder and N peers as processes on this machine."""
    from murder_dev.localswarm import LocalSwarm, make_payload, sha256

    work = Path(tempfile.mkdtemp(prefix="murder-swarm-"))
    try:
        payload = make_payload(work / "release.bin", int(size_mb) * 1024 * 1024)
        with LocalSwarm(work / "run", payload) as sw:
            sw.start_tracker()
            sw.make_torrent()
            sw.start_seeder()
            start = time.monotonic()
            names = [f"peer{i}" for i in range(int(peers))]
            for name in names:
                sw.start_peer(name, work / name / "release.bin", "--linger", "5")
            codes = sw.wait(names, timeout=600)
            took = time.monotonic() - start
            want = sha256(payload)
            ok = all(codes[n] == 0 and sha256(work / n / "release.bin") == want for n in names)
            print(
                f"{peers} peers x {size_mb} MiB in {took:.1f} s: {'all verified' if ok else codes}"
            )
            if not ok:
                raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@task(
    help={
        "loopback": "one seeder -> one peer on 127.0.0.1 (ours, aria2c, libtorrent) instead",
        "hosts": "cluster: peers N (plus h1, the seeder)",
        "rate": "cluster: tc rate of every link, each way",
        "size_mb": "payload size in MiB (default 128 on the cluster, 1024 on loopback)",
        "repeat": "runs of each method",
        "sweep": "cluster: also these N, comma-separated (e.g. 3,8,16,24)",
        "methods": "only these methods, comma-separated",
        "profile": "loopback: one more run of ours under py-spy",
        "tracker": "announces a second our tracker answers, and its CPU per announce, "
        "for swarms of 200, 1,000 and 5,000 fake peers, instead",
    }
)
def bench(
    c: Context,
    loopback: bool = False,
    hosts: int = 16,
    rate: str = "100mbit",
    size_mb: int = 0,
    repeat: int = 1,
    sweep: str = "",
    methods: str = "",
    profile: bool = False,
    tracker: bool = False,
) -> None:
    """Benchmarks: deploy methods on the local cluster against T_min; --loopback; --tracker."""
    if tracker:
        from murder_dev import bench_tracker

        raise SystemExit(bench_tracker.main([]))
    if loopback:
        from murder_dev import bench_loopback

        argv = ["--size-mb", str(int(size_mb) or 1024), "--repeat", str(int(repeat))]
        argv += ["--methods", methods] if methods else []
        argv += ["--profile"] if profile else []
        raise SystemExit(bench_loopback.main(argv))
    from murder_dev import bench_cluster

    argv = ["--hosts", str(int(hosts)), "--rate", rate, "--size-mb", str(int(size_mb) or 128)]
    argv += ["--repeat", str(int(repeat))]
    argv += ["--sweep", sweep] if sweep else []
    argv += ["--methods", methods] if methods else []
    raise SystemExit(bench_cluster.main(argv))


CLUSTER_DIR = ROOT / ".cluster"


@task(help={"hosts": "number of hosts (h1 is tracker and seeder)", "rate": "tc rate per link"})
def cluster_up(c: Context, hosts: int = 6, rate: str = "100mbit") -> None:
    """Bring up N hosts in network namespaces, each with its own sshd (needs root)."""
    from murder_dev import cluster

    with said_plainly("cluster.up"):
        info = cluster.up(int(hosts), rate, CLUSTER_DIR)
        print(cluster.status(CLUSTER_DIR))
    print(f"inventory: {info.inventory}\nssh config: {info.ssh_config}")


@task
def cluster_down(c: Context) -> None:
    """Remove the local cluster: namespaces, links, bridge, sshd and every process in it."""
    from murder_dev import cluster

    with said_plainly("cluster.down"):
        cluster.down(CLUSTER_DIR)


@task
def cluster_status(c: Context) -> None:
    """Show the local cluster's hosts."""
    from murder_dev import cluster

    with said_plainly("cluster.status"):
        print(cluster.status(CLUSTER_DIR))


@task(
    help={
        "hosts": "hosts in the cluster (h1 is tracker and seeder)",
        "rate": "tc rate of every link",
        "size_mb": "size of the generated release",
    }
)
def demo(c: Context, hosts: int = 9, rate: str = "100mbit", size_mb: int = 200) -> None:
    """A real deploy through the swarm onto a local cluster (needs root), then a summary."""
    from murder_dev.demo import run_demo

    with said_plainly("demo"):
        code = run_demo(int(hosts), rate, int(size_mb))
    raise SystemExit(code)


cluster_ns = Collection("cluster", up=cluster_up, down=cluster_down, status=cluster_status)

ns = Collection(demo, test, lint, build, swarm, bench, cluster_ns)
