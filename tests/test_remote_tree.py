"""transfer=tree on the hosts: the manifest a seeder writes and a peer applies.

The helper runs as a real subprocess, from the very source text the fabfile sends; the
"download" is a copy of the regular files with the modes a peer's umask 077 gives them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from fabfile.release import helper_source

FIXED_NS = 1_600_000_000_123_456_789


def helper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", helper_source(), *args], capture_output=True, text=True, timeout=60
    )


def release_tree(root: Path) -> Path:
    """A release with what a tarball kept and a torrent alone would lose."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "run").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "run").chmod(0o755)
    (root / "conf").mkdir(mode=0o750)
    (root / "conf" / "app.ini").write_bytes(b"[app]\n")
    (root / "conf" / "app.ini").chmod(0o640)
    (root / "conf").chmod(0o750)
    (root / "empty" / "deeper").mkdir(parents=True)
    (root / "zero").write_bytes(b"")
    (root / "run").symlink_to("bin/run")
    (root / "conf" / "up").symlink_to("..")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_bytes(b"ref: main\n")
    (root / ".gitignore").write_bytes(b"*.pyc\n")
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, ns=(FIXED_NS, FIXED_NS), follow_symlinks=False)
    return root


def fake_download(src: Path, manifest: Path, into: Path) -> None:
    """What a peer holds after the swarm: the listed regular files, 0600 in 0700 dirs."""
    doc = json.loads(manifest.read_text())
    into.mkdir(mode=0o700)
    for name, *_ in doc["files"]:
        (into / name).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(src / name, into / name)
        (into / name).chmod(0o600)


def snapshot(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path), st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, path.read_bytes())
    return out


def test_manifest_then_install_rebuilds_the_tree(tmp_path: Path) -> None:
    src = release_tree(tmp_path / "src")
    manifest = tmp_path / "T.tree.json"
    made = helper("manifest", str(src), str(manifest), ".git*")
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    dest = tmp_path / "app"
    (dest / "releases").mkdir(parents=True)
    incoming = dest / "releases" / ".T.incoming"
    fake_download(src, manifest, incoming)
    out = helper("install", str(incoming), str(dest), "T", "tree", str(manifest), "0", "5")
    assert out.returncode == 0, out.stderr
    assert not incoming.exists() and os.readlink(dest / "current") == "releases/T"
    want = {k: v for k, v in snapshot(src).items() if not k.startswith(".git")}
    assert snapshot(dest / "releases" / "T") == want
    assert stat.S_IMODE((dest / "releases" / "T").stat().st_mode) == 0o755


def test_a_tree_install_imports_no_tarfile_shutil_or_fnmatch(tmp_path: Path) -> None:
    """Sixteen hosts run this at once at the end of a deploy: a tree install needs none
    of the three, so the helper imports them only where they are used."""
    src = release_tree(tmp_path / "src")
    manifest = tmp_path / "T.tree.json"
    assert helper("manifest", str(src), str(manifest), ".git*").returncode == 0
    dest = tmp_path / "app"
    (dest / "releases").mkdir(parents=True)
    fake_download(src, manifest, dest / "releases" / ".T.incoming")
    incoming = str(dest / "releases" / ".T.incoming")
    args = ["install", incoming, str(dest), "T", "tree", str(manifest), "0", "5"]
    run = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-c", helper_source(), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert os.readlink(dest / "current") == "releases/T"
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()}
    assert "json" in imported  # the listing is the real one
    assert not {"tarfile", "shutil", "fnmatch", "typing"} & imported


def test_tree_copy_installs_the_seeders_own_tree(tmp_path: Path) -> None:
    src = release_tree(tmp_path / "src")
    manifest = tmp_path / "T.tree.json"
    assert helper("manifest", str(src), str(manifest), ".git*").returncode == 0
    dest = tmp_path / "app"
    out = helper("install", str(src), str(dest), "T", "tree-copy", str(manifest), "0", "5")
    assert out.returncode == 0, out.stderr
    want = {k: v for k, v in snapshot(src).items() if not k.startswith(".git")}
    assert snapshot(dest / "releases" / "T") == want
    assert (src / ".git" / "HEAD").exists()  # the seeder's tree is only read


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: os.mkfifo(r / "fifo"), "refusing special file 'fifo'"),
        (lambda r: (r / "out").symlink_to("/etc/passwd"), "absolute"),
        (lambda r: (r / "up").symlink_to("../.."), "leaves the release"),
    ],
)
def test_manifest_refuses_what_a_release_must_not_hold(
    tmp_path: Path, make: Callable[[Path], None], message: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    make(src)
    out = helper("manifest", str(src), str(tmp_path / "m.json"))
    assert out.returncode == 4 and message in out.stderr
    assert not (tmp_path / "m.json").exists()


def _manifest(**rows: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1, "dirs": [], "files": [["f", 0o644, 1, 1]], "links": []}
    doc.update(rows)
    return doc


@pytest.mark.parametrize(
    "doc, code, message",
    [
        (_manifest(files=[["../f", 0o644, 1, 1]]), 4, "leaves the release"),
        (_manifest(files=[["/etc/f", 0o644, 1, 1]]), 4, "unsafe manifest path"),
        (_manifest(links=[["l", "/etc", 1]]), 4, "absolute"),
        (_manifest(links=[["l", "../../x", 1]]), 4, "leaves the release"),
        (_manifest(links=[["d", ".", 1]], dirs=[["d/e", 0o755, 1]]), 4, "below a symlink"),
        (_manifest(dirs=[["f", 0o755, 1]]), 1, "appears twice"),
        (_manifest(files=[["f", "644", 1, 1]]), 1, "must be a non-negative integer"),
        (_manifest(files=[["f", 0o644, 1]]), 1, "rows of 4 fields"),
        (_manifest(files=[["f", 0o644, 1, 2]]), 1, "do not match the manifest"),
        (_manifest(version=2), 1, "not a version 1 manifest"),
    ],
)
def test_install_refuses_a_bad_manifest_and_leaves_no_release(
    tmp_path: Path, doc: dict[str, Any], code: int, message: str
) -> None:
    dest = tmp_path / "app"
    incoming = dest / "releases" / ".T.incoming"
    incoming.mkdir(parents=True)
    (incoming / "f").write_bytes(b"x")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    out = helper("install", str(incoming), str(dest), "T", "tree", str(manifest), "0", "5")
    assert out.returncode == code, out.stderr
    assert message in out.stderr
    assert not (dest / "releases" / "T").exists() and not (dest / "current").exists()
    assert not (tmp_path / "etc").exists()


def test_install_refuses_a_download_holding_a_symlink(tmp_path: Path) -> None:
    """Nothing is made through a link planted in the download, even where a dir is due."""
    dest = tmp_path / "app"
    incoming = dest / "releases" / ".T.incoming"
    incoming.mkdir(parents=True)
    (incoming / "f").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (incoming / "d").symlink_to(outside)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(_manifest(dirs=[["d", 0o755, 1], ["d/e", 0o755, 1]])))
    out = helper("install", str(incoming), str(dest), "T", "tree", str(manifest), "0", "5")
    assert out.returncode == 4 and "unexpected 'd' in the downloaded release" in out.stderr
    assert list(outside.iterdir()) == [] and not (dest / "releases" / "T").exists()


def test_install_refuses_a_download_with_an_unlisted_file(tmp_path: Path) -> None:
    dest = tmp_path / "app"
    incoming = dest / "releases" / ".T.incoming"
    incoming.mkdir(parents=True)
    (incoming / "f").write_bytes(b"x")
    (incoming / "planted").write_bytes(b"y")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(_manifest()))
    out = helper("install", str(incoming), str(dest), "T", "tree", str(manifest), "0", "5")
    assert out.returncode == 1 and "not listed: ['planted']" in out.stderr
    assert not (dest / "releases" / "T").exists()
