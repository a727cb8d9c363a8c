from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from murder_core.errors import StorageError
from murder_core.payload_files import (
    PayloadFile,
    check_contained,
    check_free_space,
    create_file,
    join_inside,
    open_existing,
    pread_into,
    storage_error,
)


def statvfs(bavail: int, frsize: int = 4096) -> os.statvfs_result:
    # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax)
    return os.statvfs_result((4096, frsize, 1000, bavail, bavail, 0, 0, 0, 0, 255))


@pytest.mark.parametrize(("needed", "fits"), [(0, True), (40960, True), (40961, False)])
def test_free_space_check(needed: int, fits: bool) -> None:
    if fits:
        check_free_space("/srv/releases", needed, statvfs(10))
        return
    with pytest.raises(StorageError) as excinfo:
        check_free_space("/srv/releases", needed, statvfs(10))
    assert str(excinfo.value) == (
        "not enough disk space in /srv/releases: need 40961 bytes, 40960 bytes free"
    )


@pytest.mark.parametrize("part", ["..", ".", "", "a/b", "nul\0"])
def test_join_inside_refuses_escaping_components(tmp_path: Path, part: str) -> None:
    with pytest.raises(StorageError) as excinfo:
        join_inside(tmp_path, ("ok", part))
    assert str(excinfo.value) == (
        f"refusing file path {'ok/' + part!r}: component {part!r} could escape {tmp_path}"
    )


def test_join_inside_joins_plain_components(tmp_path: Path) -> None:
    assert join_inside(tmp_path, ("a", "b.txt")) == tmp_path / "a" / "b.txt"


def test_check_contained_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "inner").symlink_to(root / "real")
    (root / "outer").symlink_to(tmp_path)
    check_contained(root / "inner" / "x", root)
    with pytest.raises(StorageError) as excinfo:
        check_contained(root / "outer" / "x", root)
    assert str(excinfo.value) == f"refusing {root / 'outer' / 'x'}: it resolves outside {root}"


def test_create_file_sizes_new_and_existing_files(tmp_path: Path) -> None:
    fresh = PayloadFile(tmp_path / "d" / "fresh", ("d", "fresh"), 100_000, 0)
    empty = PayloadFile(tmp_path / "empty", ("empty",), 0, 0)
    longer = PayloadFile(tmp_path / "longer", ("longer",), 3, 0)
    (tmp_path / "longer").write_bytes(b"abcdef")
    try:
        for f in (fresh, empty, longer):
            create_file(f, tmp_path)
        assert (tmp_path / "d" / "fresh").stat().st_size == 100_000
        assert (tmp_path / "empty").stat().st_size == 0
        assert (tmp_path / "longer").read_bytes() == b"abc"
    finally:
        for f in (fresh, empty, longer):
            if f.fd >= 0:
                os.close(f.fd)


def test_create_file_refuses_a_symlinked_file(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(StorageError, match=r"^cannot create .*link: .*\(ELOOP\)$"):
        create_file(PayloadFile(tmp_path / "link", ("link",), 10, 0), tmp_path)
    assert (tmp_path / "target").read_bytes() == b"keep"


def test_open_existing_needs_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    f = PayloadFile(tmp_path / "dir", ("dir",), 10, 0)
    try:
        with pytest.raises(StorageError) as excinfo:
            open_existing(f, tmp_path)
        assert str(excinfo.value) == f"{tmp_path / 'dir'} is not a regular file (expected 10 bytes)"
    finally:
        os.close(f.fd)


def test_pread_into_reports_a_short_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    f = PayloadFile(tmp_path / "f", ("f",), 10, 0)
    f.fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        got = bytearray(3)
        pread_into(f, 1, memoryview(got))
        assert got == b"234"
        with pytest.raises(StorageError) as excinfo:
            pread_into(f, 2, memoryview(bytearray(8)))
        assert str(excinfo.value) == f"{tmp_path / 'f'} ends before 10 bytes (expected 10 bytes)"
    finally:
        os.close(f.fd)


def test_storage_error_names_the_errno() -> None:
    exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(storage_error("cannot write /x", exc)) == (
        "cannot write /x: No space left on device (ENOSPC)"
    )
