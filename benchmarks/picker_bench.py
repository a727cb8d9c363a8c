"""Microbenchmark for PiecePicker (not a test): blocks picked per second.

Simulates one downloader fetching 4,000 pieces x 64 blocks (1 MiB pieces) from
8 peers. Each round every peer tops its pipeline up with ``next_requests`` and
then delivers its ``--batch`` oldest outstanding blocks, which runs
``block_received`` and, for each finished piece, ``piece_passed``. So the figure
covers the whole per-block bookkeeping the driver does, not just the pick.
``--batch 1`` is the driver's worst case: one top-up call per received block.

    python -m benchmarks.picker_bench [--seeds N] [--pipeline N] [--batch N] [--repeat N]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque
from collections.abc import Hashable

from murder_core.picker import BLOCK_SIZE, Block, PiecePicker

NUM_PIECES = 4000
BLOCKS_PER_PIECE = 64
NUM_PEERS = 8


def run(seeds: int, pipeline: int, batch: int, seed: int) -> tuple[int, float]:
    rng = random.Random(seed)
    piece_length = BLOCKS_PER_PIECE * BLOCK_SIZE
    picker = PiecePicker(
        NUM_PIECES, piece_length, NUM_PIECES * piece_length, rng=random.Random(seed)
    )
    peers = list(range(NUM_PEERS))
    nbytes = (NUM_PIECES + 7) // 8
    for peer in peers:
        picker.add_peer(peer)
        if peer < seeds:
            picker.peer_has_all(peer)
        else:
            # Half the pieces each, so the bucket search has real work to do.
            bits = bytearray(rng.getrandbits(8) for _ in range(nbytes))
            bits[-1] &= (0xFF << (8 * nbytes - NUM_PIECES)) & 0xFF
            picker.peer_bitfield(peer, bytes(bits))
    in_flight: dict[Hashable, deque[Block]] = {peer: deque() for peer in peers}
    picked = 0
    start = time.perf_counter()
    while not picker.complete:
        progressed = False
        for peer in peers:
            queue = in_flight[peer]
            blocks = picker.next_requests(peer, pipeline - picker.outstanding(peer))
            picked += len(blocks)
            queue.extend(blocks)
            for _ in range(min(batch, len(queue))):
                block = queue.popleft()
                done, cancels = picker.block_received(peer, block)
                for other, cancelled in cancels:
                    in_flight[other].remove(cancelled)
                if done:
                    picker.piece_passed(block[0])
                progressed = True
        if not progressed:
            break  # pieces no connected peer has
    return picked, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="peers that have everything")
    parser.add_argument("--pipeline", type=int, default=32, help="requests in flight per peer")
    parser.add_argument("--batch", type=int, default=1, help="blocks delivered per top-up")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for i in range(args.repeat):
        picked, elapsed = run(args.seeds, args.pipeline, args.batch, seed=i)
        print(
            f"seeds={args.seeds} pipeline={args.pipeline} batch={args.batch}:"
            f" {picked} blocks in {elapsed:.3f} s"
            f" = {picked / elapsed:,.0f} blocks/s"
        )


if __name__ == "__main__":
    main()
