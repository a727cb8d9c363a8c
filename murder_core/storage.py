"""Pieces on disk: where each block goes, which pieces are verified, the final rename.

A download writes into ``<target>.part`` (a file, or a directory holding the
files of a multi-file torrent) and renames it to ``<target>`` once every piece
has passed its SHA-1 check, so a half-written payload never sits under the
final name. Blocks go straight to disk with ``os.pwrite`` on descriptors kept
open, one per file: nothing is buffered per piece, so memory stays flat
whatever the piece or payload size. Hashing reads back in 1 MiB chunks.

This module knows nothing about peers or requests; the picker decides what to
fetch and the driver hands finished blocks here.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import pathlib
import threading
from typing import Callable, Optional

from .errors import PayloadMismatchError, StorageError
from .metainfo import Metainfo
from .parallel import ordered_map
from .payload_files import (
    PayloadFile,
    Span,
    StrPath,
    allocated_bytes,
    check_free_space,
    create_file,
    fsync_directory,
    make_executable,
    make_room_for_files,
    open_existing,
    payload_layout,
    pread,
    pread_into,
    pwrite_all,
    storage_error,
)
from .syncing import flush_all, sync_all
from .unpack_map import MapEntry, unpack_layout

PART_SUFFIX = ".part"
#: Cap on one read_block: requests come from remote peers (BEP 3 blocks are 16 KiB).
MAX_READ = 128 * 1024
_CHUNK = 1024 * 1024  # hashing reads this much at a time

#: ``--unpack-map``: the map's entries and the directory their files go under.
Unpack = tuple[list[MapEntry], StrPath]
#: A root renamed from .part as a whole (the payload; a map's directory) and its files.
Tree = tuple[pathlib.Path, list[PayloadFile]]


class Storage:
    """The payload of one torrent on disk; see ``for_download`` and ``for_seed``."""

    def __init__(
        self, meta: Metainfo, trees: list[Tree], *, final: bool, spans: list[Span] | None = None
    ) -> None:
        """``trees[0]`` is the payload; ``spans`` place its bytes when not file by file."""
        self._meta = meta
        self._trees = trees
        self._finalized = final
        self._writable = not final
        self._files = [f for _, files in trees for f in files]
        self._closed = False
        self._piece_length = meta.piece_length
        self._last_index = meta.num_pieces - 1
        self._last_size = meta.piece_size(self._last_index)
        if spans is None:
            # Zero-length files hold no bytes, so offsets are looked up among the others.
            spans = [Span(f, f.offset, f.length) for f in self._files if f.length > 0]
        self._spans = spans
        self._starts = [s.offset for s in spans]
        self._have = bytearray(meta.num_pieces)
        self._bits = bytearray((meta.num_pieces + 7) // 8)
        self._have_count = 0
        self._unchecked: bytearray | None = None  # see assume_complete
        self._flusher: threading.Thread | None = None

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def for_download(cls, meta: Metainfo, target: StrPath, unpack: Unpack | None = None) -> Storage:
        """Storage writing into ``target + ".part"``, created or kept (resume).

        If ``target`` itself exists, it is used only if every piece verifies (it
        is this payload, already complete); otherwise StorageError, since it is
        not ours to overwrite. With ``unpack``, the map's ranges go to their own
        files under ``directory + ".part"`` and only the rest to ``target``.
        """
        final = pathlib.Path(target)
        if os.path.lexists(final):
            return cls._existing_target(meta, final, unpack)
        part = pathlib.Path(str(final) + PART_SUFFIX)
        if os.path.lexists(part) and part.is_dir() != meta.multi_file:
            kind = "a directory" if meta.multi_file else "a file"
            raise StorageError(f"{part} is in the way: this torrent needs {kind} there")
        trees, spans = _layout(meta, part, unpack, PART_SUFFIX)
        # A map's directory may be on the payload's file system or another: add up per device.
        needs: dict[int, tuple[pathlib.Path, int, os.statvfs_result]] = {}
        for root, files in trees:
            parent = root.parent
            if not parent.is_dir():
                raise StorageError(
                    f"cannot download to {_strip_part(root)}: directory {parent} does not exist"
                )
            needed = sum(max(0, f.length - allocated_bytes(f.path)) for f in files)
            try:
                device, stats = os.stat(parent).st_dev, os.statvfs(parent)
            except OSError as exc:
                raise storage_error(f"cannot check free space in {parent}", exc) from exc
            before = needs.get(device, (parent, 0, stats))[1]
            needs[device] = (parent, before + needed, stats)
        for parent, needed, stats in needs.values():
            check_free_space(parent, needed, stats)
        storage = cls(meta, trees, final=False, spans=spans)
        make_room_for_files(len(storage._files))
        try:
            for root, _ in trees[1:]:
                _make_directory(root)  # a map's directory, even when it lists no file
            made: set[pathlib.Path] = set()
            for root, files in trees:
                for f in files:
                    create_file(f, root, made)
        except BaseException:
            storage.close()
            raise
        return storage

    @classmethod
    def for_seed(cls, meta: Metainfo, path: StrPath, unpack: Unpack | None = None) -> Storage:
        """Read-only storage over a payload already at ``path`` (file or directory).

        Nothing is verified yet: call ``verify_all`` to mark the pieces.
        """
        root = pathlib.Path(path)
        trees, spans = _layout(meta, root, unpack, "")
        if meta.multi_file and not root.is_dir():
            raise StorageError(f"{root} must be a directory: the torrent holds several files")
        storage = cls(meta, trees, final=True, spans=spans)
        make_room_for_files(len(storage._files))
        try:
            for tree_root, files in trees:
                for f in files:
                    open_existing(f, tree_root)
        except BaseException:
            storage.close()
            raise
        return storage

    @classmethod
    def _existing_target(
        cls, meta: Metainfo, final: pathlib.Path, unpack: Unpack | None
    ) -> Storage:
        try:
            storage = cls.for_seed(meta, final, unpack)
        except StorageError as exc:
            raise StorageError(
                f"{final} already exists and is not this payload ({exc}); refusing to overwrite it"
            ) from exc
        try:
            good = storage.verify_all()
        except BaseException:
            storage.close()
            raise
        if good != meta.num_pieces:
            storage.close()
            raise StorageError(
                f"{final} already exists and is not this payload ({meta.num_pieces - good} of "
                f"{meta.num_pieces} pieces differ); refusing to overwrite it"
            )
        return storage

    # -- state ------------------------------------------------------------------------
    @property
    def path(self) -> pathlib.Path:
        """Where the payload is now: the .part name until ``finalize``."""
        return self._trees[0][0]

    @property
    def finalized(self) -> bool:
        """The payload is under its final name (seeding, or download finished)."""
        return self._finalized

    def has(self, index: int) -> bool:
        """Piece ``index`` is verified; False for any index out of range."""
        return 0 <= index < len(self._have) and self._have[index] == 1

    @property
    def have_count(self) -> int:
        return self._have_count

    @property
    def complete(self) -> bool:
        return self._have_count == len(self._have)

    def bitfield(self) -> bytes:
        """BEP 3 order: piece 0 is the high bit of byte 0; spare bits are zero."""
        return bytes(self._bits)

    def _mark(self, index: int, good: bool) -> None:
        if self._have[index] == good:
            return
        self._have[index] = good
        self._have_count += 1 if good else -1
        self._bits[index >> 3] ^= 0x80 >> (index & 7)

    # -- blocks -----------------------------------------------------------------------
    def write_block(self, index: int, begin: int, data: bytes | memoryview) -> None:
        """Write one received block; ignored when the piece is already verified.

        A verified piece needs nothing more, and a late duplicate from some peer
        must never replace bytes that passed the hash.
        """
        self._check_open()
        if not self._writable:
            raise StorageError(f"{self.path} is open read-only; cannot write piece {index}")
        length = len(data)
        self._check_range(index, begin, length, "write")
        if self._have[index]:
            return
        offset = index * self._piece_length + begin
        if len(self._spans) == 1:  # the common single-file case: one pwrite, no slicing
            pwrite_all(self._spans[0].file, data, offset)
            return
        view = memoryview(data).cast("B")
        pos = 0
        for f, local, size in self._extents(offset, length):
            pwrite_all(f, view[pos : pos + size], local)
            pos += size

    def read_block(self, index: int, begin: int, length: int) -> bytes:
        """Bytes of a verified piece, for uploading."""
        return bytes(self.read_frame(b"", index, begin, length))

    def read_frame(self, head: bytes, index: int, begin: int, length: int) -> bytearray:
        """``head`` followed by a block of a verified piece, read straight into one buffer.

        An upload goes out as one write of header and block: no join copy, and no
        13-byte packet of its own ahead of the block.
        """
        self._check_readable(index, begin, length)
        frame = bytearray(len(head) + length)
        frame[: len(head)] = head
        view = memoryview(frame)
        pos = len(head)
        for f, local, size in self._extents(index * self._piece_length + begin, length):
            pread_into(f, local, view[pos : pos + size])
            pos += size
        return frame

    def upload_extents(self, index: int, begin: int, length: int) -> list[tuple[int, int, int]]:
        """(descriptor, offset, size) of a block of a verified piece, for ``os.sendfile``."""
        self._check_readable(index, begin, length)
        return [
            (f.fd, local, size)
            for f, local, size in self._extents(index * self._piece_length + begin, length)
        ]

    def _check_readable(self, index: int, begin: int, length: int) -> None:
        self._check_open()
        if not self.has(index):
            raise StorageError(f"piece {index} is not verified; refusing to read from it")
        if length > MAX_READ:
            raise StorageError(f"read of {length} bytes is over the cap of {MAX_READ} bytes")
        self._check_range(index, begin, length, "read")
        if self._unchecked is not None and self._unchecked[index]:
            if not self.check_piece(index):
                raise PayloadMismatchError(
                    f"{self.path} does not match the torrent: piece {index} fails its SHA-1 check"
                )
            self._unchecked[index] = 0

    def verify_piece(self, index: int) -> bool:
        """Read the piece back and check its SHA-1; marks it verified on success."""
        good = self.check_piece(index)
        self.record_check(index, good)
        return good

    def check_piece(
        self, index: int, digest: Optional[hashlib._Hash] = None, start: int = 0
    ) -> bool:
        """Whether the piece on disk matches its SHA-1, changing nothing.

        ``digest`` is a SHA-1 already fed the piece's first ``start`` bytes; only
        the rest is read. Safe to run in another thread while the storage stays
        open and nothing writes to this piece.
        """
        self._check_open()
        if not 0 <= index < len(self._have):
            raise StorageError(f"piece index {index} out of range 0..{len(self._have) - 1}")
        size = self._meta.piece_size(index)
        if not 0 <= start <= size:
            raise StorageError(f"cannot resume the hash of piece {index} at byte {start}")
        if digest is None:
            digest = hashlib.sha1()
        rest = size - start
        base = index * self._meta.piece_length + start
        for f, local, length in self._extents(base, rest):
            end = local + length
            while local < end:
                chunk = pread(f, local, min(_CHUNK, end - local))
                if not chunk:
                    return False  # file shorter than the torrent says
                digest.update(chunk)
                local += len(chunk)
        return digest.digest() == self._meta.piece_hash(index)

    def record_check(self, index: int, good: bool) -> None:
        """Mark piece ``index`` as verified or not, after ``check_piece``."""
        self._check_open()
        self._mark(index, good)

    def assume_complete(self) -> None:
        """Take every piece as good now and hash each the first time it is read.

        For a seeder whose payload was hashed into the torrent moments ago: checking
        it all again before serving would keep a whole deploy waiting (a second at
        1 GB/s per GB). Nothing unchecked ever leaves: a piece that fails its hash
        raises PayloadMismatchError on that first read.
        """
        self._check_open()
        for index in range(len(self._have)):
            self._mark(index, True)
        self._unchecked = bytearray(b"\x01" * len(self._have))

    def verify_all(self, progress: Optional[Callable[[int], None]] = None, threads: int = 0) -> int:
        """Hash-check every piece on disk; returns how many are good.

        ``progress(n)`` is called after each piece, in order, with its size in bytes.
        Pieces are checked on ``threads`` threads (``parallel.HASH_THREADS`` by default).
        """
        meta = self._meta
        indexes = range(meta.num_pieces)
        for index, good in zip(indexes, ordered_map(self.check_piece, indexes, threads)):
            self.record_check(index, good)
            if progress is not None:
                progress(meta.piece_size(index))
        return self._have_count

    # -- finishing --------------------------------------------------------------------
    def flush_in_background(self) -> None:
        """Start writing what is downloaded so far to disk, on a thread, without waiting.

        The fsync before the final rename then has only the rest to wait for: on a
        1 GiB download here it waited 0.8 s after the last piece when nothing had been
        flushed before. Errors are left to that fsync, which reports them.
        """
        if self._flusher is not None and self._flusher.is_alive():
            return
        fds = [f.fd for f in self._files if f.fd >= 0]
        self._flusher = threading.Thread(
            target=flush_all, args=(fds,), name="murder-flush", daemon=True
        )
        self._flusher.start()

    def _join_flusher(self) -> None:
        # The thread holds our descriptors: they must not close (and be reused) under it.
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None

    def finalize(self) -> pathlib.Path:
        """All pieces verified: fsync, then rename ``.part`` to the final name."""
        self._check_open()
        self._join_flusher()
        if self._finalized:
            return self.path
        final = _strip_part(self.path)
        if not self.complete:
            missing = len(self._have) - self._have_count
            raise StorageError(
                f"cannot finalize {final}: {missing} of {len(self._have)} pieces are not verified"
            )
        for f in self._files:
            if f.executable:
                make_executable(f)  # only now: a half-downloaded program must not run
        by_fd = {f.fd: f for f in self._files}
        sync_all(
            list(by_fd),
            lambda fd, exc: storage_error(f"cannot fsync {by_fd[fd].path}", exc),
        )
        # One process owns a target, so checking first is enough; rename alone would
        # silently replace an existing file. A map's directory goes first: the payload's
        # final name is what says "done".
        for root, _ in self._trees:
            if os.path.lexists(_strip_part(root)):
                raise StorageError(
                    f"cannot finalize: {_strip_part(root)} already exists; refusing to replace it"
                )
        for i, (root, files) in reversed(list(enumerate(self._trees))):
            done = _strip_part(root)
            try:
                os.rename(root, done)
            except OSError as exc:
                raise storage_error(f"cannot rename {root} to {done}", exc) from exc
            fsync_directory(done.parent)
            self._trees[i] = (done, files)
            for f in files:
                f.path = done.joinpath(*f.parts)
        self._finalized = True
        self._writable = False
        return final

    def close(self) -> None:
        """Close every descriptor; safe to call twice."""
        self._closed = True
        self._join_flusher()
        for f in self._files:
            if f.fd >= 0:
                fd, f.fd = f.fd, -1
                os.close(fd)

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------
    def _check_open(self) -> None:
        # A closed descriptor number may already belong to another file: never reuse it.
        if self._closed:
            raise StorageError(f"storage for {self.path} is closed")

    def _check_range(self, index: int, begin: int, length: int, what: str) -> None:
        if not 0 <= index <= self._last_index:
            raise StorageError(
                f"cannot {what} piece {index}: index out of range 0..{self._last_index}"
            )
        size = self._piece_length if index < self._last_index else self._last_size
        if length <= 0 or begin < 0 or begin + length > size:
            raise StorageError(
                f"cannot {what} {length} bytes at {begin} in piece {index} of {size} bytes"
            )

    def _extents(self, offset: int, length: int) -> list[tuple[PayloadFile, int, int]]:
        """(file, offset in file, length) covering ``length`` payload bytes from ``offset``."""
        out = []
        slot = bisect.bisect_right(self._starts, offset) - 1
        end = offset + length
        while offset < end:
            span = self._spans[slot]
            local = offset - span.offset
            size = min(end - offset, span.length - local)
            out.append((span.file, span.at + local, size))
            offset += size
            slot += 1
        return out


def _strip_part(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name[: -len(PART_SUFFIX)])


def _layout(
    meta: Metainfo, root: pathlib.Path, unpack: Unpack | None, suffix: str
) -> tuple[list[Tree], list[Span] | None]:
    if unpack is None:
        return [(root, payload_layout(meta, root))], None
    if meta.multi_file:
        raise StorageError(
            "an unpack map needs a single-file torrent (a tarball); this one holds several files"
        )
    entries, directory = unpack
    dir_root = pathlib.Path(str(directory) + suffix)
    files, spans = unpack_layout(entries, meta.total_length, root, dir_root)
    return [(root, files[:1]), (dir_root, files[1:])], spans


def _make_directory(path: pathlib.Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise storage_error(f"cannot create directory {path}", exc) from exc
    if path.is_symlink() or not path.is_dir():
        raise StorageError(f"{path} is in the way: the unpack map needs a directory there")
