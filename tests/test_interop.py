"""Interop with BitTorrent software nobody here wrote: aria2c, libtorrent, transmission-show.

Every swarm here runs on 127.0.0.1 only, through our tracker, with DHT, local peer
discovery and peer exchange off, so the only peers are the ones under test.
"""

from __future__ import annotations

import json
import re
import subprocess
import types
from pathlib import Path

import pytest
from conftest import need, need_program

from murder_core.metainfo import read_metainfo
from murder_dev import bench_loopback
from murder_dev.bench_loopback import aria2c_cmd, lt_download
from murder_dev.localswarm import (
    LocalSwarm,
    child_env,
    make_payload,
    murder_cmd,
    sha256,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

PIECE = 256 * 1024
SIZE = 6 * 1024 * 1024 + 12345  # an odd last piece
# Nested directories, a file smaller than a piece, files straddling piece boundaries.
TREE = {
    "bin/app": 1024 * 1024 + 3,
    "bin/tool": 700_001,
    "lib/deep/data.bin": 2 * 1024 * 1024 + 77,
    "README": 5_000,
}


def make_tree(root: Path) -> Path:
    for seed, (rel, size) in enumerate(sorted(TREE.items())):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        make_payload(root / rel, size, seed=seed)
    return root


def make_source(tmp_path: Path, kind: str) -> Path:
    """The payload to share: ``src/release.bin``, or the tree ``src/release/``."""
    src = tmp_path / "src"
    src.mkdir()
    if kind == "single":
        return make_payload(src / "release.bin", SIZE)
    return make_tree(src / "release")


def same_content(got: Path, want: Path) -> None:
    if want.is_file():
        assert got.is_file(), got
        assert sha256(got) == sha256(want)
        return
    files = sorted(p.relative_to(want) for p in want.rglob("*") if p.is_file())
    assert sorted(p.relative_to(got) for p in got.rglob("*") if p.is_file()) == files
    for rel in files:
        assert sha256(got / rel) == sha256(want / rel), rel


def expected_files(source: Path) -> list[tuple[str, int]]:
    """(path as clients show it: name/sub/file, size) for every file of the payload."""
    if source.is_file():
        return [(source.name, source.stat().st_size)]
    return sorted(
        (f"{source.name}/{p.relative_to(source).as_posix()}", p.stat().st_size)
        for p in source.rglob("*")
        if p.is_file()
    )


def totals(log: str) -> dict[str, int]:
    """The ``totals: uploaded=N downloaded=N ...`` line our client prints on exit."""
    line = log.split("totals: ")[-1].splitlines()[0]
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split())}


def protocol_errors(log: str) -> list[str]:
    """Peers our client dropped for breaking the protocol.

    aria2c first tries an encrypted handshake (MSE), which we do not speak; it then
    redials in plain BitTorrent, so that one refusal is expected.
    """
    return [
        line
        for line in log.splitlines()
        if "protocol error" in line and "handshake must start with the length byte" not in line
    ]


def aria2c(*args: str) -> list[str]:
    """aria2c confined to loopback: no DHT, LPD or PEX, no config file, dies with us."""
    need_program("aria2c")
    return aria2c_cmd(*args)


# -- aria2c ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_aria2c_downloads_from_our_seeder(tmp_path: Path, kind: str) -> None:
    source = make_source(tmp_path, kind)
    out = tmp_path / "aria2"
    with LocalSwarm(tmp_path / "run", source) as sw:
        sw.start_tracker()
        sw.make_torrent(piece_size=PIECE)
        sw.start_seeder("--logfile", str(tmp_path / "seeder.debug"))
        sw.wait_for_seeders(1, timeout=60)
        done = subprocess.run(
            aria2c("--seed-time=0", "--bt-stop-timeout=60", "-d", str(out), str(sw.torrent)),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert sw.stop("seeder") == 0
        seeder_log = sw.log("seeder")
    same_content(out / source.name, source)
    # Our seeder was aria2c's only source: every byte came from it.
    total = sum(size for _, size in expected_files(source))
    assert totals(seeder_log)["uploaded"] >= total, seeder_log[-2000:]
    # aria2c sends a Bitfield (or HaveAll) again mid-connection instead of a burst of Haves.
    assert protocol_errors((tmp_path / "seeder.debug").read_text()) == []


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_our_peer_downloads_from_an_aria2c_seeder(tmp_path: Path, kind: str) -> None:
    source = make_source(tmp_path, kind)
    target = tmp_path / "peer" / source.name
    with LocalSwarm(tmp_path / "run", source) as sw:
        sw.start_tracker()
        sw.make_torrent(piece_size=PIECE)
        seeder = sw.spawn_program(
            "aria2c",
            aria2c(
                "--check-integrity=true",
                "--seed-ratio=0.0",
                "--seed-time=10",  # minutes; the test stops it long before
                "-d",
                str(source.parent),
                str(sw.torrent),
            ),
        )
        sw.wait_for_seeders(1, timeout=60)
        sw.start_peer(
            "peer",
            target,
            "--linger",
            "0",
            "--timeout",
            "120",
            "--logfile",
            str(tmp_path / "peer.debug"),
        )
        assert sw.wait(["peer"], timeout=150) == {"peer": 0}, sw.log("peer")[-3000:]
        assert seeder.poll() is None, sw.log("aria2c")[-3000:]
        sw.stop("aria2c")
        peer_log = sw.log("peer")
    same_content(target, source)
    total = sum(size for _, size in expected_files(source))
    assert totals(peer_log)["downloaded"] == total, peer_log[-2000:]
    assert protocol_errors((tmp_path / "peer.debug").read_text()) == []


# -- reading our .torrent ----------------------------------------------------------------


def our_torrent(tmp_path: Path, kind: str) -> tuple[Path, Path, str]:
    """(source, .torrent, info_hash hex as make-torrent printed it)."""
    source = make_source(tmp_path, kind)
    target = tmp_path / "out.torrent"
    made = subprocess.run(
        [
            *murder_cmd(),
            "make-torrent",
            str(source),
            "--tracker",
            "127.0.0.1:6969",
            "-o",
            str(target),
            "--piece-size",
            str(PIECE),
        ],
        capture_output=True,
        text=True,
        env=child_env(None),
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    info_hash = made.stdout.strip()
    assert info_hash == read_metainfo(target).info_hash.raw.hex()
    return source, target, info_hash


def libtorrent() -> types.ModuleType:
    try:
        import libtorrent as lt
    except ImportError as exc:
        need(False, f"needs the libtorrent Python module (pip install libtorrent): {exc}")
        raise
    return lt


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_libtorrent_reads_our_torrent(tmp_path: Path, kind: str) -> None:
    lt = libtorrent()
    source, torrent, info_hash = our_torrent(tmp_path, kind)
    info = lt.torrent_info(str(torrent))
    assert str(info.info_hashes().v1) == info_hash
    assert info.name() == source.name
    assert info.piece_length() == PIECE
    layout = info.layout()
    files = sorted((layout.file_path(i), layout.file_size(i)) for i in range(layout.num_files()))
    if kind == "single":
        assert files == [(source.name, SIZE)]
    else:
        assert files == expected_files(source)
    total = sum(size for _, size in files)
    assert info.total_size() == total
    assert info.num_pieces() == -(-total // PIECE)


_SIZE_UNITS = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20}


def shown_size(text: str) -> float:
    number, unit = text.split()
    return float(number) * _SIZE_UNITS[unit]


def close_to(shown: float, exact: int) -> bool:
    # transmission-show rounds to three or four significant digits.
    return abs(shown - exact) <= max(exact * 0.005, 10)


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_transmission_show_reads_our_torrent(tmp_path: Path, kind: str) -> None:
    program = need_program("transmission-show")
    source, torrent, info_hash = our_torrent(tmp_path, kind)
    shown = subprocess.run(
        [program, str(torrent)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert re.findall(r"^\s*Hash(?: v1)?: ([0-9a-f]{40})$", shown, re.M) == [info_hash], shown
    assert set(re.findall(r"^\s*Name: (.*)$", shown, re.M)) == {source.name}, shown
    files_section = shown.split("\nFILES\n", 1)[1]
    listed = re.findall(r"^\s+(.+) \(([\d.]+ \w+)\)$", files_section, re.M)
    want = expected_files(source)
    assert sorted(name for name, _ in listed) == [name for name, _ in want], shown
    sizes = dict(want)
    for name, size in listed:
        assert close_to(shown_size(size), sizes[name]), (name, size, sizes[name])


# -- a libtorrent session in our swarm ---------------------------------------------------


def test_libtorrent_session_downloads_from_our_seeder(tmp_path: Path) -> None:
    libtorrent()  # skips (fails in CI) without the module
    source = make_source(tmp_path, "single")
    out = tmp_path / "lt"
    out.mkdir()
    with LocalSwarm(tmp_path / "run", source) as sw:
        sw.start_tracker()
        sw.make_torrent(piece_size=PIECE)
        sw.start_seeder()
        sw.wait_for_seeders(1, timeout=60)
        assert lt_download(str(sw.torrent), str(out), 120), sw.log("seeder")[-2000:]
        assert sw.stop("seeder") == 0
        seeder_log = sw.log("seeder")
    same_content(out / source.name, source)
    assert totals(seeder_log)["uploaded"] >= SIZE


# -- the loopback benchmark's harness ----------------------------------------------------


def test_loopback_bench_runs_every_method_and_checks_each_copy(tmp_path: Path) -> None:
    need_program("aria2c")
    libtorrent()
    out = tmp_path / "loopback.json"
    report = bench_loopback.run(size_mb=4, out=out, workdir=tmp_path, timeout=120)
    assert json.loads(out.read_text()) == report
    assert list(report["methods"]) == ["murder", "aria2c", "libtorrent"]
    for method, result in report["methods"].items():
        assert result["ok"] and result["sha256_ok"], (method, result)
        assert result["seconds"] > 0 and result["peer_cpu_s_per_gb"] > 0, (method, result)
        assert 0 < result["peer_peak_rss_mib"] < 1024, (method, result)
    # Too small a payload for CPU ticks or write-rate samples: only the time ratio is sure.
    assert "seconds" in report["ratios"]["murder/aria2c"]
    assert "seconds" in report["ratios"]["murder/libtorrent"]
    table = bench_loopback.table(report)
    assert table.splitlines()[0] == "4 MiB, one seeder -> one peer on 127.0.0.1"
    assert [line.split()[0] for line in table.splitlines()[2:]] == [
        "murder",
        "aria2c",
        "libtorrent",
        "murder/aria2c",
        "murder/libtorrent",
    ]
