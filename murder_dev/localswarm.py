"""A tracker, a seeder and N peers as separate processes on loopback.

Used by the loopback end-to-end tests, ``invoke swarm`` and the loopback benchmark.
Every process is started here, remembered by PID, and stopped here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def make_payload(path: Path, size: int, seed: int = 1) -> Path:
    """Write ``size`` pseudo-random bytes quickly (not compressible, not all zeros)."""
    block = hashlib.sha512(str(seed).encode()).digest() * 16384  # 1 MiB
    rotate = 0
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            chunk = block[rotate:] + block[:rotate]
            fh.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
            rotate = (rotate + 4099) % len(block)
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def murder_cmd(pyz: Path | None = None, python: str | None = None) -> list[str]:
    """How to run murder: the zipapp in isolated mode, or the source tree."""
    if pyz:
        return [python or sys.executable, "-I", str(pyz)]
    return [python or sys.executable, "-m", "murder_core"]


def child_env(pyz: Path | None) -> dict[str, str]:
    # The zipapp must run on its own: never let it see the source tree.
    return dict(os.environ) if pyz else dict(os.environ, PYTHONPATH=str(ROOT))


@dataclass
class LocalSwarm:
    workdir: Path
    payload: Path
    pyz: Path | None = None
    python: str | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tracker_port: int = 0
    torrent: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.torrent = self.workdir / (self.payload.name + ".torrent")

    def _spawn(self, name: str, args: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return self.spawn_program(
            name, [*murder_cmd(self.pyz, self.python), *args], env=child_env(self.pyz), **kw
        )

    def spawn_program(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        **kw: object,
    ) -> subprocess.Popen[bytes]:
        """Start any program (aria2c, a libtorrent script) as a member of this swarm.

        Its output goes to ``NAME.log`` in the workdir, and ``stop``/``close`` end it.
        """
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            **kw,  # type: ignore[call-overload]
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_tracker(self) -> int:
        self.tracker_port = free_port()
        allowed = self.workdir / "allowed"
        allowed.mkdir(exist_ok=True)
        self._spawn(
            "tracker",
            [
                "tracker",
                "--port",
                str(self.tracker_port),
                "--bind",
                "127.0.0.1",
                "--dfile",
                str(self.workdir / "tracker.state"),
                "--allowed-dir",
                str(allowed),
                "--interval",
                "2",
            ],
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(
                    f"http://127.0.0.1:{self.tracker_port}/stats.json", timeout=1
                )
                return self.tracker_port
            except OSError:
                if self.procs["tracker"].poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"tracker did not come up; see {self.workdir / 'tracker.log'}")

    def make_torrent(self, piece_size: int | None = None) -> Path:
        args = [
            "make-torrent",
            str(self.payload),
            "--tracker",
            f"127.0.0.1:{self.tracker_port}",
            "-o",
            str(self.torrent),
        ]
        if piece_size:
            args += ["--piece-size", str(piece_size)]
        subprocess.run(
            [*murder_cmd(self.pyz, self.python), *args],
            check=True,
            capture_output=True,
            env=child_env(self.pyz),
            timeout=600,
        )
        (self.workdir / "allowed" / self.torrent.name).write_bytes(self.torrent.read_bytes())
        return self.torrent

    def start_seeder(self, *extra: str) -> subprocess.Popen[bytes]:
        return self._spawn(
            "seeder",
            [
                "seed",
                str(self.torrent),
                str(self.payload),
                "--ip",
                "127.0.0.1",
                "--bind",
                "127.0.0.1",
                "--minport",
                "20000",
                "--maxport",
                "29999",
                *extra,
            ],
        )

    def start_peer(self, name: str, target: Path, *extra: str) -> subprocess.Popen[bytes]:
        return self._spawn(
            name,
            [
                "peer",
                str(self.torrent),
                str(target),
                "--ip",
                "127.0.0.1",
                "--bind",
                "127.0.0.1",
                "--minport",
                "30000",
                "--maxport",
                "39999",
                "--foreground",
                *extra,
            ],
        )

    def stats(self, path: str = "/stats.json") -> dict[str, Any]:
        """The tracker's ``/stats.json`` (``path`` adds a deploy's ``?auth=`` token)."""
        url = f"http://127.0.0.1:{self.tracker_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            stats: dict[str, Any] = json.loads(resp.read())
        return stats

    def wait_for_seeders(
        self, count: int = 1, timeout: float = 60, stats_path: str = "/stats.json"
    ) -> None:
        """Wait until the tracker has heard ``count`` complete peers (ours or anyone's).

        A peer started before then could find nobody to download from; raises
        RuntimeError (with the seeder logs) if it does not happen in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            torrents = self.stats(stats_path).get("torrents", {}).values()
            if sum(int(t.get("seeders", 0)) for t in torrents) >= count:
                return
            if time.monotonic() > deadline:
                logs = {n: self.log(n)[-1000:] for n in self.procs if n != "tracker"}
                raise RuntimeError(f"no {count} seeder(s) at the tracker in {timeout} s: {logs}")
            time.sleep(0.1)

    def wait(self, names: Sequence[str], timeout: float) -> dict[str, int | None]:
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for name in names:
            try:
                codes[name] = self.procs[name].wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[name] = None
        return codes

    def stop(self, name: str, timeout: float = 10) -> int | None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for name in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(name, timeout=5)

    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
