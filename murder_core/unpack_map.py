"""``murder peer --unpack-map``: ranges of a single-file payload written as files of their own.

A plain (uncompressed) tarball is its members' bytes with headers and padding in
between. Given a map of where each member's bytes sit, a peer writes every listed
range straight into its own file under a directory, and only the rest (headers,
padding, members the map leaves out) into the payload file. Installing the release
then keeps those files where they are instead of copying every byte a second time,
which halves what each host writes and the disk space a deploy needs.

The swarm does not change: pieces are still pieces of the tarball, checked against
its hashes, and served to any client. The map only says where this host keeps them.

The map is JSON: ``{"version": 1, "length": N, "files": [[offset, length, "dir/name"],
...]}``, N being the payload's length, entries sorted by offset and not overlapping.
"""

from __future__ import annotations

import pathlib

from .errors import StorageError, UnpackMapError
from .payload_files import PayloadFile, Span, join_inside
from .records import record

MAP_VERSION = 1
#: About 60 bytes an entry: room for millions of files, and a cap on what a host reads.
MAX_MAP_BYTES = 256 * 1024 * 1024


@record
class MapEntry:
    offset: int
    length: int
    parts: tuple[str, ...]


def read_unpack_map(path: str, total_length: int) -> list[MapEntry]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MAP_BYTES + 1)
    except OSError as exc:
        raise UnpackMapError(f"cannot read unpack map {path}: {exc.strerror}") from None
    if len(data) > MAX_MAP_BYTES:
        raise UnpackMapError(f"unpack map {path} is over the cap of {MAX_MAP_BYTES} bytes")
    return parse_unpack_map(data, total_length, path)


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise UnpackMapError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def parse_unpack_map(data: bytes, total_length: int, where: str = "unpack map") -> list[MapEntry]:
    """The entries of a map for a payload of ``total_length`` bytes, every one checked."""
    import json  # here: a peer without a map starts without it

    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnpackMapError(f"{where} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != MAP_VERSION:
        found = doc.get("version") if isinstance(doc, dict) else type(doc).__name__
        raise UnpackMapError(f"{where}: expected version {MAP_VERSION}, got {found!r}")
    if doc.get("length") != total_length:
        raise UnpackMapError(
            f"{where} is for a payload of {doc.get('length')!r} bytes, "
            f"but the torrent's is {total_length}"
        )
    rows = doc.get("files")
    if not isinstance(rows, list):
        raise UnpackMapError(f"{where}: 'files' must be a list")
    entries: list[MapEntry] = []
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    end = 0
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 3 or not isinstance(row[2], str):
            raise UnpackMapError(f"{where}: entry {i} must be [offset, length, path]")
        offset = _int(row[0], f"{where}: entry {i} offset")
        length = _int(row[1], f"{where}: entry {i} length")
        name = row[2]
        if length == 0:
            raise UnpackMapError(f"{where}: entry {i} ({name!r}) is empty")
        if offset < end:
            raise UnpackMapError(
                f"{where}: entry {i} ({name!r}) starts at {offset}, inside or before "
                f"the previous entry (which ends at {end}); entries must be sorted"
            )
        end = offset + length
        if end > total_length:
            raise UnpackMapError(
                f"{where}: entry {i} ({name!r}) ends at {end}, past the payload's "
                f"{total_length} bytes"
            )
        parts = tuple(name.split("/"))
        try:
            join_inside(pathlib.Path("."), parts)
        except StorageError as exc:
            raise UnpackMapError(f"{where}: entry {i}: {exc}") from None
        ancestors = {parts[:k] for k in range(1, len(parts))}
        if parts in files or parts in dirs or ancestors & files:
            raise UnpackMapError(f"{where}: entry {i} ({name!r}) clashes with another entry's path")
        files.add(parts)
        dirs |= ancestors
        entries.append(MapEntry(offset, length, parts))
    return entries


def unpack_layout(
    entries: list[MapEntry], total_length: int, rest: pathlib.Path, directory: pathlib.Path
) -> tuple[list[PayloadFile], list[Span]]:
    """The disk files (the rest file first) and the spans covering the payload in order."""
    rest_file = PayloadFile(rest, (), total_length - sum(e.length for e in entries), 0)
    files = [rest_file]
    spans: list[Span] = []
    at = 0  # where the next unlisted byte goes in the rest file
    pos = 0
    for e in entries:
        if e.offset > pos:
            spans.append(Span(rest_file, pos, e.offset - pos, at))
            at += e.offset - pos
        f = PayloadFile(directory.joinpath(*e.parts), e.parts, e.length, e.offset)
        files.append(f)
        spans.append(Span(f, e.offset, e.length, 0))
        pos = e.offset + e.length
    if pos < total_length:
        spans.append(Span(rest_file, pos, total_length - pos, at))
    return files, spans
