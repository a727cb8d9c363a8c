"""``murder peer --unpack-map``: the map's checks, and the storage that writes through it."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from murder_core.errors import StorageError, UnpackMapError
from murder_core.metainfo import Metainfo, make_metainfo
from murder_core.storage import Storage
from murder_core.unpack_map import MapEntry, parse_unpack_map, read_unpack_map

PIECE = 32 * 1024
BLOCK = 16 * 1024


def doc(files: list[list[object]], length: int = 1000, version: int = 1) -> bytes:
    return json.dumps({"version": version, "length": length, "files": files}).encode()


def test_a_good_map_gives_its_entries_in_order() -> None:
    entries = parse_unpack_map(doc([[0, 10, "a"], [512, 100, "d/b"], [700, 300, "d/e/c"]]), 1000)
    assert entries == [
        MapEntry(0, 10, ("a",)),
        MapEntry(512, 100, ("d", "b")),
        MapEntry(700, 300, ("d", "e", "c")),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "m is not JSON: Expecting property name enclosed in double quotes"),
        (doc([], version=2), "m: expected version 1, got 2"),
        (b"[]", "m: expected version 1, got 'list'"),
        (doc([], length=999), "m is for a payload of 999 bytes, but the torrent's is 1000"),
        (json.dumps({"version": 1, "length": 1000}).encode(), "m: 'files' must be a list"),
        (doc([[0, 10]]), "m: entry 0 must be [offset, length, path]"),
        (doc([[0, -1, "a"]]), "m: entry 0 length must be a non-negative integer, got -1"),
        (doc([[True, 1, "a"]]), "m: entry 0 offset must be a non-negative integer, got True"),
        (doc([[0, 0, "a"]]), "m: entry 0 ('a') is empty"),
        (
            doc([[0, 10, "a"], [5, 10, "b"]]),
            "m: entry 1 ('b') starts at 5, inside or before the previous entry (which ends "
            "at 10); entries must be sorted",
        ),
        (doc([[990, 11, "a"]]), "m: entry 0 ('a') ends at 1001, past the payload's 1000 bytes"),
        (
            doc([[0, 1, "../etc/passwd"]]),
            "m: entry 0: refusing file path '../etc/passwd': component '..' could escape .",
        ),
        (doc([[0, 1, "/etc/passwd"]]), "m: entry 0: refusing file path '/etc/passwd': "),
        (doc([[0, 1, "a//b"]]), "m: entry 0: refusing file path 'a//b': component ''"),
        (doc([[0, 1, "a"], [1, 1, "a"]]), "m: entry 1 ('a') clashes with another entry's path"),
        (doc([[0, 1, "a"], [1, 1, "a/b"]]), "m: entry 1 ('a/b') clashes with another entry's"),
        (doc([[0, 1, "a/b"], [1, 1, "a"]]), "m: entry 1 ('a') clashes with another entry's"),
    ],
)
def test_a_bad_map_is_refused_naming_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(UnpackMapError) as err:
        parse_unpack_map(data, 1000, "m")
    assert str(err.value).startswith(message)
    assert err.value.exit_code == 3


def test_an_unreadable_or_huge_map_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UnpackMapError, match=r"cannot read unpack map .*/nope: No such file"):
        read_unpack_map(str(tmp_path / "nope"), 10)
    big = tmp_path / "big.json"
    big.write_bytes(doc([]) + b" " * 100)
    monkeypatch.setattr("murder_core.unpack_map.MAX_MAP_BYTES", 64)
    with pytest.raises(UnpackMapError, match="is over the cap of 64 bytes"):
        read_unpack_map(str(big), 1000)


# -- the storage writing through a map: a real plain tarball ---------------------------
def tarball(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A tar of three files around piece and block boundaries, and their bytes."""
    rnd = random.Random(7)
    files = {
        "big.bin": rnd.randbytes(3 * PIECE + 123),
        "d/small.txt": b"hello\n",
        "d/e/mid.bin": rnd.randbytes(BLOCK + 5),
    }
    path = tmp_path / "src" / "rel.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, files


def map_of(path: Path) -> list[MapEntry]:
    with tarfile.open(path) as tar:
        rows = [[m.offset_data, m.size, m.name] for m in tar.getmembers() if m.isreg()]
    return parse_unpack_map(doc(rows, path.stat().st_size), path.stat().st_size)


def download(storage: Storage, meta: Metainfo, data: bytes, order: list[int]) -> None:
    for index in order:
        start, size = index * meta.piece_length, meta.piece_size(index)
        for begin in range(0, size, BLOCK):
            storage.write_block(
                index, begin, data[start + begin : start + min(begin + BLOCK, size)]
            )
        assert storage.verify_piece(index), index


def test_the_mapped_bytes_land_in_their_files_and_the_rest_in_the_payload(tmp_path: Path) -> None:
    src, files = tarball(tmp_path)
    data = src.read_bytes()
    _, meta = make_metainfo(src, "127.0.0.1:6969", piece_length=PIECE)
    entries = map_of(src)
    target, directory = tmp_path / "out" / "rel.tar", tmp_path / "out" / "incoming"
    target.parent.mkdir()
    storage = Storage.for_download(meta, target, (entries, directory))
    assert (tmp_path / "out" / "incoming.part" / "d" / "e").is_dir()
    download(storage, meta, data, list(reversed(range(meta.num_pieces))))
    assert storage.finalize() == target
    # Every block reads back as the tarball's, across rest/file boundaries.
    for index in range(meta.num_pieces):
        start = index * PIECE
        for begin in range(0, meta.piece_size(index), BLOCK):
            length = min(BLOCK, meta.piece_size(index) - begin)
            got = storage.read_block(index, begin, length)
            assert got == data[start + begin : start + begin + length]
    storage.close()
    for name, content in files.items():
        assert (directory / name).read_bytes() == content
    rest = b"".join(
        data[a:b]
        for a, b in zip(
            [0, *(e.offset + e.length for e in entries)], [*(e.offset for e in entries), len(data)]
        )
    )
    assert target.read_bytes() == rest
    assert len(rest) == len(data) - sum(len(c) for c in files.values())
    assert not (tmp_path / "out" / "incoming.part").exists()
    # A restart finds it all there and seeds it after checking every piece.
    again = Storage.for_download(meta, target, (entries, directory))
    assert again.complete and again.finalized
    again.close()


def tar_torrent(tmp_path: Path) -> tuple[bytes, Metainfo, tuple[list[MapEntry], Path]]:
    """The tarball's bytes, its torrent, and its map to ``tmp_path/incoming``."""
    src, _ = tarball(tmp_path)
    _, meta = make_metainfo(src, "127.0.0.1:6969", piece_length=PIECE)
    return src.read_bytes(), meta, (map_of(src), tmp_path / "incoming")


def test_a_restart_resumes_from_the_part_files(tmp_path: Path) -> None:
    data, meta, unpack = tar_torrent(tmp_path)
    first = Storage.for_download(meta, tmp_path / "rel.tar", unpack)
    download(first, meta, data, [0, 2])
    first.close()
    second = Storage.for_download(meta, tmp_path / "rel.tar", unpack)
    assert second.verify_all() == 2 and second.has(0) and second.has(2)
    second.close()


def test_a_changed_file_under_the_final_directory_fails_the_check(tmp_path: Path) -> None:
    data, meta, unpack = tar_torrent(tmp_path)
    storage = Storage.for_download(meta, tmp_path / "rel.tar", unpack)
    download(storage, meta, data, list(range(meta.num_pieces)))
    storage.finalize()
    storage.close()
    (tmp_path / "incoming" / "d" / "small.txt").write_bytes(b"HELLO\n")
    with pytest.raises(StorageError, match=r"already exists and is not this payload \(1 of"):
        Storage.for_download(meta, tmp_path / "rel.tar", unpack)


def test_a_map_for_a_multi_file_torrent_or_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    src, _ = tarball(tmp_path)
    _, meta = make_metainfo(src, "127.0.0.1:6969", piece_length=PIECE)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "x").write_bytes(b"x" * 100)
    _, multi = make_metainfo(tmp_path / "tree", "127.0.0.1:6969", piece_length=PIECE)
    with pytest.raises(StorageError, match="needs a single-file torrent"):
        Storage.for_download(multi, tmp_path / "m", ([], tmp_path / "incoming"))
    (tmp_path / "incoming.part").write_bytes(b"")
    with pytest.raises(StorageError, match=r"incoming.part: .*File exists|incoming.part is in"):
        Storage.for_download(meta, tmp_path / "rel.tar", (map_of(src), tmp_path / "incoming"))
    assert not (tmp_path / "rel.tar.part").exists()


def test_finalize_refuses_when_the_directory_appeared(tmp_path: Path) -> None:
    src, _ = tarball(tmp_path)
    data = src.read_bytes()
    _, meta = make_metainfo(src, "127.0.0.1:6969", piece_length=PIECE)
    storage = Storage.for_download(meta, tmp_path / "rel.tar", (map_of(src), tmp_path / "in"))
    download(storage, meta, data, list(range(meta.num_pieces)))
    (tmp_path / "in").mkdir()
    with pytest.raises(StorageError, match=r"cannot finalize: .*/in already exists"):
        storage.finalize()
    storage.close()
    assert (tmp_path / "in.part").is_dir() and (tmp_path / "rel.tar.part").is_file()
