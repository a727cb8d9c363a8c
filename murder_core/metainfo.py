"""Make, read and validate .torrent files (BEP 3 metainfo); compute the info_hash.

Reading is strict: a torrent comes from outside, and every field the swarm
relies on (piece length, hashes, file layout) is checked before anything uses
it, with an error naming the field (``key``) and keeping what was there
(``value``). The info_hash is the SHA-1 of the exact bytes of the ``info``
value, located by the bencoding scanner; an ``info`` dict that is not
canonically encoded (keys out of order) is refused, because tools that
re-encode it (BitTornado, which the original Murder used, does) would get a
different info_hash and the swarm would split.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from . import __version__, bencoding
from .errors import BencodeError, MetainfoError, StorageError
from .metainfo_make import (
    SourceFile,
    announce_url,
    ceil_div,
    check_http_url,
    choose_piece_length,
    collect_files,
    hash_pieces,
    write_atomic,
)
from .records import record
from .values import InfoHash

BLOCK_SIZE = 16 * 1024
MAX_TORRENT_BYTES = 32 * 1024 * 1024
#: Pieces bigger than this are refused on read: a peer must hold a whole piece in memory.
MAX_PIECE_LENGTH = 64 * 1024 * 1024

StrPath = Union[str, "os.PathLike[str]"]

__all__ = [
    "BLOCK_SIZE",
    "MAX_PIECE_LENGTH",
    "MAX_TORRENT_BYTES",
    "FileEntry",
    "Metainfo",
    "announce_url",
    "choose_piece_length",
    "make_metainfo",
    "parse_metainfo",
    "read_metainfo",
    "write_torrent",
]


@record
class FileEntry:
    """One file of the payload; ``offset`` is where it starts in the concatenated bytes."""

    path: tuple[str, ...]
    length: int
    offset: int
    executable: bool = False  # BEP 47 attr "x": set the x bits where r is set, once verified


@record
class Metainfo:
    """A validated torrent. Single-file torrents have one entry with ``path == (name,)``."""

    info_hash: InfoHash
    announce: str
    name: str
    piece_length: int
    pieces: bytes  # concatenated 20-byte SHA-1s
    files: tuple[FileEntry, ...]
    total_length: int
    multi_file: bool
    private: bool

    def __repr__(self) -> str:  # without the pieces and files, which can be megabytes
        return (
            f"Metainfo(info_hash={self.info_hash!r}, announce={self.announce!r}, "
            f"name={self.name!r}, piece_length={self.piece_length}, "
            f"total_length={self.total_length}, multi_file={self.multi_file}, "
            f"private={self.private})"
        )

    @property
    def num_pieces(self) -> int:
        return len(self.pieces) // 20

    def piece_hash(self, index: int) -> bytes:
        self._check_index(index)
        return self.pieces[index * 20 : index * 20 + 20]

    def piece_size(self, index: int) -> int:
        """Length of piece ``index``; only the last one may be shorter."""
        self._check_index(index)
        return min(self.piece_length, self.total_length - index * self.piece_length)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece index {index} out of range 0..{self.num_pieces - 1}")


def parse_metainfo(data: bytes) -> Metainfo:
    """Validate torrent bytes completely and return the torrent they describe."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MetainfoError(f"torrent must be bytes, got {type(data).__name__}", value=data)
    raw = bytes(data)
    if len(raw) > MAX_TORRENT_BYTES:
        raise MetainfoError(
            f"torrent is {len(raw)} bytes, more than the cap of {MAX_TORRENT_BYTES} bytes",
            value=len(raw),
        )
    try:
        top, spans = bencoding.decode_with_spans(raw, max_size=MAX_TORRENT_BYTES)
    except BencodeError as exc:
        raise MetainfoError(f"torrent: {exc}", value=str(exc)) from exc
    if not isinstance(top, dict):
        raise MetainfoError(f"torrent must be a dict, got {_kind(top)}", value=top)
    announce = _text(top, b"announce", "announce")
    check_http_url(announce, "announce")
    info = _field(top, b"info", dict, "info")
    raw_info = raw[slice(*spans[b"info"])]
    if bencoding.encode(info) != raw_info:
        raise MetainfoError(
            "info dict is not canonically bencoded (keys out of order), "
            "so clients would disagree on its info_hash",
            key="info",
            value=raw_info,
        )
    name = _path_part(_field(info, b"name", bytes, "info.name"), "info.name")
    piece_length = _field(info, b"piece length", int, "info.piece length")
    _check_piece_length(piece_length)
    pieces = _field(info, b"pieces", bytes, "info.pieces")
    if len(pieces) % 20:
        raise MetainfoError(
            f"info.pieces length must be a multiple of 20, got {len(pieces)}",
            key="info.pieces",
            value=len(pieces),
        )
    private = info.get(b"private", 0)
    if not isinstance(private, int) or private not in (0, 1):
        raise MetainfoError(
            f"info.private must be 0 or 1, got {private!r}", key="info.private", value=private
        )
    files, multi_file = _layout(info, name)
    total = sum(entry.length for entry in files)
    if total <= 0:
        key = "info.files" if multi_file else "info.length"
        raise MetainfoError(f"total length must be positive, got {total}", key=key, value=total)
    needed = ceil_div(total, piece_length)
    if len(pieces) // 20 != needed:
        raise MetainfoError(
            f"info.pieces holds {len(pieces) // 20} hashes, but {total} bytes "
            f"in pieces of {piece_length} need {needed}",
            key="info.pieces",
            value=len(pieces) // 20,
        )
    return Metainfo(
        info_hash=InfoHash(hashlib.sha1(raw_info).digest()),
        announce=announce,
        name=name,
        piece_length=piece_length,
        pieces=pieces,
        files=files,
        total_length=total,
        multi_file=multi_file,
        private=private == 1,
    )


def _layout(info: dict[bytes, Any], name: str) -> tuple[tuple[FileEntry, ...], bool]:
    """The files of ``info`` with their offsets, and whether it is a multi-file torrent."""
    if (b"length" in info) == (b"files" in info):
        which = "both" if b"length" in info else "neither"
        raise MetainfoError(
            f"info must have exactly one of 'length' and 'files', got {which}", key="info"
        )
    if b"length" in info:
        length = _length(info, "info.length")
        return (FileEntry((name,), length, 0, _executable(info, "info.attr")),), False
    listed = _field(info, b"files", list, "info.files")
    if not listed:
        raise MetainfoError("info.files must not be empty", key="info.files", value=listed)
    entries: list[FileEntry] = []
    seen: dict[tuple[str, ...], int] = {}
    offset = 0
    for index, item in enumerate(listed):
        where = f"info.files[{index}]"
        if not isinstance(item, dict):
            raise MetainfoError(f"{where} must be a dict, got {_kind(item)}", key=where, value=item)
        length = _length(item, f"{where}.length")
        path = _file_path(_field(item, b"path", list, f"{where}.path"), f"{where}.path")
        if path in seen:
            raise MetainfoError(
                f"{where}.path duplicates info.files[{seen[path]}].path: {'/'.join(path)!r}",
                key=f"{where}.path",
                value="/".join(path),
            )
        seen[path] = index
        entries.append(FileEntry(path, length, offset, _executable(item, f"{where}.attr")))
        offset += length
    for index, entry in enumerate(entries):
        for depth in range(1, len(entry.path)):
            other = seen.get(entry.path[:depth])
            if other is not None:
                prefix = "/".join(entry.path[:depth])
                raise MetainfoError(
                    f"info.files[{other}].path {prefix!r} is a file but also a directory "
                    f"in info.files[{index}].path {'/'.join(entry.path)!r}",
                    key=f"info.files[{other}].path",
                    value=prefix,
                )
    return tuple(entries), True


def _executable(container: dict[bytes, Any], where: str) -> bool:
    """BEP 47's ``attr`` letters; we act on ``x`` only (others, such as ``p`` for padding
    or ``h`` for hidden, change nothing about how the bytes are stored)."""
    if b"attr" not in container:
        return False
    return b"x" in _field(container, b"attr", bytes, where)


def _file_path(parts: list[Any], where: str) -> tuple[str, ...]:
    if not parts:
        raise MetainfoError(f"{where} must not be empty", key=where, value=parts)
    first = parts[0]
    if isinstance(first, bytes) and first.startswith(b"/"):
        raise MetainfoError(f"{where} must be relative, got {first!r}", key=where, value=parts)
    return tuple(
        _path_part(_typed(part, bytes, f"{where}[{i}]"), f"{where}[{i}]")
        for i, part in enumerate(parts)
    )


def _path_part(raw: bytes, where: str) -> str:
    """One path component (or the torrent name) as text, refusing anything that could escape."""
    text = _utf8(raw, where)
    problem = None
    if not text:
        problem = "must not be empty"
    elif text in (".", ".."):
        problem = f"must not be {text!r}"
    elif "/" in text:
        problem = f"must not contain '/', got {text!r}"
    elif "\0" in text:
        problem = f"must not contain NUL, got {text!r}"
    if problem is not None:
        raise MetainfoError(f"{where} {problem}", key=where, value=text)
    return text


def _length(container: dict[bytes, Any], where: str) -> int:
    length: int = _field(container, b"length", int, where)
    if length < 0:
        raise MetainfoError(f"{where} must not be negative, got {length}", key=where, value=length)
    return length


def _check_piece_length(piece_length: int) -> None:
    if piece_length <= 0 or piece_length % BLOCK_SIZE:
        raise MetainfoError(
            f"info.piece length must be a positive multiple of 16 KiB, got {piece_length}",
            key="info.piece length",
            value=piece_length,
        )
    if piece_length > MAX_PIECE_LENGTH:
        raise MetainfoError(
            f"info.piece length must be at most 64 MiB, got {piece_length}",
            key="info.piece length",
            value=piece_length,
        )


def _text(container: dict[bytes, Any], key: bytes, where: str) -> str:
    return _utf8(_field(container, key, bytes, where), where)


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MetainfoError(f"{where} is not valid UTF-8: {raw!r}", key=where, value=raw) from None


def _field(container: dict[bytes, Any], key: bytes, kind: type, where: str) -> Any:
    if key not in container:
        raise MetainfoError(f"{where} is missing", key=where)
    return _typed(container[key], kind, where)


def _typed(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise MetainfoError(
            f"{where} must be {_KINDS[kind]}, got {_kind(value)}", key=where, value=value
        )
    return value


_KINDS = {bytes: "a byte string", int: "an integer", list: "a list", dict: "a dict"}


def _kind(value: Any) -> str:
    for kind, described in _KINDS.items():
        if isinstance(value, kind):
            return described
    return type(value).__name__


def make_metainfo(
    path: StrPath,
    announce: str,
    *,
    piece_length: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
    private: bool = False,
    exclude: Sequence[str] = (),
    skip_symlinks: bool = False,
) -> tuple[bytes, Metainfo]:
    """Hash a file (single-file torrent) or a directory (multi-file) into torrent bytes.

    ``announce`` is a tracker URL or ``HOST:PORT``. Symlinks given as ``path``
    are followed; symlinks and special files inside a directory are refused, or
    symlinks left out with ``skip_symlinks``. Names matching a glob of ``exclude``
    are left out of a directory, with all they hold.
    ``progress(n)`` is called with the size of each piece as it is hashed.
    """
    url = announce_url(announce)
    root = Path(path)
    name = root.name if root.name not in ("", ".", "..") else root.resolve().name
    try:
        is_dir = root.is_dir()
        sources = (
            collect_files(root, exclude=exclude, skip_symlinks=skip_symlinks)
            if is_dir
            else [_single_source(root, name)]
        )
    except OSError as exc:
        raise StorageError(f"cannot read {root}: {exc.strerror or exc}") from exc
    _check_encodable(name, root, "info.name")
    for source in sources if is_dir else ():
        for part in source.parts:
            _check_encodable(part, source.path, "info.files")
    total = sum(source.length for source in sources)
    if total == 0:
        raise MetainfoError(f"nothing to share: {root} holds no bytes", key="path", value=str(root))
    chosen = choose_piece_length(total) if piece_length is None else piece_length
    _check_piece_length(chosen)
    if 20 * ceil_div(total, chosen) > MAX_TORRENT_BYTES:
        raise MetainfoError(
            f"{total} bytes in pieces of {chosen} would need more piece hashes than a torrent "
            f"may hold; use a bigger piece length",
            key="info.piece length",
            value=chosen,
        )
    info: dict[str, Any] = {
        "name": name,
        "piece length": chosen,
        "pieces": hash_pieces(sources, chosen, progress),
    }
    if is_dir:
        info["files"] = [_file_dict(s) for s in sources]
    else:
        info["length"] = total
        if sources[0].executable:
            info["attr"] = "x"
    if private:
        info["private"] = 1
    data = bencoding.encode({"announce": url, "created by": f"murder {__version__}", "info": info})
    # Reading back what we made proves it passes the same checks every peer applies.
    return data, parse_metainfo(data)


def _file_dict(source: SourceFile) -> dict[str, Any]:
    entry: dict[str, Any] = {"length": source.length, "path": list(source.parts)}
    if source.executable:
        entry["attr"] = "x"  # BEP 47: other clients set the x bits from it too
    return entry


def _single_source(path: Path, name: str) -> SourceFile:
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise MetainfoError(
            f"refusing special file {path}: torrents carry only regular files",
            key="path",
            value=str(path),
        )
    return SourceFile((name,), path, info.st_size, bool(info.st_mode & 0o111))


def _check_encodable(part: str, path: Path, key: str) -> None:
    try:
        part.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path)
        raise MetainfoError(
            f"file name {shown!r} is not valid UTF-8", key=key, value=shown
        ) from None


def write_torrent(
    path: StrPath,
    announce: str,
    target: StrPath,
    *,
    piece_length: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
    mode: int = 0o644,
    private: bool = False,
    exclude: Sequence[str] = (),
    skip_symlinks: bool = False,
) -> Metainfo:
    """``make_metainfo`` then write the torrent atomically to ``target`` (via ``target.tmp``).

    Hashing happens before anything is created, so a failure there leaves no file.
    """
    data, meta = make_metainfo(
        path,
        announce,
        piece_length=piece_length,
        progress=progress,
        private=private,
        exclude=exclude,
        skip_symlinks=skip_symlinks,
    )
    write_atomic(Path(target), data, mode)
    return meta


def read_metainfo(path: StrPath) -> Metainfo:
    """Read and validate a .torrent; errors are prefixed with the path."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_TORRENT_BYTES:
                raise MetainfoError(
                    f"{path}: torrent is {size} bytes, more than the cap of "
                    f"{MAX_TORRENT_BYTES} bytes",
                    value=size,
                )
            # Read one byte past the cap: st_size lies for pipes and /proc files.
            data = handle.read(MAX_TORRENT_BYTES + 1)
    except OSError as exc:
        raise MetainfoError(
            f"cannot read torrent {path}: {exc.strerror or exc}", value=str(path)
        ) from exc
    try:
        return parse_metainfo(data)
    except MetainfoError as exc:
        raise MetainfoError(f"{path}: {exc}", key=exc.key, value=exc.value) from exc
