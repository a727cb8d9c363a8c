"""The release helper's side of ``--unpack-map``: the seeder's map and the peer's install.

The peer's half in between is the real engine storage (``Storage.for_download`` with the
map), so each test runs what a deploy runs: GNU tar on the seeder, the map, the download
writing through it, then ``install``'s ``tar-unpacked`` extraction as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fabfile.release import helper_source
from murder_core.metainfo import make_metainfo
from murder_core.storage import Storage
from murder_core.unpack_map import read_unpack_map

PIECE = 32 * 1024
BLOCK = 16 * 1024


def helper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", helper_source(), *args], capture_output=True, text=True, timeout=60
    )


def release_dir(root: Path) -> Path:
    """Files across piece boundaries, an executable, links, an empty file and dir, mtimes."""
    root.mkdir()
    (root / "bin").mkdir()
    (root / "bin" / "app").write_bytes(os.urandom(3 * PIECE + 77))
    (root / "bin" / "app").chmod(0o750)
    (root / "conf.ini").write_text("[a]\nb = 1\n")
    (root / "conf.ini").chmod(0o640)
    (root / "zero").write_bytes(b"")
    (root / "empty" / "deeper").mkdir(parents=True)
    (root / "run").symlink_to("bin/app")
    os.link(root / "conf.ini", root / "conf.hard")
    for path in [root / "bin" / "app", root / "conf.ini", root / "zero", root / "bin"]:
        os.utime(path, (1_580_000_000, 1_580_000_000))
    return root


def listing(root: Path) -> list[tuple[str, str, int, int, str]]:
    """(path, kind, mode, mtime, content or link target) of everything under ``root``."""
    out = []
    for top, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(top) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out.append((rel, "l", 0, 0, os.readlink(path)))
            elif path.is_dir():
                out.append((rel, "d", st.st_mode & 0o7777, int(st.st_mtime), ""))
            else:
                data = path.read_bytes()
                out.append((rel, "f", st.st_mode & 0o7777, int(st.st_mtime), data.hex()[:64]))
    return sorted(out)


def seeder(tmp_path: Path, src: Path) -> tuple[Path, Path]:
    """GNU tar as ``fab deploy`` runs it, and the helper's map of it."""
    tarball, map_path = tmp_path / "rel.tar", tmp_path / "rel.tar.map.json"
    subprocess.run(["tar", "-c", "-C", f"{src}/", "-f", str(tarball), "."], check=True)
    made = helper("unpack-map", str(tarball), str(map_path))
    assert made.returncode == 0, made.stderr
    return tarball, map_path


def peer(tmp_path: Path, tarball: Path, map_path: Path, releases: Path) -> tuple[Path, Path]:
    """The engine's download through the map: the rest file and the unpacked directory."""
    data = tarball.read_bytes()
    _, meta = make_metainfo(tarball, "127.0.0.1:6969", piece_length=PIECE)
    rest, incoming = tmp_path / "peer.tar", releases / ".v1.incoming"
    unpack = (read_unpack_map(str(map_path), meta.total_length), incoming)
    with Storage.for_download(meta, rest, unpack) as storage:
        for index in range(meta.num_pieces):
            start, size = index * PIECE, meta.piece_size(index)
            for begin in range(0, size, BLOCK):
                end = start + min(begin + BLOCK, size)
                storage.write_block(index, begin, data[start + begin : end])
            assert storage.verify_piece(index)
        storage.finalize()
    return rest, incoming


def install(
    rest: Path, map_path: Path, dest: Path, incoming: Path
) -> subprocess.CompletedProcess[str]:
    args = [str(rest), str(dest), "v1", "tar-unpacked", str(map_path), "0", "5", str(incoming)]
    return helper("install", *args)


def test_the_map_lists_the_regular_files_a_peer_can_place(tmp_path: Path) -> None:
    src = release_dir(tmp_path / "src")
    tarball, map_path = seeder(tmp_path, src)
    doc = json.loads(map_path.read_text())
    assert doc["version"] == 1 and doc["length"] == tarball.stat().st_size
    names = [row[2] for row in doc["files"]]
    # Not the empty file, the symlink, the hard link or the directories; tar's "./" dropped.
    assert sorted(names) == ["bin/app", "conf.ini"]
    data = tarball.read_bytes()
    for offset, length, name in doc["files"]:
        assert data[offset : offset + length] == (src / name).read_bytes()


def test_a_name_the_tarball_holds_twice_stays_out_of_the_map(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("one")
    tarball = tmp_path / "t.tar"
    subprocess.run(["tar", "-c", "-C", str(tmp_path / "a"), "-f", str(tarball), "f"], check=True)
    (tmp_path / "a" / "f").write_text("two!")
    subprocess.run(["tar", "-r", "-C", str(tmp_path / "a"), "-f", str(tarball), "f"], check=True)
    (tmp_path / "a" / "g").write_text("g")
    subprocess.run(["tar", "-r", "-C", str(tmp_path / "a"), "-f", str(tarball), "g"], check=True)
    assert helper("unpack-map", str(tarball), str(tmp_path / "m.json")).returncode == 0
    assert [row[2] for row in json.loads((tmp_path / "m.json").read_text())["files"]] == ["g"]


def test_a_compressed_tarball_gets_no_map(tmp_path: Path) -> None:
    src = release_dir(tmp_path / "src")
    tgz = tmp_path / "rel.tgz"
    subprocess.run(["tar", "-cz", "-C", f"{src}/", "-f", str(tgz), "."], check=True)
    made = helper("unpack-map", str(tgz), str(tmp_path / "m.json"))
    assert made.returncode == 1
    assert f"{tgz} is not a plain tarball" in made.stderr
    assert not (tmp_path / "m.json").exists()


def test_install_keeps_the_downloaded_files_and_makes_the_release_tar_would(
    tmp_path: Path,
) -> None:
    src = release_dir(tmp_path / "src")
    tarball, map_path = seeder(tmp_path, src)
    dest = tmp_path / "app"
    (dest / "releases").mkdir(parents=True)
    rest, incoming = peer(tmp_path, tarball, map_path, dest / "releases")
    mapped = sum(row[1] for row in json.loads(map_path.read_text())["files"])
    assert mapped > 3 * PIECE
    assert rest.stat().st_size == tarball.stat().st_size - mapped  # headers and padding
    app_inode = (incoming / "bin" / "app").stat().st_ino
    done = install(rest, map_path, dest, incoming)
    assert done.returncode == 0, done.stderr
    release = dest / "releases" / "v1"
    assert os.readlink(dest / "current") == "releases/v1"
    assert not incoming.exists()
    assert (release / "bin" / "app").stat().st_ino == app_inode  # renamed, not copied
    reference = tmp_path / "ref"
    plain = helper("extract", str(tarball), str(reference), "tar", "", "0")
    assert plain.returncode == 0, plain.stderr
    assert listing(release) == listing(reference)
    assert (release / "conf.hard").stat().st_ino == (release / "conf.ini").stat().st_ino


def test_directories_tar_does_not_list_get_the_modes_a_plain_extraction_gives(
    tmp_path: Path,
) -> None:
    """A tarball without "./" or directory members (``fab deploy --local-path`` makes
    such): the peer, under umask 077, made those directories 0700; the release's must be
    what extracting the tarball makes, or a web server could not read it."""
    import tarfile

    tarball, map_path = tmp_path / "rel.tar", tmp_path / "rel.tar.map.json"
    with tarfile.open(tarball, "w") as tar:
        for name in ("top.txt", "a/b/deep.bin"):
            (tmp_path / "f").write_bytes(os.urandom(40_000))
            tar.add(str(tmp_path / "f"), arcname=name)
    assert helper("unpack-map", str(tarball), str(map_path)).returncode == 0
    dest = tmp_path / "app"
    (dest / "releases").mkdir(parents=True)
    old = os.umask(0o077)
    try:
        rest, incoming = peer(tmp_path, tarball, map_path, dest / "releases")
    finally:
        os.umask(old)
    assert (incoming / "a").stat().st_mode & 0o777 == 0o700
    done = install(rest, map_path, dest, incoming)
    assert done.returncode == 0, done.stderr
    reference = tmp_path / "ref"
    assert helper("extract", str(tarball), str(reference), "tar", "", "0").returncode == 0
    release = dest / "releases" / "v1"

    def modes(root: Path) -> list[tuple[str, str, int, str]]:
        # Directories tar does not list have the mtime of whenever they were made.
        return [(path, kind, mode, data) for path, kind, mode, _, data in listing(root)]

    assert modes(release) == modes(reference)
    assert release.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777 == 0o755 & ~old


def test_a_file_the_map_does_not_list_in_the_download_is_refused(tmp_path: Path) -> None:
    src = release_dir(tmp_path / "src")
    tarball, map_path = seeder(tmp_path, src)
    dest = tmp_path / "app"
    (dest / "releases").mkdir(parents=True)
    rest, incoming = peer(tmp_path, tarball, map_path, dest / "releases")
    (incoming / "bin" / "stray").write_text("left from something else")
    done = install(rest, map_path, dest, incoming)
    assert done.returncode == 1
    assert f"{incoming} holds 'bin/stray', which the unpack map does not list" in done.stderr
    assert not (dest / "releases" / "v1").exists() and not (dest / "current").exists()


def test_a_map_that_does_not_match_the_tarball_fails_the_install(tmp_path: Path) -> None:
    """A map naming the wrong file for a range: the bytes are right (the torrent's hashes
    passed) but tar puts them elsewhere, so the release is refused, not silently copied."""
    src = release_dir(tmp_path / "src")
    tarball, map_path = seeder(tmp_path, src)
    doc = json.loads(map_path.read_text())
    doc["files"] = [
        [o, n, "bin/other" if name == "bin/app" else name] for o, n, name in doc["files"]
    ]
    map_path.write_text(json.dumps(doc))
    dest = tmp_path / "app"
    (dest / "releases").mkdir(parents=True)
    rest, incoming = peer(tmp_path, tarball, map_path, dest / "releases")
    done = install(rest, map_path, dest, incoming)
    assert done.returncode == 1
    assert "the unpack map does not match the tarball: 1 mapped files are not where tar has " in (
        done.stderr
    )
    assert "(first: 'bin/other')" in done.stderr
    assert not (dest / "releases" / "v1").exists() and not (dest / "current").exists()


def test_a_hostile_member_among_the_rest_is_refused_before_anything_lands(
    tmp_path: Path,
) -> None:
    src = release_dir(tmp_path / "src")
    (src / "out").symlink_to("/etc")
    tarball, map_path = seeder(tmp_path, src)
    dest = tmp_path / "app"
    (dest / "releases").mkdir(parents=True)
    rest, incoming = peer(tmp_path, tarball, map_path, dest / "releases")
    done = install(rest, map_path, dest, incoming)
    assert done.returncode == 4, done.stderr
    assert "unsafe archive member: './out' is a link to an absolute path" in done.stderr
    assert not (dest / "releases" / "v1").exists()


@pytest.mark.parametrize("use_filter", [True, False])
def test_both_extraction_paths_give_the_same_release(tmp_path: Path, use_filter: bool) -> None:
    """Pythons without extraction filters (before 3.9.17) take the helper's own checks."""
    src = release_dir(tmp_path / "src")
    tarball, map_path = seeder(tmp_path, src)
    dest = tmp_path / "rel"
    dest.mkdir()
    rest, incoming = peer(tmp_path, tarball, map_path, dest)
    code = (
        "import sys; ns = {'__name__': 'helper'}; exec(sys.argv[1], ns); "
        "ns['extract'](*sys.argv[2:5], sys.argv[5], False, sys.argv[6] == '1', sys.argv[7])"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, helper_source(), str(rest), str(dest / "v1"),
         "tar-unpacked", str(map_path), "1" if use_filter else "0", str(incoming)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    reference = tmp_path / "ref"
    assert helper("extract", str(tarball), str(reference), "tar", "", "0").returncode == 0
    assert listing(dest / "v1") == listing(reference)
