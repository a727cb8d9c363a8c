"""The cluster benchmark: a tiny real run (3 peers, 4 MiB) and the arithmetic it relies on.

The smoke test runs ``python -m murder_dev.bench_cluster`` as a user would, on its own
prefix and subnet, and checks the JSON: every method present, every peer's copy with
the payload's sha256, and numbers that hang together (no timing thresholds: the only
bound asserted is physics, T_min, which no correct measurement can beat).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import need, need_program, need_root

from murder_dev.bench_downlinks import FIRST_BYTES, downlink_metrics, downlinks_line
from murder_dev.bench_hosts import Sample, cpu_jiffies
from murder_dev.bench_methods import MethodRun
from murder_dev.bench_report import summarise, t_min, table
from murder_dev.bench_seeder import counter_at, first_round, phases, series

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("h2", "h3", "h4")
SIZE = 4 * 1024 * 1024
RATE_BITS = 100e6
METHODS = {"scp", "aria2c", "murder", "fab", "fab-tree"}


@pytest.mark.root
@pytest.mark.slow
def test_tiny_bench_verifies_every_method_on_every_peer(tmp_path: Path) -> None:
    need(sys.platform.startswith("linux"), "network namespaces exist only on Linux")
    need_root()
    for tool in ("ip", "tc", "unshare", "nsenter", "ssh-keygen", "scp", "sha256sum", "aria2c"):
        need_program(tool)
    need(Path("/usr/sbin/sshd").exists(), "needs /usr/sbin/sshd (Debian package openssh-server)")
    from murder_dev import cluster

    out = tmp_path / "out"
    # Not under /tmp: every cluster host mounts its own /tmp over it.
    base = Path(tempfile.mkdtemp(prefix="murder-bench-test-", dir="/var/tmp"))
    workdir = base / "cluster"
    argv = [sys.executable, "-m", "murder_dev.bench_cluster", "--hosts", "3", "--size-mb", "4"]
    argv += ["--out", str(out), "--workdir", str(workdir), "--prefix", "mbnt", "--subnet", "41"]
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
        # The benchmark takes its cluster down itself, whatever happened.
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert "mbnt-h" not in left, left
        assert not workdir.exists()
    finally:
        cluster.down(workdir, prefix="mbnt")
        shutil.rmtree(base, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    data = json.loads((out / "cluster.json").read_text())
    digest = data["payload"]["sha256"]
    assert data["payload"]["bytes"] == SIZE
    assert len(digest) == 64 and int(digest, 16) >= 0
    bound = data["t_min"]["3"]["nominal"]
    assert bound == pytest.approx(SIZE * 8 / RATE_BITS, rel=1e-3)
    assert 0.5 < data["link"]["goodput_fraction"] <= 1.0

    runs = {r["method"]: r for r in data["runs"]}
    assert set(runs) == METHODS
    for method, run in runs.items():
        assert run["ok"], (method, run["error"])
        assert run["sha256"] == dict.fromkeys(PEERS, digest), method
        assert run["seconds"] >= 0.9 * bound, (method, run["seconds"])
        assert set(run["completions"]) == set(PEERS), method
        assert all(0 < t <= run["seconds"] for t in run["completions"].values()), method
    swarm = runs["murder"]["metrics"]
    assert 0 < swarm["peer_peak_rss_mib_max"] < 1024
    assert 0 < swarm["peer_cpu_kernel_pct"] < 100  # peers both compute and make syscalls
    assert swarm["seeder_all_once_s"] is not None
    assert swarm["seeder_payload_sent_bytes"] >= SIZE
    assert 0 < swarm["seeder_busy_pct_until_all_once"] <= 150

    rows = {r["method"]: r for r in data["summary"]}
    for method, row in rows.items():
        seconds = runs[method]["seconds"]
        assert row["seconds"] == pytest.approx(seconds, abs=0.01)
        assert row["ratio"] == pytest.approx(seconds / bound, abs=0.01)
        assert row["mb_per_s_per_peer"] == pytest.approx(SIZE / 1e6 / seconds, abs=0.01)
        assert row["label"] in done.stdout
    for plot in data.get("plots", []):
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("size", "seeder", "ups", "downs", "expected"),
    [
        (100, 10.0, [10.0] * 4, [10.0] * 4, 10.0),  # equal links: the seeder's uplink binds
        (100, 10.0, [10.0], [5.0], 20.0),  # a slow downlink binds
        (100, 50.0, [1.0] * 9, [100.0] * 9, 900 / 59),  # the fleet's total uplink binds
    ],
)
def test_t_min_is_the_tightest_of_the_three_bounds(
    size: int, seeder: float, ups: list[float], downs: list[float], expected: float
) -> None:
    assert t_min(size, seeder, ups, downs) == pytest.approx(expected)


def test_first_round_finds_when_every_byte_left_once_and_what_was_resent() -> None:
    block = 16384
    sent = [
        (1.0, 0, 0, block),
        (2.0, 0, 0, block),  # piece 0 again before piece 1 ever left
        (3.0, 1, 0, block),
        (4.0, 1, 0, block),  # after the first round: not counted
    ]
    assert first_round(sent, 2 * block) == (3.0, block, 1)
    assert first_round(sent[:2], 2 * block) == (None, block, 1)


def test_counter_at_interpolates_between_samples() -> None:
    points = [(0.0, 0), (1.0, 100), (3.0, 100)]
    assert counter_at(points, -1.0) == 0
    assert counter_at(points, 0.5) == 50
    assert counter_at(points, 2.0) == 100
    assert counter_at(points, 9.0) == 100


def test_cpu_jiffies_counts_steal_as_busy_and_apart() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat = "cpu  600 10 90 250 50 0 60 140 7 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n"
    assert cpu_jiffies(stat) == (900, 140, 1200)
    # a kernel without the steal column
    assert cpu_jiffies("cpu 10 0 5 80 5 0 0\n") == (15, 0, 100)
    with pytest.raises(ValueError, match="not /proc/stat"):
        cpu_jiffies("intr 1 2 3\n")


def _sample(t: float, busy: int, steal: int, total: int) -> Sample:
    return Sample(t, {"s": 0, "p": 0}, {"s": 0, "p": 0}, busy, total, steal)


def test_series_and_summary_report_the_stolen_share() -> None:
    samples = [_sample(0.0, 0, 0, 0), _sample(1.0, 150, 50, 200), _sample(2.0, 250, 50, 400)]
    s = series(samples, 0.0, "s", ["p"])
    assert s["machine_cpu_pct"] == [75.0, 50.0]
    assert s["machine_cpu_steal_pct"] == [25.0, 0.0]

    runs = [MethodRun("murder", 4, rep, ok=True, seconds=10.0 + rep) for rep in range(3)]
    for run, stolen in zip(runs, (30.0, 2.0, 5.5)):
        run.metrics["machine_cpu_steal_pct"] = stolen
    rows = summarise(runs, {4: {"nominal": 10.0, "goodput": 10.0, "size": 1}}, 10**8)
    assert rows[0]["cpu_stolen_pct"] == 5.5
    text = table(rows, 4, {"nominal": 10.0, "goodput": 10.0, "size": 1})
    assert "CPU stolen %" in text.splitlines()[1]
    assert text.splitlines()[2].split()[-2] == "5.5"


def test_each_peers_time_splits_into_its_first_bytes_and_its_downlinks_rate() -> None:
    # b's payload begins at 1 s and fills its link; a's begins at 2 s at half the rate;
    # c never finished, d finished without its counter ever moving (not ours to judge).
    down = {
        "a": [0, 0, FIRST_BYTES, FIRST_BYTES + 500_000, FIRST_BYTES + 1_000_000],
        "b": [0, FIRST_BYTES, FIRST_BYTES + 1_000_000, *[FIRST_BYTES + 2_000_000] * 2],
        "c": [0, FIRST_BYTES, FIRST_BYTES * 2, FIRST_BYTES * 3, FIRST_BYTES * 4],
        "d": [7, 7, 7, 7, 7],
        "e": [0, FIRST_BYTES // 2, FIRST_BYTES * 3 // 2, FIRST_BYTES * 2, FIRST_BYTES * 3],
    }
    samples = [Sample(100.0 + i, {}, {h: v[i] for h, v in down.items()}, 0, 0, 0) for i in range(5)]
    m = downlink_metrics(
        samples,
        100.0,
        ["a", "b", "c", "d"],
        {"a": 4.0, "b": 3.0, "d": 2.5},
        payload_bytes=1_000_000,
        link_bytes_per_s=1_000_000,
    )
    assert m == {
        "peer_first_bytes_s_min": 1.0,
        "peer_first_bytes_s_max": 2.0,
        "peer_down_busy_pct_min": 50.0,
        "peer_down_busy_pct_median": 75.0,
        "peer_payload_mbit_min": 4.0,
        "peer_payload_mbit_median": 4.0,
    }
    assert downlinks_line(m) == (
        "payload reached the peers at 1.00-2.00 s, then their downlinks were 75% busy "
        "(lowest 50%), 4.0 Mbit/s of payload (median)"
    )
    # Between two samples the crossing is interpolated, not rounded to either.
    between = downlink_metrics(
        samples, 100.0, ["e"], {"e": 4.0}, payload_bytes=1_000_000, link_bytes_per_s=10**6
    )
    assert between["peer_first_bytes_s_min"] == 1.5
    no_peers = downlink_metrics(
        samples, 100.0, ["c"], {}, payload_bytes=1_000_000, link_bytes_per_s=1_000_000
    )
    assert no_peers == {} and downlinks_line(no_peers) is None


def test_a_swarm_run_is_split_at_the_seeders_first_and_last_new_block() -> None:
    metrics = {"seeder_first_block_s": 0.614, "seeder_all_once_s": 12.3}
    assert phases(13.05, metrics) == (
        "first block at 0.61 s, every piece out once by 12.30 s, last peer 0.75 s later"
    )
    assert phases(13.05, {"seeder_first_block_s": 0.6}) is None  # no full pass seen
    assert phases(13.05, {}) is None  # not our swarm: no send log
