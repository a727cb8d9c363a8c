"""--lease: a seeder or tracker whose starter stops renewing its lease file stops itself."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from fabfile.settings import Settings
from murder_core.errors import LeaseError
from murder_core.lease import Lease
from murder_dev.localswarm import LocalSwarm, child_env, free_port, make_payload, murder_cmd


def test_a_fresh_lease_holds_and_a_stale_or_missing_one_does_not(tmp_path: Path) -> None:
    path = tmp_path / "lease"
    lease = Lease(str(path), seconds=30)
    assert "is gone" in lease.expired()
    with pytest.raises(LeaseError, match=r"not starting: lease file .* is gone"):
        lease.check_start()
    path.touch()
    assert lease.expired() == ""
    lease.check_start()
    old = time.time() - 45
    os.utime(path, (old, old))
    assert "not renewed for 45 s (limit 30 s)" in lease.expired()


def test_seeder_and_tracker_stop_once_nobody_renews_their_lease(tmp_path: Path) -> None:
    """Both keep running while the lease is touched, past its limit; once the touching
    stops they exit 0 by themselves, remove their pidfiles and say why."""
    payload = make_payload(tmp_path / "app.tgz", 256 * 1024)
    lease = tmp_path / "lease"
    lease.touch()
    leased = ["--lease", str(lease), "--lease-seconds", "2"]
    with LocalSwarm(tmp_path / "run", payload) as sw:
        sw.start_tracker()
        sw.make_torrent()
        pidfiles = {"seeder": tmp_path / "seeder.pid", "tracker2": tmp_path / "tracker2.pid"}
        sw.start_seeder("--pidfile", str(pidfiles["seeder"]), *leased)
        tracker_args = ["tracker", "--port", str(free_port()), "--bind", "127.0.0.1"]
        sw.spawn_program(
            "tracker2",
            [*murder_cmd(), *tracker_args, "--pidfile", str(pidfiles["tracker2"]), *leased],
            env=child_env(None),
        )
        renewed_until = time.monotonic() + 5  # well past the 2 s limit
        while time.monotonic() < renewed_until:
            lease.touch()
            # The pause between renewals is spent waiting on the processes themselves:
            # an exit while the lease is fresh would be the bug.
            for name in pidfiles:
                try:
                    code = sw.procs[name].wait(timeout=0.15)
                except subprocess.TimeoutExpired:
                    continue
                pytest.fail(f"{name} exited {code} with a fresh lease: {sw.log(name)}")
        codes = sw.wait(list(pidfiles), timeout=30)
        for name, pidfile in pidfiles.items():
            assert codes[name] == 0, (name, codes, sw.log(name))
            assert "stopping: lease file" in sw.log(name), sw.log(name)
            assert not pidfile.exists(), name


def test_a_service_will_not_start_on_a_missing_lease(tmp_path: Path) -> None:
    """Exit 2 and the reason, before it listens or writes its pidfile."""
    pidfile = tmp_path / "tracker.pid"
    run = subprocess.run(
        [
            *(*murder_cmd(), "tracker", "--port", str(free_port()), "--bind", "127.0.0.1"),
            *("--pidfile", str(pidfile), "--lease", str(tmp_path / "nope")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(None),
    )
    assert run.returncode == 2, run
    assert f"not starting: lease file {tmp_path / 'nope'} is gone" in run.stderr
    assert not pidfile.exists()


def test_only_the_deploys_tracker_and_seeder_hold_a_lease(tmp_path: Path) -> None:
    """fab deploy's services stop themselves if the deploy stops renewing their lease;
    Murder's own start_tracker / start_seeding tasks run until stopped, as they did."""
    from fabfile.seed import seed_argv
    from fabfile.tracker import tracker_argv

    settings = Settings(tag="v1", temp_path=str(tmp_path), lease_seconds=45)
    lease = ["--lease", f"{tmp_path}/lease-v1", "--lease-seconds", "45"]
    for argv in (
        tracker_argv(settings, "10.0.0.1", leased=True),
        seed_argv(settings, "10.0.0.1", leased=True),
    ):
        assert argv[-4:] == lease
    for argv in (tracker_argv(settings, "10.0.0.1"), seed_argv(settings, "10.0.0.1")):
        assert "--lease" not in argv
