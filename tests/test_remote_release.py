"""fabfile.remote_release: the release helper that runs on the hosts (``python3 -c``).

Run here as a real subprocess, from the very source text the fabfile sends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Dict

import pytest

from fabfile import remote_release as rr
from fabfile.release import helper_source


def _tar(
    path: Path,
    members: Dict[str, bytes],
    links: Dict[str, str] | None = None,
    kind: bytes = tarfile.SYMTYPE,
) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o4755 if name.endswith(".sh") else 0o644
            tar.addfile(info, BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)


def helper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", helper_source(), *args], capture_output=True, text=True, timeout=60
    )


def test_extract_switch_prune_rollback(tmp_path: Path) -> None:
    dest = tmp_path / "app"
    for i in range(1, 5):
        tgz = tmp_path / f"v{i}.tgz"
        _tar(tgz, {"bin/run.sh": b"#!/bin/sh\n", "VERSION": f"{i}\n".encode()})
        assert (
            helper("extract", str(tgz), str(dest / "releases" / f"v{i}"), "tar", "", "0").returncode
            == 0
        )
        assert helper("switch", str(dest), f"v{i}").returncode == 0
        os.utime(dest / "releases" / f"v{i}", (1000 + i, 1000 + i))
    assert os.readlink(dest / "current") == "releases/v4"
    assert (dest / "current" / "VERSION").read_text() == "4\n"
    # setuid is stripped by the data filter
    assert (dest / "current" / "bin" / "run.sh").stat().st_mode & 0o7777 == 0o755
    pruned = helper("prune", str(dest), "2")
    assert pruned.stdout.split() == ["v1", "v2"]
    assert sorted(os.listdir(dest / "releases")) == ["v3", "v4"]
    back = helper("rollback", str(dest))
    assert (back.returncode, back.stdout.strip()) == (0, "v4 -> v3")
    assert helper("current", str(dest)).stdout.strip() == "v3"
    again = helper("rollback", str(dest))
    assert (again.returncode, again.stderr.strip()) == (
        3,
        f"murder-release: error: no release older than 'v3' in {dest}",
    )
    assert helper("rollback", str(dest), "v4").stdout.strip() == "v3 -> v4"


def test_prune_keeps_the_current_release_even_if_old(tmp_path: Path) -> None:
    dest = tmp_path / "app"
    for i in range(1, 4):
        (dest / "releases" / f"v{i}").mkdir(parents=True)
        os.utime(dest / "releases" / f"v{i}", (1000 + i, 1000 + i))
    rr.switch(str(dest), "v1")
    assert rr.prune(str(dest), 1) == ["v2"]
    assert sorted(os.listdir(dest / "releases")) == ["v1", "v3"]


def test_extract_refuses_a_non_empty_destination_unless_replacing(tmp_path: Path) -> None:
    tgz = tmp_path / "p.tgz"
    _tar(tgz, {"new": b"new"})
    target = tmp_path / "dest"
    target.mkdir()
    (target / "old").write_text("old")
    refused = helper("extract", str(tgz), str(target), "tar", "", "0")
    assert (refused.returncode, refused.stderr.strip()) == (
        3,
        f"murder-release: error: destination {target} exists and is not empty",
    )
    assert helper("extract", str(tgz), str(target), "tar", "", "1").returncode == 0
    assert sorted(os.listdir(target)) == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["dest", "p.tgz"]


def test_extract_into_an_empty_existing_directory(tmp_path: Path) -> None:
    tgz = tmp_path / "p.tgz"
    _tar(tgz, {"a": b"1"})
    (tmp_path / "dest").mkdir()
    assert helper("extract", str(tgz), str(tmp_path / "dest"), "tar", "", "0").returncode == 0
    assert (tmp_path / "dest" / "a").read_bytes() == b"1"


def test_extract_a_plain_file(tmp_path: Path) -> None:
    src = tmp_path / "v1.tgz"
    src.write_bytes(b"\x7fELF binary")
    target = tmp_path / "app" / "releases" / "v1"
    assert helper("extract", str(src), str(target), "file", "server.bin", "0").returncode == 0
    assert (target / "server.bin").read_bytes() == b"\x7fELF binary"


HOSTILE_TARS = {
    "dotdot": ({"../escape": b"x"}, {}, tarfile.SYMTYPE),
    "dotdot-inside-name": ({"a/../../escape": b"x"}, {}, tarfile.SYMTYPE),
    "absolute": ({"/etc/evil": b"x"}, {}, tarfile.SYMTYPE),
    "abs-symlink": ({}, {"link": "/etc/passwd"}, tarfile.SYMTYPE),
    "rel-symlink-out": ({}, {"link": "../../outside"}, tarfile.SYMTYPE),
    "hardlink-out": ({}, {"hard": "/etc/passwd"}, tarfile.LNKTYPE),
    "rel-hardlink-out": ({}, {"hard": "../../outside"}, tarfile.LNKTYPE),
    "char-device": ({}, {"dev": ""}, tarfile.CHRTYPE),
    "block-device": ({}, {"disk": ""}, tarfile.BLKTYPE),
    "fifo": ({}, {"pipe": ""}, tarfile.FIFOTYPE),
}
HOSTILE_CASES = [(name, use_filter) for name in HOSTILE_TARS for use_filter in (False, True)]


@pytest.mark.parametrize(("case", "use_filter"), HOSTILE_CASES)
def test_hostile_tarballs_are_refused_before_anything_lands(
    tmp_path: Path, case: str, use_filter: bool
) -> None:
    members, links, kind = HOSTILE_TARS[case]
    tgz = tmp_path / "evil.tgz"
    _tar(tgz, {"ok.txt": b"fine", **members}, links, kind)
    dest = tmp_path / "d" / "releases" / "v1"
    dest.parent.mkdir(parents=True)
    with pytest.raises(rr.ReleaseError) as info:
        rr.extract(str(tgz), str(dest), "tar", "", False, use_filter=use_filter)
    assert info.value.code == rr.EXIT_UNSAFE
    assert str(info.value).startswith("unsafe archive member")
    assert os.listdir(dest.parent) == []
    assert not (tmp_path / "escape").exists()
    # Screened before extraction starts: not even the harmless member before it is written
    # (extract_tar alone leaves behind whatever it wrote; extract would clean it up).
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(rr.ReleaseError):
        rr.extract_tar(str(tgz), str(work), use_filter=use_filter)
    assert os.listdir(work) == []


def test_absolute_members_are_refused_by_name(tmp_path: Path) -> None:
    """The data filter would strip the leading '/'; murder refuses such an archive outright."""
    tgz = tmp_path / "abs.tgz"
    _tar(tgz, {"ok": b"x", "/etc/evil": b"x"})
    out = helper("extract", str(tgz), str(tmp_path / "r"), "tar", "", "0")
    assert (out.returncode, out.stderr.strip()) == (
        rr.EXIT_UNSAFE,
        "murder-release: error: unsafe archive member '/etc/evil': absolute path",
    )
    assert sorted(os.listdir(tmp_path)) == ["abs.tgz"]


def test_a_symlink_made_by_the_archive_cannot_be_written_through(tmp_path: Path) -> None:
    """``sub -> .`` is harmless alone; ``sub/up -> ..`` through it would leave the release."""
    tgz = tmp_path / "chain.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, target in (("sub", "."), ("sub/up", "..")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        info = tarfile.TarInfo("sub/up/escape")
        tar.addfile(info, BytesIO(b""))
    dest = tmp_path / "d" / "v1"
    dest.parent.mkdir()
    with pytest.raises(rr.ReleaseError) as caught:
        rr.extract(str(tgz), str(dest), "tar", "", False)
    assert caught.value.code == rr.EXIT_UNSAFE
    assert os.listdir(dest.parent) == []
    assert not (tmp_path / "d" / "escape").exists() and not (tmp_path / "escape").exists()


def test_links_that_stay_inside_are_kept(tmp_path: Path) -> None:
    tgz = tmp_path / "links.tgz"
    _tar(tgz, {"bin/app": b"run"}, {"current-app": "bin/app"})
    dest = tmp_path / "r"
    rr.extract(str(tgz), str(dest), "tar", "", False)
    assert os.readlink(dest / "current-app") == "bin/app"
    assert (dest / "current-app").read_bytes() == b"run"


def test_switch_refuses_a_real_current_directory(tmp_path: Path) -> None:
    (tmp_path / "releases" / "v1").mkdir(parents=True)
    (tmp_path / "current").mkdir()
    out = helper("switch", str(tmp_path), "v1")
    assert (out.returncode, out.stderr.strip()) == (
        3,
        f"murder-release: error: {tmp_path}/current exists and is not a symlink",
    )


def test_helper_usage_errors() -> None:
    assert helper().returncode == 2
    assert helper("switch", "/x").returncode == 2
    assert helper("switch", "/nonexistent-murder", "v1").stderr.strip() == (
        "murder-release: error: no release 'v1' in /nonexistent-murder/releases"
    )


@pytest.mark.root
def test_a_release_too_big_for_the_disk_is_refused_before_writing(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    mnt = small_tmpfs
    big = os.urandom(1536 * 1024)
    _tar(tmp_path / "big.tgz", {"app.bin": big, "conf/a.ini": b"x"})
    (tmp_path / "big.bin").write_bytes(big)
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    needed = len(big) + 1 + 2 * rr.MEMBER_OVERHEAD
    for src, kind, need_bytes in (
        ("big.tgz", "tar", needed),
        ("big.bin", "file", len(big) + rr.MEMBER_OVERHEAD),
    ):
        out = helper("extract", str(tmp_path / src), str(mnt / "r1"), kind, "big.bin", "0")
        assert out.returncode == rr.EXIT_NO_SPACE, out
        assert out.stderr.strip().endswith(
            f"not enough disk space for {mnt}/r1: need {need_bytes} bytes, "
            f"{free} bytes free in {mnt}"
        ), out.stderr
        assert list(mnt.iterdir()) == []  # not even the hidden work directory
    _tar(tmp_path / "small.tgz", {"app.bin": b"small"})
    ok = helper("extract", str(tmp_path / "small.tgz"), str(mnt / "r1"), "tar", "-", "0")
    assert ok.returncode == 0, ok.stderr
    assert (mnt / "r1" / "app.bin").read_bytes() == b"small"


def test_install_extracts_switches_and_prunes_in_one_process(tmp_path: Path) -> None:
    dest = tmp_path / "app"
    outs = []
    for i in range(1, 4):
        tgz = tmp_path / f"v{i}.tgz"
        _tar(tgz, {"VERSION": f"{i}\n".encode()})
        out = helper("install", str(tgz), str(dest), f"v{i}", "tar", "", "0", "2")
        assert out.returncode == 0, out.stderr
        outs.append(out.stdout.strip())
    assert outs == ["", "", "v1"]  # what each run pruned
    assert os.readlink(dest / "current") == "releases/v3"
    assert (dest / "current" / "VERSION").read_text() == "3\n"
    assert sorted(os.listdir(dest / "releases")) == ["v2", "v3"]
    # A refused extraction switches nothing.
    again = helper("install", str(tmp_path / "v1.tgz"), str(dest), "v3", "tar", "", "0", "2")
    assert again.returncode == rr.EXIT_REFUSED, again
    assert os.readlink(dest / "current") == "releases/v3"


def _host_pythons() -> list[str]:
    """python3 here, and 3.9 (the oldest a host may have) where pyenv provides one."""
    found = [sys.executable]
    old = Path("/root/.pyenv/versions/3.9.18/bin/python3.9")
    if old.exists():
        found.append(str(old))
    return found


@pytest.mark.parametrize("python", _host_pythons())
def test_install_runs_on_every_host_python_without_importing_typing(
    python: str, tmp_path: Path
) -> None:
    """Each install starts this script on every host at once; typing alone was a
    quarter of its start-up, so it stays out of the imports (and 3.9 still runs it)."""
    payload = tmp_path / "p.tgz"
    _tar(payload, {"bin/app.sh": b"#!/bin/sh\n", "conf/a.ini": b"x=1\n"})
    dest = tmp_path / "dest"
    run = subprocess.run(
        [
            *(python, "-X", "importtime", "-c", helper_source()),
            *("install", str(payload), str(dest), "v1", "tar", "p.tgz", "0", "5"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert (dest / "releases" / "v1" / "conf" / "a.ini").read_bytes() == b"x=1\n"
    assert os.readlink(dest / "current") == "releases/v1"
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()}
    assert "tarfile" in imported and "typing" not in imported


# --- plain tarballs: file data copied by the kernel (copy_file_range) ----------------
def _plain_tar(path: Path, members: Dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, BytesIO(data))


def _syscalls_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError("no syscr in /proc/self/io")


@pytest.mark.skipif(
    not hasattr(os, "copy_file_range") or not Path("/proc/self/io").exists(),
    reason="os.copy_file_range and /proc/self/io are Linux-only",
)
def test_a_plain_tarball_is_copied_by_the_kernel_not_read_through_python(
    tmp_path: Path,
) -> None:
    members = {"app/big.bin": os.urandom(8 << 20), "app/empty": b"", "app/small": b"s" * 1000}
    _plain_tar(tmp_path / "r.tar", members)
    dest = tmp_path / "out"
    dest.mkdir()
    before = _syscalls_read()
    rr.extract_tar(str(tmp_path / "r.tar"), str(dest))
    reads = _syscalls_read() - before
    for name, data in members.items():
        assert (dest / name).read_bytes() == data
    # tarfile's own copy reads 8 MiB in 16 KiB pieces: over 512 read calls.
    assert reads < 64, reads


@pytest.mark.parametrize("python", _host_pythons())
def test_a_plain_tarball_cut_short_is_refused_and_leaves_nothing(
    python: str, tmp_path: Path
) -> None:
    data = os.urandom(1 << 20)
    _plain_tar(tmp_path / "r.tar", {"a.bin": b"a" * 100, "z.bin": data})
    whole = (tmp_path / "r.tar").read_bytes()
    cut = whole.index(data[:64]) + len(data) // 2  # half of z.bin's data is missing
    (tmp_path / "cut.tar").write_bytes(whole[:cut])
    releases = tmp_path / "releases"
    argv = ["extract", str(tmp_path / "cut.tar"), str(releases / "v1"), "tar", "", "0"]
    out = subprocess.run(
        [python, "-c", helper_source(), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out
    assert out.stderr.strip().endswith("is not a readable tarball: unexpected end of data"), out
    assert list(releases.iterdir()) == []  # no release, no hidden work directory


def test_a_plain_tarball_onto_another_file_system(tmp_path: Path, small_tmpfs: Path) -> None:
    """From the disk to a tmpfs, where kernels since 5.19 refuse copy_file_range."""
    members = {"bin/app": os.urandom(300 * 1024), "conf/a.ini": b"x=1\n"}
    _plain_tar(tmp_path / "r.tar", members)
    out = helper("extract", str(tmp_path / "r.tar"), str(small_tmpfs / "v1"), "tar", "", "0")
    assert out.returncode == 0, out.stderr
    for name, data in members.items():
        assert (small_tmpfs / "v1" / name).read_bytes() == data


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to make a sparse member")
def test_a_sparse_member_is_extracted_whole(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(tree / "holes.img", "wb") as f:
        f.truncate(4 << 20)
        f.seek(1 << 20)
        f.write(b"middle" * 1000)
        f.seek((4 << 20) - 6)
        f.write(b"ending")
    expected = (tree / "holes.img").read_bytes()
    subprocess.run(
        ["tar", "-cSf", str(tmp_path / "s.tar"), "-C", str(tree), "."], check=True, timeout=60
    )
    with tarfile.open(tmp_path / "s.tar") as tar:
        assert tar.getmember("./holes.img").sparse is not None  # tarfile sees the holes
    out = helper("extract", str(tmp_path / "s.tar"), str(tmp_path / "v1"), "tar", "", "0")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "v1" / "holes.img").read_bytes() == expected
