"""A local multi-host cluster in Linux network namespaces, each host with a real sshd.

``up(3)`` gives hosts h1..h3 at 198.18.0.11..13 behind a bridge at 198.18.0.1
(``subnet=N``: 198.18.N.x),
every host shaped to ``rate`` both ways, with private ``/srv/murder`` and
``/tmp``, and writes an ssh_config and an Ansible-style hosts.ini that ssh and
fab use as they are. ``down()`` removes all of it, also after a crash.

CLI: ``python -m murder_dev.cluster up --hosts N [--rate 100mbit] [--workdir .cluster]``,
``down`` and ``status``. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from murder_core.errors import ClusterError
from murder_dev import netns, sshd

_MARKER = ".murder-cluster"  # down() deletes a workdir only if it carries this
_MAX_JSON = 1 << 20
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@=,-]*")
_TOOLS = {
    "ip": "iproute2",
    "tc": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "hostname": "hostname",
    "ssh-keygen": "openssh-client",
    sshd.SSHD: "openssh-server",
}

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class HostInfo:
    name: str
    ip: str
    netns: str
    veth: str  # the bridge-side end; the host sees its end as eth0


@dataclass(frozen=True)
class ClusterInfo:
    workdir: Path
    hosts: list[HostInfo]
    bridge: str
    gateway_ip: str
    rate: str
    ssh_config: Path
    known_hosts: Path
    key: Path
    inventory: Path
    private_dirs: tuple[str, ...] = field(default=sshd.PRIVATE_DIRS)

    def host(self, name: str) -> HostInfo:
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise ClusterError(f"no host {name!r} in this cluster (hosts: {known})")

    def hostdir(self, name: str) -> Path:
        return self.workdir / self.host(name).name

    def to_json(self) -> str:
        data = {
            "workdir": str(self.workdir),
            "hosts": [vars(h) for h in self.hosts],
            "bridge": self.bridge,
            "gateway_ip": self.gateway_ip,
            "rate": self.rate,
            "ssh_config": str(self.ssh_config),
            "known_hosts": str(self.known_hosts),
            "key": str(self.key),
            "inventory": str(self.inventory),
            "private_dirs": list(self.private_dirs),
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClusterInfo:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ClusterError(f"cluster.json is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ClusterError(f"cluster.json must hold an object, got {type(data).__name__}")

        def get(key: str, kind: type) -> Any:
            value = data.get(key)
            if not isinstance(value, kind):
                raise ClusterError(f"cluster.json: {key} must be a {kind.__name__}, got {value!r}")
            return value

        hosts = []
        for raw in get("hosts", list):
            keys = ("name", "ip", "netns", "veth")
            if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in keys):
                raise ClusterError(f"cluster.json: hosts entries need string {keys}, got {raw!r}")
            hosts.append(HostInfo(**{k: raw[k] for k in keys}))
        dirs = get("private_dirs", list)
        if not all(isinstance(d, str) for d in dirs):
            raise ClusterError(f"cluster.json: private_dirs must be strings, got {dirs!r}")
        return cls(
            workdir=Path(get("workdir", str)),
            hosts=hosts,
            bridge=get("bridge", str),
            gateway_ip=get("gateway_ip", str),
            rate=get("rate", str),
            ssh_config=Path(get("ssh_config", str)),
            known_hosts=Path(get("known_hosts", str)),
            key=Path(get("key", str)),
            inventory=Path(get("inventory", str)),
            private_dirs=tuple(dirs),
        )


def load(workdir: PathLike = ".cluster") -> ClusterInfo:
    path = Path(workdir).resolve() / "cluster.json"
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_JSON + 1)
    except FileNotFoundError:
        raise ClusterError(f"no cluster at {path.parent}: {path.name} is missing") from None
    if len(raw) > _MAX_JSON:
        raise ClusterError(f"{path} is larger than {_MAX_JSON} bytes")
    return ClusterInfo.from_json(raw.decode("utf-8", errors="replace"))


def _workdir(workdir: PathLike) -> Path:
    wd = Path(workdir).resolve()
    if not _SAFE_PATH.fullmatch(str(wd)) or wd == Path("/"):
        raise ClusterError(
            f"workdir must be a path of [A-Za-z0-9._/+@=,-] other than /, got {str(wd)!r}"
        )
    for private in sshd.PRIVATE_DIRS:
        if wd == Path(private) or Path(private) in wd.parents:
            raise ClusterError(
                f"workdir {wd} lies under {private}, which every host mounts privately; "
                "choose a workdir elsewhere"
            )
    return wd


def _preflight() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the dev cluster needs root (network namespaces, mounts, sshd)")
    missing = [
        f"{tool} (Debian package {pkg})" for tool, pkg in _TOOLS.items() if not shutil.which(tool)
    ]
    if missing:
        raise ClusterError(f"missing tools: {', '.join(missing)}")


def up(
    hosts: int,
    rate: str = "100mbit",
    workdir: PathLike = ".cluster",
    *,
    prefix: str = "mrd",
    subnet: int = 0,
) -> ClusterInfo:
    """Build a cluster of ``hosts`` hosts, replacing whatever cluster was at ``workdir``.

    Host i gets 198.18.SUBNET.(10+i); the workstation end of the bridge is .1. Give
    clusters that run side by side different prefixes and subnets.
    """
    netns.check_hosts(hosts)
    netns.rate_bits(rate)
    netns.check_prefix(prefix)
    netns.check_subnet(subnet)
    wd = _workdir(workdir)
    _preflight()
    down(wd, prefix=prefix)
    if wd.exists() and any(wd.iterdir()):
        raise ClusterError(
            f"workdir {wd} is not empty and not a cluster of ours; refusing to use it"
        )
    taken = netns.addresses_in_subnet(subnet)
    if taken:
        raise ClusterError(
            f"{netns.cidr(subnet)} is already in use here: "
            f"{taken} (another cluster? take it down, or pick another subnet)"
        )
    try:
        return _build(hosts, rate, wd, prefix, subnet)
    except BaseException:
        with contextlib.suppress(ClusterError):
            down(wd, prefix=prefix)
        raise


def _build(count: int, rate: str, wd: Path, prefix: str, subnet: int) -> ClusterInfo:
    wd.mkdir(mode=0o700, parents=True, exist_ok=True)
    (wd / _MARKER).write_text("made by murder_dev.cluster; `down` deletes this directory\n")
    info = ClusterInfo(
        workdir=wd,
        hosts=[
            HostInfo(
                f"h{i}",
                netns.host_ip(i, subnet),
                netns.netns_name(prefix, i),
                netns.veth_name(prefix, i),
            )
            for i in range(1, count + 1)
        ],
        bridge=netns.bridge_name(prefix),
        gateway_ip=netns.gateway_ip(subnet),
        rate=rate,
        ssh_config=wd / "ssh_config",
        known_hosts=wd / "known_hosts",
        key=wd / "id_ed25519",
        inventory=wd / "hosts.ini",
    )
    # Saved first, so that down() after a crash from here on finds everything by it.
    (wd / "cluster.json").write_text(info.to_json())
    for shared in (*sshd.PRIVATE_DIRS, "/run/sshd"):
        Path(shared).mkdir(mode=0o755, parents=True, exist_ok=True)
    (wd / "authorized_keys").write_text(sshd.keygen(info.key, "murder-dev-cluster") + "\n")
    known = []
    for h in info.hosts:
        hostdir = wd / h.name
        for sub in ("srv", "tmp"):
            (hostdir / sub).mkdir(parents=True)
        (hostdir / "tmp").chmod(0o1777)
        (hostdir / "hostname").write_text(h.name + "\n")
        public = sshd.keygen(hostdir / "ssh_host_ed25519_key", f"root@{h.name}")
        known.append(sshd.known_hosts_line(h.name, h.ip, public))
        (hostdir / "sshd_config").write_text(
            sshd.sshd_config(h.ip, hostdir, wd / "authorized_keys")
        )
    pairs = [(h.name, h.ip) for h in info.hosts]
    info.known_hosts.write_text("".join(known))
    info.ssh_config.write_text(sshd.ssh_config(pairs, info.key, info.known_hosts))
    info.inventory.write_text(sshd.inventory(pairs))

    netns.build(prefix, count, rate, subnet)
    hostdirs = [wd / h.name for h in info.hosts]
    holders = sshd.start_holders([(h.netns, h.name, d) for h, d in zip(info.hosts, hostdirs)])
    for pid, hostdir in zip(holders, hostdirs):
        (hostdir / "holder.pid").write_text(f"{pid}\n")
    sshd.wait_holders({h.name: (p, d) for h, p, d in zip(info.hosts, holders, hostdirs)})
    sshds = sshd.start_sshds(list(zip(holders, hostdirs)))
    sshd.wait_sshds({h.name: (h.ip, p, d) for h, p, d in zip(info.hosts, sshds, hostdirs)})
    return info


def down(workdir: PathLike = ".cluster", *, prefix: str = "mrd") -> None:
    """Remove the cluster at ``workdir`` and anything left over under ``prefix``. Idempotent."""
    netns.check_prefix(prefix)
    wd = Path(workdir).resolve()
    _preflight()
    try:
        info: Optional[ClusterInfo] = load(wd)
    except ClusterError:
        info = None  # crashed before or while writing it: the prefix scan finds the rest
    names = [h.netns for h in info.hosts] if info else []
    links = [h.veth for h in info.hosts] + [info.bridge] if info else []
    removed = netns.delete(prefix, names, links)
    # rmtree would reach through a leaked bind mount into whatever it shows.
    leaks = sshd.leaked_mounts(wd, set(names) | set(removed))
    if leaks:
        raise ClusterError(f"mounts of the cluster at {wd} are still present: {leaks}")
    if (wd / _MARKER).exists():
        shutil.rmtree(wd)
    elif wd.is_dir() and not any(wd.iterdir()):
        wd.rmdir()


def _holder(info: ClusterInfo, host: str) -> int:
    h = info.host(host)
    pid = _read_pid(info.hostdir(host) / "holder.pid")
    if pid is None or not netns.pid_in_netns(pid, h.netns) or not sshd.is_holder(pid):
        raise ClusterError(f"{host}: its namespaces are gone; is the cluster at {info.workdir} up?")
    return pid


def _read_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def run_on(
    info: ClusterInfo, host: str, argv: Sequence[str], **subprocess_kwargs: Any
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(argv)`` inside ``host``'s network, mount and UTS namespaces."""
    return sshd.run_in(_holder(info, host), argv, **subprocess_kwargs)


def host_pids(info: ClusterInfo, host: str) -> list[int]:
    """PIDs of every process in ``host``'s network namespace."""
    return netns.netns_pids(info.host(host).netns)


def sshd_pids(info: ClusterInfo, host: str) -> list[int]:
    """PIDs of ``host``'s sshd listener (found in its namespace, not trusted from a file)."""
    hostdir = info.hostdir(host)
    return [p for p in host_pids(info, host) if sshd.is_sshd(p, hostdir)]


def stop_sshd(info: ClusterInfo, host: str) -> None:
    """Stop ``host``'s sshd: new connections are refused, open sessions carry on."""
    netns.terminate(sshd_pids(info, host))
    (info.hostdir(host) / "sshd.pid").unlink(missing_ok=True)


def start_sshd(info: ClusterInfo, host: str) -> None:
    """Start ``host``'s sshd again and wait until it answers; no-op if it runs."""
    if sshd_pids(info, host):
        return
    h, hostdir = info.host(host), info.hostdir(host)
    [pid] = sshd.start_sshds([(_holder(info, host), hostdir)])
    sshd.wait_sshds({host: (h.ip, pid, hostdir)})


def link_down(info: ClusterInfo, host: str) -> None:
    """Unplug ``host``: its packets are dropped both ways until link_up."""
    netns.set_link(info.host(host).veth, up=False)


def link_up(info: ClusterInfo, host: str) -> None:
    """Plug ``host`` back in; returns once the link carries traffic."""
    netns.set_link(info.host(host).veth, up=True)


def status(workdir: PathLike = ".cluster") -> str:
    """A table of each host: address, namespace, sshd and link state."""
    info = load(workdir)
    existing, links = set(netns.list_netns()), netns.link_states()
    rows = [("host", "ip", "netns", "sshd", "link", "pids")]
    for h in info.hosts:
        alive = h.netns in existing
        answering = alive and sshd.banner(h.ip, timeout=1.0).startswith(b"SSH-")
        rows.append(
            (
                h.name,
                h.ip,
                h.netns if alive else "missing",
                "up" if answering else "down",
                links.get(h.veth, "missing").lower(),
                str(len(netns.netns_pids(h.netns))) if alive else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    head = f"cluster at {info.workdir}: {len(info.hosts)} hosts, {info.rate} each way"
    return "\n".join([head, *lines]) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m murder_dev.cluster", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build a cluster (replacing the one at --workdir)")
    p_up.add_argument("--hosts", type=int, required=True)
    p_up.add_argument("--rate", default="100mbit", help="tc rate per host and direction")
    p_up.add_argument("--subnet", type=int, default=0, help="hosts get 198.18.SUBNET.11, ...")
    p_down = sub.add_parser("down", help="remove the cluster and any leftovers")
    p_status = sub.add_parser("status", help="show each host's state")
    for p in (p_up, p_down, p_status):
        p.add_argument("--workdir", default=".cluster")
    for p in (p_up, p_down):
        p.add_argument("--prefix", default="mrd", help="names: PREFIX-h1, PREFIX-br0, ...")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            info = up(args.hosts, args.rate, args.workdir, prefix=args.prefix, subnet=args.subnet)
            print(status(info.workdir), end="")
            print(f"ssh -F {info.ssh_config} h1    inventory: {info.inventory}")
        elif args.command == "down":
            down(args.workdir, prefix=args.prefix)
        else:
            print(status(args.workdir), end="")
    except ClusterError as exc:
        print(f"cluster {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
