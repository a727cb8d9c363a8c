"""The running SHA-1 of each piece: its verdict must always be the verdict on what is on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from murder_core.hashing import PieceHasher
from murder_core.metainfo import write_torrent
from murder_core.storage import Storage

BLOCK = 16 * 1024
PIECE = 4 * BLOCK


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Storage, bytes]:
    data = os.urandom(2 * PIECE)
    (tmp_path / "payload.bin").write_bytes(data)
    meta = write_torrent(
        tmp_path / "payload.bin", "http://127.0.0.1:1/a", tmp_path / "p.torrent", piece_length=PIECE
    )
    (tmp_path / "dl").mkdir()
    storage = Storage.for_download(meta, tmp_path / "dl" / "payload.bin")
    yield storage, data
    storage.close()


def _write(storage: Storage, hasher: PieceHasher, index: int, begin: int, block: bytes) -> None:
    storage.write_block(index, begin, block)
    hasher.block_written(index, begin, block)


def _block(data: bytes, index: int, n: int) -> bytes:
    at = index * PIECE + n * BLOCK
    return data[at : at + BLOCK]


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [0, 2, 1, 3], [1, 0, 3, 2]])
def test_any_arrival_order_passes_good_data(parts: tuple[Storage, bytes], order: list[int]) -> None:
    storage, data = parts
    hasher = PieceHasher(storage)
    for n in order:
        _write(storage, hasher, 1, n * BLOCK, _block(data, 1, n))
    assert hasher.verify(1)
    assert storage.has(1)


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [0, 2, 1, 3]])
@pytest.mark.parametrize("bad", [0, 2, 3])
def test_one_bad_block_fails_in_any_order(
    parts: tuple[Storage, bytes], order: list[int], bad: int
) -> None:
    storage, data = parts
    hasher = PieceHasher(storage)
    for n in order:
        block = _block(data, 0, n)
        if n == bad:
            block = bytes([block[0] ^ 1]) + block[1:]
        _write(storage, hasher, 0, n * BLOCK, block)
    assert not hasher.verify(0)
    assert not storage.has(0)


def test_a_late_overlapping_write_is_judged_from_disk(parts: tuple[Storage, bytes]) -> None:
    """Good bytes were hashed from memory, then a duplicate with bad bytes landed on top of
    them: the piece on disk is wrong, so the verdict must be False."""
    storage, data = parts
    hasher = PieceHasher(storage)
    for n in range(4):
        _write(storage, hasher, 0, n * BLOCK, _block(data, 0, n))
    bad = bytes(BLOCK)
    _write(storage, hasher, 0, BLOCK, bad)
    assert not hasher.verify(0)


def test_a_late_overlapping_write_of_the_same_bytes_still_passes(
    parts: tuple[Storage, bytes],
) -> None:
    storage, data = parts
    hasher = PieceHasher(storage)
    for n in range(4):
        _write(storage, hasher, 0, n * BLOCK, _block(data, 0, n))
    _write(storage, hasher, 0, 0, _block(data, 0, 0))
    assert hasher.verify(0)


def test_a_failed_piece_starts_a_fresh_hash(parts: tuple[Storage, bytes]) -> None:
    storage, data = parts
    hasher = PieceHasher(storage)
    for n in range(4):
        _write(storage, hasher, 1, n * BLOCK, bytes(BLOCK) if n == 1 else _block(data, 1, n))
    assert not hasher.verify(1)
    for n in range(4):
        _write(storage, hasher, 1, n * BLOCK, _block(data, 1, n))
    assert hasher.verify(1)
