"""The tracker benchmark (``invoke bench --tracker``), run small against a real tracker."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from murder_core.metainfo import read_metainfo
from murder_dev import bench_tracker
from murder_dev.localswarm import LocalSwarm, make_payload


def test_the_swarm_is_filled_to_its_size_and_every_announce_answered(tmp_path: Path) -> None:
    payload = make_payload(tmp_path / "p.bin", 1 << 16)
    with LocalSwarm(tmp_path / "run", payload) as sw:
        sw.start_tracker()
        info_hash = read_metainfo(sw.make_torrent()).info_hash
        row = bench_tracker.measure(
            sw.tracker_port, sw.procs["tracker"].pid, info_hash.raw, 150, 0.5, 4
        )
        with urllib.request.urlopen(
            f"http://127.0.0.1:{sw.tracker_port}/stats.json", timeout=10
        ) as reply:
            stats = json.loads(reply.read())
    assert row["errors"] == 0 and row["announces"] > 0, row
    assert (row["peers"], row["clients"]) == (150, 4)
    assert stats["torrents"][info_hash.hex]["leechers"] == 150  # each fake peer once


def test_main_writes_one_row_per_swarm_size(tmp_path: Path) -> None:
    out = tmp_path / "tracker.json"
    argv = ["--peers", "20,40", "--seconds", "0.3", "--clients", "3", "--out", str(out)]
    assert bench_tracker.main(argv) == 0
    doc = json.loads(out.read_text())
    assert [r["peers"] for r in doc["results"]] == [20, 40]
    assert all(r["announces"] > 0 and r["errors"] == 0 for r in doc["results"])
