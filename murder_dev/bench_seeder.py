"""What the link counters and the seeder's send log say about one benchmark run.

Pure arithmetic over samples taken elsewhere: rates over time for the plots, and the
seeder's first round (when every byte of the payload had left it once, how busy its
uplink was until then, and what it sent twice before that).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from murder_dev.bench_hosts import Sample


def series(
    samples: Sequence[Sample], t0: float, seeder: str, peers: Sequence[str]
) -> dict[str, list[float]]:
    """Per sampling interval: seeder uplink, mean peer up/downlink (Mbit/s), machine CPU %
    (busy, and of that what the hypervisor stole)."""
    out: dict[str, list[float]] = {
        "t": [],
        "seeder_up_mbit": [],
        "peer_up_mbit_mean": [],
        "peer_down_mbit_mean": [],
        "machine_cpu_pct": [],
        "machine_cpu_steal_pct": [],
    }
    count = max(1, len(peers))
    for a, b in zip(samples, samples[1:]):
        span = b.t - a.t
        if span <= 0:
            continue

        def mbit(before: float, after: float, span: float = span) -> float:
            return round((after - before) * 8 / span / 1e6, 2)

        out["t"].append(round(b.t - t0, 3))
        out["seeder_up_mbit"].append(mbit(a.up[seeder], b.up[seeder]))
        out["peer_up_mbit_mean"].append(
            mbit(sum(a.up[p] for p in peers), sum(b.up[p] for p in peers)) / count
        )
        out["peer_down_mbit_mean"].append(
            mbit(sum(a.down[p] for p in peers), sum(b.down[p] for p in peers)) / count
        )
        jiffies = b.cpu_total - a.cpu_total
        out["machine_cpu_pct"].append(share(b.cpu_busy - a.cpu_busy, jiffies))
        out["machine_cpu_steal_pct"].append(share(b.cpu_steal - a.cpu_steal, jiffies))
    return out


def share(part: int, whole: int) -> float:
    """``part`` as a percentage of ``whole``, one decimal; 0 when nothing was counted."""
    return round(100 * part / whole, 1) if whole > 0 else 0.0


def counter_at(points: Sequence[tuple[float, int]], t: float) -> float:
    """A byte counter at time ``t``, linear between (time, value) samples."""
    if not points:
        return 0.0
    if t <= points[0][0]:
        return float(points[0][1])
    for (ta, va), (tb, vb) in zip(points, points[1:]):
        if ta <= t <= tb:
            return va + (vb - va) * ((t - ta) / (tb - ta) if tb > ta else 1.0)
    return float(points[-1][1])


def busy_pct(
    points: Sequence[tuple[float, int]], start: float, end: float, link_bytes_per_s: float
) -> float:
    """How full a link was from ``start`` to ``end``: its counter's growth against what a
    saturated link carries by that counter (``link_bytes_per_s``), in percent."""
    moved = counter_at(points, end) - counter_at(points, start)
    return 100 * moved / (link_bytes_per_s * (end - start))


def first_round(
    sent: Sequence[tuple[float, int, int, int]], payload_bytes: int
) -> tuple[Optional[float], int, int]:
    """(time every payload byte had been sent once or None, bytes sent again before then,
    pieces with some block sent again before then), from (time, piece, offset, length)."""
    seen: set[tuple[int, int]] = set()
    distinct = repeated = 0
    pieces: set[int] = set()
    for t, index, begin, length in sorted(sent):
        if (index, begin) in seen:
            repeated += length
            pieces.add(index)
            continue
        seen.add((index, begin))
        distinct += length
        if distinct >= payload_bytes:
            return t, repeated, len(pieces)
    return None, repeated, len(pieces)


def seeder_metrics(
    sent: Sequence[tuple[float, int, int, int]],
    t0: float,
    uplink: Sequence[tuple[float, int]],
    *,
    payload_bytes: int,
    link_bytes_per_s: float,
) -> dict[str, Any]:
    """How the seeder spent its uplink until every piece had left it once.

    ``sent`` holds the blocks the seeder handed to its sockets; ``uplink`` its veth's
    (time, bytes) samples; ``link_bytes_per_s`` what a saturated link carries by those
    counters. Busy % is measured from the first block sent (and, separately, from the
    first peer's start, which adds the peers' start-up).
    """
    if not sent:
        return {"seeder_blocks_sent": 0}
    first = min(t for t, *_ in sent)
    all_once, repeated, pieces_twice = first_round(sent, payload_bytes)
    total = sum(n for *_, n in sent)
    out: dict[str, Any] = {
        "seeder_payload_sent_bytes": total,
        "seeder_payload_sent_ratio": round(total / payload_bytes, 3),
        "seeder_first_block_s": round(first - t0, 3),
        "seeder_all_once_s": None if all_once is None else round(all_once - t0, 3),
        "seeder_resent_bytes_before_all_once": repeated,
        "seeder_pieces_resent_before_all_once": pieces_twice,
    }
    if all_once is None or all_once <= first:
        return out

    for key, start in (("until_all_once", first), ("from_start_until_all_once", t0)):
        busy = busy_pct(uplink, start, all_once, link_bytes_per_s)
        out[f"seeder_busy_pct_{key}"] = round(busy, 1)
    return out


def phases(seconds: float, metrics: dict[str, Any]) -> Optional[str]:
    """A swarm's time in three parts: start-up, the seeder's one pass, the tail after it.

    The tail, from the seeder's last new block to the last peer done, is what the
    peers' relaying adds once the seeder has nothing new to send.
    """
    first, once = metrics.get("seeder_first_block_s"), metrics.get("seeder_all_once_s")
    if first is None or once is None:
        return None
    return (
        f"first block at {first:.2f} s, every piece out once by {once:.2f} s, "
        f"last peer {seconds - once:.2f} s later"
    )
