"""Room in the open-file limit (RLIMIT_NOFILE), asked for before it runs out.

Debian's soft limit is 1024; the hard one is usually far higher, and raising the soft
limit up to the hard one needs no privilege. Running out shows up late and far from
its cause (EMFILE on an accept, a connect or an open, deep inside a run), so whoever
knows up front how many descriptors it will hold asks here first and, if even the
hard limit is too low, fails before starting with an error that names the limit.
"""

from __future__ import annotations

import os
from typing import NamedTuple

#: The soft limit asked for where the hard limit allows, whatever the caller counted:
#: sockets come and go with the fleet (every host of a deploy dials the seeder), so
#: the caller's count is a floor, not an estimate.
WANT_DESCRIPTORS = 65536


class Room(NamedTuple):
    """What ``make_room`` found: the descriptors needed and the soft limit now in force."""

    needed: int
    limit: int  # -1: no limit (RLIM_INFINITY, or a system without RLIMIT_NOFILE)
    hard: int  # -1: no hard limit

    @property
    def enough(self) -> bool:
        return self.limit < 0 or self.limit >= self.needed


def descriptors_in_use() -> int:
    """Descriptors this process holds now (0 where /proc cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def make_room(extra: int) -> Room:
    """Raise the soft limit so ``extra`` more descriptors fit beside those open now.

    Asks for ``WANT_DESCRIPTORS`` (or the hard limit if lower, and never less than
    needed); never lowers a limit. The caller decides what a shortfall means: the
    returned ``Room`` says whether there is enough.
    """
    try:
        import resource
    except ImportError:  # not Unix: nothing to raise, and the open itself will say
        return Room(extra, -1, -1)
    needed = descriptors_in_use() + extra
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    hard_shown = -1 if hard == infinite else hard
    if soft == infinite:
        return Room(needed, -1, hard_shown)
    target = max(needed, WANT_DESCRIPTORS)
    if hard != infinite:
        target = min(target, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass  # the Room below tells the caller what is in force
    return Room(needed, soft, hard_shown)
