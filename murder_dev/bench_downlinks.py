"""What each peer's downlink counters say about one benchmark run.

With every link at the same rate, a peer's downlink cannot take the payload faster than
the seeder's uplink gives it out, so a peer cannot finish before its first piece arrives
plus the payload over the rate its downlink keeps from then on. Those two numbers tell
where a slow run lost its time: peers that got going late (16 interpreters starting on
two cores), or downlinks that were not kept full (busy CPUs, nothing left to fetch, or
bytes spent on something other than the payload).

Pure arithmetic over samples taken elsewhere.
"""

from __future__ import annotations

from statistics import median
from typing import Any, Mapping, Optional, Sequence

from murder_dev.bench_hosts import Sample
from murder_dev.bench_seeder import busy_pct

#: Received bytes that mean the payload has begun to arrive: more than the handshakes,
#: bitfields and tracker replies of a start, less than a piece.
FIRST_BYTES = 128 * 1024


def first_crossing(points: Sequence[tuple[float, int]], level: float) -> Optional[float]:
    """When a (time, counter) series first reaches ``level``, linear between samples."""
    for (ta, va), (tb, vb) in zip(points, points[1:]):
        if va >= level:
            return ta
        if vb >= level:
            return ta + (tb - ta) * (level - va) / (vb - va)
    return None


def downlink_metrics(
    samples: Sequence[Sample],
    t0: float,
    peers: Sequence[str],
    completions: Mapping[str, float],
    *,
    payload_bytes: int,
    link_bytes_per_s: float,
) -> dict[str, Any]:
    """Per peer with a completion (seconds after ``t0``): when its payload began to arrive,
    and how busy its downlink was from then until it was done (100% = ``link_bytes_per_s``,
    what a saturated link carries by these counters). Summarised over the peers."""
    firsts: list[float] = []
    busy: list[float] = []
    payload_mbit: list[float] = []
    for peer in peers if samples else ():
        if peer not in completions:
            continue
        points = [(s.t, s.down[peer]) for s in samples]
        start = first_crossing(points, points[0][1] + FIRST_BYTES)
        done = t0 + completions[peer]
        if start is None or done <= start:
            continue
        firsts.append(start - t0)
        busy.append(busy_pct(points, start, done, link_bytes_per_s))
        payload_mbit.append(payload_bytes * 8 / (done - start) / 1e6)
    if not firsts:
        return {}
    return {
        "peer_first_bytes_s_min": round(min(firsts), 3),
        "peer_first_bytes_s_max": round(max(firsts), 3),
        "peer_down_busy_pct_min": round(min(busy), 1),
        "peer_down_busy_pct_median": round(median(busy), 1),
        "peer_payload_mbit_min": round(min(payload_mbit), 1),
        "peer_payload_mbit_median": round(median(payload_mbit), 1),
    }


def downlinks_line(metrics: Mapping[str, Any]) -> Optional[str]:
    """One line of ``downlink_metrics`` for the bench's progress output."""
    if "peer_first_bytes_s_min" not in metrics:
        return None
    return (
        f"payload reached the peers at {metrics['peer_first_bytes_s_min']:.2f}-"
        f"{metrics['peer_first_bytes_s_max']:.2f} s, then their downlinks were "
        f"{metrics['peer_down_busy_pct_median']:.0f}% busy "
        f"(lowest {metrics['peer_down_busy_pct_min']:.0f}%), "
        f"{metrics['peer_payload_mbit_median']:.1f} Mbit/s of payload (median)"
    )
