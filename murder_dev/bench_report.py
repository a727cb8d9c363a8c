"""The cluster benchmark's numbers: the Kumar-Ross bound, a summary per method, a table."""

from __future__ import annotations

import statistics
from typing import Any, Optional, Sequence

from murder_dev.bench_methods import LABELS, MethodRun


def t_min(
    size: int, seeder_up: float, peer_ups: Sequence[float], peer_downs: Sequence[float]
) -> float:
    """Kumar & Ross (2006): no method puts ``size`` bytes on every peer sooner.

    Rates in bytes per second. The seeder must send every byte once, the slowest peer
    must receive every byte, and the N copies must cross the sum of all uplinks.
    """
    if not peer_ups or len(peer_ups) != len(peer_downs):
        raise ValueError(f"need one uplink and one downlink per peer, got {peer_ups}, {peer_downs}")
    n = len(peer_ups)
    return max(size / seeder_up, size / min(peer_downs), n * size / (seeder_up + sum(peer_ups)))


def summarise(
    runs: Sequence[MethodRun], bounds: dict[int, dict[str, float]], size: int
) -> list[dict[str, Any]]:
    """One row per (N, method): the median over repeats of the runs that verified."""
    rows = []
    for n in sorted({r.n for r in runs}):
        for method in LABELS:
            mine = [r for r in runs if r.n == n and r.method == method]
            if not mine:
                continue
            good = [r.seconds for r in mine if r.ok and r.seconds is not None]
            seconds: Optional[float] = statistics.median(good) if good else None
            stolen = [v for r in mine if (v := r.metrics.get("machine_cpu_steal_pct")) is not None]
            bound = bounds[n]
            rows.append(
                {
                    "n": n,
                    "method": method,
                    "label": LABELS[method],
                    "runs": len(mine),
                    "verified_runs": len(good),
                    "seconds": None if seconds is None else round(seconds, 2),
                    "seconds_all": [r.seconds for r in mine],
                    "ratio": None if seconds is None else round(seconds / bound["nominal"], 2),
                    "ratio_goodput": None
                    if seconds is None
                    else round(seconds / bound["goodput"], 2),
                    "mb_per_s_per_peer": None if not seconds else round(size / 1e6 / seconds, 2),
                    "cpu_stolen_pct": round(statistics.median(stolen), 1) if stolen else None,
                    "errors": [r.error for r in mine if r.error],
                }
            )
    return rows


def _cell(value: Optional[float], digits: int) -> str:
    return "FAILED" if value is None else f"{value:.{digits}f}"


def table(rows: Sequence[dict[str, Any]], n: int, bound: dict[str, float]) -> str:
    """Fixed-width text for one N; ratios are to T_min at the nominal rate."""
    head = (
        "method",
        "seconds",
        "x T_min",
        "x T_min@goodput",
        "MB/s per peer",
        "CPU stolen %",
        "verified",
    )
    body = [
        (
            row["label"],
            _cell(row["seconds"], 1),
            _cell(row["ratio"], 2),
            _cell(row["ratio_goodput"], 2),
            _cell(row["mb_per_s_per_peer"], 2),
            "-" if row.get("cpu_stolen_pct") is None else f"{row['cpu_stolen_pct']:.1f}",
            f"{row['verified_runs']}/{row['runs']}",
        )
        for row in rows
        if row["n"] == n
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [
        f"N = {n} peers: T_min = {bound['nominal']:.2f} s at the nominal rate, "
        f"{bound['goodput']:.2f} s at the measured goodput; CPU stolen: the share of the "
        "machine's CPU time the hypervisor gave to others during the run (steal in /proc/stat)"
    ]
    for row_cells in [head, *body]:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row_cells, widths))
            )
        )
    return "\n".join(lines)


def markdown(rows: Sequence[dict[str, Any]], n: int, bound: dict[str, float]) -> str:
    """The same table as Markdown, for the README."""
    lines = [
        "| method | seconds | x T_min | MB/s per peer |",
        "| --- | ---: | ---: | ---: |",
        f"| T_min (Kumar-Ross bound) | {bound['nominal']:.1f} | 1.00 | "
        f"{bound['size'] / 1e6 / bound['nominal']:.2f} |",
    ]
    for row in rows:
        if row["n"] == n:
            lines.append(
                f"| {row['label']} | {_cell(row['seconds'], 1)} | {_cell(row['ratio'], 2)} | "
                f"{_cell(row['mb_per_s_per_peer'], 2)} |"
            )
    return "\n".join(lines)
