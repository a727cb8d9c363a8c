"""PNG plots of the cluster benchmark (matplotlib, from the `dev` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from murder_dev.bench_methods import LABELS, MethodRun

COLORS = {
    "scp": "tab:gray",
    "aria2c": "tab:orange",
    "murder": "tab:blue",
    "fab": "tab:green",
    "fab-tree": "tab:red",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(
    rows: Sequence[dict[str, Any]], bounds: dict[int, dict[str, float]], path: Path
) -> Path:
    """Seconds against N for every method, with T_min (and 1.2 x T_min) as lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    ns = sorted(bounds)
    ax.plot(ns, [bounds[n]["nominal"] for n in ns], "k-", label="T_min (Kumar-Ross bound)")
    ax.plot(ns, [1.2 * bounds[n]["nominal"] for n in ns], "k:", label="1.2 x T_min (target)")
    for method, label in LABELS.items():
        points = [(r["n"], r["seconds"]) for r in rows if r["method"] == method and r["seconds"]]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, "o-", color=COLORS[method], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("peers (N)")
    ax.set_ylabel("seconds until every peer holds a verified copy (log)")
    ax.set_xticks(ns)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Time to put one file on N peers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_hosts(runs: Sequence[MethodRun], bound: float, path: Path) -> Path:
    """Per-host completion times of one run of each method, T_min as a line."""
    plt = _pyplot()
    shown = [r for r in runs if r.completions]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.4 * max(1, len(shown))), squeeze=False)
    for ax, run in zip(axes[:, 0], shown):
        hosts = sorted(run.completions, key=lambda h: int(h[1:]))
        ax.bar(hosts, [run.completions[h] for h in hosts], color=COLORS[run.method])
        ax.axhline(bound, color="k", linestyle="-", linewidth=1, label="T_min")
        what = (
            "download done (after deploy start)"
            if run.method.startswith("fab")
            else "verified copy"
        )
        total = f"{run.seconds:.1f} s total" if run.seconds else "failed"
        ax.set_title(f"{LABELS[run.method]} (N={run.n}): {what}; {total}", fontsize=10)
        ax.set_ylabel("s")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_uplink(runs: Sequence[MethodRun], rate_mbit: float, path: Path) -> Path:
    """Seeder uplink, mean peer up/downlink and machine CPU over time, one panel per run."""
    plt = _pyplot()
    shown = [r for r in runs if r.series.get("t")]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 3.6 * max(1, len(shown))), squeeze=False)
    for ax, run in zip(axes[:, 0], shown):
        s = run.series
        ax.plot(s["t"], s["seeder_up_mbit"], color="tab:red", label="seeder uplink")
        ax.plot(s["t"], s["peer_up_mbit_mean"], color="tab:blue", label="peer uplink (mean)")
        ax.plot(s["t"], s["peer_down_mbit_mean"], color="tab:green", label="peer downlink (mean)")
        ax.axhline(rate_mbit, color="k", linewidth=0.8, linestyle="--", label="link rate")
        once = run.metrics.get("seeder_all_once_s")
        if once:
            ax.axvline(once, color="tab:red", linestyle=":", label="every piece left seeder once")
        if run.seconds and not run.method.startswith("fab"):
            ax.axvline(run.seconds, color="k", linestyle=":", label="last peer verified")
        cpu = ax.twinx()
        cpu.plot(s["t"], s["machine_cpu_pct"], color="0.6", linewidth=0.8, label="machine CPU %")
        cpu.plot(
            s["t"],
            s["machine_cpu_steal_pct"],
            color="tab:purple",
            linewidth=0.8,
            linestyle="--",
            label="of which stolen by the hypervisor",
        )
        cpu.set_ylim(0, 105)
        cpu.set_ylabel("machine CPU %", color="0.4")
        ax.set_ylim(0, rate_mbit * 1.15)
        ax.set_ylabel("Mbit/s")
        ax.set_xlabel("seconds after the first transfer process started")
        ax.set_title(f"{LABELS[run.method]} (N={run.n})", fontsize=10)
        lines, labels = ax.get_legend_handles_labels()
        more_lines, more_labels = cpu.get_legend_handles_labels()
        ax.legend(
            lines + more_lines,
            labels + more_labels,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.22),
            fontsize=7,
            ncol=4,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
