"""The files of one payload on disk: safe paths, creation, positional I/O.

Helpers for ``storage``: every path is kept inside the payload root, files are
created at full size (preallocated where the filesystem can), and every
operating-system failure becomes a ``StorageError`` naming the file.
"""

from __future__ import annotations

import errno
import os
import pathlib
import stat
from typing import Protocol, Union

from .errors import StorageError
from .fdlimit import make_room
from .metainfo import Metainfo

StrPath = Union[str, "os.PathLike[str]"]


class FreeSpace(Protocol):
    """The two fields of ``os.statvfs_result`` the space check needs."""

    @property
    def f_bavail(self) -> int: ...

    @property
    def f_frsize(self) -> int: ...


def check_free_space(directory: StrPath, needed: int, stats: FreeSpace) -> None:
    """Raise StorageError when ``stats`` (from ``os.statvfs(directory)``) has < ``needed`` free."""
    free = stats.f_bavail * stats.f_frsize
    if needed > free:
        raise StorageError(
            f"not enough disk space in {directory}: need {needed} bytes, {free} bytes free"
        )


class PayloadFile:
    """One file of the payload: where it is, where it sits in the torrent, its descriptor."""

    __slots__ = ("executable", "fd", "length", "offset", "parts", "path")

    def __init__(
        self,
        path: pathlib.Path,
        parts: tuple[str, ...],
        length: int,
        offset: int,
        executable: bool = False,
    ) -> None:
        self.path = path
        self.parts = parts  # relative to the payload root; () for a single-file torrent
        self.length = length
        self.offset = offset
        self.executable = executable
        self.fd = -1


class Span:
    """A run of payload bytes stored contiguously in one file, from position ``at``."""

    __slots__ = ("at", "file", "length", "offset")

    def __init__(self, file: PayloadFile, offset: int, length: int, at: int = 0) -> None:
        self.file = file
        self.offset = offset  # in the payload
        self.length = length
        self.at = at  # in the file


def payload_layout(meta: Metainfo, root: pathlib.Path) -> list[PayloadFile]:
    """The files of ``meta`` under ``root`` (``root`` itself for a single-file torrent)."""
    if not meta.multi_file:
        entry = meta.files[0]
        return [PayloadFile(root, (), entry.length, entry.offset, entry.executable)]
    return [
        PayloadFile(
            join_inside(root, entry.path), entry.path, entry.length, entry.offset, entry.executable
        )
        for entry in meta.files
    ]


def make_executable(f: PayloadFile) -> None:
    """Add the x bits wherever the file's r bits are (so the umask is respected)."""
    try:
        mode = os.fstat(f.fd).st_mode & 0o7777
        os.fchmod(f.fd, mode | ((mode & 0o444) >> 2))
    except OSError as exc:
        raise storage_error(f"cannot make {f.path} executable", exc) from exc


#: Descriptors kept free for sockets, the log and the tracker connection.
SPARE_DESCRIPTORS = 256


def make_room_for_files(count: int) -> None:
    """Raise the soft open-file limit so ``count`` payload files can stay open at once.

    Every file of a payload stays open for the whole run (each block is one pread or
    pwrite), so a release of thousands of files needs more than the usual soft limit
    of 1024; so do the sockets of a seeder that a fleet of thousands dials (hence
    ``fdlimit`` asks for far more than the files). Fails only when the files alone do
    not fit.
    """
    room = make_room(count + SPARE_DESCRIPTORS)
    if room.enough:
        return
    if room.hard >= 0 and room.hard < room.needed:
        raise StorageError(
            f"the payload has {count} files, more than the open-file limit allows "
            f"(hard limit {room.hard}, {SPARE_DESCRIPTORS} kept for sockets): raise it "
            "(ulimit -Hn) or send the release as one tarball"
        )
    raise StorageError(
        f"cannot raise the open-file limit to {room.needed} (it stays at {room.limit})"
    )


def join_inside(root: pathlib.Path, parts: tuple[str, ...]) -> pathlib.Path:
    """Join a torrent path to ``root``, refusing any component that could leave it."""
    for part in parts:
        bad_sep = os.altsep is not None and os.altsep in part
        if part in ("", ".", "..") or "/" in part or "\0" in part or bad_sep:
            raise StorageError(
                f"refusing file path {'/'.join(parts)!r}: component {part!r} could escape {root}"
            )
    return root.joinpath(*parts)


def check_contained(path: pathlib.Path, root: pathlib.Path) -> None:
    # Symlinks inside the payload directory could still point elsewhere.
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise StorageError(f"refusing {path}: it resolves outside {root}")


def create_file(f: PayloadFile, root: pathlib.Path, made: set[pathlib.Path] | None = None) -> None:
    """Create or reopen one .part file at its full size, preallocated where possible.

    ``made`` holds the directories already made and checked for this payload: a release
    of 10,000 files in 100 directories checks 100 of them, not 10,000 paths.
    """
    try:
        if f.parts and (made is None or f.path.parent not in made):
            f.path.parent.mkdir(parents=True, exist_ok=True)
            check_contained(f.path.parent, root)
            if made is not None:
                made.add(f.path.parent)
        f.fd = os.open(f.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        if os.fstat(f.fd).st_size > f.length:
            os.ftruncate(f.fd, f.length)
    except OSError as exc:
        raise storage_error(f"cannot create {f.path}", exc) from exc
    if f.length == 0:
        return
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fd, 0, f.length)
            return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise storage_error(f"cannot preallocate {f.length} bytes for {f.path}", exc) from exc
    try:
        os.ftruncate(f.fd, f.length)  # no preallocation here: a sparse file of the right size
    except OSError as exc:
        raise storage_error(f"cannot size {f.path} to {f.length} bytes", exc) from exc


def open_existing(f: PayloadFile, root: pathlib.Path) -> None:
    """Open a file of a payload already on disk, read-only; it must have the right size."""
    if f.parts:
        check_contained(f.path, root)
    try:
        f.fd = os.open(f.path, os.O_RDONLY)
        st = os.fstat(f.fd)
    except FileNotFoundError:
        raise StorageError(f"{f.path} is missing (expected {f.length} bytes)") from None
    except OSError as exc:
        raise storage_error(f"cannot open {f.path}", exc) from exc
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(f"{f.path} is not a regular file (expected {f.length} bytes)")
    size = st.st_size
    if size != f.length:
        raise StorageError(f"{f.path} is {size} bytes, expected {f.length}")


def allocated_bytes(path: pathlib.Path) -> int:
    """Bytes already on disk for ``path`` (0 if absent), so resuming needs less space."""
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return getattr(st, "st_blocks", 0) * 512


def pwrite_all(f: PayloadFile, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, however many calls the kernel needs."""
    while data:
        try:
            written = os.pwrite(f.fd, data, offset)
        except OSError as exc:
            raise storage_error(
                f"cannot write {len(data)} bytes at {offset} of {f.path}", exc
            ) from exc
        if written <= 0:
            raise StorageError(
                f"cannot write {len(data)} bytes at {offset} of {f.path}: no progress"
            )
        if written == len(data):
            return
        data = memoryview(data)[written:]  # a short write: slice without copying
        offset += written


def pread(f: PayloadFile, offset: int, length: int) -> bytes:
    try:
        return os.pread(f.fd, length, offset)
    except OSError as exc:
        raise storage_error(f"cannot read {length} bytes at {offset} of {f.path}", exc) from exc


def pread_into(f: PayloadFile, offset: int, view: memoryview) -> None:
    """Fill ``view`` from ``offset`` of the file, with no intermediate bytes object."""
    got = 0
    while got < len(view):
        try:
            n = os.preadv(f.fd, [view[got:]], offset + got)
        except OSError as exc:
            raise storage_error(
                f"cannot read {len(view)} bytes at {offset} of {f.path}", exc
            ) from exc
        if not n:
            raise StorageError(
                f"{f.path} ends before {offset + len(view)} bytes (expected {f.length} bytes)"
            )
        got += n


def storage_error(what: str, exc: OSError) -> StorageError:
    name = errno.errorcode.get(exc.errno or 0, "error")
    return StorageError(f"{what}: {exc.strerror or exc} ({name})")


def fsync_directory(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems refuse to open directories; the rename still happened
    try:
        os.fsync(fd)
    except OSError:
        pass  # likewise: not every filesystem can fsync a directory
    finally:
        os.close(fd)
