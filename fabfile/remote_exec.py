"""One command on an open SSH connection, with no thread of its own.

Fabric's ``Connection.run`` (Invoke's runner) starts a reader thread for stdout, one for
stderr and a timer thread for the timeout, for every command. During the swarm every
peer's download is such a command, all at once: with the transport's own thread and our
per-host job that was five threads per host, 25,000 for a fleet of 5,000, close to
Linux's default pid_max of 32,768 that threads count against. Our commands take no
input, need no pty and print little, so this reads the channel from the calling thread:
paramiko's transport thread buffers what arrives (up to the channel window, 2 MiB, after
which the remote waits), and we drain it every ``DRAIN_EVERY`` seconds and when the
command has ended, until the output's EOF.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

#: Seconds between drains of a running command's output. Only a command printing more
#: than the channel window in that time waits for us; ours print a few lines.
DRAIN_EVERY = 5.0
#: Seconds between looks for the end of the output once the command has exited.
EOF_POLL = 0.005
#: Bytes of each stream kept; beyond this the oldest go (callers want the last lines).
KEEP_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Result:
    """What a command left: its exit status (-1: none came, the session died) and output."""

    exited: int
    stdout: str
    stderr: str


class CommandTimeout(Exception):
    """The command was still running after its timeout; its channel is closed."""


def run_command(transport: Any, command: str, timeout: float, open_timeout: float) -> Result:
    """Run ``command`` in a new session channel of ``transport``; wait at most ``timeout``.

    Raises CommandTimeout, or paramiko's SSHException/EOFError when the channel cannot
    be opened. Closing the channel on a timeout is all the remote gets, as with Fabric:
    sshd then closes the command's pipes.
    """
    channel = transport.open_session(timeout=open_timeout)
    try:
        channel.exec_command(command)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        # Done at the exit status and the output's EOF (or the channel's close): sshd may
        # send the status before output still held back by the window.
        while not (channel.status_event.is_set() and (channel.eof_received or channel.closed)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommandTimeout(f"command timed out after {timeout:g}s")
            if channel.status_event.is_set():
                time.sleep(min(left, EOF_POLL))  # the rest of the output is on its way
            else:
                channel.status_event.wait(min(left, DRAIN_EVERY))
            _drain(channel, out, err)
        _drain(channel, out, err)  # the transport thread queued the data before the EOF
        return Result(
            channel.recv_exit_status(),
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
        )
    finally:
        channel.close()


def _drain(channel: Any, out: bytearray, err: bytearray) -> None:
    while channel.recv_ready():
        _keep(out, channel.recv(65536))
    while channel.recv_stderr_ready():
        _keep(err, channel.recv_stderr(65536))


def _keep(buffer: bytearray, data: bytes) -> None:
    buffer += data
    if len(buffer) > KEEP_BYTES:
        del buffer[: len(buffer) - KEEP_BYTES]
