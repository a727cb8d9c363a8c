"""Run ``murder.pyz`` with every block it sends recorded, for the cluster benchmark.

``python3 bench_seedhook.py PYZ EVENTS.json ARGS...`` runs ``murder ARGS...`` from the
zipapp exactly as a host would, except that each ``PeerLink.send_piece`` call is noted
as (monotonic time, piece, offset, length). On exit the list goes to EVENTS.json, from
which the benchmark learns when every piece had left the seeder once and what it sent
twice before that. One tuple per block costs nothing next to the send itself.

Runs on the benchmark's hosts with their python3: stdlib only, and murder_core is
imported from the zipapp given, never from the source tree.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3:
        print("usage: bench_seedhook.py PYZ EVENTS.json MURDER-ARGS...", file=sys.stderr)
        return 2
    pyz, out, rest = args[0], args[1], args[2:]
    sys.path.insert(0, pyz)
    from murder_core import cli
    from murder_core.peer import PeerLink

    events: list[tuple[float, int, int, int]] = []
    to: list[str] = []  # who each block went to, for whoever reads the file later
    original = PeerLink.send_piece

    def send_piece(self: Any, storage: Any, index: int, begin: int, length: int) -> None:
        if self.transport is not None and not self.closed:
            events.append((time.monotonic(), index, begin, length))
            to.append(self.remote)
        original(self, storage, index, begin, length)

    PeerLink.send_piece = send_piece  # type: ignore[method-assign]
    try:
        return cli.main(rest)
    finally:
        tmp = f"{out}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump({"pid": os.getpid(), "events": events, "to": to}, fh)
        os.replace(tmp, out)


if __name__ == "__main__":
    sys.exit(main())
