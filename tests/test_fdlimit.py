"""The open-file limit: raised up to what the hard limit allows, never lowered.

Each case runs in a child process started with the limits it needs: a process cannot
raise its hard limit back once lowered, and the test run's own limits must not change.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import json, resource, sys
from murder_core.fdlimit import make_room
room = make_room(int(sys.argv[1]))
print(json.dumps({"room": room._asdict(), "enough": room.enough,
                  "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))
"""


def _probe(soft: int, hard: int, extra: int) -> dict[str, object]:
    _, our_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if our_hard != resource.RLIM_INFINITY and our_hard < hard:
        pytest.skip(f"this test needs a hard open-file limit of at least {hard}, not {our_hard}")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(extra)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_soft_limit_goes_up_to_the_hard_one() -> None:
    """Far past the count asked for: the count is a floor (sockets come with the fleet)."""
    got = _probe(soft=64, hard=2000, extra=100)
    assert got["soft"] == 2000
    assert got["enough"] is True
    room = got["room"]
    assert isinstance(room, dict)
    assert room["limit"] == 2000 and room["hard"] == 2000
    assert 100 < room["needed"] < 200  # the count plus the few descriptors already open


def test_a_hard_limit_too_low_is_reported_not_raised_past() -> None:
    got = _probe(soft=64, hard=80, extra=100)
    assert got["soft"] == 80
    assert got["enough"] is False
    room = got["room"]
    assert isinstance(room, dict)
    assert room["limit"] == 80 and room["hard"] == 80 and room["needed"] > 100


def test_a_limit_already_high_enough_is_left_alone() -> None:
    got = _probe(soft=1500, hard=1500, extra=100)
    assert got["soft"] == 1500 and got["enough"] is True
