"""Shared test plumbing.

Tests marked ``root`` (namespaces, sshd) or ``interop`` (other BitTorrent clients)
may skip on a laptop, with the reason. In CI (CI=true) such a skip is turned into a
failure: there everything must really run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skip (or, in CI, fail) when a prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root (network namespaces, sshd); run as root or in CI")


def need_program(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"needs {name!r} on PATH (Debian package); ./run installs it as root")
    assert path is not None
    return path


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for one test (needs root), unmounted whatever happens."""
    need_root()
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    need(mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if (
        IN_CI
        and report.skipped
        and (item.get_closest_marker("root") or item.get_closest_marker("interop"))
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in CI, where cluster and interop tests must run: {report.longrepr}"
        )


# -- hypothesis: one switch for every property test ----------------------------------------
# HYPOTHESIS_PROFILE=nightly runs 10,000 cases per property (issue 5's nightly size);
# CI and laptops get "ci". Tests set no example counts of their own, only what they must
# (deadline=None where the first examples are legitimately slow). The deadline is the hang
# guard: one case taking seconds means a loop that should not be there.
hypothesis_settings.register_profile(
    "ci", max_examples=300, deadline=timedelta(seconds=2), print_blob=True
)
hypothesis_settings.register_profile(
    "nightly",
    max_examples=10_000,
    deadline=timedelta(seconds=2),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
