"""A daemon thread that does one round of work every few seconds until stopped."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Optional


class Periodic(ABC):
    """Calls :meth:`tick` every ``interval`` seconds from start() until stop().

    stop() wakes the thread at once and waits for the round in progress, at most
    ``join_timeout`` seconds: a round blocked on a host must not hold the caller longer.
    """

    def __init__(self, name: str, interval: float, join_timeout: float) -> None:
        self.name = name
        self.interval = interval
        self.join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @abstractmethod
    def tick(self) -> None:
        """One round of the work; subclasses say what."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()
