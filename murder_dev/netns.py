"""The network half of the dev cluster: namespaces, veths, a bridge, tc shaping.

Everything here shells out to iproute2 (``ip``, ``tc``). Names are derived from a
prefix so that teardown can find our leftovers by exact name and never touch
anything else on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from murder_core.errors import ClusterError

# Cluster N uses 198.18.N.0/24: RFC 2544 benchmarking space, never routed anywhere.
# Several clusters (a demo and the tests, say) can then share one machine.
NETWORK = "198.18"
PREFIX_LEN = 24
MAX_HOSTS = 200
HOST_IFNAME = "eth0"
IFNAMSIZ = 15  # kernel limit on interface names, without the NUL
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,9}")
_NAME_TAIL = r"-(?:h[0-9]{1,3}|v[0-9]{1,3}|br0)"
_ANY_NAME_RE = re.compile(_PREFIX_RE.pattern + _NAME_TAIL)
_RATE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)")
_RATE_FACTORS = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "bps": 8,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,
    "tbps": 8 * 10**12,
}
_TOOL_TIMEOUT = 60.0


def check_prefix(prefix: str) -> str:
    # "{prefix}-v200" must fit IFNAMSIZ, hence at most 10 characters.
    if not _PREFIX_RE.fullmatch(prefix):
        raise ClusterError(
            f"prefix must be 1-10 characters of [a-z0-9] starting with a letter, got {prefix!r}"
        )
    return prefix


def check_subnet(subnet: int) -> int:
    if isinstance(subnet, bool) or not isinstance(subnet, int) or not 0 <= subnet <= 255:
        raise ClusterError(
            f"subnet must be an integer from 0 to 255 (198.18.SUBNET.0/24), got {subnet!r}"
        )
    return subnet


def check_hosts(hosts: int) -> int:
    if isinstance(hosts, bool) or not isinstance(hosts, int) or not 1 <= hosts <= MAX_HOSTS:
        raise ClusterError(f"hosts must be an integer from 1 to {MAX_HOSTS}, got {hosts!r}")
    return hosts


def rate_bits(rate: str) -> int:
    """Bits per second of a tc rate such as ``100mbit`` (tc's units: k = 1000, bps = bytes)."""
    m = _RATE_RE.fullmatch(rate)
    if m is None or float(m.group(1)) <= 0:
        raise ClusterError(
            "rate must be a positive number followed by one of "
            f"{', '.join(_RATE_FACTORS)} (e.g. 100mbit), got {rate!r}"
        )
    bits = int(float(m.group(1)) * _RATE_FACTORS[m.group(2)])
    if not 8_000 <= bits <= 100 * 10**9:
        raise ClusterError(f"rate must be between 8kbit and 100gbit, got {rate!r}")
    return bits


def tbf_args(rate: str) -> list[str]:
    """tbf parameters for ``rate``.

    The bucket holds 10 ms of traffic but never less than one 64 KiB GSO segment,
    so veth's large segments pass whole; the queue holds another 20 ms, which is
    plenty at the sub-millisecond RTTs of a bridge and keeps TCP at the rate.
    """
    per_second = rate_bits(rate) // 8
    burst = max(per_second // 100, 64 * 1024)
    return ["rate", rate, "burst", str(burst), "latency", "20ms"]


def netns_name(prefix: str, index: int) -> str:
    return f"{prefix}-h{index}"


def veth_name(prefix: str, index: int) -> str:
    name = f"{prefix}-v{index}"
    assert len(name) <= IFNAMSIZ, name
    return name


def bridge_name(prefix: str) -> str:
    return f"{prefix}-br0"


def cidr(subnet: int = 0) -> str:
    return f"{NETWORK}.{subnet}.0/{PREFIX_LEN}"


def gateway_ip(subnet: int = 0) -> str:
    return f"{NETWORK}.{subnet}.1"


def host_ip(index: int, subnet: int = 0) -> str:
    return f"{NETWORK}.{subnet}.{10 + index}"


def run(
    argv: Sequence[str],
    *,
    stdin: Optional[str] = None,
    check: bool = True,
    new_session: bool = False,
) -> str:
    """Run an admin tool; unless ``check`` is off, failing is a ClusterError with its stderr."""
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_TOOL_TIMEOUT,
            check=False,
            start_new_session=new_session,
        )
    except FileNotFoundError as exc:
        raise ClusterError(f"{argv[0]} is not installed: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{' '.join(argv)} did not finish within {_TOOL_TIMEOUT:.0f} s") from exc
    if check and proc.returncode != 0:
        raise ClusterError(
            f"{' '.join(argv)} failed with exit code {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc.stdout


def _json(argv: Sequence[str]) -> list[dict[str, Any]]:
    out = run(argv).strip()
    # Older iproute2 prints nothing instead of [] when there is nothing to list.
    data = json.loads(out) if out else []
    if not isinstance(data, list):
        raise ClusterError(f"{' '.join(argv)} printed {out[:200]!r}, expected a JSON list")
    return [d for d in data if isinstance(d, dict)]


def list_netns() -> list[str]:
    return [str(d["name"]) for d in _json(["ip", "-j", "netns", "list"]) if "name" in d]


def list_links() -> list[str]:
    return list(link_states())


def ours(names: Iterable[str], prefix: str) -> list[str]:
    """The names among ``names`` that this prefix would have made, exactly."""
    pattern = re.compile(re.escape(prefix) + _NAME_TAIL)
    return sorted(n for n in names if pattern.fullmatch(n))


def any_cluster_name(name: str) -> bool:
    """Could some prefix have made ``name``? Guards against a doctored cluster.json."""
    return _ANY_NAME_RE.fullmatch(name) is not None


def addresses_in_subnet(subnet: int) -> list[tuple[str, str]]:
    """(interface, address) pairs in the root namespace that already use this subnet."""
    found = []
    for link in _json(["ip", "-j", "-4", "addr", "show"]):
        for addr in link.get("addr_info", []):
            local = str(addr.get("local", ""))
            if local.startswith(f"{NETWORK}.{subnet}."):
                found.append((str(link.get("ifname")), local))
    return found


def build(prefix: str, hosts: int, rate: str, subnet: int) -> None:
    """Create the bridge and, per host, a namespace wired to it and shaped to ``rate``."""
    bridge = bridge_name(prefix)
    shaping = " ".join(tbf_args(rate))
    root = [
        f"link add name {bridge} type bridge forward_delay 0 stp_state 0",
        f"addr add {gateway_ip(subnet)}/{PREFIX_LEN} dev {bridge}",
    ]
    for i in range(1, hosts + 1):
        ns, veth = netns_name(prefix, i), veth_name(prefix, i)
        root += [
            f"netns add {ns}",
            f"link add name {veth} type veth peer name {HOST_IFNAME} netns {ns}",
            f"link set {veth} master {bridge} up",
        ]
    root.append(f"link set {bridge} up")
    run(["ip", "-batch", "-"], stdin="\n".join(root) + "\n")
    # Downlink: what the bridge sends into the host leaves via the bridge-side veth.
    run(
        ["tc", "-batch", "-"],
        stdin="".join(
            f"qdisc replace dev {veth_name(prefix, i)} root tbf {shaping}\n"
            for i in range(1, hosts + 1)
        ),
    )
    _quiet_ipv6([bridge] + [veth_name(prefix, i) for i in range(1, hosts + 1)])
    for i in range(1, hosts + 1):
        ns = netns_name(prefix, i)
        run(
            ["ip", "-n", ns, "-batch", "-"],
            stdin=(
                "link set lo up\n"
                f"addr add {host_ip(i, subnet)}/{PREFIX_LEN} dev {HOST_IFNAME}\n"
                f"link set {HOST_IFNAME} up\n"
            ),
        )
        # Uplink: the host's own egress.
        run(
            ["tc", "-n", ns, "qdisc", "replace", "dev", HOST_IFNAME, "root", "tbf", *tbf_args(rate)]
        )


def _quiet_ipv6(ifnames: Iterable[str]) -> None:
    # No IPv6 on our links: no router advertisements, no link-local side door.
    for name in ifnames:
        knob = Path("/proc/sys/net/ipv6/conf", name, "disable_ipv6")
        if knob.exists():
            knob.write_text("1\n")


def link_states() -> dict[str, str]:
    """Interface name -> operstate (UP, DOWN, LOWERLAYERDOWN, ...) in the root namespace."""
    links = _json(["ip", "-j", "link", "show"])
    return {str(d["ifname"]): str(d.get("operstate", "UNKNOWN")) for d in links if "ifname" in d}


def set_link(veth: str, up: bool, timeout: float = 5.0) -> None:
    """Bring a bridge-side veth up or down; going up waits until it carries traffic."""
    run(["ip", "link", "set", veth, "up" if up else "down"])
    deadline = time.monotonic() + timeout
    while up and link_states().get(veth) != "UP":
        if time.monotonic() > deadline:
            raise ClusterError(f"{veth} not UP within {timeout:.0f} s: {link_states().get(veth)}")
        time.sleep(0.02)


def pids_by_netns(names: Iterable[str]) -> dict[str, list[int]]:
    """PIDs in each named namespace, from one pass over /proc (what ``ip netns pids`` does)."""
    wanted: dict[tuple[int, int], str] = {}
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(Path("/run/netns", name))
            wanted[(st.st_dev, st.st_ino)] = name
    found: dict[str, list[int]] = {name: [] for name in wanted.values()}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue  # exited meanwhile, or a zombie
            owner = wanted.get((st.st_dev, st.st_ino))
            if owner is not None:
                found[owner].append(int(entry))
    return {name: sorted(pids) for name, pids in found.items()}


def netns_pids(netns: str) -> list[int]:
    return pids_by_netns([netns]).get(netns, [])


def pid_in_netns(pid: int, netns: str) -> bool:
    """True if ``pid`` is alive and lives in ``netns`` (guards against reused PIDs)."""
    try:
        ns, own = os.stat(Path("/run/netns", netns)), os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    return (ns.st_dev, ns.st_ino) == (own.st_dev, own.st_ino)


def alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (our daemons' parent may never reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_dead(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds; return the PIDs still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    return left


def terminate(pids: Sequence[int], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left; raise if anything survives both."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        pids = wait_dead(pids, timeout)
        if not pids:
            return
    raise ClusterError(f"processes {pids} survived SIGKILL for {timeout:.0f} s")


def delete(prefix: str, extra_netns: Iterable[str], extra_links: Iterable[str]) -> list[str]:
    """Remove every namespace and link of ours: named by ``prefix`` or listed explicitly.

    Returns the namespaces it found and removed.
    """
    present = list_netns()
    wanted = {n for n in extra_netns if any_cluster_name(n)}
    names = sorted({n for n in present if n in wanted} | set(ours(present, prefix)))
    terminate(sorted({p for pids in pids_by_netns(names).values() for p in pids}))
    # -force: carry on past a failed line; whatever failed shows up in the check below.
    if names:
        run(
            ["ip", "-force", "-batch", "-"],
            stdin="".join(f"netns delete {n}\n" for n in names),
            check=False,
        )
    present_links = set(list_links())
    wanted = {n for n in extra_links if any_cluster_name(n)}
    links = sorted(set(ours(present_links, prefix)) | (wanted & present_links))
    # Ports before the bridge. A veth also vanishes by itself once its peer's namespace
    # is freed, so some of these lines may find nothing to delete.
    ordered = sorted(links, key=lambda n: n.endswith("-br0"))
    if links:
        run(
            ["ip", "-force", "-batch", "-"],
            stdin="".join(f"link delete {n}\n" for n in ordered),
            check=False,
        )
    deadline = time.monotonic() + 10.0
    while True:
        left_ns = [n for n in list_netns() if n in names]
        left_links = [n for n in list_links() if n in links]
        if not left_ns and not left_links:
            return names
        if time.monotonic() > deadline:
            raise ClusterError(f"namespaces {left_ns} and links {left_links} would not go away")
        time.sleep(0.05)
