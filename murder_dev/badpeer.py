"""A hostile peer for fault tests: joins the swarm through the tracker as a seeder and
answers every request with garbage of the right length.

Run: ``python -m murder_dev.badpeer TORRENT --ip IP --port PORT``. It prints one line
per accepted connection, so a test can tell whether a banned peer was dialled again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from murder_core import announce
from murder_core.metainfo import read_metainfo
from murder_core.wire import messages as m
from murder_core.wire.connection import CLOSED, NEED_DATA, PeerConnection
from murder_core.wire.framing import encode_piece_header


async def _serve(args: argparse.Namespace) -> None:
    meta = read_metainfo(args.torrent)
    peer_id = b"-XX0000-" + os.urandom(6).hex().encode()
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        print(f"connection {connections} from {writer.get_extra_info('peername')}", flush=True)
        conn = PeerConnection(meta.info_hash.raw, peer_id, meta.num_pieces)
        writer.write(conn.initiate())
        try:
            while data := await reader.read(65536):
                conn.receive_data(data)
                while True:
                    event = conn.next_event()
                    if event is NEED_DATA or event is CLOSED:
                        break
                    if isinstance(event, m.Handshake):
                        full = bytearray(b"\xff" * ((meta.num_pieces + 7) // 8))
                        spare = len(full) * 8 - meta.num_pieces
                        if spare:
                            full[-1] &= (0xFF << spare) & 0xFF
                        writer.write(conn.send(m.Bitfield(bytes(full))))
                    elif isinstance(event, m.Interested):
                        writer.write(conn.send(m.Unchoke()))
                    elif isinstance(event, m.Request):
                        writer.write(encode_piece_header(event.index, event.begin, event.length))
                        writer.write(os.urandom(event.length))
                await writer.drain()
        except Exception as exc:
            print(f"connection closed: {exc}", flush=True)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, args.ip, args.port)
    url = announce.announce_query(
        meta.announce,
        info_hash=meta.info_hash.raw,
        peer_id=peer_id,
        port=args.port,
        uploaded=0,
        downloaded=0,
        left=0,
        event="started",
        ip=args.ip,
    )
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, announce.fetch, url, 10.0)
    print("announced", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.wait_for(stop.wait(), timeout=args.lifetime)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("torrent")
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=300, help="exit after this long")
    args = parser.parse_args()
    with contextlib.suppress(asyncio.TimeoutError):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
