"""Looking inside the local cluster's hosts, for the deploy and fault tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List

from conftest import need, need_program, need_root

DEST = "/srv/murder/app"

_TREE_SHA = r"""
import hashlib, json, os, sys
root = sys.argv[1]
out = {}
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        with open(p, "rb") as fh:
            out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
print(json.dumps(out))
"""


def need_cluster_tools() -> None:
    need(sys.platform.startswith("linux"), "network namespaces exist only on Linux")
    need_root()
    for tool in ("ip", "tc", "unshare", "nsenter", "ssh-keygen", "mount"):
        need_program(tool)
    need(Path("/usr/sbin/sshd").exists(), "needs /usr/sbin/sshd (Debian package openssh-server)")


def local_tree(path: Path) -> Dict[str, str]:
    """sha256 of every file under ``path``, as a deploy ships it (no ``.git*``)."""
    out = {}
    for p in path.rglob("*"):
        rel = p.relative_to(path)
        if p.is_file() and not any(part.startswith(".git") for part in rel.parts):
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class HostView:
    """Commands and file checks run inside the cluster's hosts (``self.info``)."""

    info: Any

    def sh(self, host: str, script: str) -> str:
        from murder_dev import cluster

        out = cluster.run_on(
            self.info, host, ["sh", "-c", script], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, f"{host}: {script!r}: {out.stderr}"
        return str(out.stdout)

    def tree(self, host: str, path: str) -> Dict[str, str]:
        """sha256 of every file under ``path`` on ``host``."""
        from murder_dev import cluster

        out = cluster.run_on(
            self.info,
            host,
            ["python3", "-c", _TREE_SHA, path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def current(self, host: str, dest: str = DEST) -> str:
        return self.sh(host, f"readlink {dest}/current || true").strip()

    def murder_pids(self) -> Dict[str, Dict[int, str]]:
        """Every process on any host whose command line names murder.pyz: pid -> command."""
        from murder_dev import cluster

        found: Dict[str, Dict[int, str]] = {}
        for host in [h.name for h in self.info.hosts]:
            for pid in cluster.host_pids(self.info, host):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if b"murder.pyz" in cmd:
                    found.setdefault(host, {})[pid] = cmd.decode(errors="replace")
        return found

    def murder_processes(self) -> Dict[str, List[str]]:
        """The command lines of ``murder_pids``, per host."""
        return {host: list(procs.values()) for host, procs in self.murder_pids().items()}

    def kill_leftovers(self) -> None:
        """SIGKILL, by pid, what a failed test's deploy left running on the hosts, so the
        next test starts clean (only murder.pyz processes inside our own namespaces)."""
        for procs in self.murder_pids().values():
            for pid in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
