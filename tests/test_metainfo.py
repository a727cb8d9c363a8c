from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import random
import re
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import need

from murder_core.bencoding import decode, encode
from murder_core.errors import MetainfoError
from murder_core.metainfo import (
    MAX_TORRENT_BYTES,
    FileEntry,
    Metainfo,
    make_metainfo,
    parse_metainfo,
    read_metainfo,
)

ANNOUNCE = "http://127.0.0.1:8998/announce"
Torrent = dict[bytes, Any]


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


# --- making, and reading back what we made ------------------------------------------------


def test_single_file_round_trip(tmp_path: Path) -> None:
    payload = _content(100_000)
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    data, meta = make_metainfo(source, "127.0.0.1:8998", piece_length=32768)
    assert parse_metainfo(data) == meta
    assert (meta.announce, meta.name, meta.multi_file, meta.private) == (
        ANNOUNCE,
        "payload.bin",
        False,
        False,
    )
    assert meta.files == (FileEntry(("payload.bin",), 100_000, 0),)
    assert meta.total_length == 100_000
    assert meta.pieces == _piece_hashes(payload, 32768)
    assert meta.num_pieces == 4
    assert [meta.piece_size(i) for i in range(4)] == [32768, 32768, 32768, 100_000 - 3 * 32768]
    assert meta.piece_hash(3) == hashlib.sha1(payload[3 * 32768 :]).digest()


def test_multi_file_round_trip_with_empty_files_and_spanning_pieces(tmp_path: Path) -> None:
    files = {
        "z": b"",
        "b/d/e.bin": _content(40_000, 1),
        "a.bin": _content(20_000, 2),
        "b/empty": b"",
        "b/c.bin": b"12345",
    }
    root = _tree(tmp_path / "release", files)
    (root / "nothing-inside").mkdir()  # BitTorrent cannot carry empty directories
    data, meta = make_metainfo(root, ANNOUNCE, piece_length=16384)
    assert parse_metainfo(data) == meta
    assert (meta.name, meta.multi_file, meta.total_length) == ("release", True, 60_005)
    assert meta.files == (
        FileEntry(("a.bin",), 20_000, 0),
        FileEntry(("b", "c.bin"), 5, 20_000),
        FileEntry(("b", "d", "e.bin"), 40_000, 20_005),
        FileEntry(("b", "empty"), 0, 60_005),
        FileEntry(("z",), 0, 60_005),
    )
    payload = b"".join(files["/".join(entry.path)] for entry in meta.files)
    assert meta.pieces == _piece_hashes(payload, 16384)
    assert meta.piece_size(meta.num_pieces - 1) == 60_005 - 3 * 16384


def test_info_hash_is_sha1_of_the_info_dict_and_stable(tmp_path: Path) -> None:
    source = tmp_path / "release.tar"
    source.write_bytes(b"murder\n" * 10_000)
    first, meta = make_metainfo(source, ANNOUNCE, piece_length=16384)
    again, meta_again = make_metainfo(source, ANNOUNCE, piece_length=16384)
    info = decode(first)[b"info"]
    assert meta.info_hash.raw == hashlib.sha1(encode(info)).digest()
    assert (again, meta_again.info_hash) == (first, meta.info_hash)
    # Pinned (libtorrent 2.1 makes the same): a change would give every torrent a new identity.
    assert meta.info_hash.hex == "cf11c9b354862ca934a65197b89a45d892c48930"
    other_tracker, _ = make_metainfo(source, "http://10.0.0.1:1/announce", piece_length=16384)
    assert parse_metainfo(other_tracker).info_hash == meta.info_hash


def test_private_flag(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x" * 1000)
    data, meta = make_metainfo(source, ANNOUNCE, private=True)
    assert meta.private is True
    assert decode(data)[b"info"][b"private"] == 1
    assert meta.info_hash != make_metainfo(source, ANNOUNCE)[1].info_hash


def test_progress_reports_every_piece(tmp_path: Path) -> None:
    root = _tree(tmp_path / "r", {"a": _content(50_000), "b": _content(10_000, 3)})
    seen: list[int] = []
    _, meta = make_metainfo(root, ANNOUNCE, piece_length=16384, progress=seen.append)
    assert seen == [meta.piece_size(i) for i in range(meta.num_pieces)]
    assert sum(seen) == 60_000


def test_default_piece_length_is_chosen(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x" * 1000)
    assert make_metainfo(source, ANNOUNCE)[1].piece_length == 256 * 1024


def test_name_of_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "rel-1", {"f": b"data"})
    monkeypatch.chdir(root)
    assert make_metainfo(".", ANNOUNCE)[1].name == "rel-1"


@pytest.mark.parametrize("index", [-1, 4])
def test_piece_index_out_of_range(tmp_path: Path, index: int) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x" * 60_000)
    meta = make_metainfo(source, ANNOUNCE, piece_length=16384)[1]
    with pytest.raises(IndexError, match=f"piece index {index} out of range 0..3"):
        meta.piece_hash(index)
    with pytest.raises(IndexError):
        meta.piece_size(index)


# --- reading -----------------------------------------------------------------------------


def test_read_metainfo(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    data, meta = make_metainfo(tmp_path / "f", ANNOUNCE)
    (tmp_path / "t.torrent").write_bytes(data)
    assert read_metainfo(tmp_path / "t.torrent") == meta
    assert read_metainfo(str(tmp_path / "t.torrent")) == meta


def test_read_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(MetainfoError) as caught:
        read_metainfo(tmp_path / "nope.torrent")
    assert (
        str(caught.value)
        == f"cannot read torrent {tmp_path}/nope.torrent: No such file or directory"
    )
    assert (caught.value.key, caught.value.value) == (None, str(tmp_path / "nope.torrent"))


def test_read_refuses_oversized_file_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.torrent"
    with open(path, "wb") as handle:
        handle.truncate(MAX_TORRENT_BYTES + 1)
    with pytest.raises(MetainfoError) as caught:
        read_metainfo(path)
    assert (
        str(caught.value)
        == f"{path}: torrent is 33554433 bytes, more than the cap of 33554432 bytes"
    )
    assert caught.value.value == MAX_TORRENT_BYTES + 1


def test_read_prefixes_validation_errors_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.torrent"
    path.write_bytes(encode({"info": {}}))
    with pytest.raises(MetainfoError) as caught:
        read_metainfo(path)
    assert str(caught.value) == f"{path}: announce is missing"
    assert caught.value.key == "announce"


# --- validation of every field -----------------------------------------------------------


def _single() -> Torrent:
    info = {b"name": b"payload.tar", b"piece length": 16384, b"pieces": bytes(40), b"length": 20000}
    return {b"announce": ANNOUNCE.encode(), b"info": info}


def _multi() -> Torrent:
    files = [{b"length": 10000, b"path": [b"a"]}, {b"length": 10000, b"path": [b"d", b"b"]}]
    info = {b"name": b"release", b"piece length": 16384, b"pieces": bytes(40), b"files": files}
    return {b"announce": ANNOUNCE.encode(), b"info": info}


DROP = object()  # in the tables below: remove the field instead of setting it


def _edit(torrent: Torrent, where: str, new: Any) -> None:
    """Set (or DROP) the field named like an error key, e.g. ``info.files[1].path[0]``."""
    steps: list[Any] = [
        int(step[1:-1]) if step.startswith("[") else step.encode()
        for step in re.findall(r"\[\d+\]|[^.\[\]]+", where)
    ]
    target: Any = torrent
    for step in steps[:-1]:
        target = target[step]
    if new is DROP:
        del target[steps[-1]]
    else:
        target[steps[-1]] = new


def _broken(where: str, new: Any) -> bytes:
    torrent = _multi() if where.startswith("info.files") else _single()
    _edit(torrent, where, new)
    return encode(torrent)


# (field, new value, message after the field name, MetainfoError.value); key == field.
@pytest.mark.parametrize(
    ("where", "new", "problem", "value"),
    [
        ("announce", DROP, "is missing", None),
        ("announce", 5, "must be a byte string, got an integer", 5),
        ("announce", b"\xff", "is not valid UTF-8: b'\\xff'", b"\xff"),
        ("announce", b"udp://t:1/a", "must be an http:// or https:// URL, got 'udp://t:1/a'",
         "udp://t:1/a"),
        ("announce", b"http:///a", "must be an http:// or https:// URL, got 'http:///a'",
         "http:///a"),
        ("info", DROP, "is missing", None),
        ("info", [], "must be a dict, got a list", []),
        ("info.name", DROP, "is missing", None),
        ("info.name", 1, "must be a byte string, got an integer", 1),
        ("info.name", b"", "must not be empty", ""),
        ("info.name", b"..", "must not be '..'", ".."),
        ("info.name", b".", "must not be '.'", "."),
        ("info.name", b"a/b", "must not contain '/', got 'a/b'", "a/b"),
        ("info.name", b"a\0", "must not contain NUL, got 'a\\x00'", "a\0"),
        ("info.name", b"\xc3(", "is not valid UTF-8: b'\\xc3('", b"\xc3("),
        ("info.piece length", DROP, "is missing", None),
        ("info.piece length", b"1", "must be an integer, got a byte string", b"1"),
        ("info.piece length", 1000, "must be a positive multiple of 16 KiB, got 1000", 1000),
        ("info.piece length", 0, "must be a positive multiple of 16 KiB, got 0", 0),
        ("info.piece length", -16384, "must be a positive multiple of 16 KiB, got -16384",
         -16384),
        ("info.piece length", 128 << 20, "must be at most 64 MiB, got 134217728", 128 << 20),
        ("info.pieces", DROP, "is missing", None),
        ("info.pieces", 7, "must be a byte string, got an integer", 7),
        ("info.pieces", bytes(41), "length must be a multiple of 20, got 41", 41),
        ("info.pieces", bytes(60), "holds 3 hashes, but 20000 bytes in pieces of 16384 need 2",
         3),
        ("info.pieces", bytes(20), "holds 1 hashes, but 20000 bytes in pieces of 16384 need 2",
         1),
        ("info.private", 2, "must be 0 or 1, got 2", 2),
        ("info.private", b"1", "must be 0 or 1, got b'1'", b"1"),
        ("info.length", b"5", "must be an integer, got a byte string", b"5"),
        ("info.length", -1, "must not be negative, got -1", -1),
        ("info.files", b"x", "must be a list, got a byte string", b"x"),
        ("info.files", [], "must not be empty", []),
        ("info.files[0]", 5, "must be a dict, got an integer", 5),
        ("info.files[1].length", DROP, "is missing", None),
        ("info.files[1].length", -5, "must not be negative, got -5", -5),
        ("info.files[0].path", DROP, "is missing", None),
        ("info.files[0].path", b"a", "must be a list, got a byte string", b"a"),
        ("info.files[0].path", [], "must not be empty", []),
        ("info.files[0].path", [b"/etc", b"passwd"], "must be relative, got b'/etc'",
         [b"/etc", b"passwd"]),
        ("info.files[0].path[0]", b"..", "must not be '..'", ".."),
        ("info.files[1].path[1]", b".", "must not be '.'", "."),
        ("info.files[1].path[1]", b"", "must not be empty", ""),
        ("info.files[0].path[0]", b"x/y", "must not contain '/', got 'x/y'", "x/y"),
        ("info.files[0].path[0]", b"x\0", "must not contain NUL, got 'x\\x00'", "x\0"),
        ("info.files[1].path[1]", 7, "must be a byte string, got an integer", 7),
        ("info.files[0].path[0]", b"\xff", "is not valid UTF-8: b'\\xff'", b"\xff"),
        ("info.files[1].path", [b"a"], "duplicates info.files[0].path: 'a'", "a"),
        ("info.files[0].attr", 5, "must be a byte string, got an integer", 5),
        ("info.attr", [b"x"], "must be a byte string, got a list", [b"x"]),
        ("info.files[0].path", [b"d"],
         "'d' is a file but also a directory in info.files[1].path 'd/b'", "d"),
    ],
)  # fmt: skip
def test_parse_refuses_field(where: str, new: Any, problem: str, value: Any) -> None:
    with pytest.raises(MetainfoError) as caught:
        parse_metainfo(_broken(where, new))
    assert (str(caught.value), caught.value.key, caught.value.value) == (
        f"{where} {problem}",
        where,
        value,
    )


@pytest.mark.parametrize(
    ("base", "where", "new", "message", "key", "value"),
    [
        (_single, "info.length", 0, "total length must be positive, got 0", "info.length", 0),
        (_multi, "info.files", [{b"length": 0, b"path": [b"a"]}],
         "total length must be positive, got 0", "info.files", 0),
        (_single, "info.length", DROP,
         "info must have exactly one of 'length' and 'files', got neither", "info", None),
        (_multi, "info.length", 20000,
         "info must have exactly one of 'length' and 'files', got both", "info", None),
        (_multi, "info.files[0].path", [b"d", b"b", b"c"],
         "info.files[1].path 'd/b' is a file but also a directory in info.files[0].path 'd/b/c'",
         "info.files[1].path", "d/b"),
    ],
)  # fmt: skip
def test_parse_refuses_layout(
    base: Callable[[], Torrent], where: str, new: Any, message: str, key: str, value: Any
) -> None:
    torrent = base()
    _edit(torrent, where, new)
    with pytest.raises(MetainfoError) as caught:
        parse_metainfo(encode(torrent))
    assert (str(caught.value), caught.value.key, caught.value.value) == (message, key, value)


_VALID = encode(_single())
_END = len(_VALID)
_NOT_BENCODE = "torrent: invalid bencoding: "


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"garbage", _NOT_BENCODE + "unexpected byte b'g' at byte 0"),
        (_VALID + b"x", _NOT_BENCODE + f"trailing data after the value ending at byte {_END}"),
        (_VALID[:-1], _NOT_BENCODE + f"truncated: input ends at byte {_END - 1} inside a value"),
        (_VALID.replace(b"4:name", b"4:name11:payload.tar4:name"),
         _NOT_BENCODE + "duplicate dict key b'name' at byte 86"),
        (b"li1ee", "torrent must be a dict, got a list"),
        (b"i1e", "torrent must be a dict, got an integer"),
        (bytes(MAX_TORRENT_BYTES + 1),
         "torrent is 33554433 bytes, more than the cap of 33554432 bytes"),
        ("d8:announce", "torrent must be bytes, got str"),
    ],
)  # fmt: skip
def test_parse_refuses_documents(data: Any, message: str) -> None:
    with pytest.raises(MetainfoError) as caught:
        parse_metainfo(data)
    assert str(caught.value) == message
    assert caught.value.key is None


def _encode_unsorted(pairs: list[tuple[bytes, Any]]) -> bytes:
    return b"d" + b"".join(encode(key) + encode(value) for key, value in pairs) + b"e"


def test_parse_refuses_info_keys_out_of_order() -> None:
    info = _single()[b"info"]
    raw_info = _encode_unsorted(sorted(info.items(), reverse=True))
    data = b"d" + encode(b"announce") + encode(ANNOUNCE.encode()) + b"4:info" + raw_info + b"e"
    with pytest.raises(MetainfoError) as caught:
        parse_metainfo(data)
    assert str(caught.value) == (
        "info dict is not canonically bencoded (keys out of order), "
        "so clients would disagree on its info_hash"
    )
    assert (caught.value.key, caught.value.value) == ("info", raw_info)


def test_info_hash_covers_the_exact_info_bytes() -> None:
    # Top-level keys out of order and unknown keys inside info are both fine:
    # the hash is taken over the info value's own bytes, wherever it sits.
    torrent = _single()
    torrent[b"info"][b"source"] = b"build-7"
    raw_info = encode(torrent[b"info"])
    data = b"d4:info" + raw_info + encode(b"announce") + encode(ANNOUNCE.encode()) + b"e"
    meta = parse_metainfo(data)
    assert meta.info_hash.raw == hashlib.sha1(raw_info).digest()
    assert meta == parse_metainfo(encode(torrent))


def test_parse_single_file_fields() -> None:
    meta = parse_metainfo(encode(_single()))
    assert meta == Metainfo(
        info_hash=meta.info_hash,
        announce=ANNOUNCE,
        name="payload.tar",
        piece_length=16384,
        pieces=bytes(40),
        files=(FileEntry(("payload.tar",), 20000, 0),),
        total_length=20000,
        multi_file=False,
        private=False,
    )
    assert meta.info_hash.raw == hashlib.sha1(encode(_single()[b"info"])).digest()


# --- interop with libtorrent --------------------------------------------------------------


def test_executable_files_carry_bep47_attr_x(tmp_path: Path) -> None:
    """Any x bit makes attr "x" (BEP 47), which peers turn back into x bits; other
    clients' attr letters (p padding, h hidden) change nothing."""
    root = _tree(tmp_path / "rel", {"bin/run.sh": b"#!/bin/sh\n", "conf.ini": b"a=1\n"})
    (root / "bin" / "run.sh").chmod(0o750)
    data, meta = make_metainfo(root, ANNOUNCE, piece_length=16384)
    assert [(e.path, e.executable) for e in meta.files] == [
        (("bin", "run.sh"), True),
        (("conf.ini",), False),
    ]
    files = decode(data)[b"info"][b"files"]
    assert [f.get(b"attr") for f in files] == [b"x", None]
    single, meta1 = make_metainfo(root / "bin" / "run.sh", ANNOUNCE, piece_length=16384)
    assert decode(single)[b"info"][b"attr"] == b"x" and meta1.files[0].executable
    torrent = _multi()
    torrent[b"info"][b"files"][0][b"attr"] = b"hx"
    torrent[b"info"][b"files"][1][b"attr"] = b"p"
    assert [e.executable for e in parse_metainfo(encode(torrent)).files] == [True, False]


def _libtorrent() -> Any:
    found = importlib.util.find_spec("libtorrent") is not None
    need(found, "needs the libtorrent Python bindings (pip install libtorrent)")
    return importlib.import_module("libtorrent")


@pytest.mark.interop
def test_libtorrent_agrees_on_our_torrent(tmp_path: Path) -> None:
    lt = _libtorrent()
    root = _tree(tmp_path / "rel", {"a.bin": _content(30_000), "b/c": b"", "b/d": _content(9000)})
    data, meta = make_metainfo(root, ANNOUNCE, piece_length=16384)
    info = lt.torrent_info(data)
    assert info.info_hashes().v1.to_bytes() == meta.info_hash.raw
    assert (info.num_pieces(), info.piece_length(), info.total_size()) == (3, 16384, 39_000)
    storage = info.layout() if hasattr(info, "layout") else info.files()  # files(): lt < 2.1
    names = [storage.file_path(i) for i in range(info.num_files())]
    assert names == [os.path.join("rel", *entry.path) for entry in meta.files]


@pytest.mark.interop
def test_libtorrent_reads_our_executable_bit(tmp_path: Path) -> None:
    lt = _libtorrent()
    root = _tree(tmp_path / "rel", {"run.sh": _content(100), "data": _content(100, 1)})
    (root / "run.sh").chmod(0o755)
    data, _ = make_metainfo(root, ANNOUNCE, piece_length=16384)
    info = lt.torrent_info(data)
    storage = info.layout() if hasattr(info, "layout") else info.files()
    flags = {
        storage.file_path(i): bool(storage.file_flags(i) & lt.file_storage.flag_executable)
        for i in range(info.num_files())
    }
    assert flags == {os.path.join("rel", "data"): False, os.path.join("rel", "run.sh"): True}


@pytest.mark.interop
def test_we_agree_on_a_libtorrent_torrent(tmp_path: Path) -> None:
    lt = _libtorrent()
    files = {"a.bin": _content(30_000), "b/c": _content(100, 5), "b/d": _content(9000, 6)}
    root = _tree(tmp_path / "rel", files)
    sizes = [(f"rel/{relative}", len(payload)) for relative, payload in files.items()]
    if hasattr(lt, "create_file_entry"):  # libtorrent 2.1 deprecates building from file_storage
        layout: Any = [lt.create_file_entry(name, size) for name, size in sizes]
    else:
        layout = lt.file_storage()
        for name, size in sizes:
            layout.add_file(name, size)
    creator = lt.create_torrent(layout, 16384, lt.create_torrent.v1_only)
    creator.add_tracker(ANNOUNCE)
    lt.set_piece_hashes(creator, str(tmp_path))
    data = lt.bencode(creator.generate())
    meta = parse_metainfo(data)
    assert meta.info_hash.raw == lt.torrent_info(data).info_hashes().v1.to_bytes()
    assert meta.pieces == make_metainfo(root, ANNOUNCE, piece_length=16384)[1].pieces
