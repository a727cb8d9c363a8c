"""The inputs and disk work behind ``metainfo.make_metainfo`` / ``write_torrent``.

Choosing a piece length, turning a tracker address into an announce URL,
listing the payload, hashing it piece by piece in constant memory, and writing
a file atomically. Kept apart from ``metainfo`` so that module stays about the
format; ``metainfo`` re-exports the public names, so import them from there.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional, Sequence
from urllib.parse import urlsplit

from .errors import MetainfoError, StorageError
from .parallel import HASH_THREADS, ordered_map

MIN_CHOSEN_PIECE_LENGTH = 256 * 1024
MAX_CHOSEN_PIECE_LENGTH = 16 * 1024 * 1024
#: choose_piece_length doubles the piece length until there are at most this many.
TARGET_MAX_PIECES = 4000

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_PORT = re.compile(r"[0-9]{1,5}")


def choose_piece_length(total_length: int) -> int:
    """A power of two in 256 KiB..16 MiB giving 2,000-4,000 pieces where the bounds allow.

    Fewer pieces would spread a small swarm badly; many more would bloat the
    torrent and the bitfields for no gain in a datacenter.
    """
    if total_length < 0:
        raise MetainfoError(
            f"total length must not be negative, got {total_length}",
            key="total_length",
            value=total_length,
        )
    piece_length = MIN_CHOSEN_PIECE_LENGTH
    while (
        piece_length < MAX_CHOSEN_PIECE_LENGTH
        and ceil_div(total_length, piece_length) > TARGET_MAX_PIECES
    ):
        piece_length *= 2
    return piece_length


def announce_url(tracker: str) -> str:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> ``http://HOST:PORT/announce``; URLs pass through."""
    if not isinstance(tracker, str):
        raise MetainfoError(
            f"tracker must be a string, got {type(tracker).__name__}", key="announce", value=tracker
        )
    if "://" in tracker:
        check_http_url(tracker, "announce")
        return tracker
    bad = MetainfoError(
        f"tracker must be HOST:PORT, [IPv6]:PORT or an http(s):// URL, got {tracker!r}",
        key="announce",
        value=tracker,
    )
    host, colon, port = tracker.rpartition(":")
    if not colon or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise bad
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise bad from None
    elif not _HOSTNAME.fullmatch(host):
        raise bad
    return f"http://{host}:{int(port)}/announce"


def check_http_url(url: str, key: str) -> None:
    """Refuse anything but a well-formed http(s) URL with a host; ``key`` names the field."""
    bad = MetainfoError(
        f"{key} must be an http:// or https:// URL, got {url!r}", key=key, value=url
    )
    if any(char.isspace() or not char.isprintable() for char in url):
        raise bad
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        raise bad from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise bad
    if port == 0:
        raise bad


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling division; floats lose precision on multi-terabyte totals."""
    return -(-numerator // denominator)


class SourceFile(NamedTuple):
    """A regular file of the payload and where it sits in the torrent."""

    parts: tuple[str, ...]  # path relative to the torrent root; (name,) for single-file
    path: Path
    length: int
    executable: bool = False  # any x bit: carried as BEP 47's attr "x"


def collect_files(
    root: Path, *, exclude: Sequence[str] = (), skip_symlinks: bool = False
) -> list[SourceFile]:
    """Every regular file under ``root``, sorted by relative path components.

    Symlinks and special files are refused rather than skipped: a deploy that
    silently drops part of the release is worse than one that does not start.
    ``skip_symlinks`` is for a caller that carries the symlinks some other way (the
    deploy's tree manifest). A name matching a glob of ``exclude`` is left out with
    everything under it (Murder's tarball left out ``.git*`` that way).
    Empty directories vanish, as BitTorrent has no way to carry them.
    """
    found: list[SourceFile] = []
    pending: list[tuple[tuple[str, ...], Path]] = [((), root)]
    while pending:
        parts, directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                listed = [(entry.name, entry.stat(follow_symlinks=False)) for entry in entries]
        except OSError as exc:
            raise StorageError(f"cannot list {directory}: {exc.strerror or exc}") from exc
        for name, info in listed:
            if any(fnmatch.fnmatchcase(name, glob) for glob in exclude):
                continue
            child, child_parts = directory / name, (*parts, name)
            if stat.S_ISDIR(info.st_mode):
                pending.append((child_parts, child))
            elif stat.S_ISREG(info.st_mode):
                found.append(
                    SourceFile(child_parts, child, info.st_size, bool(info.st_mode & 0o111))
                )
            elif stat.S_ISLNK(info.st_mode):
                if skip_symlinks:
                    continue
                raise MetainfoError(
                    f"refusing symlink {child}: torrents carry only regular files",
                    key="path",
                    value=str(child),
                )
            else:
                raise MetainfoError(
                    f"refusing special file {child}: torrents carry only regular files",
                    key="path",
                    value=str(child),
                )
    found.sort(key=lambda source: source.parts)
    return found


#: Cap on the piece buffers being hashed at once, whatever the piece length.
HASH_BUFFER_BYTES = 64 * 1024 * 1024


def hash_pieces(
    files: Sequence[SourceFile],
    piece_length: int,
    progress: Optional[Callable[[int], None]] = None,
    threads: int = 0,
) -> bytes:
    """Concatenated SHA-1s of the files' bytes laid end to end, cut into pieces.

    Each piece is read with ``readinto`` (unbuffered, so no extra copy) across file
    boundaries into a buffer of its own and hashed on one of ``threads`` threads
    (``parallel.HASH_THREADS`` by default) while the next pieces are read; memory stays
    at a few pieces whatever the payload size. ``progress`` gets each piece's size once
    it is read (its hash follows a few pieces behind at most). A file that shrinks or
    grows while we read it is an error, since the hashes would describe bytes nobody can
    serve.
    """
    threads = threads or HASH_THREADS
    # ordered_map takes a piece only once the oldest has come back: ``ahead`` buffers do.
    ahead = max(1, min(2 * threads, HASH_BUFFER_BYTES // piece_length))
    spare = [bytearray(piece_length) for _ in range(ahead)]

    def pieces() -> Iterator[tuple[bytearray, int]]:
        for buffer, size in _read_pieces(files, piece_length, spare.pop):
            if progress is not None:
                progress(size)
            yield buffer, size

    def sha1(piece: tuple[bytearray, int]) -> tuple[bytes, bytearray]:
        buffer, size = piece
        return hashlib.sha1(memoryview(buffer)[:size]).digest(), buffer

    digests = bytearray()
    for digest, buffer in ordered_map(sha1, pieces(), threads, ahead):
        digests += digest
        spare.append(buffer)
    return bytes(digests)


def _read_pieces(
    files: Sequence[SourceFile], piece_length: int, next_buffer: Callable[[], bytearray]
) -> Iterator[tuple[bytearray, int]]:
    """(buffer, bytes in it) for each piece, in order; the caller owns each buffer after."""
    buffer = next_buffer()
    view = memoryview(buffer)
    filled = 0
    for source in files:
        try:
            handle = open(source.path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise StorageError(f"cannot read {source.path}: {exc.strerror or exc}") from exc
        with handle:
            remaining = source.length
            try:
                while remaining:
                    want = min(piece_length - filled, remaining)
                    got = handle.readinto(view[filled : filled + want])
                    if not got:
                        done = source.length - remaining
                        raise StorageError(
                            f"{source.path} shrank while hashing: expected {source.length} "
                            f"bytes, ended after {done}"
                        )
                    filled += got
                    remaining -= got
                    if filled == piece_length:
                        view.release()
                        yield buffer, filled
                        buffer = next_buffer()
                        view = memoryview(buffer)
                        filled = 0
                grew = handle.read(1)
            except OSError as exc:
                raise StorageError(f"cannot read {source.path}: {exc.strerror or exc}") from exc
            if grew:
                raise StorageError(
                    f"{source.path} grew while hashing: expected {source.length} bytes"
                )
    view.release()
    if filled:
        yield buffer, filled


def write_atomic(target: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``target`` so readers see the old file or the whole new one.

    The bytes go to ``<target>.tmp`` in the same directory (so the rename cannot
    cross filesystems), are fsynced, then renamed over ``target``; the directory
    is fsynced so the rename survives a crash. On any failure the temporary file
    is removed and ``target`` is untouched.
    """
    tmp = target.with_name(target.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    except OSError as exc:
        raise StorageError(f"cannot write {tmp}: {exc.strerror or exc}") from exc
    try:
        try:
            # fchmod because os.open's mode is filtered through the umask.
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        _remove_quietly(tmp)
        raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_directory(target.parent)


def _remove_quietly(path: Path) -> None:
    # Already gone, or the directory forbids it: nothing more we can do, and the
    # error that brought us here is the one worth reporting.
    with contextlib.suppress(OSError):
        os.unlink(path)


def _fsync_directory(directory: Path) -> None:
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
