from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import need

from murder_core.errors import PayloadMismatchError, StorageError
from murder_core.metainfo import Metainfo, make_metainfo
from murder_core.storage import MAX_READ, Storage

PIECE = 32 * 1024
BLOCK = 16 * 1024
ANNOUNCE = "127.0.0.1:6969"


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def single(tmp_path: Path, size: int = 5 * PIECE + 1000) -> tuple[Metainfo, bytes]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    data = payload(size)
    (src / "release.tgz").write_bytes(data)
    _, meta = make_metainfo(src / "release.tgz", ANNOUNCE, piece_length=PIECE)
    return meta, data


MULTI = {"a.txt": 10000, "empty": 0, "sub/b.bin": 50000, "sub/deeper/c": 7, "z": 3 * BLOCK}


def multi(tmp_path: Path, sizes: dict[str, int] = MULTI) -> tuple[Metainfo, bytes]:
    root = tmp_path / "src" / "release"
    for i, (name, size) in enumerate(sizes.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload(size, seed=i + 1))
    _, meta = make_metainfo(root, ANNOUNCE, piece_length=PIECE)
    data = b"".join((root.joinpath(*f.path)).read_bytes() for f in meta.files)
    return meta, data


def blocks(meta: Metainfo, data: bytes, index: int) -> list[tuple[int, bytes]]:
    start = index * meta.piece_length
    size = meta.piece_size(index)
    return [(b, data[start + b : start + min(b + BLOCK, size)]) for b in range(0, size, BLOCK)]


def fetch(storage: Storage, meta: Metainfo, data: bytes, pieces: range | list[int]) -> None:
    for index in pieces:
        for begin, chunk in blocks(meta, data, index):
            storage.write_block(index, begin, chunk)
        assert storage.verify_piece(index)


def test_single_file_round_trip(tmp_path: Path) -> None:
    meta, data = single(tmp_path)
    target = tmp_path / "dl" / "release.tgz"
    target.parent.mkdir()
    with Storage.for_download(meta, target) as storage:
        part = tmp_path / "dl" / "release.tgz.part"
        assert storage.path == part
        assert part.stat().st_size == len(data)  # preallocated to full size
        order = list(range(meta.num_pieces))
        random.Random(5).shuffle(order)
        fetch(storage, meta, data, order)
        assert storage.complete
        assert storage.bitfield() == b"\xfc"  # 6 pieces, spare bits zero
        assert storage.finalize() == target
        assert storage.finalized
        assert not part.exists()
        assert target.read_bytes() == data
        # Still open for seeding after the rename.
        assert storage.read_block(5, 0, 1000) == data[5 * PIECE :]
        assert storage.finalize() == target


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_background_flush_is_done_before_finalize_and_close(tmp_path: Path, kind: str) -> None:
    """The flush thread holds our descriptors: finalize and close wait for it."""
    meta, data = (single if kind == "single" else multi)(tmp_path)
    target = tmp_path / "dl" / meta.name
    target.parent.mkdir()
    storage = Storage.for_download(meta, target)
    try:
        half = meta.num_pieces // 2
        fetch(storage, meta, data, range(half))
        storage.flush_in_background()
        storage.flush_in_background()  # while one runs: nothing more
        fetch(storage, meta, data, range(half, meta.num_pieces))
        storage.flush_in_background()
        storage.finalize()
        assert not [t for t in threading.enumerate() if t.name == "murder-flush"]
        storage.flush_in_background()
    finally:
        storage.close()
    assert not [t for t in threading.enumerate() if t.name == "murder-flush"]
    got = (
        target.read_bytes()
        if kind == "single"
        else b"".join(target.joinpath(*f.path).read_bytes() for f in meta.files)
    )
    assert got == data


def test_multi_file_round_trip_with_blocks_spanning_files(tmp_path: Path) -> None:
    meta, data = multi(tmp_path)
    assert meta.multi_file
    target = tmp_path / "release"
    with Storage.for_download(meta, target) as storage:
        part = tmp_path / "release.part"
        assert (part / "empty").is_file()
        # Block 0 of piece 0 covers a.txt, the empty file and the start of sub/b.bin.
        storage.write_block(0, 0, data[:BLOCK])
        assert (part / "a.txt").read_bytes() == data[:10000]
        assert (part / "sub" / "b.bin").read_bytes()[: BLOCK - 10000] == data[10000:BLOCK]
        fetch(storage, meta, data, range(meta.num_pieces))
        assert storage.finalize() == target
    for entry in meta.files:
        got = target.joinpath(*entry.path).read_bytes()
        assert got == data[entry.offset : entry.offset + entry.length]
    assert (target / "empty").read_bytes() == b""
    assert not part.exists()


def test_read_frame_is_the_head_then_the_block_even_across_files(tmp_path: Path) -> None:
    meta, data = multi(tmp_path)
    with Storage.for_seed(meta, tmp_path / "src" / "release") as storage:
        with pytest.raises(StorageError, match="not verified"):
            storage.read_frame(b"H", 1, 0, 10)
        storage.verify_all()
        frame = storage.read_frame(b"head", 1, 9000, 20000)
        assert frame == b"head" + data[PIECE + 9000 : PIECE + 29000]
        assert frame[4:] == storage.read_block(1, 9000, 20000)
        with pytest.raises(StorageError, match="over the cap"):
            storage.read_frame(b"", 0, 0, MAX_READ + 1)


def test_upload_extents_name_the_bytes_of_a_verified_block_across_files(tmp_path: Path) -> None:
    meta, data = multi(tmp_path)
    with Storage.for_seed(meta, tmp_path / "src" / "release") as storage:
        with pytest.raises(StorageError, match="not verified"):
            storage.upload_extents(1, 0, 10)
        storage.verify_all()
        extents = storage.upload_extents(1, 9000, 20000)
        got = b"".join(os.pread(fd, size, offset) for fd, offset, size in extents)
        assert got == data[PIECE + 9000 : PIECE + 29000]
        with pytest.raises(StorageError, match="over the cap"):
            storage.upload_extents(0, 0, MAX_READ + 1)


def test_assume_complete_checks_each_piece_on_its_first_read(tmp_path: Path) -> None:
    meta, data = multi(tmp_path)
    src = tmp_path / "src" / "release"
    last_file = [f for f in meta.files if f.length][-1]  # its last byte is in the last piece
    victim = src.joinpath(*last_file.path)
    with Storage.for_seed(meta, src) as storage:
        storage.assume_complete()
        assert storage.complete and storage.have_count == meta.num_pieces
        assert storage.read_frame(b"", 0, 0, 10) == data[:10]
        # Change the payload's last byte: piece 0 was checked already, the last one not.
        raw = bytearray(victim.read_bytes())
        raw[-1] ^= 0xFF
        victim.write_bytes(bytes(raw))
        assert storage.read_frame(b"", 0, 0, 10) == data[:10]  # checked once is enough
        last = meta.num_pieces - 1
        with pytest.raises(PayloadMismatchError, match=f"piece {last} fails its SHA-1"):
            storage.upload_extents(last, 0, 1)


def test_read_block_spans_files_and_matches_payload(tmp_path: Path) -> None:
    meta, data = multi(tmp_path)
    with Storage.for_download(meta, tmp_path / "release") as storage:
        fetch(storage, meta, data, range(meta.num_pieces))
        # Piece 1 starts at 32768, inside sub/b.bin, and its second block runs into the next file.
        assert storage.read_block(1, 9000, 20000) == data[PIECE + 9000 : PIECE + 29000]


def test_corrupted_block_fails_verify_and_piece_stays_missing(tmp_path: Path) -> None:
    meta, data = single(tmp_path)
    with Storage.for_download(meta, tmp_path / "out") as storage:
        (begin, good), (begin2, chunk2) = blocks(meta, data, 2)
        storage.write_block(2, begin, bytes(len(good)))
        storage.write_block(2, begin2, chunk2)
        assert storage.verify_piece(2) is False
        assert not storage.has(2)
        assert storage.have_count == 0
        with pytest.raises(StorageError, match=r"^piece 2 is not verified; refusing to read"):
            storage.read_block(2, 0, 10)
        storage.write_block(2, begin, good)
        assert storage.verify_piece(2) is True
        assert storage.read_block(2, 0, 10) == data[2 * PIECE : 2 * PIECE + 10]


def test_write_to_verified_piece_is_ignored(tmp_path: Path) -> None:
    meta, data = single(tmp_path)
    with Storage.for_download(meta, tmp_path / "out") as storage:
        fetch(storage, meta, data, [0])
        storage.write_block(0, 0, b"\xff" * BLOCK)
        assert storage.verify_piece(0)
        assert storage.read_block(0, 0, BLOCK) == data[:BLOCK]


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_resume_finds_exactly_the_pieces_written_before(tmp_path: Path, kind: str) -> None:
    meta, data = single(tmp_path) if kind == "single" else multi(tmp_path)
    target = tmp_path / "out"
    written = list(range(0, meta.num_pieces, 2))
    with Storage.for_download(meta, target) as storage:
        fetch(storage, meta, data, written)
        # Half of another piece: must not count after the restart.
        begin, chunk = blocks(meta, data, 1)[0]
        storage.write_block(1, begin, chunk)
    with Storage.for_download(meta, target) as again:
        assert again.have_count == 0
        seen: list[int] = []
        assert again.verify_all(seen.append) == len(written)
        assert [i for i in range(meta.num_pieces) if again.has(i)] == written
        assert sum(seen) == meta.total_length
        fetch(again, meta, data, [i for i in range(meta.num_pieces) if i not in written])
        again.finalize()
    if kind == "single":
        assert target.read_bytes() == data


@pytest.mark.parametrize("threads", [1, 3])
def test_verify_all_on_threads_marks_exactly_the_good_pieces_in_order(
    tmp_path: Path, threads: int
) -> None:
    meta, data = single(tmp_path, size=40 * PIECE + 77)
    target = tmp_path / "out"
    bad = {3, 17, 40}
    with Storage.for_download(meta, target) as storage:
        fetch(storage, meta, data, range(meta.num_pieces))
    with open(str(target) + ".part", "r+b") as fh:
        for index in bad:  # a byte flipped on disk in each of these pieces
            fh.seek(index * PIECE + 5)
            fh.write(bytes([data[index * PIECE + 5] ^ 1]))
    with Storage.for_download(meta, target) as again:
        seen: list[int] = []
        assert again.verify_all(seen.append, threads=threads) == meta.num_pieces - len(bad)
        assert {i for i in range(meta.num_pieces) if not again.has(i)} == bad
        assert seen == [meta.piece_size(i) for i in range(meta.num_pieces)]


def test_finalize_refuses_when_incomplete(tmp_path: Path) -> None:
    meta, data = single(tmp_path)
    target = tmp_path / "out"
    with Storage.for_download(meta, target) as storage:
        fetch(storage, meta, data, [0, 3])
        with pytest.raises(StorageError) as excinfo:
            storage.finalize()
        assert str(excinfo.value) == f"cannot finalize {target}: 4 of 6 pieces are not verified"
        assert not target.exists()
        assert storage.path.exists()


def test_finalize_refuses_to_replace_a_file_that_appeared(tmp_path: Path) -> None:
    meta, data = single(tmp_path)
    target = tmp_path / "out"
    with Storage.for_download(meta, target) as storage:
        fetch(storage, meta, data, range(meta.num_pieces))
        target.write_bytes(b"someone else's")
        with pytest.raises(StorageError) as excinfo:
            storage.finalize()
        assert str(excinfo.value) == (
            f"cannot finalize: {target} already exists; refusing to replace it"
        )
    assert target.read_bytes() == b"someone else's"
    assert (tmp_path / "out.part").read_bytes() == data


def test_existing_complete_target_is_used(tmp_path: Path) -> None:
    meta, data = multi(tmp_path)
    target = tmp_path / "src" / "release"  # the payload itself
    with Storage.for_download(meta, target) as storage:
        assert storage.complete
        assert storage.finalized
        assert storage.finalize() == target
        assert storage.read_block(0, 0, 100) == data[:100]
    assert not (tmp_path / "src" / "release.part").exists()


def test_existing_different_target_is_refused(tmp_path: Path) -> None:
    meta, data = single(tmp_path)
    target = tmp_path / "out"
    target.write_bytes(data[:-1] + b"\x00")
    with pytest.raises(StorageError) as excinfo:
        Storage.for_download(meta, target)
    assert str(excinfo.value) == (
        f"{target} already exists and is not this payload (1 of 6 pieces differ); "
        "refusing to overwrite it"
    )
    target.write_bytes(b"short")
    with pytest.raises(StorageError, match=r"already exists and is not this payload \(.* is 5 "):
        Storage.for_download(meta, target)
    assert target.read_bytes() == b"short"


def test_missing_parent_directory(tmp_path: Path) -> None:
    meta, _ = single(tmp_path)
    target = tmp_path / "nope" / "out"
    with pytest.raises(StorageError) as excinfo:
        Storage.for_download(meta, target)
    assert str(excinfo.value) == (
        f"cannot download to {target}: directory {target.parent} does not exist"
    )


def test_part_of_the_wrong_kind_is_in_the_way(tmp_path: Path) -> None:
    meta, _ = single(tmp_path)
    (tmp_path / "out.part").mkdir()
    with pytest.raises(StorageError) as excinfo:
        Storage.for_download(meta, tmp_path / "out")
    assert str(excinfo.value) == (
        f"{tmp_path / 'out.part'} is in the way: this torrent needs a file there"
    )


def test_symlink_inside_part_directory_is_refused(tmp_path: Path) -> None:
    meta, _ = multi(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    part = tmp_path / "out.part"
    part.mkdir()
    (part / "sub").symlink_to(elsewhere)
    with pytest.raises(StorageError, match=r"it resolves outside"):
        Storage.for_download(meta, tmp_path / "out")
    assert list(elsewhere.iterdir()) == []


def test_seed_reads_verified_payload_and_refuses_writes(tmp_path: Path) -> None:
    meta, data = single(tmp_path)
    with Storage.for_seed(meta, tmp_path / "src" / "release.tgz") as storage:
        assert storage.have_count == 0
        assert storage.verify_all() == meta.num_pieces
        assert storage.read_block(3, BLOCK, BLOCK) == data[3 * PIECE + BLOCK : 4 * PIECE]
        assert storage.finalize() == tmp_path / "src" / "release.tgz"
        with pytest.raises(StorageError, match=r"is open read-only; cannot write piece 0$"):
            storage.write_block(0, 0, b"x")


def test_seed_missing_or_wrong_size_file(tmp_path: Path) -> None:
    meta, _ = multi(tmp_path)
    root = tmp_path / "src" / "release"
    (root / "sub" / "b.bin").write_bytes(b"123")
    with pytest.raises(StorageError) as excinfo:
        Storage.for_seed(meta, root)
    assert str(excinfo.value) == f"{root / 'sub' / 'b.bin'} is 3 bytes, expected 50000"
    (root / "sub" / "b.bin").unlink()
    with pytest.raises(StorageError) as excinfo:
        Storage.for_seed(meta, root)
    assert str(excinfo.value) == f"{root / 'sub' / 'b.bin'} is missing (expected 50000 bytes)"


@pytest.mark.parametrize(
    ("index", "begin", "length", "message"),
    [
        (9, 0, 10, "piece 9 is not verified; refusing to read from it"),
        (0, 0, MAX_READ + 1, f"read of {MAX_READ + 1} bytes is over the cap of {MAX_READ} bytes"),
        (5, 900, 101, "cannot read 101 bytes at 900 in piece 5 of 1000 bytes"),
        (0, -1, 10, "cannot read 10 bytes at -1 in piece 0 of 32768 bytes"),
        (0, 0, 0, "cannot read 0 bytes at 0 in piece 0 of 32768 bytes"),
    ],
)
def test_read_block_bounds(
    tmp_path: Path, index: int, begin: int, length: int, message: str
) -> None:
    meta, data = single(tmp_path)
    with Storage.for_download(meta, tmp_path / "out") as storage:
        fetch(storage, meta, data, range(meta.num_pieces))
        with pytest.raises(StorageError) as excinfo:
            storage.read_block(index, begin, length)
        assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("index", "begin", "size", "message"),
    [
        (6, 0, 10, "cannot write piece 6: index out of range 0..5"),
        (5, 0, 1001, "cannot write 1001 bytes at 0 in piece 5 of 1000 bytes"),
        (0, PIECE - 1, 2, "cannot write 2 bytes at 32767 in piece 0 of 32768 bytes"),
    ],
)
def test_write_block_bounds(
    tmp_path: Path, index: int, begin: int, size: int, message: str
) -> None:
    meta, _ = single(tmp_path)
    with Storage.for_download(meta, tmp_path / "out") as storage:
        with pytest.raises(StorageError) as excinfo:
            storage.write_block(index, begin, bytes(size))
        assert str(excinfo.value) == message


def test_bitfield_order(tmp_path: Path) -> None:
    meta, data = single(tmp_path, size=9 * PIECE + 1)
    with Storage.for_download(meta, tmp_path / "out") as storage:
        fetch(storage, meta, data, [0, 9])
        assert storage.bitfield() == b"\x80\x40"
        assert storage.has(9) and not storage.has(10) and not storage.has(-1)


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    meta, data = single(tmp_path)
    storage = Storage.for_download(meta, tmp_path / "out")
    storage.close()
    storage.close()
    with pytest.raises(StorageError, match=r"^storage for .*out\.part is closed$"):
        storage.write_block(0, 0, data[:BLOCK])


def test_write_error_names_the_file(tmp_path: Path) -> None:
    # A real kernel error on pwrite: the file-size limit makes writes past 64 KiB fail (EFBIG).
    meta, data = single(tmp_path)
    with Storage.for_download(meta, tmp_path / "out") as storage:
        old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (2 * PIECE, old_limit[1]))
            with pytest.raises(StorageError) as excinfo:
                storage.write_block(4, 0, data[4 * PIECE : 4 * PIECE + BLOCK])
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_handler)
    assert str(excinfo.value) == (
        f"cannot write 16384 bytes at 131072 of {tmp_path / 'out.part'}: File too large (EFBIG)"
    )


@pytest.mark.root
def test_disk_too_small_fails_up_front_on_a_small_tmpfs(tmp_path: Path, small_tmpfs: Path) -> None:
    mnt = small_tmpfs
    meta, _ = single(tmp_path, size=2 * 1024 * 1024)
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with pytest.raises(StorageError) as excinfo:
        Storage.for_download(meta, mnt / "release.tgz")
    assert str(excinfo.value) == (
        f"not enough disk space in {mnt}: need {2 * 1024 * 1024} bytes, {free} bytes free"
    )
    assert list(mnt.iterdir()) == []
    # A payload that fits is preallocated there.
    small, _ = single(tmp_path, size=4096)
    with Storage.for_download(small, mnt / "small.tgz") as storage:
        assert storage.path.stat().st_blocks * 512 >= 4096


@pytest.mark.slow
def test_memory_stays_flat_while_downloading_a_large_file(tmp_path: Path) -> None:
    # In a fresh interpreter, so the peak RSS is this download's alone. VmHWM, not
    # ru_maxrss: the latter carries pytest's own peak across fork and exec.
    need(os.path.exists("/proc/self/status"), "needs Linux /proc to read the peak RSS")
    size, piece = 512 * 1024 * 1024, 16 * 1024 * 1024
    script = textwrap.dedent(
        f"""
        import sys
        from murder_core.metainfo import make_metainfo
        from murder_core.storage import Storage
        src = sys.argv[1]
        with open(src, "wb") as out:
            for i in range({size // piece}):
                out.write(bytes([i % 251]) * {piece})
        _, meta = make_metainfo(src, "127.0.0.1:6969", piece_length={piece})
        with Storage.for_download(meta, sys.argv[2]) as storage:
            for index in range(meta.num_pieces):
                block = bytes([index % 251]) * 16384
                for begin in range(0, {piece}, 16384):
                    storage.write_block(index, begin, block)
                assert storage.verify_piece(index)
            storage.finalize()
        with open("/proc/self/status") as status:
            print([line.split()[1] for line in status if line.startswith("VmHWM:")][0])
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "src.bin"), str(tmp_path / "dl.bin")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    peak_kib = int(done.stdout.strip())
    assert peak_kib < 100 * 1024, f"peak RSS {peak_kib} KiB"
    assert (tmp_path / "dl.bin").stat().st_size == size
