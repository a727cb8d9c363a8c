"""``invoke demo``: a real deploy through the swarm onto a local cluster, then a summary.

Brings up the cluster, generates a release on the seeder host (as if a build had just
finished there), runs ``fab deploy`` with its live progress bar, prints the per-host
table next to what copying from one server would take, and always tears the cluster
down again.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from murder_dev.cluster import ClusterInfo

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_DIR = ROOT / ".cluster"
RELEASE_DIR = "/srv/murder/release"


def rate_bits(rate: str) -> float:
    """'100mbit' -> 100e6 bits per second (tc's units)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)bit", rate.strip().lower())
    if not match:
        raise SystemExit(f"demo: cannot read the rate {rate!r}; use e.g. 100mbit")
    return float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]


def _generate_release(info: ClusterInfo, seeder: str, size_mb: int) -> None:
    from murder_dev import cluster

    script = (
        "import os, sys\n"
        "root, total = sys.argv[1], int(sys.argv[2]) * 1024 * 1024\n"
        "os.makedirs(root + '/assets', exist_ok=True)\n"
        "open(root + '/VERSION', 'w').write('demo release\\n')\n"
        "n, chunk = 0, 8 * 1024 * 1024\n"
        "while total > 0:\n"
        "    with open(f'{root}/assets/blob{n:03d}.bin', 'wb') as fh:\n"
        "        fh.write(os.urandom(min(chunk, total)))\n"
        "    total -= chunk; n += 1\n"
    )
    cluster.run_on(
        info,
        seeder,
        # The host's private /tmp hides a venv living there; use its base interpreter.
        [os.path.realpath(sys.executable), "-c", script, RELEASE_DIR, str(size_mb)],
        check=True,
        timeout=300,
    )


def run_demo(hosts: int = 9, rate: str = "100mbit", size_mb: int = 200) -> int:
    if os.geteuid() != 0:
        print(
            "demo: the local cluster needs root (it makes network namespaces and runs sshd).\n"
            "      Run `sudo ./run demo`, or, without root, `./run swarm --peers 5 --size-mb 200`\n"
            "      for a tracker, a seeder and peers as processes on loopback.",
            file=sys.stderr,
        )
        return 1
    from fabfile import run_deploy, settings_from_config
    from fabfile.report import format_table
    from murder_dev import cluster
    from murder_dev.build import build_pyz

    pyz = build_pyz(ROOT / "dist" / "murder.pyz")
    print(f"demo: {hosts} hosts in network namespaces, links shaped to {rate}", flush=True)
    info = cluster.up(hosts, rate, CLUSTER_DIR)
    try:
        seeder = info.hosts[0].name
        print(f"demo: generating a {size_mb} MiB release on {seeder}:{RELEASE_DIR}", flush=True)
        _generate_release(info, seeder, size_mb)
        # Random bytes, like the images and archives of a real release, gain nothing from
        # gzip: ship the tarball as is (murder.compress: false).
        settings = settings_from_config(
            {"compress": False},
            tag=time.strftime("demo-%Y%m%d-%H%M%S"),
            files_path=RELEASE_DIR,
            inventory=str(info.inventory),
            pyz=str(pyz),
            progress=True,
        )
        report = run_deploy(settings, ssh_config=info.ssh_config)
        print(format_table(report))
        peers = len(report.hosts)
        size = report.payload_bytes or size_mb * 1024 * 1024
        uplink = rate_bits(rate) / 8
        central = peers * size / uplink
        bound = max(size / uplink, peers * size / (uplink * (peers + 1)))
        print(
            f"\nswarm deploy of {size / 1e6:.0f} MB to {peers} hosts: {report.seconds:.1f} s "
            f"(whole pipeline: ssh, tarball, torrent, transfer, extraction, teardown)\n"
            f"copying it from one server at {rate}: at least {central:.1f} s "
            f"({peers} x {size / 1e6:.0f} MB through one uplink)\n"
            f"no method can beat {bound:.1f} s on these links (Kumar & Ross bound)"
        )
        return 0 if report.ok else 1
    finally:
        cluster.down(CLUSTER_DIR)
