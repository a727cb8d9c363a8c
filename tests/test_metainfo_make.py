from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest

from murder_core.errors import MetainfoError, StorageError
from murder_core.metainfo import (
    announce_url,
    choose_piece_length,
    make_metainfo,
    read_metainfo,
    write_torrent,
)
from murder_core.metainfo_make import SourceFile, collect_files, hash_pieces

ANNOUNCE = "http://127.0.0.1:8998/announce"
KiB, MiB, GiB = 1024, 1024**2, 1024**3


def _content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _piece_hashes(payload: bytes, piece_length: int) -> bytes:
    chunks = range(0, len(payload), piece_length)
    return b"".join(hashlib.sha1(payload[i : i + piece_length]).digest() for i in chunks)


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


# --- choosing a piece length and a tracker URL ---


@pytest.mark.parametrize(
    ("total", "piece_length", "pieces"),
    [
        (1, 256 * KiB, 1),
        (1 * MiB, 256 * KiB, 4),
        (100 * MiB, 256 * KiB, 400),
        (1000 * MiB, 256 * KiB, 4000),
        (1 * GiB, 512 * KiB, 2048),
        (10 * GiB, 4 * MiB, 2560),
        (100 * GiB, 16 * MiB, 6400),
        (1024 * GiB, 16 * MiB, 65536),
    ],
)
def test_choose_piece_length(total: int, piece_length: int, pieces: int) -> None:
    assert choose_piece_length(total) == piece_length
    assert -(-total // piece_length) == pieces


def test_choose_piece_length_refuses_negative() -> None:
    with pytest.raises(MetainfoError) as caught:
        choose_piece_length(-1)
    assert str(caught.value) == "total length must not be negative, got -1"


@pytest.mark.parametrize(
    ("tracker", "url"),
    [
        ("127.0.0.1:8998", "http://127.0.0.1:8998/announce"),
        ("tracker.example.com:80", "http://tracker.example.com:80/announce"),
        ("localhost:08998", "http://localhost:8998/announce"),
        ("[::1]:8998", "http://[::1]:8998/announce"),
        ("http://t.example:8998/announce", "http://t.example:8998/announce"),
        ("https://t.example/announce?key=1", "https://t.example/announce?key=1"),
        ("http://[::1]:8998/announce", "http://[::1]:8998/announce"),
    ],
)
def test_announce_url(tracker: str, url: str) -> None:
    assert announce_url(tracker) == url


@pytest.mark.parametrize(
    "tracker",
    ["", "localhost", "localhost:", ":8998", "localhost:0", "localhost:65536", "localhost:http",
     "::1:8998", "[::1]", "[nonsense]:80", "bad host:80", "-bad.example:80", "a_b:80", "x:80 "],
)  # fmt: skip
def test_announce_url_refuses_bad_host_port(tracker: str) -> None:
    with pytest.raises(MetainfoError) as caught:
        announce_url(tracker)
    assert str(caught.value) == (
        f"tracker must be HOST:PORT, [IPv6]:PORT or an http(s):// URL, got {tracker!r}"
    )
    assert (caught.value.key, caught.value.value) == ("announce", tracker)


@pytest.mark.parametrize(
    "url",
    ["udp://t.example:80/announce", "ftp://t.example/", "http://", "http:///announce",
     "http://t.example:99999/", "http://t.example:0/", "http://[::1/announce",
     "http://t.example/a b", "http://t.example/\n"],
)  # fmt: skip
def test_announce_url_refuses_bad_urls(url: str) -> None:
    with pytest.raises(MetainfoError) as caught:
        announce_url(url)
    assert str(caught.value) == f"announce must be an http:// or https:// URL, got {url!r}"


# --- hashing and listing ---


@pytest.mark.parametrize(
    "sizes",
    [[1], [16384], [16385], [0, 0, 5], [16383, 1], [16383, 2, 16383], [5, 0, 40000, 0, 7],
     [100_000], [16384, 16384, 0], [16384 * 40 + 3]],
)  # fmt: skip
@pytest.mark.parametrize("threads", [1, 3])
def test_hash_pieces_spans_file_boundaries(tmp_path: Path, sizes: list[int], threads: int) -> None:
    sources = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"f{index}"
        path.write_bytes(_content(size, index))
        sources.append(SourceFile((path.name,), path, size))
    payload = b"".join(_content(size, index) for index, size in enumerate(sizes))
    seen: list[int] = []
    got = hash_pieces(sources, 16384, seen.append, threads=threads)
    assert got == _piece_hashes(payload, 16384)
    # Progress comes piece by piece, in order: every full piece, then the short last one.
    assert seen == [16384] * (len(payload) // 16384) + (
        [len(payload) % 16384] if len(payload) % 16384 else []
    )


def test_collect_files_sorts_by_path_components(tmp_path: Path) -> None:
    _tree(tmp_path, {"b/x": b"1", "a-b": b"22", "a/z": b"333", "a/b/c": b"", "B": b"4"})
    found = [(source.parts, source.length) for source in collect_files(tmp_path)]
    assert found == [
        (("B",), 1),
        (("a", "b", "c"), 0),
        (("a", "z"), 3),
        (("a-b",), 2),
        (("b", "x"), 1),
    ]


def test_collect_files_leaves_out_excluded_names_and_all_under_them(tmp_path: Path) -> None:
    _tree(tmp_path, {".git/objects/x": b"1", ".gitignore": b"2", "a/.github/w": b"3", "a/b": b"4"})
    found = [s.parts for s in collect_files(tmp_path, exclude=[".git*"])]
    assert found == [("a", "b")]
    everything = [s.parts for s in collect_files(tmp_path)]
    assert len(everything) == 4


def test_collect_files_skips_symlinks_only_when_asked(tmp_path: Path) -> None:
    _tree(tmp_path, {"f": b"x", "d/g": b"yy"})
    (tmp_path / "link").symlink_to("f")
    (tmp_path / "dlink").symlink_to("d")
    found = [s.parts for s in collect_files(tmp_path, skip_symlinks=True)]
    assert found == [("d", "g"), ("f",)]
    with pytest.raises(MetainfoError, match="refusing symlink"):
        collect_files(tmp_path)


# --- refusing to make ---


def _with_symlink(tmp: Path) -> Path:
    root = _tree(tmp / "r", {"f": b"x"})
    (root / "link").symlink_to(root / "f")
    return root


def _with_fifo(tmp: Path) -> Path:
    root = _tree(tmp / "r", {"f": b"x"})
    os.mkfifo(root / "pipe")
    return root


def _with_bad_name(tmp: Path) -> Path:
    root = _tree(tmp / "r", {"f": b"x"})
    (root / os.fsdecode(b"bad\xff")).write_bytes(b"y")
    return root


def _bad_root_name(tmp: Path) -> Path:
    return _tree(tmp / os.fsdecode(b"rel\xfe"), {"f": b"x"})


def _bad_file_name(tmp: Path) -> Path:
    (tmp / os.fsdecode(b"f\xfe")).write_bytes(b"x")
    return tmp / os.fsdecode(b"f\xfe")


def _empty_dir(tmp: Path) -> Path:
    (tmp / "r" / "sub").mkdir(parents=True)
    return tmp / "r"


def _empty_file(tmp: Path) -> Path:
    (tmp / "f").write_bytes(b"")
    return tmp / "f"


def _sparse(tmp: Path) -> Path:
    with open(tmp / "huge", "wb") as handle:
        handle.truncate(30 * 1024**3)  # sparse: no disk, and refused before any hashing
    return tmp / "huge"


@pytest.mark.parametrize(
    ("build", "kwargs", "error", "message"),
    [
        (_with_symlink, {}, MetainfoError,
         "refusing symlink TMP/r/link: torrents carry only regular files"),
        (_with_fifo, {}, MetainfoError,
         "refusing special file TMP/r/pipe: torrents carry only regular files"),
        (_with_bad_name, {}, MetainfoError, "file name b'TMP/r/bad\\xff' is not valid UTF-8"),
        (_bad_root_name, {}, MetainfoError, "file name b'TMP/rel\\xfe' is not valid UTF-8"),
        (_bad_file_name, {}, MetainfoError, "file name b'TMP/f\\xfe' is not valid UTF-8"),
        (_empty_dir, {}, MetainfoError, "nothing to share: TMP/r holds no bytes"),
        (_empty_file, {}, MetainfoError, "nothing to share: TMP/f holds no bytes"),
        (lambda tmp: tmp / "missing", {}, StorageError,
         "cannot read TMP/missing: No such file or directory"),
        (lambda tmp: tmp, {"piece_length": 1000}, MetainfoError,
         "info.piece length must be a positive multiple of 16 KiB, got 1000"),
        (_sparse, {"piece_length": 16384}, MetainfoError,
         "32212254720 bytes in pieces of 16384 would need more piece hashes than a torrent "
         "may hold; use a bigger piece length"),
    ],
)  # fmt: skip
def test_make_refuses(
    tmp_path: Path,
    build: Callable[[Path], Path],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    (tmp_path / "seed").write_bytes(b"x")  # so that tmp_path itself has bytes to share
    with pytest.raises(error) as caught:
        make_metainfo(build(tmp_path), ANNOUNCE, **kwargs)
    assert str(caught.value).replace(str(tmp_path), "TMP") == message


def test_make_refuses_bad_tracker(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(MetainfoError, match="tracker must be HOST:PORT"):
        make_metainfo(tmp_path / "f", "no-port")


# --- atomic writing ----------------------------------------------------------------------


def test_write_torrent(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    target = tmp_path / "out.torrent"
    target.write_bytes(b"old")
    meta = write_torrent(tmp_path / "f", "127.0.0.1:8998", target, mode=0o600)
    assert read_metainfo(target) == meta
    assert oct(target.stat().st_mode & 0o777) == oct(0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "out.torrent"]


def _write_fails(tmp_path: Path, source: Path, target: Path, **kwargs: Any) -> str:
    before = sorted(p.name for p in target.parent.iterdir()) if target.parent.is_dir() else None
    with pytest.raises(StorageError) as caught:
        write_torrent(source, ANNOUNCE, target, piece_length=16384, **kwargs)
    after = sorted(p.name for p in target.parent.iterdir()) if target.parent.is_dir() else None
    assert after == before  # nothing half-written, no .tmp left behind
    return str(caught.value).replace(str(tmp_path), "TMP")


def test_write_when_a_source_file_vanishes_midway(tmp_path: Path) -> None:
    root = _tree(tmp_path / "r", {"a": _content(40_000), "b": b"late"})
    out = tmp_path / "out"
    out.mkdir()

    def vanish(_: int) -> None:
        (root / "b").unlink(missing_ok=True)

    message = _write_fails(tmp_path, root, out / "t.torrent", progress=vanish)
    assert message == "cannot read TMP/r/b: No such file or directory"


def _append(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"more")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda path: os.truncate(path, 100),
            "TMP/f shrank while hashing: expected 50000 bytes, ended after 16384",
        ),
        (_append, "TMP/f grew while hashing: expected 50000 bytes"),
    ],
)
def test_write_when_the_source_changes_midway(
    tmp_path: Path, change: Callable[[Path], object], message: str
) -> None:
    source = tmp_path / "f"
    source.write_bytes(_content(50_000))
    calls: list[int] = []

    def progress(size: int) -> None:
        if not calls:
            change(source)
        calls.append(size)

    assert _write_fails(tmp_path, source, tmp_path / "t.torrent", progress=progress) == message


def test_write_when_the_rename_fails(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    target = tmp_path / "t.torrent"
    target.mkdir()
    (target / "keep").write_bytes(b"k")
    assert (
        _write_fails(tmp_path, tmp_path / "f", target)
        == "cannot write TMP/t.torrent: Is a directory"
    )
    assert (target / "keep").read_bytes() == b"k"


def test_write_into_missing_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    message = _write_fails(tmp_path, tmp_path / "f", tmp_path / "no" / "t.torrent")
    assert message == "cannot write TMP/no/t.torrent.tmp: No such file or directory"


def _unprivileged(work: Callable[[], str]) -> str:
    """Run ``work`` as ``nobody`` in a child when we are root (root ignores directory modes)."""
    if os.geteuid() != 0:
        return work()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            result = work()
        except BaseException as exc:
            result = f"child failed: {exc!r}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        result = pipe.read().decode()
    os.waitpid(pid, 0)
    return result


def test_write_into_read_only_directory() -> None:
    # Not tmp_path: its parents are private to root, and the child runs as nobody.
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        (base / "f").write_bytes(b"x" * 1000)
        (base / "f").chmod(0o644)
        target_dir = base / "ro"
        target_dir.mkdir(mode=0o555)
        target_dir.chmod(0o555)

        def attempt() -> str:
            try:
                write_torrent(base / "f", ANNOUNCE, target_dir / "t.torrent")
            except StorageError as exc:
                return str(exc)
            return "no error"

        message = _unprivileged(attempt)
        assert message == f"cannot write {target_dir}/t.torrent.tmp: Permission denied"
        assert list(target_dir.iterdir()) == []
    finally:
        shutil.rmtree(base)
