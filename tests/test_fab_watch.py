"""The seeder watch of ``fab deploy``: its give-up rule, and its look at the seeder via sh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fabfile.settings import Settings
from fabfile.watch import StallJudge, check_script

# Writes its pid where told, says "ready", then lives until its stdin closes.
SEEDER_STANDIN = (
    "import os, sys\nopen(sys.argv[1], 'w').write('%d' % os.getpid())\n"
    "print('ready', flush=True)\nsys.stdin.read()\n"
)


def test_a_live_seeder_never_gives_up_however_still_the_swarm() -> None:
    judge = StallJudge(stall_timeout=30)
    for t in range(0, 1000, 2):
        assert not judge.progress(float(t), 0)
    assert judge.gone_since is None


def test_gone_seeder_and_no_progress_gives_up_after_the_timeout() -> None:
    judge = StallJudge(stall_timeout=30)
    assert not judge.progress(0.0, 100)
    judge.seeder_gone(10.0, "murder: error: piece 3 fails its SHA-1 check")
    assert not judge.progress(20.0, 100)
    assert not judge.progress(39.9, 100)
    assert judge.progress(40.0, 100)
    assert judge.last_words == "murder: error: piece 3 fails its SHA-1 check"


def test_progress_after_the_seeder_went_keeps_the_swarm_going() -> None:
    """The peers finishing from each other (fault test 3's case) must not be stopped."""
    judge = StallJudge(stall_timeout=30)
    judge.seeder_gone(0.0, "")
    for t in range(2, 200, 2):
        assert not judge.progress(float(t), 1000 * t)
    assert judge.progress(198.0 + 30, 1000 * 198)


def test_a_tracker_reporting_less_or_nothing_is_not_progress() -> None:
    """A restarted tracker knows fewer bytes at first; an unanswered poll knows none."""
    judge = StallJudge(stall_timeout=10)
    assert not judge.progress(0.0, 5000)
    judge.seeder_gone(1.0, "")
    assert not judge.progress(5.0, 100)
    assert not judge.progress(8.0, None)
    assert judge.progress(11.0, 4000)


def test_only_the_first_sign_of_death_counts() -> None:
    judge = StallJudge(stall_timeout=10)
    judge.seeder_gone(0.0, "first")
    judge.seeder_gone(9.0, "second")
    assert judge.gone_since == 0.0 and judge.last_words == "first"
    assert judge.progress(10.0, None)


def _settings(tmp_path: Path) -> Settings:
    return Settings(tag="v1", temp_path=str(tmp_path))


def _check(settings: Settings) -> str:
    run = subprocess.run(
        ["sh", "-c", check_script(settings)], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_check_script_sees_a_live_seeder_then_its_last_words(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    pidfile = Path(settings.pidfile("seeder"))
    out = tmp_path / "seeder-v1.out"
    out.write_text("starting\nmurder: error: piece 3 fails its SHA-1 check\n\n")
    # A real process whose command line names murder.pyz, as the engine's does.
    proc = subprocess.Popen(
        [sys.executable, "-c", SEEDER_STANDIN, str(pidfile), "/srv/murder/bin/murder.pyz"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert _check(settings) == "alive"
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert _check(settings) == "murder: error: piece 3 fails its SHA-1 check"


def test_check_script_does_not_take_a_stranger_for_the_seeder(tmp_path: Path) -> None:
    """A pidfile naming some other live process (a recycled pid) means the seeder is gone."""
    settings = _settings(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        Path(settings.pidfile("seeder")).write_text(f"{proc.pid}\n")
        assert _check(settings) == ""  # gone, and no output file to quote
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_no_download_starts_once_the_verdict_is_in(tmp_path: Path) -> None:
    """A host whose turn comes after the verdict must not start a peer that would wait
    for the dead seeder until peer_timeout; one registered before is kept to be stopped."""
    from fabfile.watch import SeederWatch

    watch = SeederWatch(None, _settings(tmp_path), lambda: None)  # type: ignore[arg-type]
    assert watch.begin("h2")
    watch.verdict = "the seeder on h1 is gone (x) and the swarm moved no byte for 30s after it"
    assert not watch.begin("h3")
    assert watch.downloading == {"h2"}
    watch.end("h2")
    assert watch.downloading == set()
