"""Progress for people: a tqdm bar on a terminal, a one-line status otherwise (logs, SSH)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, TextIO


def human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


class Progress:
    def __init__(
        self, name: str, *, quiet: bool = False, every: float = 5.0, stream: TextIO | None = None
    ) -> None:
        self.name = name
        self.quiet = quiet
        self.every = every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._bar: Any = None
        self._phase: Any = None
        self._last_line = 0.0
        self._last_done = 0
        self._last_up = 0
        self._last_t = time.monotonic()
        self._finished = False

    # -- hashing what is on disk ---------------------------------------------------------
    def phase(self, label: str, total: int) -> None:
        if self.quiet or not self.tty:
            self._emit(f"{label} {self.name} ({human(total)})")
            return
        from tqdm import tqdm

        self._phase = tqdm(total=total, desc=label, unit="B", unit_scale=True, file=self.stream)

    def advance(self, nbytes: int) -> None:
        if self._phase is not None:
            self._phase.update(nbytes)

    def end_phase(self) -> None:
        if self._phase is not None:
            self._phase.close()
            self._phase = None

    # -- the transfer --------------------------------------------------------------------
    def update(self, *, done: int, total: int, uploaded: int, peers: int) -> None:
        if self.quiet or self._finished:
            return
        now = time.monotonic()
        if self.tty:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=total, desc=self.name, unit="B", unit_scale=True, file=self.stream
                )
            self._bar.update(done - self._bar.n)
            self._bar.set_postfix(peers=peers, up=human(uploaded), refresh=False)
            return
        if now - self._last_line < self.every:
            return
        span = max(now - self._last_t, 1e-6)
        down_rate = (done - self._last_done) / span
        up_rate = (uploaded - self._last_up) / span
        pct = 100.0 * done / total if total else 100.0
        self._emit(
            f"{self.name}: {pct:5.1f}% {human(done)}/{human(total)} "
            f"down {human(down_rate)}/s up {human(up_rate)}/s peers {peers}"
        )
        self._last_line, self._last_t, self._last_done, self._last_up = now, now, done, uploaded

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.update(self._bar.total - self._bar.n)
        self.close()
        self._finished = True
        self._emit(f"{self.name}: complete and verified")

    def note(self, line: str) -> None:
        self._emit(line)

    def _emit(self, line: str) -> None:
        if not self.quiet:
            # stderr may be gone (parent exited): progress is best effort.
            with contextlib.suppress(OSError, ValueError):
                print(f"murder: {line}", file=self.stream, flush=True)

    def close(self) -> None:
        for bar in (self._bar, self._phase):
            if bar is not None:
                bar.close()
        self._bar = self._phase = None
