"""The command line as users and old Murder scripts call it: exit codes and messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from murder_dev.localswarm import ROOT, LocalSwarm, free_port, make_payload, sha256

ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def murder(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "murder_core", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


@pytest.fixture()
def torrent(tmp_path: Path) -> tuple[Path, Path]:
    payload = make_payload(tmp_path / "app.bin", 300_000)
    target = tmp_path / "app.torrent"
    out = murder("make-torrent", str(payload), "--tracker", "127.0.0.1:9", "-o", str(target))
    assert out.returncode == 0, out.stderr
    return payload, target


@pytest.mark.parametrize("command", ["tracker", "make-torrent", "seed", "peer"])
def test_every_subcommand_explains_itself(command: str) -> None:
    out = murder(command, "--help")
    assert out.returncode == 0
    assert "usage: murder " + command in out.stdout
    if command == "peer":
        assert "--linger" in out.stdout and "--timeout" in out.stdout


def test_the_top_help_and_a_wrong_command_still_name_every_command() -> None:
    """A run of one command builds only its own parser; everything else sees them all."""
    from murder_core import cli

    assert cli._command_of(["-v", "peer", "x.torrent", "x"]) == "peer"
    assert cli._command_of(["--help", "peer"]) is None
    assert cli._command_of(["nope"]) is None
    for args in (["--help"], ["-v", "--help"]):
        out = murder(*args)
        assert out.returncode == 0, out.stderr
        for command in cli.COMMANDS:
            assert command in out.stdout, (args, out.stdout)
    wrong = murder("peers", "x.torrent", "x")
    assert wrong.returncode == 2
    assert "invalid choice: 'peers'" in wrong.stderr and "'peer'" in wrong.stderr, wrong.stderr
    bad_option = murder("peer", "x.torrent", "x", "--minport", "nope")
    assert bad_option.returncode == 2 and "usage: murder peer" in bad_option.stderr


def test_a_command_line_is_parsed_without_importing_shutil() -> None:
    """argparse imports shutil (with bz2 and lzma) for the terminal width unless told it."""
    code = (
        "import sys; from murder_core import cli; "
        "cli.build_parser(cli._command_of(sys.argv[1:])).parse_args(sys.argv[1:]); "
        "print(sorted(m for m in ('shutil', 'lzma', 'bz2') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, "peer", "x.torrent", "x", "--ip", "10.0.0.1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_make_torrent_excludes_and_skips_symlinks(tmp_path: Path) -> None:
    from murder_core.metainfo import read_metainfo

    root = tmp_path / "rel"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_bytes(b"ref")
    (root / "app.py").write_bytes(b"print(1)")
    (root / "current").symlink_to("app.py")
    target = tmp_path / "rel.torrent"
    refused = murder("make-torrent", str(root), "--tracker", "127.0.0.1:9", "-o", str(target))
    assert refused.returncode != 0 and "refusing symlink" in refused.stderr
    assert not target.exists()
    out = murder(
        *("make-torrent", str(root), "--tracker", "127.0.0.1:9", "-o", str(target)),
        *("--exclude", ".git*", "--skip-symlinks"),
    )
    assert out.returncode == 0, out.stderr
    assert [f.path for f in read_metainfo(target).files] == [("app.py",)]


_OPEN_ALL = """
import resource, sys
from murder_core.metainfo import read_metainfo
from murder_core.storage import Storage
resource.setrlimit(resource.RLIMIT_NOFILE, (100, int(sys.argv[4])))
meta = read_metainfo(sys.argv[1])
with Storage.for_seed(meta, sys.argv[2]), Storage.for_download(meta, sys.argv[3]):
    print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize("hard, ok", [(1200, True), (300, False)])
def test_many_files_raise_the_open_file_limit_or_say_why(
    tmp_path: Path, hard: int, ok: bool
) -> None:
    """A seeder and a peer of 400 files keep 800 open: more than a soft limit of 100."""
    root = tmp_path / "many"
    root.mkdir()
    for i in range(400):
        (root / f"f{i:03}").write_bytes(b"%d" % i)
    torrent = tmp_path / "many.torrent"
    made = murder("make-torrent", str(root), "--tracker", "127.0.0.1:9", "-o", str(torrent))
    assert made.returncode == 0, made.stderr
    out = subprocess.run(
        [sys.executable, "-c", _OPEN_ALL, str(torrent), str(root), str(tmp_path / "dl"), str(hard)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    if ok:
        assert out.returncode == 0, out.stderr
        assert int(out.stdout) >= 800
        assert len(list((tmp_path / "dl.part").iterdir())) == 400
    else:
        assert out.returncode != 0
        assert "400 files, more than the open-file limit allows (hard limit 300" in out.stderr


def test_missing_torrent_is_exit_3_with_its_path(tmp_path: Path) -> None:
    out = murder("peer", str(tmp_path / "nope.torrent"), str(tmp_path / "x"), "--foreground")
    assert out.returncode == 3
    assert out.stderr.startswith("murder: error: ") and "nope.torrent" in out.stderr


def test_truncated_torrent_is_exit_3_and_nothing_is_written(
    torrent: tuple[Path, Path], tmp_path: Path
) -> None:
    _, target = torrent
    cut = tmp_path / "cut.torrent"
    cut.write_bytes(target.read_bytes()[:-20])
    out = murder("peer", str(cut), str(tmp_path / "dl" / "app.bin"), "--foreground")
    assert out.returncode == 3, out.stderr
    assert "murder: error:" in out.stderr and "invalid bencoding" in out.stderr
    assert not (tmp_path / "dl").exists()


def test_an_unpack_map_needs_its_directory_and_must_fit_the_torrent(
    torrent: tuple[Path, Path], tmp_path: Path
) -> None:
    _, target = torrent
    dl = tmp_path / "dl" / "app.bin"
    alone = murder("peer", str(target), str(dl), "--unpack-map", str(tmp_path / "m.json"))
    assert alone.returncode == 2
    assert "murder peer: error: --unpack-map and --unpack-dir go together" in alone.stderr
    bad = tmp_path / "m.json"
    bad.write_text('{"version": 1, "length": 5, "files": []}')
    flags = ["--unpack-map", str(bad), "--unpack-dir", str(tmp_path / "dl" / "in")]
    out = murder("peer", str(target), str(dl), "--foreground", *flags)
    assert out.returncode == 3, out.stderr
    assert out.stderr == (
        f"murder: error: {bad} is for a payload of 5 bytes, but the torrent's is 300000\n"
    )
    assert not (tmp_path / "dl").exists()


def test_seed_of_a_missing_payload_is_exit_3(torrent: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = torrent
    out = murder("seed", str(target), str(tmp_path / "gone.bin"))
    assert out.returncode == 3
    assert "gone.bin" in out.stderr


def test_seed_of_a_different_payload_is_refused(torrent: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = torrent
    other = make_payload(tmp_path / "other.bin", 300_000, seed=2)
    out = murder("seed", str(target), str(other))
    assert out.returncode == 3
    assert "does not match the torrent" in out.stderr


def test_unreachable_tracker_is_exit_4_after_bounded_retries(
    torrent: tuple[Path, Path], tmp_path: Path
) -> None:
    _, target = torrent  # announces to 127.0.0.1:9 (discard port: nothing listens)
    start = time.monotonic()
    out = murder(
        "peer",
        str(target),
        str(tmp_path / "dl.bin"),
        "--foreground",
        "--tracker-timeout",
        "2",
        "--minport",
        "41000",
        "--maxport",
        "41999",
    )
    assert out.returncode == 4, out.stderr
    assert "cannot reach tracker http://127.0.0.1:9" in out.stderr
    assert "gave up after 2 s" in out.stderr
    assert time.monotonic() - start < 30


def test_legacy_make_torrent_matches_the_new_command(
    torrent: tuple[Path, Path], tmp_path: Path
) -> None:
    payload, target = torrent
    legacy = tmp_path / "legacy.torrent"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from murder_core.cli import "
            "legacy_make_torrent; sys.exit(legacy_make_torrent())",
            str(payload),
            "127.0.0.1:9",
            str(legacy),
        ],
        env=ENV,
        capture_output=True,
    )
    assert out.returncode == 0
    assert legacy.read_bytes() == target.read_bytes()


def test_a_sigterm_as_the_tracker_starts_listening_still_stops_it_cleanly(
    tmp_path: Path,
) -> None:
    # The signal arrives from inside start(), the moment the socket listens: a caller that
    # sees the port answer may stop the tracker at once. SIGTERM's default action there
    # would kill it without saving its state.
    dfile = tmp_path / "data"
    code = (
        "import os, signal, sys\n"
        "from murder_core.tracker import server\n"
        "start = server.TrackerServer.start\n"
        "def start_then_term(self):\n"
        "    start(self)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "server.TrackerServer.start = start_then_term\n"
        "from murder_core.cli import legacy_tracker\n"
        "sys.exit(legacy_tracker())\n"
    )
    argv = [sys.executable, "-c", code, "--port", str(free_port()), "--dfile", str(dfile)]
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert dfile.exists()


def test_legacy_tracker_flags_and_clean_sigterm(tmp_path: Path) -> None:
    port = free_port()
    dfile, logfile = tmp_path / "data", tmp_path / "f"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from murder_core.cli import legacy_tracker; sys.exit(legacy_tracker())",
            "--port",
            str(port),
            "--dfile",
            str(dfile),
            "--logfile",
            str(logfile),
        ],
        env=ENV,
    )
    try:
        import urllib.request

        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "tracker did not start"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert dfile.exists()
    assert logfile.exists()


def test_peer_returns_when_verified_and_lingers_in_the_background(tmp_path: Path) -> None:
    payload = make_payload(tmp_path / "app.bin", 2 * 1024 * 1024)
    target = tmp_path / "dl" / "app.bin"
    pidfile = tmp_path / "peer.pid"
    with LocalSwarm(tmp_path / "run", payload) as sw:
        sw.start_tracker()
        sw.make_torrent()
        sw.start_seeder()
        out = murder(
            "peer",
            str(sw.torrent),
            str(target),
            "--ip",
            "127.0.0.1",
            "--linger",
            "60",
            "--pidfile",
            str(pidfile),
            "--minport",
            "42000",
            "--maxport",
            "42999",
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert sha256(target) == sha256(payload)
        lingering = int(pidfile.read_text())
        os.kill(lingering, 0)  # still alive, seeding
        os.kill(lingering, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pidfile.exists(), "the lingering seeder did not stop on SIGTERM"
