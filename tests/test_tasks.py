"""The Invoke tasks as a developer meets them: our own errors are one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_cluster_status_without_a_cluster_says_so_in_one_line() -> None:
    if (ROOT / ".cluster" / "cluster.json").exists():
        pytest.skip("a dev cluster is up in this checkout (./run cluster.down removes it)")
    run = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "cluster.status"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip() == (
        f"cluster.status: no cluster at {ROOT / '.cluster'}: cluster.json is missing"
    )
