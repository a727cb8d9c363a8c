"""``invoke bench``: scp fan-out, an aria2c swarm, our swarm and `fab deploy` on one cluster.

    python -m murder_dev.bench_cluster --hosts 16 --rate 100mbit --size-mb 128 \\
        [--repeat 1] [--sweep 3,8,16,24]

Brings up N+1 hosts (h1 tracker and seeder, N peers) shaped to ``rate`` both ways,
makes a random payload on h1, measures what a saturated link carries, then runs each
method in turn with the peers' copies removed in between and a sha256 of every copy
afterwards. Prints a table per N against the Kumar-Ross bound T_min, writes
``OUT/cluster.json`` and PNG plots, and always takes the cluster down. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from murder_core.errors import ClusterError, MurderError
from murder_dev import cluster, netns, sshd
from murder_dev.bench_downlinks import downlinks_line
from murder_dev.bench_hosts import (
    ENGINE_PYTHON,
    HOST_PYTHON,
    holder_pid,
    host_path,
    sha256_on_hosts,
)
from murder_dev.bench_methods import (
    ALLOWED_DIR,
    ARIA2_DONE,
    LABELS,
    METHODS,
    SEEDHOOK,
    SOURCE,
    SSH_DIR,
    TORRENT,
    TRACKER_PORT,
    MethodRun,
    Round,
    run_method,
)
from murder_dev.bench_report import markdown, summarise, t_min, table
from murder_dev.bench_seeder import phases

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_SECONDS = 3.0
_PORT = 5201

_MAKE_PAYLOAD = """
import os, sys
left = int(sys.argv[2])
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
with open(sys.argv[1], "wb") as fh:
    while left > 0:
        chunk = os.urandom(min(left, 8 << 20))
        fh.write(chunk)
        left -= len(chunk)
"""

_RECEIVER = """
import socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
srv.settimeout(30)
print("ready", flush=True)
conn, _ = srv.accept()
conn.settimeout(30)
total, first = 0, None
while True:
    data = conn.recv(1 << 20)
    if not data:
        break
    if first is None:
        first = time.monotonic()
    total += len(data)
print(total, time.monotonic() - first, flush=True)
"""

_SENDER = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
block = bytes(1 << 20)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    sock.sendall(block)
sock.close()
"""


def measure_link(info: cluster.ClusterInfo, sender: str, receiver: str) -> dict[str, float]:
    """One TCP stream for a few seconds: payload goodput, and the rate the counters see.

    The counters (the veth's rx bytes) include every header, so a saturated link's
    counter rate is what "busy" is measured against.
    """
    ip = info.host(receiver).ip
    veth = Path("/sys/class/net", info.host(sender).veth, "statistics", "rx_bytes")
    recv = subprocess.Popen(
        [
            *sshd.enter_argv(holder_pid(info, receiver)),
            HOST_PYTHON,
            "-c",
            _RECEIVER,
            ip,
            str(_PORT),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != "ready":
            raise ClusterError(
                f"link probe receiver failed: {recv.stderr.read() if recv.stderr else ''}"
            )
        wire0 = int(veth.read_text())
        cluster.run_on(
            info,
            sender,
            [HOST_PYTHON, "-c", _SENDER, ip, str(_PORT), str(CALIBRATION_SECONDS)],
            check=True,
            timeout=60,
        )
        out, err = recv.communicate(timeout=60)
        wire = int(veth.read_text()) - wire0
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait(5)
    try:
        total_s, elapsed_s = out.split()
        total, elapsed = int(total_s), float(elapsed_s)
    except ValueError:
        raise ClusterError(f"link probe printed {out!r}: {err[-500:]}") from None
    goodput = total * 8 / elapsed
    return {
        "goodput_bits": round(goodput),
        "wire_bits": round(goodput * wire / total),
        "payload_bytes": total,
        "seconds": round(elapsed, 3),
    }


def _run_on_h1(info: cluster.ClusterInfo, argv: list[str]) -> None:
    done = cluster.run_on(info, "h1", argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ClusterError(f"h1: {shlex.join(argv)[:200]} exited {done.returncode}: {done.stderr}")


def _prepare_seeder(info: cluster.ClusterInfo, pyz: Path, size: int, peers: Sequence[str]) -> str:
    """Payload, .torrent and ssh client files on h1; the .torrent on every peer too."""
    _run_on_h1(info, [HOST_PYTHON, "-c", _MAKE_PAYLOAD, SOURCE, str(size)])
    digest = sha256_on_hosts(info, {"h1": SOURCE})["h1"]
    if digest.startswith("error"):
        raise ClusterError(f"cannot hash the payload on h1: {digest}")
    tracker = f"{info.host('h1').ip}:{TRACKER_PORT}"
    _run_on_h1(
        info,
        [*ENGINE_PYTHON, str(pyz), "make-torrent", SOURCE, "--tracker", tracker, "-o", TORRENT],
    )
    torrent = host_path(info, "h1", TORRENT).read_bytes()
    allowed = host_path(info, "h1", ALLOWED_DIR)
    allowed.mkdir(parents=True, exist_ok=True)
    (allowed / "payload.torrent").write_bytes(torrent)
    for peer in peers:
        target = host_path(info, peer, TORRENT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(torrent)
    # h1 pushes to the peers with the cluster's client key, as a deploy server would.
    ssh_dir = host_path(info, "h1", SSH_DIR)
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(info.key, ssh_dir / "id_ed25519")
    (ssh_dir / "id_ed25519").chmod(0o600)
    shutil.copyfile(info.known_hosts, ssh_dir / "known_hosts")
    pairs = [(h.name, h.ip) for h in info.hosts]
    key, known = Path(SSH_DIR, "id_ed25519"), Path(SSH_DIR, "known_hosts")
    (ssh_dir / "ssh_config").write_text(sshd.ssh_config(pairs, key, known))
    return digest


def _write_aria2_hook(workdir: Path) -> Path:
    hook = workdir / "aria2-done.sh"
    hook.write_text(
        "#!/bin/sh\n# aria2c runs this once a download is complete and verified\n"
        f": > {ARIA2_DONE}\n"
    )
    hook.chmod(0o755)
    return hook


def _peer_counts(args: argparse.Namespace) -> list[int]:
    counts = {args.hosts}
    if args.sweep:
        counts |= {int(x) for x in args.sweep.split(",") if x.strip()}
    if min(counts) < 1 or max(counts) + 1 > netns.MAX_HOSTS:
        raise SystemExit(
            f"bench: peer counts must be 1..{netns.MAX_HOSTS - 1}, got {sorted(counts)}"
        )
    return sorted(counts)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m murder_dev.bench_cluster", description=__doc__.split("\n")[0]
    )
    p.add_argument("--hosts", type=int, default=16, help="peers N (plus h1, the seeder)")
    p.add_argument("--rate", default="100mbit", help="tc rate per host, each way")
    p.add_argument("--size-mb", type=int, default=128, help="payload size in MiB")
    p.add_argument("--repeat", type=int, default=1, help="runs of each method per N")
    p.add_argument("--sweep", default="", help="also these N, comma-separated (e.g. 3,8,16,24)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--out", default=str(ROOT / "bench-results"), help="results directory")
    p.add_argument("--workdir", default=None, help="cluster workdir (default OUT/.cluster)")
    p.add_argument("--prefix", default="mbn", help="namespace/link name prefix")
    p.add_argument("--subnet", type=int, default=40, help="hosts get 198.18.SUBNET.x")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--fab-gzip",
        action="store_true",
        help="fab deploy with compress on (its default); off here since the payload is random",
    )
    args = p.parse_args(argv)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {','.join(METHODS)}")
    if args.repeat < 1 or args.size_mb < 1:
        p.error("--repeat and --size-mb must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(
            "bench: the cluster needs root (network namespaces, tc, sshd); run it as root",
            file=sys.stderr,
        )
        return 1
    counts = _peer_counts(args)
    methods = [m for m in METHODS if m in args.methods.split(",")]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir).resolve() if args.workdir else out / ".cluster"
    command = "python -m murder_dev.bench_cluster " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    size = args.size_mb * 1024 * 1024
    rate_bits = netns.rate_bits(args.rate)
    result: dict[str, Any] = {
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        },
        "params": {**vars(args), "peer_counts": counts, "methods": methods},
    }
    runs: list[MethodRun] = []
    print(
        f"bench: {max(counts) + 1} hosts at {args.rate}, {args.size_mb} MiB, N in {counts}; "
        f"fab deploy with compress={'on' if args.fab_gzip else 'off'} and murder.pyz "
        "installed beforehand (fab murder.distribute_files, not timed)",
        flush=True,
    )
    info = cluster.up(max(counts) + 1, args.rate, workdir, prefix=args.prefix, subnet=args.subnet)
    try:
        from murder_dev.build import build_pyz

        # In the cluster workdir: every host sees it there (not in a private /tmp).
        pyz = build_pyz(info.workdir / "pyz" / "murder.pyz")
        all_peers = [h.name for h in info.hosts[1:]]
        digest = _prepare_seeder(info, pyz, size, all_peers)
        hook = _write_aria2_hook(info.workdir)
        # A checkout under /tmp is invisible to the hosts, which mount /tmp privately.
        seedhook = info.workdir / SEEDHOOK.name
        shutil.copyfile(SEEDHOOK, seedhook)
        link = measure_link(info, all_peers[0], all_peers[1] if len(all_peers) > 1 else "h1")
        fraction = link["goodput_bits"] / rate_bits
        print(
            f"bench: one TCP stream carries {link['goodput_bits'] / 1e6:.1f} Mbit/s of payload "
            f"({100 * fraction:.1f}% of {args.rate}); counters see {link['wire_bits'] / 1e6:.1f}",
            flush=True,
        )
        result["payload"] = {"bytes": size, "sha256": digest}
        result["link"] = {**link, "nominal_bits": rate_bits, "goodput_fraction": round(fraction, 4)}
        bounds: dict[int, dict[str, float]] = {}
        for n in counts:
            u = rate_bits / 8
            nominal = t_min(size, u, [u] * n, [u] * n)
            g = link["goodput_bits"] / 8
            bounds[n] = {
                "nominal": round(nominal, 6),
                "goodput": round(t_min(size, g, [g] * n, [g] * n), 6),
                "size": size,
            }
        result["t_min"] = {str(n): b for n, b in bounds.items()}
        for n in counts:
            inventory = info.workdir / f"hosts-n{n}.ini"
            inventory.write_text(sshd.inventory([(h.name, h.ip) for h in info.hosts[: n + 1]]))
            r = Round(
                info=info,
                n=n,
                pyz=pyz,
                logs=out / "logs",
                inventory=inventory,
                aria2_hook=hook,
                seedhook=seedhook,
                payload_bytes=size,
                sha256=digest,
                t_min=bounds[n]["nominal"],
                link_bytes_per_s=link["wire_bits"] / 8,
                peers=all_peers[:n],
                fab_compress=args.fab_gzip,
            )
            for rep in range(args.repeat):
                for method in methods:
                    run = run_method(r, method, rep)
                    runs.append(run)
                    _progress(run, bounds[n]["nominal"])
        rows = summarise(runs, bounds, size)
        result["summary"], result["runs"] = rows, [vars(r) for r in runs]
        for n in counts:
            print("\n" + table(rows, n, bounds[n]))
        result["markdown"] = markdown(rows, args.hosts, bounds[args.hosts])
        if not args.no_plots:
            result["plots"] = _plots(out, runs, rows, bounds, args, rate_bits)
            for path in result["plots"]:
                print(f"plot: {path}")
    finally:
        result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            cluster.down(workdir, prefix=args.prefix)
        finally:
            (out / "cluster.json").write_text(json.dumps(result, indent=1) + "\n")
            print(f"\nresults: {out / 'cluster.json'}\ncommand: {command}")
    return 0 if runs and all(r.ok for r in runs) else 1


def _progress(run: MethodRun, bound: float) -> None:
    if run.ok and run.seconds is not None:
        ratio = run.seconds / bound
        what = f"{run.seconds:.1f} s ({ratio:.2f} x T_min), sha256 ok on {len(run.sha256)}"
        stolen = run.metrics.get("machine_cpu_steal_pct")
        if stolen is not None:
            what += f", CPU stolen {stolen:.1f}%"
        for parts in (phases(run.seconds, run.metrics), downlinks_line(run.metrics)):
            if parts is not None:
                what += f"; {parts}"
    else:
        what = f"FAILED: {(run.error or '')[:300]}"
    print(f"bench: N={run.n} run {run.rep + 1} {LABELS[run.method]}: {what}", flush=True)


def _plots(
    out: Path,
    runs: Sequence[MethodRun],
    rows: Sequence[dict[str, Any]],
    bounds: dict[int, dict[str, float]],
    args: argparse.Namespace,
    rate_bits: int,
) -> list[str]:
    try:
        from murder_dev.bench_plots import plot_hosts, plot_sweep, plot_uplink
    except ImportError as exc:
        print(f"bench: no plots ({exc}); pip install matplotlib", file=sys.stderr)
        return []
    first = [r for r in runs if r.n == args.hosts and r.rep == 0]
    paths = [
        plot_hosts(first, bounds[args.hosts]["nominal"], out / f"cluster_hosts_n{args.hosts}.png"),
        plot_uplink(
            [r for r in first if r.method != "scp"],
            rate_bits / 1e6,
            out / f"cluster_uplink_n{args.hosts}.png",
        ),
    ]
    if len(bounds) > 1:
        paths.append(plot_sweep(rows, bounds, out / "cluster_sweep.png"))
    return [str(p) for p in paths]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MurderError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
