"""Process plumbing: pidfiles, and handing a finished download over to a background seeder.

``murder peer`` must return (exit 0) as soon as the file is verified, yet keep seeding
for ``--linger`` seconds. We fork before any event loop or thread exists: the child
does the work and, on success, tells the parent through a pipe and lets go of the
terminal (or SSH channel); the parent then exits 0 while the child lingers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Callable

_OK = b"ok\n"


def write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: str) -> None:
    """Remove the pidfile only if it still names us (a newer run may have replaced it)."""
    try:
        with open(path) as fh:
            if fh.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def pidfile(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    write_pidfile(path)
    try:
        yield
    finally:
        remove_pidfile(path)


def _detach_stdio(logfile: str | None) -> None:
    target = os.open(logfile or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null_in = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_in, 0)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(null_in)
    os.close(target)


def run_with_handoff(
    work: Callable[[Callable[[], None]], int], *, logfile: str | None = None
) -> int:
    """Run ``work(notify)`` in a child; return 0 once it calls notify(), else its exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: does the job, outlives the parent once notified
        os.close(read_end)
        os.setsid()
        notified = False

        def notify() -> None:
            nonlocal notified
            if notified:
                return
            notified = True
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(write_end, _OK)
            os.close(write_end)
            _detach_stdio(logfile)

        code = 1
        try:
            code = work(notify)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    os.close(write_end)

    def forward(signum: int, frame: FrameType | None) -> None:
        # The user gave up on the download: the child must not carry on unseen.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    data = b""
    while True:
        chunk = os.read(read_end, 64)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    if data.startswith(_OK):
        return 0
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code  # killed by a signal: shell convention
