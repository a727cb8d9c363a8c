"""hosts.ini (Ansible's INI inventory format) -> the tracker, the seeder and the peers.

Teams already keep their fleets in Ansible inventories, so we read that format instead
of inventing one. Only the subset a deploy needs: groups, ``[group:vars]``,
``[group:children]`` and the connection variables ``ansible_host``, ``ansible_port``,
``ansible_user`` and ``ansible_ssh_private_key_file`` (plus our own ``murder_ip``, the
address other hosts reach this one on). Other variables are kept but not interpreted.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from murder_core.errors import InventoryError

MAX_INVENTORY_BYTES = 4 * 1024 * 1024
MAX_HOSTS = 10_000

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_GROUP_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Host:
    """One machine of the inventory, as ssh will reach it."""

    name: str
    address: Optional[str] = None
    port: Optional[int] = None
    user: Optional[str] = None
    key_file: Optional[str] = None
    ip: Optional[str] = None
    variables: Tuple[Tuple[str, str], ...] = ()

    @property
    def known_ip(self) -> Optional[str]:
        """The address peers announce: ``murder_ip``, else ``ansible_host`` if it is an IP."""
        if self.ip is not None:
            return self.ip
        if self.address is not None and _is_ip(self.address):
            return self.address
        if _is_ip(self.name):
            return self.name
        return None


@dataclass(frozen=True)
class Inventory:
    """The roles of a deploy. The seeder and tracker may also be peers."""

    tracker: Host
    seeder: Host
    peers: Tuple[Host, ...]
    path: str = "<string>"

    @property
    def all_hosts(self) -> Tuple[Host, ...]:
        """Every distinct host: tracker, seeder, then peers, each once."""
        seen: Dict[str, Host] = {}
        for host in (self.tracker, self.seeder, *self.peers):
            seen.setdefault(host.name, host)
        return tuple(seen.values())

    def host(self, name: str) -> Host:
        for host in self.all_hosts:
            if host.name == name:
                return host
        raise InventoryError(f"no host named {name!r} in the inventory", path=self.path, line=0)


@dataclass
class _Group:
    line: int
    hosts: List[str] = field(default_factory=list)
    host_lines: Dict[str, int] = field(default_factory=dict)
    children: List[str] = field(default_factory=list)
    variables: Dict[str, str] = field(default_factory=dict)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def load_inventory(path: str | Path) -> Inventory:
    """Read and resolve an inventory file; errors name the file and the line."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_INVENTORY_BYTES + 1)
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {str(p)!r}: {exc.strerror}") from exc
    if len(data) > MAX_INVENTORY_BYTES:
        raise InventoryError(
            f"inventory {str(p)!r} is larger than {MAX_INVENTORY_BYTES} bytes", path=str(p), line=1
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InventoryError("not valid UTF-8", path=str(p), line=line) from exc
    return parse_inventory(text, path=str(p))


def _split_vars(words: List[str], path: str, lineno: int) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise InventoryError(f"expected key=value, got {word!r}", path=path, line=lineno)
        if not _VAR_RE.match(key):
            raise InventoryError(f"bad variable name {key!r}", path=path, line=lineno)
        out[key] = value
    return out


def parse_inventory(text: str, path: str = "<string>") -> Inventory:
    """Parse Ansible INI text into an :class:`Inventory` (see the module docstring)."""
    groups: Dict[str, _Group] = {}
    host_vars: Dict[str, Dict[str, str]] = {}
    host_first_line: Dict[str, int] = {}
    section: Optional[Tuple[str, str]] = None  # (group, kind) kind in "", "vars", "children"
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise InventoryError(f"unclosed section header {line!r}", path=path, line=lineno)
            name, _, kind = line[1:-1].strip().partition(":")
            if not _GROUP_RE.match(name):
                raise InventoryError(f"bad group name {name!r}", path=path, line=lineno)
            if kind not in ("", "vars", "children"):
                raise InventoryError(
                    f"unknown section kind {kind!r} (expected vars or children)",
                    path=path,
                    line=lineno,
                )
            groups.setdefault(name, _Group(line=lineno))
            section = (name, kind)
            continue
        if section is None:
            raise InventoryError(
                f"host line before any [group] header: {line!r}", path=path, line=lineno
            )
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InventoryError(f"cannot split {line!r}: {exc}", path=path, line=lineno) from exc
        if not words:
            continue
        group = groups[section[0]]
        if section[1] == "vars":
            group.variables.update(_split_vars(words, path, lineno))
            continue
        name = words[0]
        if "[" in name or not _NAME_RE.match(name):
            raise InventoryError(
                f"bad host name {name!r} (host ranges are not supported)", path=path, line=lineno
            )
        if section[1] == "children":
            if len(words) != 1:
                raise InventoryError(
                    f"a [{section[0]}:children] line names one group, got {line!r}",
                    path=path,
                    line=lineno,
                )
            group.children.append(name)
            continue
        if name in group.host_lines:
            raise InventoryError(
                f"host {name!r} listed twice in [{section[0]}] "
                f"(first on line {group.host_lines[name]})",
                path=path,
                line=lineno,
            )
        group.hosts.append(name)
        group.host_lines[name] = lineno
        host_first_line.setdefault(name, lineno)
        merged = host_vars.setdefault(name, {})
        merged.update(_split_vars(words[1:], path, lineno))
        if len(host_first_line) > MAX_HOSTS:
            raise InventoryError(f"more than {MAX_HOSTS} hosts", path=path, line=lineno)

    members = _resolve_members(groups, path)
    hosts = _build_hosts(groups, members, host_vars, host_first_line, path)

    def role(name: str) -> Optional[Host]:
        names = members.get(name, [])
        if not names:
            return None
        if len(names) > 1:
            group = groups[name]
            second = group.host_lines.get(names[1], group.line)
            raise InventoryError(
                f"[{name}] must list exactly one host, got {len(names)} ({', '.join(names)})",
                path=path,
                line=second,
            )
        return hosts[names[0]]

    peers = tuple(hosts[n] for n in members.get("peers", []))
    if not peers:
        where = groups["peers"].line if "peers" in groups else 1
        raise InventoryError("the [peers] group is missing or empty", path=path, line=where)
    tracker = role("tracker") or peers[0]
    seeder = role("seeder") or peers[0]
    return Inventory(tracker=tracker, seeder=seeder, peers=peers, path=path)


def _resolve_members(groups: Mapping[str, _Group], path: str) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}

    def visit(name: str, stack: Tuple[str, ...]) -> List[str]:
        if name in out:
            return out[name]
        group = groups[name]
        names = list(group.hosts)
        for child in group.children:
            if child not in groups:
                raise InventoryError(
                    f"[{name}:children] names unknown group {child!r}", path=path, line=group.line
                )
            if child in stack:
                raise InventoryError(
                    f"group cycle: {' -> '.join((*stack, child))}", path=path, line=group.line
                )
            for host in visit(child, (*stack, child)):
                if host not in names:
                    names.append(host)
        out[name] = names
        return names

    for name in groups:
        visit(name, (name,))
    return out


def _build_hosts(
    groups: Mapping[str, _Group],
    members: Mapping[str, List[str]],
    host_vars: Mapping[str, Dict[str, str]],
    first_line: Mapping[str, int],
    path: str,
) -> Dict[str, Host]:
    out: Dict[str, Host] = {}
    for name, own in host_vars.items():
        merged: Dict[str, str] = dict(groups["all"].variables) if "all" in groups else {}
        for group_name, names in members.items():
            if name in names and group_name != "all":
                merged.update(groups[group_name].variables)
        merged.update(own)
        line = first_line[name]
        port: Optional[int] = None
        if "ansible_port" in merged:
            raw = merged["ansible_port"]
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise InventoryError(
                    f"ansible_port must be an integer in 1..65535, got {raw!r}",
                    path=path,
                    line=line,
                )
            port = int(raw)
        ip = merged.get("murder_ip")
        if ip is not None and not _is_ip(ip):
            raise InventoryError(
                f"murder_ip must be an IP address, got {ip!r}", path=path, line=line
            )
        address = merged.get("ansible_host")
        if address is not None and not _NAME_RE.match(address):
            raise InventoryError(f"bad ansible_host {address!r}", path=path, line=line)
        out[name] = Host(
            name=name,
            address=address,
            port=port,
            user=merged.get("ansible_user"),
            key_file=merged.get("ansible_ssh_private_key_file"),
            ip=ip,
            variables=tuple(sorted(merged.items())),
        )
    return out
