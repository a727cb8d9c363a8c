"""SSH to the fleet: one connection per host, bounded parallelism, timeouts, quoting.

Every stage goes through :class:`Connections`, built once from the inventory and
reused for the whole deploy (each command is a new channel on the same transport).
Fabric's ``Connection`` trusts any host key (AutoAddPolicy) and loads no known_hosts;
we load the files the user's ssh_config names and reject unknown keys, as OpenSSH
with ``StrictHostKeyChecking yes`` would.
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, List, Optional, Sequence, TypeVar

from fabric import Config, Connection  # type: ignore[import-untyped]
from paramiko import RejectPolicy
from paramiko.ssh_exception import NoValidConnectionsError, SSHException

from fabfile.inventory import Host, Inventory
from fabfile.remote_exec import CommandTimeout, Result, run_command
from murder_core.errors import DeployError, HostError
from murder_core.fdlimit import make_room

__all__ = ["Connections", "HostError", "Outcome", "sh", "start_detached_script", "stop_script"]

T = TypeVar("T")

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts ~/.ssh/known_hosts2"
DEFAULT_GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
MAX_ERROR_CHARS = 400
#: paramiko waits an hour for a new channel by default; a dead link must fail sooner.
CHANNEL_OPEN_TIMEOUT = 30
#: How much longer than a command's own timeout we wait before giving up on it.
BACKSTOP_SECONDS = 60
#: Uploads and downloads of the pyz and .torrent files: small, but links can be slow.
TRANSFER_TIMEOUT = 600
#: An SFTP transfer that receives nothing for this long has failed.
SFTP_IDLE_TIMEOUT = 60
#: Descriptors the workstation surely holds per host for a whole deploy: the SSH
#: socket. A ProxyCommand adds three pipes; asking for far more than the count (see
#: fdlimit) covers those where the hard limit allows.
DESCRIPTORS_PER_HOST = 1
#: Beside those: the release, its tarball, the pyz, logs and reports.
SPARE_DESCRIPTORS = 64


def make_room_for_hosts(count: int) -> None:
    """Raise the open-file limit for ``count`` hosts' connections, or say why it can't.

    Every connection stays open for the whole deploy, so with the usual soft limit of
    1024 a fleet of about a thousand hosts would run out part-way: hosts failing to
    connect with "Too many open files", or the deploy dying on a local open. Raising the
    soft limit needs no privilege; a hard limit too low is refused before any host is
    touched.
    """
    room = make_room(count * DESCRIPTORS_PER_HOST + SPARE_DESCRIPTORS)
    if room.enough:
        return
    hard = f"hard limit {room.hard}" if room.hard >= 0 else "no hard limit"
    raise DeployError(
        f"{count} hosts need about {room.needed} open files on this workstation "
        "(one SSH connection per host, open for the whole deploy), "
        f"but the limit is {room.limit} ({hard}): raise it (ulimit -Hn; LimitNOFILE= "
        "for a systemd service) or split the inventory"
    )


def sh(*argv: str) -> str:
    """One shell word per argument, whatever the argument holds."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def last_line(text: str) -> str:
    """The last non-empty line, clipped: what a table cell can hold of an error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line[:MAX_ERROR_CHARS]


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one host's job in a parallel stage came to."""

    host: str
    value: Optional[T] = None
    error: Optional[str] = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def connect_error(exc: BaseException) -> str:
    """Why an SSH connection could not be opened, in the words of the socket error.

    paramiko wraps refused/unreachable addresses in NoValidConnectionsError, whose
    own text ("[Errno None] Unable to connect ...") hides the reason.
    """
    if isinstance(exc, NoValidConnectionsError) and exc.errors:
        reasons = sorted(
            {f"{a[0]}:{a[1]}: {getattr(e, 'strerror', None) or e}" for a, e in exc.errors.items()}
        )
        return f"ssh: cannot connect to {'; '.join(reasons)}"
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return f"ssh: connection timed out ({type(exc).__name__}: {exc})"
    return f"ssh: {type(exc).__name__}: {exc}".strip()


def _expand_known_hosts(value: str, user: str, host: str) -> List[str]:
    paths = []
    home = os.path.expanduser("~")
    for word in value.split():
        word = word.replace("%d", home).replace("%u", user).replace("%h", host)
        paths.append(os.path.expanduser(word))
    return paths


def make_connection(host: Host, config: Config, connect_timeout: int) -> Connection:
    """A fabric Connection for ``host`` that honours ssh_config and known_hosts strictly.

    The ssh_config block is looked up by the inventory name (as ``ssh h2`` would), and
    ``ansible_host`` then overrides the address, as Ansible does.
    """
    kwargs: Dict[str, Any] = {}
    if host.key_file:
        kwargs["key_filename"] = [os.path.expanduser(host.key_file)]
    conn = Connection(
        host.name,
        user=host.user,
        port=host.port,
        config=config,
        connect_timeout=connect_timeout,
        connect_kwargs=kwargs or None,
    )
    if host.address:
        conn.host = host.address
    ssh_conf = conn.ssh_config
    for path in _expand_known_hosts(
        str(ssh_conf.get("globalknownhostsfile", DEFAULT_GLOBAL_KNOWN_HOSTS)), conn.user, conn.host
    ) + _expand_known_hosts(
        str(ssh_conf.get("userknownhostsfile", DEFAULT_KNOWN_HOSTS)), conn.user, conn.host
    ):
        if os.path.isfile(path):
            conn.client.load_system_host_keys(path)
    conn.client.set_missing_host_key_policy(RejectPolicy())
    return conn


class Connections:
    """One SSH connection per inventory host, opened lazily, shared by every stage.

    A host whose connection failed is remembered in :attr:`failed` and not retried, so
    one dead host costs one connect timeout per deploy, not one per stage.
    """

    def __init__(
        self,
        inventory: Inventory,
        config: Config,
        *,
        connect_timeout: int = 10,
        command_timeout: int = 300,
        max_parallel: int = 50,
    ) -> None:
        self.inventory = inventory
        self.config = config
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.max_parallel = max_parallel
        self.failed: Dict[str, str] = {}
        self._conns: Dict[str, Connection] = {}
        self._lock = threading.Lock()
        self._ips: Dict[str, str] = {}
        self._reached: List[str] = []
        self._opening: Dict[str, threading.Lock] = {}
        self._sftp_locks: Dict[str, threading.Lock] = {}
        #: SSH connections opened so far: one per host for a whole deploy, if all is well.
        self.opens = 0
        make_room_for_hosts(len(inventory.all_hosts))

    def connection(self, name: str) -> Connection:
        with self._lock:
            if name in self.failed:
                raise HostError(name, self.failed[name])
            conn = self._conns.get(name)
            if conn is None:
                conn = make_connection(self.inventory.host(name), self.config, self.connect_timeout)
                self._conns[name] = conn
            opening = self._opening.setdefault(name, threading.Lock())
        with opening:  # two stages touching one host at once must not both connect
            self._open(name, conn)
        return conn

    def _open(self, name: str, conn: Connection) -> None:
        with self._lock:
            if name in self.failed:
                raise HostError(name, self.failed[name])
        if not conn.is_connected:
            try:
                conn.open()
            except (SSHException, OSError, EOFError) as exc:
                message = connect_error(exc)
                with self._lock:
                    self.failed.setdefault(name, message)
                raise HostError(name, message) from exc
            conn.transport.channel_timeout = max(CHANNEL_OPEN_TIMEOUT, self.connect_timeout)
            with self._lock:
                self.opens += 1
                if name not in self._reached:
                    self._reached.append(name)

    def run(
        self,
        name: str,
        script: str,
        *,
        timeout: Optional[float] = None,
        check: bool = True,
    ) -> Result:
        """Run ``script`` under ``sh -c`` on host ``name``; HostError unless it exits 0.

        The login shell of the remote user may not be POSIX (fish, csh): wrapping in
        ``sh -c`` makes the quoting we do mean the same thing everywhere.
        """
        conn = self.connection(name)
        limit = self.command_timeout if timeout is None else timeout
        try:
            result = interruptible(
                lambda: run_command(
                    conn.transport,
                    "sh -c " + shlex.quote(script),
                    limit,
                    conn.transport.channel_timeout,
                ),
                limit + BACKSTOP_SECONDS,
            )
        except CommandTimeout as exc:
            raise HostError(name, str(exc)) from exc
        except TimeoutError as exc:
            raise HostError(name, f"command timed out: {exc}") from exc
        except (SSHException, OSError, EOFError) as exc:
            raise HostError(name, f"ssh: {type(exc).__name__}: {exc}") from exc
        if check and result.exited != 0:
            detail = last_line(result.stderr) or last_line(result.stdout)
            raise HostError(name, f"exit {result.exited}: {detail}")
        return result

    def _with_sftp(self, name: str, work: Callable[[Any], None]) -> None:
        """Run ``work(sftp)`` on the host's SFTP session, one thread at a time.

        One session per connection (Fabric keeps it), and it is not safe for two
        threads at once: a reply read by the wrong thread leaves the other waiting
        forever. The idle timeout bounds a transfer in any thread (``interruptible``
        bounds only the main thread's).
        """
        conn = self.connection(name)
        with self._lock:
            lock = self._sftp_locks.setdefault(name, threading.Lock())
        with lock:
            sftp = conn.sftp()
            sftp.get_channel().settimeout(SFTP_IDLE_TIMEOUT)
            work(sftp)

    def put(self, name: str, local: str, remote: str, mode: int = 0o600) -> None:
        """Upload to ``remote`` via a temp name and rename, so readers never see half a file."""
        partial = f"{remote}.part-{os.getpid()}"

        def transfer(sftp: Any) -> None:
            sftp.put(local, partial)
            sftp.chmod(partial, mode)
            sftp.posix_rename(partial, remote)

        try:
            interruptible(lambda: self._with_sftp(name, transfer), TRANSFER_TIMEOUT)
        except (SSHException, OSError, EOFError) as exc:
            raise HostError(name, f"upload to {remote} failed: {exc}") from exc

    def get(self, name: str, remote: str, local: str) -> None:
        try:
            interruptible(
                lambda: self._with_sftp(name, lambda sftp: sftp.get(remote, local)),
                TRANSFER_TIMEOUT,
            )
        except (SSHException, OSError, EOFError) as exc:
            raise HostError(name, f"download of {remote} failed: {exc}") from exc

    def ip_of(self, name: str) -> str:
        """The address other hosts reach ``name`` on.

        The inventory's ``murder_ip`` or IP-literal ``ansible_host`` wins; otherwise the
        server side of our own SSH connection (``$SSH_CONNECTION``), which is an address
        the host really listens on, whatever DNS or ssh_config aliases say.
        """
        with self._lock:
            cached = self._ips.get(name)
        if cached is not None:
            return cached
        known = self.inventory.host(name).known_ip
        if known is None:
            out = self.run(name, 'printf "%s\\n" "$SSH_CONNECTION"').stdout.split()
            if len(out) != 4:
                raise HostError(name, f"cannot tell this host's address from {out!r}")
            known = out[2]
        with self._lock:
            self._ips[name] = known
        return known

    def map(
        self,
        names: Sequence[str],
        job: Callable[[str], T],
        *,
        skip_failed: bool = True,
        all_at_once: bool = False,
    ) -> Dict[str, Outcome[T]]:
        """Run ``job(host)`` for every host, at most ``max_parallel`` at a time.

        ``all_at_once`` runs every job at the same time instead: for the swarm, whose
        peers must all be in it together (in waves of ``max_parallel`` a fleet of N would
        take N / max_parallel swarms). Each such job holds a thread and an SSH channel on
        a connection that is already open, nothing more.

        Ctrl-C stops waiting at once (queued jobs are cancelled) so the caller's teardown
        can run; jobs already running end when teardown stops their remote processes.
        """
        results: Dict[str, Outcome[T]] = {}
        todo = [n for n in names if not (skip_failed and n in self.failed)]
        for name in names:
            if name not in todo:
                results[name] = Outcome(name, error=self.failed[name])
        if not todo:
            return results
        workers = len(todo) if all_at_once else min(self.max_parallel, len(todo))
        pool = ThreadPoolExecutor(max_workers=workers)

        def timed(name: str) -> Outcome[T]:
            start = time.monotonic()
            try:
                value = job(name)
            except HostError as exc:
                return Outcome(name, error=exc.reason, seconds=time.monotonic() - start)
            except DeployError as exc:
                return Outcome(name, error=str(exc), seconds=time.monotonic() - start)
            return Outcome(name, value=value, seconds=time.monotonic() - start)

        futures: Dict[str, Future[Outcome[T]]] = {}
        try:
            for name in todo:
                futures[name] = pool.submit(timed, name)
            for name, fut in futures.items():
                results[name] = fut.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return {n: results[n] for n in names}

    def reached(self) -> List[str]:
        """Hosts we connected to at least once: the only ones we can have started anything on."""
        with self._lock:
            return list(self._reached)

    def close(self) -> None:
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            conn.close()


def interruptible(call: Callable[[], T], seconds: float) -> T:
    """Run ``call`` so that Ctrl-C reaches the caller at once.

    Invoke's runner catches KeyboardInterrupt, forwards it to the remote command (a
    ``\x03`` that a non-tty command never reads) and keeps waiting: a deploy would
    ignore Ctrl-C for as long as a remote step runs. So the main thread runs the call
    in a daemon thread and only waits, where an interrupt is raised as usual; teardown
    then stops the remote processes, which ends the abandoned call. ``seconds`` bounds
    the wait (the call has its own, shorter timeout; this is the backstop).
    """
    if threading.current_thread() is not threading.main_thread():
        return call()
    done = threading.Event()
    box: Dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the waiting thread below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="murder-ssh", daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError(f"no answer after {seconds:g}s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def poll_sleep(fast: int) -> str:
    """One shell line for a wait loop counting looks in ``$i``: 10 ms between the first
    ``fast`` looks, 0.1 s after. What we wait for (a process to stop, a pidfile to
    appear) mostly happens within tens of milliseconds."""
    return f"if [ $i -lt {fast} ]; then sleep 0.01; else sleep 0.1; fi"


# Detached processes and their pidfiles. The engine writes and removes the pidfile
# itself (``--pidfile``); we only ever signal a pid whose command line names
# murder.pyz, so a stale pidfile pointing at a recycled pid harms nothing.
STOP_FUNCTION = r"""
murder_alive() {
  grep -q murder.pyz "/proc/$1/cmdline" 2>/dev/null
}
murder_stop() {
  pids=""
  for pf in "$@"; do
    [ -f "$pf" ] || continue
    pid=$(head -c 32 "$pf" | tr -dc 0-9)
    if [ -n "$pid" ] && murder_alive "$pid"; then
      kill "$pid" 2>/dev/null && pids="$pids $pid"
    fi
  done
  i=0
  while [ -n "$pids" ] && [ $i -lt 118 ]; do
    left=""
    for pid in $pids; do murder_alive "$pid" && left="$left $pid"; done
    pids=$left
    [ -n "$pids" ] || break
    @POLL_SLEEP@
    i=$((i+1))
  done
  for pid in $pids; do
    if murder_alive "$pid"; then
      kill -9 "$pid" 2>/dev/null
      echo "murder: pid $pid ignored SIGTERM for 10s, killed" >&2
    fi
  done
  for pf in "$@"; do rm -f "$pf"; done
}
""".replace("@POLL_SLEEP@", poll_sleep(20))


def stop_script(pidfiles: Sequence[str], globs: Sequence[str] = (), then: str = "") -> str:
    """Stop each process named by a pidfile (``globs`` are left unquoted on purpose:
    they are built from validated paths plus a literal ``*``), then run ``then``, whose
    status is the script's: one round trip where a host needs both."""
    # All are signalled first and waited for together: they stop in parallel.
    names = [shlex.quote(p) for p in pidfiles] + list(globs)
    lines = [STOP_FUNCTION]
    if names:
        lines.append(f"murder_stop {' '.join(names)}")
    lines.append(then or "exit 0")
    return "\n".join(lines)


def start_detached_script(
    argv: Sequence[str], *, workdir: str, pidfile: str, output: str, wait_seconds: int = 15
) -> str:
    """Start ``argv`` detached from the SSH session and wait until its pidfile appears.

    ``setsid`` + ``nohup`` + redirected fds let the channel close while the process
    keeps running; a process that dies before writing its pidfile is reported with
    the tail of its output.
    """
    # Looks every 10 ms for the first 0.3 s, where our python processes write their
    # pidfile (the seeder's start is on the deploy's critical path), then every 0.1 s.
    fast = 30
    ticks = fast + (wait_seconds * 10 - fast // 10)
    return "\n".join(
        [
            f"mkdir -p -m 700 {sh(workdir)} && cd {sh(workdir)} || exit 1",
            f"rm -f {sh(pidfile)}",
            f"nohup $(command -v setsid) {sh(*argv)} </dev/null >{sh(output)} 2>&1 &",
            "child=$!",
            "i=0",
            f"while [ $i -lt {ticks} ]; do",
            f"  if [ -s {sh(pidfile)} ]; then exit 0; fi",
            '  if ! kill -0 "$child" 2>/dev/null; then',
            f"    sleep 0.2; tail -n 5 {sh(output)} >&2; exit 1",
            "  fi",
            f"  {poll_sleep(fast)}",
            "  i=$((i+1))",
            "done",
            f"echo {sh(f'no pidfile {pidfile} after {wait_seconds}s')} >&2",
            "exit 1",
        ]
    )
