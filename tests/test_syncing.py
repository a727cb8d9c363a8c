"""murder_core.syncing: an fsync per file for a few, one syncfs per file system for many.

The system calls are counted with strace on a real child process: what each way costs
is the point of the module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need, need_program

from murder_core.errors import StorageError
from murder_core.syncing import SYNCFS_FROM, sync_all

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import os, sys
sys.path.insert(0, sys.argv[1])
from murder_core.syncing import sync_all
fds = []
for d in sys.argv[3:]:
    for i in range(int(sys.argv[2])):
        fd = os.open(os.path.join(d, f"f{i}"), os.O_RDWR | os.O_CREAT, 0o600)
        os.write(fd, b"x" * 100)
        fds.append(fd)
sync_all(fds, lambda fd, exc: exc)
"""


def syscalls(files_per_dir: int, *dirs: Path) -> dict[str, int]:
    strace = need_program("strace")
    out = subprocess.run(
        [strace, "-f", "-c", "-U", "name,calls", "-e", "trace=fsync,fdatasync,syncfs",
         sys.executable, "-c", CHILD, str(ROOT), str(files_per_dir), *map(str, dirs)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    counts = {}
    for line in out.stderr.splitlines():
        words = line.split()
        if len(words) == 2 and words[1].isdigit() and words[0] != "total":
            counts[words[0]] = int(words[1])
    return counts


def test_a_few_files_are_fsynced_one_by_one(tmp_path: Path) -> None:
    assert syscalls(SYNCFS_FROM - 1, tmp_path) == {"fsync": SYNCFS_FROM - 1}


def test_many_files_take_one_syncfs_per_file_system(tmp_path: Path) -> None:
    need(sys.platform.startswith("linux"), "syncfs is Linux's")
    shm = Path("/dev/shm")
    need(shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev, "needs a /dev/shm")
    other = shm / f"murder-sync-{os.getpid()}"
    other.mkdir()
    try:
        again = tmp_path / "same-fs"
        again.mkdir()
        assert syscalls(SYNCFS_FROM, tmp_path, again, other) == {"syncfs": 2}
    finally:
        for name in os.listdir(other):
            os.unlink(other / name)
        other.rmdir()


def test_a_failed_sync_is_reported_through_the_callers_error() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)  # a closed descriptor: both ways fail with EBADF
    for count in (1, SYNCFS_FROM):
        with pytest.raises(StorageError, match=r"cannot sync 3: .*Bad file descriptor"):
            sync_all([w] * count, lambda fd, exc: StorageError(f"cannot sync 3: {exc}"))
