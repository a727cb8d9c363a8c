"""Tracker benchmark: how many announces a second our tracker answers, and at what CPU.

``python -m murder_dev.bench_tracker`` (``invoke bench --tracker``) starts our tracker on
loopback (as ``LocalSwarm`` does for the other benchmarks), and for each swarm size N
has ``--clients`` concurrent connections announce for N distinct fake peers (numwant
200, as our peers ask) for ``--seconds``. It prints, per N, the announces answered a
second, the tracker's CPU per announce (growth of utime+stime in ``/proc/PID/stat``)
and the reply latency, and writes ``bench-results/tracker.json``.

The load comes from this process, on the same cores as the tracker: announces a second
is partly its limit; CPU per announce is the tracker's own. A deploy of N hosts at
interval I asks for N / I announces a second (fab deploy: I = 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator, Sequence

from murder_core.metainfo import read_metainfo
from murder_dev.bench_loopback import proc_cpu
from murder_dev.localswarm import ROOT, LocalSwarm, make_payload

NUMWANT = 200


def announce_request(info_hash: bytes, peer: int, numwant: int = NUMWANT) -> bytes:
    """An HTTP/1.0 announce as a fresh leecher ``peer`` (0..) would send it."""
    query = urllib.parse.urlencode(
        {
            "info_hash": info_hash,
            "peer_id": b"-BT0001-" + b"%012d" % peer,
            "port": 20000 + peer % 40000,
            "uploaded": 0,
            "downloaded": 0,
            "left": 1000,
            "compact": 1,
            "numwant": numwant,
            "ip": f"10.{peer >> 16 & 255}.{peer >> 8 & 255}.{peer & 255}",
        }
    )
    return f"GET /announce?{query} HTTP/1.0\r\nHost: tracker\r\n\r\n".encode()


async def _client(
    port: int, requests: Iterator[bytes], until: float, tally: dict[str, Any]
) -> None:
    for request in requests:
        if time.monotonic() >= until:
            return
        begun = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout=10
            )
            try:
                writer.write(request)
                reply = await asyncio.wait_for(reader.read(), timeout=10)
            finally:
                writer.close()
        except (OSError, asyncio.TimeoutError):
            tally["errors"] += 1
            continue
        if b" 200 " in reply.split(b"\r\n", 1)[0] and b"failure reason" not in reply:
            tally["ok"] += 1
            tally["latency"].append(time.monotonic() - begun)
        else:
            tally["errors"] += 1


def hammer(port: int, streams: Sequence[Iterator[bytes]], seconds: float) -> dict[str, Any]:
    """One connection after another per stream of requests, all streams at once."""
    tally: dict[str, Any] = {"ok": 0, "errors": 0, "latency": []}

    async def run() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(_client(port, s, until, tally) for s in streams))

    asyncio.run(run())
    return tally


def measure(
    port: int, tracker_pid: int, info_hash: bytes, peers: int, seconds: float, clients: int
) -> dict[str, Any]:
    # Every fake peer announces once first (asking for nobody, which is cheap), so the
    # swarm has its full size when the timing starts.
    quiet = [announce_request(info_hash, i, numwant=0) for i in range(peers)]
    fill = hammer(port, [iter(quiet[c::clients]) for c in range(clients)], 300.0)
    requests = [announce_request(info_hash, i) for i in range(peers)]
    streams = [itertools.cycle(requests[c::clients] or requests) for c in range(clients)]
    cpu0 = sum(proc_cpu(tracker_pid))
    began = time.monotonic()
    tally = hammer(port, streams, seconds)
    elapsed = time.monotonic() - began
    cpu = sum(proc_cpu(tracker_pid)) - cpu0
    latency = sorted(tally["latency"]) or [0.0]
    ok = tally["ok"]
    return {
        "peers": peers,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "announces": ok,
        "errors": tally["errors"] + fill["errors"],
        "announces_per_s": round(ok / elapsed, 1),
        "tracker_cpu_ms_per_announce": round(1000 * cpu / ok, 2) if ok else None,
        "latency_ms_p50": round(1000 * latency[len(latency) // 2], 1),
        "latency_ms_p99": round(1000 * latency[int(len(latency) * 0.99)], 1),
    }


def run(
    sizes: Sequence[int], seconds: float, clients: int, out: Path | None
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="murder-bench-tracker-") as tmp:
        work = Path(tmp)
        payload = make_payload(work / "payload.bin", 1 << 20)
        with LocalSwarm(work / "run", payload) as sw:
            sw.start_tracker()
            info_hash = read_metainfo(sw.make_torrent()).info_hash.raw
            tracker = sw.procs["tracker"]
            for peers in sizes:
                row = measure(sw.tracker_port, tracker.pid, info_hash, peers, seconds, clients)
                results.append(row)
                print(
                    f"bench: {peers} peers, {clients} clients: {row['announces_per_s']} "
                    f"announces/s, {row['tracker_cpu_ms_per_announce']} ms tracker CPU each, "
                    f"{row['errors']} errors",
                    flush=True,
                )
            if tracker.poll() is not None:
                raise RuntimeError(f"the tracker exited ({tracker.returncode}) during the run")
    print()
    print("peers  announces/s  tracker CPU ms/announce  p50 ms  p99 ms  errors")
    for r in results:
        print(
            f"{r['peers']:>5}  {r['announces_per_s']:>11}  {r['tracker_cpu_ms_per_announce']!s:>23}"
            f"  {r['latency_ms_p50']:>6}  {r['latency_ms_p99']:>6}  {r['errors']:>6}"
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "command": "python -m murder_dev.bench_tracker "
            f"--peers {','.join(map(str, sizes))} --seconds {seconds:g} --clients {clients}",
            "machine": platform.platform(),
            "numwant": NUMWANT,
            "results": results,
        }
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote {out}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_tracker", description=__doc__.split("\n")[0])
    parser.add_argument("--peers", default="200,1000,5000", help="swarm sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed load per size")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "tracker.json")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.peers.split(",") if x.strip()]
    if not sizes or min(sizes) < 1 or args.clients < 1 or args.seconds <= 0:
        parser.error("--peers, --clients and --seconds must be positive")
    results = run(sizes, args.seconds, args.clients, args.out)
    return 0 if all(r["announces"] and not r["errors"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
