"""A dead man's switch for services someone else is meant to stop.

``fab deploy`` starts the tracker and the seeder detached on their hosts and stops them
at teardown. If the workstation dies, or the host is cut off from it, nobody ever
will: they would serve a finished deploy forever. With a lease the deploy keeps
touching a file on the host; a service whose lease file has not been touched for
``seconds`` stops by itself. The file's mtime is set and read by the host's own clock.
"""

from __future__ import annotations

import os
import time

from .errors import LeaseError

DEFAULT_SECONDS = 120.0


class Lease:
    # A plain class: every murder start imports this module, and a dataclass would
    # cost half a millisecond of class building there.
    __slots__ = ("path", "seconds")

    def __init__(self, path: str, seconds: float = DEFAULT_SECONDS) -> None:
        self.path = path
        self.seconds = seconds

    def check_start(self) -> None:
        """Refuse to start on a lease that is missing or already expired."""
        reason = self.expired()
        if reason:
            raise LeaseError(f"not starting: {reason}")

    def expired(self, now: float | None = None) -> str:
        """Why the lease is over ("" while it holds)."""
        try:
            touched = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return f"lease file {self.path} is gone"
        except OSError as exc:
            return f"cannot read lease file {self.path}: {exc.strerror or exc}"
        idle = (time.time() if now is None else now) - touched
        if idle > self.seconds:
            return f"lease file {self.path} not renewed for {idle:.0f} s (limit {self.seconds:g} s)"
        return ""
