"""A banned liar's bytes do not stay behind in pieces it never finished.

The remotes here are the test, speaking the wire through PeerConnection over real
sockets to one downloading Session (see wirepeer.py): first a liar that sends garbage,
then an honest seed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from wirepeer import WAIT, remote_conn, seed_to, serve_session, small_torrent, until

from murder_core.session import REQUEST_UNIT, Session, SessionConfig
from murder_core.storage import Storage
from murder_core.wire import messages as m

PIECE = 2 * REQUEST_UNIT
LIAR_ID = b"-MU0001-00000000liar"
HONEST_ID = b"-MU0001-0000000000ok"


def test_banning_a_liar_refetches_the_pieces_it_half_filled(tmp_path: Path) -> None:
    """The liar sends garbage for the first half of piece 0 and never the second, and
    garbage for all of piece 1. Piece 1 fails with the liar as its only source, so the
    liar is banned. Piece 0 must then be fetched whole from the honest seed: keeping the
    liar's half, it would fail again with only the honest seed to blame, the seed would
    be banned too, and the download would never end."""
    meta, payload = small_torrent(tmp_path, pieces=2, piece_length=PIECE)
    data = payload.read_bytes()
    (tmp_path / "dl").mkdir()
    storage = Storage.for_download(meta, tmp_path / "dl" / "payload.bin")
    session = Session(meta, storage, b"-MU0001-000000000000", SessionConfig(super_seed=False))

    async def lie(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = remote_conn(session, LIAR_ID)
        writer.write(conn.initiate())
        await until(conn, reader, m.Handshake)
        writer.write(conn.send(m.HaveAll()))
        await until(conn, reader, m.Interested)
        writer.write(conn.send(m.Unchoke()))
        asked: set[tuple[int, int]] = set()
        while len(asked) < 4:  # both units of both pieces
            r = await until(conn, reader, m.Request)
            assert isinstance(r, m.Request)
            asked.add((r.index, r.begin))
        garbage = bytes(REQUEST_UNIT)
        for index, begin in ((0, 0), (1, 0), (1, REQUEST_UNIT)):
            writer.write(conn.send(m.Piece(index, begin, garbage)))
        deadline = asyncio.get_running_loop().time() + WAIT
        while LIAR_ID not in session.banned_ids:
            assert asyncio.get_running_loop().time() < deadline, "the liar was never banned"
            await asyncio.sleep(0.01)
        writer.close()

    async def seed(port: int) -> list[m.Request]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:  # fails if the session hangs up on the honest seed
            return await seed_to(remote_conn(session, HONEST_ID), reader, writer, data, session)
        finally:
            writer.close()

    async def body(port: int) -> list[m.Request]:
        await lie(port)
        return await seed(port)

    try:
        served = serve_session(session, body)
        storage.finalize()
        assert storage.path.read_bytes() == data
    finally:
        storage.close()
    assert session.banned_ids == {LIAR_ID}
    assert session.stats.hash_failures == 1  # piece 1; piece 0 was never checked with lies in
    # Piece 0 came whole from the honest seed, its first half included.
    assert {(r.index, r.begin) for r in served} == {
        (0, 0),
        (0, REQUEST_UNIT),
        (1, 0),
        (1, REQUEST_UNIT),
    }
