"""The tracker: pure swarm bookkeeping (``swarm``), its wire format (``requests``),
on-disk state (``state``) and the HTTP server around them (``server``)."""

from __future__ import annotations

from .server import TrackerConfig, TrackerServer, run_tracker
from .swarm import Swarm

__all__ = ["Swarm", "TrackerConfig", "TrackerServer", "run_tracker"]
