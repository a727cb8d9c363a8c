"""The end of a deploy: one row per host, as a table for people and JSON for machines."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

OK = "ok"
FAILED = "failed"


@dataclass
class HostReport:
    host: str
    status: str = "pending"
    seconds: Optional[float] = None
    mbps: Optional[float] = None
    error: Optional[str] = None

    def fail(self, error: str) -> None:
        """The first error is the cause; later ones (teardown) only add noise."""
        if self.status != FAILED:
            self.status = FAILED
            self.error = error


@dataclass
class DeployReport:
    """What ``run_deploy`` returns and ``--json`` writes."""

    tag: str
    hosts: List[HostReport] = field(default_factory=list)
    info_hash: Optional[str] = None
    payload_bytes: Optional[int] = None
    seconds: float = 0.0
    error: Optional[str] = None
    teardown_problems: List[str] = field(default_factory=list)
    ssh_connections: int = 0
    #: Seconds from the start of the deploy to the end of each stage reached, in order.
    stages: Dict[str, float] = field(default_factory=dict)

    def host(self, name: str) -> HostReport:
        for row in self.hosts:
            if row.host == name:
                return row
        row = HostReport(name)
        self.hosts.append(row)
        return row

    @property
    def failed_hosts(self) -> List[str]:
        return [h.host for h in self.hosts if h.status != OK]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed_hosts and bool(self.hosts)

    def fail_pending(self, error: str) -> None:
        """A stage every host depends on failed: say so on each host not yet done."""
        for row in self.hosts:
            if row.status not in (OK, FAILED):
                row.fail(error)

    def to_json(self) -> Dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["failed_hosts"] = self.failed_hosts
        return data

    def write_json(self, path: str | Path) -> None:
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        tmp.replace(target)


def _cell(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(report: DeployReport) -> str:
    """A fixed-width table; errors go last so long messages don't break the columns."""
    header = ("host", "status", "seconds", "MB/s", "error")
    rows = [
        (r.host, r.status, _cell(r.seconds, 1), _cell(r.mbps, 1), r.error or "")
        for r in report.hosts
    ]
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        cells = [
            str(row[i]).ljust(widths[i]) if i < 2 else str(row[i]).rjust(widths[i])
            for i in range(4)
        ]
        lines.append("  ".join([*cells, str(row[4])]).rstrip())
    done = sum(1 for r in report.hosts if r.status == OK)
    summary = f"{done}/{len(report.hosts)} hosts ok in {report.seconds:.1f}s"
    if report.error:
        summary += f"; deploy failed: {report.error}"
    elif report.failed_hosts:
        summary += f"; failed: {', '.join(report.failed_hosts)}"
    lines.append(summary)
    lines.extend(f"teardown: {p}" for p in report.teardown_problems)
    return "\n".join(lines)
