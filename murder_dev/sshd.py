"""The host half of the dev cluster: a private mount namespace and an sshd per host.

Each host has a *holder* process: ``sleep infinity`` inside the host's network
namespace plus its own mount and UTS namespaces, where the host's private
directories are bind-mounted. sshd, and anything run with ``run_on``, joins the
holder's namespaces, so sshd can be stopped and started without losing them.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

from murder_core.errors import ClusterError
from murder_dev import netns

SSHD = "/usr/sbin/sshd"
PRIVATE_DIRS = ("/srv/murder", "/tmp")
_SSH_PORT = 22

# Runs inside the host's fresh mount/UTS namespace, then becomes the holder.
# Arguments: $1 srv dir, $2 tmp dir, $3 hostname file, $4 host name, $5 an empty file.
# The empty file hides root's ~/.bashrc from the host's SSH sessions (bash reads it for
# every command sshd runs): a developer's .bashrc (pyenv init here) cost each command
# 0.1-0.2 s of CPU, which a fleet of plain servers does not pay, and sixteen hosts on two
# cores paid it together on every stage of a deploy.
_HOLDER_SCRIPT = """set -e
knob=/proc/sys/net/ipv6/conf/eth0/disable_ipv6
if [ -w "$knob" ]; then echo 1 > "$knob"; fi
mount --bind "$1" /srv/murder
mount --bind "$2" /tmp
if [ -f /etc/hostname ]; then mount --bind "$3" /etc/hostname; fi
if [ -f /root/.bashrc ]; then mount --bind "$5" /root/.bashrc; fi
hostname "$4"
exec sleep infinity
"""


def spawn_detached(commands: Sequence[tuple[Sequence[str], Path]]) -> list[int]:
    """Start each (argv, log) in the background; return their PIDs, in order.

    One sh starts them all (fast for 200 hosts) and exits, so the daemons are
    nobody's child here (never our zombies) and sit in their own session, away
    from the caller's Ctrl-C.
    """
    script = "".join(
        f"{shlex.join(argv)} </dev/null >>{shlex.quote(str(log))} 2>&1 &\necho $!\n"
        for argv, log in commands
    )
    out = netns.run(["sh", "-c", script], new_session=True)
    try:
        pids = [int(word) for word in out.split()]
    except ValueError:
        pids = []
    if len(pids) != len(commands):
        raise ClusterError(f"starting {len(commands)} daemons printed {out[:200]!r}, not PIDs")
    return pids


def log_tail(log: Path, limit: int = 2000) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-limit:].strip() or "(empty log)"


def keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair at ``path``; return the public key line."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    netns.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_name(path.name + ".pub").read_text().strip()


def sshd_config(ip: str, hostdir: Path, authorized_keys: Path) -> str:
    return f"""# Written by murder_dev.cluster for one dev-cluster host.
ListenAddress {ip}
Port {_SSH_PORT}
HostKey {hostdir / "ssh_host_ed25519_key"}
PidFile {hostdir / "sshd.pid"}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
# fab opens several sessions per host and the whole swarm connects at once.
MaxStartups 200:30:400
MaxSessions 100
LogLevel ERROR
Subsystem sftp internal-sftp
"""


def ssh_config(hosts: Iterable[tuple[str, str]], key: Path, known_hosts: Path) -> str:
    blocks = ["# Written by murder_dev.cluster; use with ssh -F and fab's ssh_config.\n"]
    for name, ip in hosts:
        blocks.append(
            f"""Host {name}
    HostName {ip}
    Port {_SSH_PORT}
    User root
    IdentityFile {key}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 5
"""
        )
    return "\n".join(blocks)


def known_hosts_line(name: str, ip: str, public_key: str) -> str:
    key_type, key_data = public_key.split()[:2]
    return f"{name},{ip} {key_type} {key_data}\n"


def inventory(hosts: Sequence[tuple[str, str]]) -> str:
    def line(host: tuple[str, str]) -> str:
        return f"{host[0]} ansible_host={host[1]}\n"

    first = line(hosts[0])
    peers = "".join(line(h) for h in hosts[1:])
    return f"[tracker]\n{first}\n[seeder]\n{first}\n[peers]\n{peers}"


def start_holders(hosts: Sequence[tuple[str, str, Path]]) -> list[int]:
    """Start a holder for each (netns, name, hostdir); return their PIDs."""
    commands = []
    for ns, name, hostdir in hosts:
        argv = ["ip", "netns", "exec", ns, "unshare", "--mount", "--uts", "--propagation", "slave"]
        argv += ["sh", "-c", _HOLDER_SCRIPT, "sh"]
        plain = hostdir / "bashrc"
        plain.write_text("# the dev cluster host's login shell startup: nothing\n")
        argv += [str(hostdir / "srv"), str(hostdir / "tmp"), str(hostdir / "hostname"), name]
        argv.append(str(plain))
        commands.append((argv, hostdir / "holder.log"))
    return spawn_detached(commands)


def wait_holders(holders: dict[str, tuple[int, Path]], timeout: float = 10.0) -> None:
    """Wait until every holder has made its mounts and become ``sleep infinity``."""
    deadline = time.monotonic() + timeout
    pending = dict(holders)
    while pending:
        for name, (pid, hostdir) in list(pending.items()):
            if is_holder(pid):
                del pending[name]
            elif not netns.alive(pid):
                log = log_tail(hostdir / "holder.log")
                raise ClusterError(f"{name}: namespace holder exited during setup: {log}")
        if pending and time.monotonic() > deadline:
            raise ClusterError(f"hosts {sorted(pending)} not set up within {timeout:.0f} s")
        if pending:
            time.sleep(0.02)


def is_holder(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\0infinity\0"
    except OSError:
        return False


def enter_argv(holder: int, cwd: str | None = None) -> list[str]:
    """The argv prefix that runs a command in a host's net, mount and UTS namespaces."""
    argv = ["nsenter", f"--target={holder}", "--net", "--mount", "--uts", "--"]
    if cwd is None:
        return argv
    # Entering a mount namespace resets the working directory to /, and nsenter's
    # --wd resolves its path outside the host; so change directory once inside.
    return [*argv, "sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", cwd]


def start_sshds(hosts: Sequence[tuple[int, Path]]) -> list[int]:
    """Start an sshd for each (holder PID, hostdir) in the holder's namespaces."""
    commands = []
    for holder, hostdir in hosts:
        argv = [*enter_argv(holder), SSHD, "-D", "-f", str(hostdir / "sshd_config")]
        commands.append(([*argv, "-E", str(hostdir / "sshd.log")], hostdir / "sshd.log"))
    pids = spawn_detached(commands)
    # sshd writes the same PID to its PidFile a moment later; writing it now means
    # nobody who reads it finds it missing.
    for pid, (_, hostdir) in zip(pids, hosts):
        (hostdir / "sshd.pid").write_text(f"{pid}\n")
    return pids


def is_sshd(pid: int, hostdir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # The listener retitles itself into one space-separated string.
    words = b" " + cmdline.replace(b"\0", b" ") + b" "
    return netns.alive(pid) and b" -f %s " % bytes(hostdir / "sshd_config") in words


def banner(ip: str, timeout: float) -> bytes:
    """The first line an SSH server at ``ip`` sends, or b"" if it does not answer."""
    try:
        with socket.create_connection((ip, _SSH_PORT), timeout=timeout) as sock:
            line = sock.recv(256).split(b"\r\n")[0]
            # Greeting back makes sshd treat the hang-up as a client quitting,
            # not as a broken handshake worth an ERROR line in its log.
            sock.sendall(b"SSH-2.0-murder_dev_probe\r\n")
            return line
    except OSError:
        return b""


def wait_sshds(sshds: dict[str, tuple[str, int, Path]], timeout: float = 10.0) -> None:
    """Wait until every sshd (name -> ip, pid, hostdir) answers with an SSH banner."""
    deadline = time.monotonic() + timeout
    pending = dict(sshds)
    while pending:
        for name, (ip, pid, hostdir) in list(pending.items()):
            answered = banner(ip, timeout=1.0).startswith(b"SSH-2.0-")
            if not netns.alive(pid):
                log = log_tail(hostdir / "sshd.log")
                raise ClusterError(f"{name}: sshd exited during start-up: {log}")
            if answered:
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise ClusterError(f"sshd on {sorted(pending)} not answering within {timeout:.0f} s")
        if pending:
            time.sleep(0.05)


def run_in(
    holder: int, argv: Sequence[str], **kwargs: object
) -> subprocess.CompletedProcess[object]:
    """``subprocess.run`` in the holder's namespaces; ``cwd`` is a path inside the host."""
    cwd = kwargs.pop("cwd", None)
    full = [*enter_argv(holder, None if cwd is None else str(cwd)), *argv]
    return subprocess.run(full, **kwargs)  # type: ignore[call-overload,no-any-return]


def leaked_mounts(workdir: Path, netns_names: Iterable[str]) -> list[str]:
    """Lines of our /proc/self/mountinfo that belong to a cluster that should be gone.

    Host mounts live in the holders' mount namespaces and die with them, so nothing
    under ``workdir`` and no /run/netns entry of ours should be visible here.
    """
    names = set(netns_names)
    leaks = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Fields 4 and 5: the mount's root and mount point, with octal escapes.
        root, point = (Path(f.encode().decode("unicode_escape")) for f in line.split()[3:5])
        ours = point.parent == Path("/run/netns") and point.name in names
        if ours or any(p == workdir or workdir in p.parents for p in (root, point)):
            leaks.append(line)
    return leaks
