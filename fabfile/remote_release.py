"""Release operations that run ON the hosts, sent as ``python3 -c SOURCE CMD ARGS``.

Standalone on purpose (stdlib only, Python 3.9+, no imports from murder): hosts have
python3 and the files we put there, nothing else. Doing this in Python rather than
shell gives us tarfile's extraction filters, ``os.replace`` for an atomic symlink
switch on any Unix, and exact error messages.

Layout (Capistrano's): DEST/releases/TAG, DEST/current -> releases/TAG. A release's
directory mtime is set when it is installed, which orders releases for prune and
rollback without a separate state file.

Commands:
  manifest SRC OUT [GLOB...]             write SRC's tree (dirs, files, symlinks, with modes
                                         and mtimes; names matching a GLOB left out) to OUT
  unpack-map TARBALL OUT                 write where TARBALL's regular members' bytes are
                                         (for ``murder peer --unpack-map``) to OUT
  extract SRC TARGET KIND NAME REPLACE [DIR]
                                         KIND tar|file|tree|tree-copy|tar-unpacked; REPLACE 1
                                         replaces a non-empty TARGET. For tree kinds SRC is a
                                         directory holding the manifest's files (moved into
                                         place, or copied for tree-copy) and NAME is the
                                         manifest; for tar-unpacked SRC is the payload file,
                                         NAME the unpack map and DIR the mapped files' directory
  install SRC DEST TAG KIND NAME REPLACE KEEP [DIR]
                                         extract into DEST/releases/TAG, switch, prune: one
                                         process per host instead of three
  switch DEST TAG                        point DEST/current at releases/TAG atomically
  prune DEST KEEP                        keep the newest KEEP releases (and the current one)
  rollback DEST [TAG]                    point current at the release before it (or at TAG)
  current DEST                           print the current tag (empty if none)
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Sequence

# Every host pays for this script's imports at each install, and sixteen hosts on two
# cores wait for each other: typing is imported only by the type checker, and tarfile,
# shutil and fnmatch only by the commands that use them (valgrind: a whole tree install
# runs 84 M instructions instead of 97 M; compiling this source is another ~31 M).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import tarfile
    from typing import Any, Callable, Optional

    Manifest = dict[str, Any]

PROG = "murder-release"
EXIT_REFUSED = 3
EXIT_UNSAFE = 4
EXIT_NO_SPACE = 5


class ReleaseError(Exception):
    """Something this script refuses or fails to do; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _within(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def checked_members(tar: tarfile.TarFile, dest: str) -> list[tarfile.TarInfo]:
    """Our own version of the ``data`` filter, for Pythons older than 3.9.17.

    Refuses absolute names, names or links that leave ``dest``, and anything but
    regular files, directories and links; strips setuid/setgid/sticky and
    group/other write bits, and ownership.
    """
    root = os.path.realpath(dest)
    out = []
    for member in tar.getmembers():
        name = member.name
        if os.path.isabs(name) or name.startswith("/"):
            raise ReleaseError(f"unsafe archive member {name!r}: absolute path", EXIT_UNSAFE)
        target = os.path.realpath(os.path.join(root, name))
        if not _within(root, target):
            raise ReleaseError(f"unsafe archive member {name!r}: outside {dest}", EXIT_UNSAFE)
        if member.issym():
            if os.path.isabs(member.linkname):
                raise ReleaseError(
                    f"unsafe archive member {name!r}: absolute symlink to {member.linkname!r}",
                    EXIT_UNSAFE,
                )
            pointed = os.path.join(os.path.dirname(target), member.linkname)
            if not _within(root, os.path.realpath(pointed)):
                raise ReleaseError(
                    f"unsafe archive member {name!r}: symlink to {member.linkname!r} "
                    "leaves the release",
                    EXIT_UNSAFE,
                )
        elif member.islnk():
            pointed = os.path.realpath(os.path.join(root, member.linkname))
            if os.path.isabs(member.linkname) or not _within(root, pointed):
                raise ReleaseError(
                    f"unsafe archive member {name!r}: hard link to {member.linkname!r} "
                    "leaves the release",
                    EXIT_UNSAFE,
                )
        elif not (member.isfile() or member.isdir()):
            raise ReleaseError(f"unsafe archive member {name!r}: special file", EXIT_UNSAFE)
        member.mode &= 0o755
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        out.append(member)
    return out


def screened_members(tar: tarfile.TarFile, dest: str) -> list[tarfile.TarInfo]:
    """Every member, after the ``data`` filter has passed each one; nothing is written.

    The filter alone would run member by member during extraction, so the members
    before a hostile one would already be on disk. It also quietly strips a leading
    ``/``; an archive with absolute names was not made for us, so we refuse it instead.
    """
    import tarfile

    screened = []
    for member in tar.getmembers():  # extractall reads them all first anyway
        if member.name.startswith("/") or os.path.isabs(member.name):
            raise ReleaseError(f"unsafe archive member {member.name!r}: absolute path", EXIT_UNSAFE)
        screened.append(tarfile.data_filter(member, dest))
    return screened


def _as_screened(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    return member


def extract_members(
    tar: tarfile.TarFile, dest: str, members: list[tarfile.TarInfo], use_filter: bool
) -> None:
    """Extract what ``screened_members`` (or, without filters, ``checked_members``) passed."""
    if not use_filter:
        tar.extractall(dest, members=members)
    elif any(m.issym() or m.islnk() for m in members):
        # Filtered again while extracting: links made by earlier members count then.
        tar.extractall(dest, members=members, filter="data")
    else:
        # No member makes a link, so nothing can change what the screening's realpath
        # checks saw: a second pass would only repeat them (half of an install's time
        # for a release of 10,000 files).
        tar.extractall(dest, members=members, filter=_as_screened)


#: Charged per member on top of its data: an inode, a directory entry, a partial block.
MEMBER_OVERHEAD = 4096


def space_needed(members: Sequence[tarfile.TarInfo]) -> int:
    """Bytes the extracted ``members`` take, rounded up per member (an estimate from above)."""
    return sum(m.size + MEMBER_OVERHEAD if m.isreg() else MEMBER_OVERHEAD for m in members)


def check_space(directory: str, needed: int, target: str) -> None:
    """Refuse before writing when ``directory``'s filesystem has less than ``needed`` free.

    Failing half-way through would also be safe (the work directory is removed), but a
    full disk on a production host is worth a message that says how much is missing.
    """
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    if needed > free:
        raise ReleaseError(
            f"not enough disk space for {target}: need {needed} bytes, "
            f"{free} bytes free in {os.path.dirname(target) or target}",
            EXIT_NO_SPACE,
        )


#: copy_file_range errors that mean "not here" (another filesystem on kernels before
#: 5.3 or since 5.19, an old kernel, a seccomp filter), not "this copy failed".
_NO_KERNEL_COPY = ("EXDEV", "ENOSYS", "EOPNOTSUPP", "ENOTSUP", "EINVAL", "EPERM")


def _tarfile_class() -> type[tarfile.TarFile]:
    """tarfile.TarFile, except that a plain archive's file data is copied by the kernel.

    tarfile reads each member through Python in 16 KiB pieces and writes them out again;
    ``os.copy_file_range`` moves them from the page cache to the new file without the
    trip through user space (128 MiB: ~0.09 s of CPU instead of ~0.13, and every host
    of a deploy extracts at once). A compressed archive, a sparse member, or a system
    where the call is refused takes tarfile's own way, so the result is the same.
    """
    import errno
    import io
    import tarfile

    fallback = {getattr(errno, name) for name in _NO_KERNEL_COPY if hasattr(errno, name)}

    class KernelCopyTarFile(tarfile.TarFile):
        kernel_copy = hasattr(os, "copy_file_range")

        def makefile(self, tarinfo: tarfile.TarInfo, targetpath: Any) -> None:
            source = self.fileobj
            if not (
                self.kernel_copy and tarinfo.sparse is None and type(source) is io.BufferedReader
            ):
                return super().makefile(tarinfo, targetpath)
            start, end = tarinfo.offset_data, tarinfo.offset_data + tarinfo.size
            with open(targetpath, "wb") as target:
                at = start
                while at < end:
                    try:
                        done = os.copy_file_range(source.fileno(), target.fileno(), end - at, at)
                    except OSError as exc:
                        if at != start or exc.errno not in fallback:
                            raise
                        done = 0
                    if done == 0:
                        # Refused, or nothing to read: a truncated archive, or a file
                        # system that reports no data. tarfile's way tells them apart.
                        self.kernel_copy = False
                        break
                    at += done
                else:
                    return None
            return super().makefile(tarinfo, targetpath)

    return KernelCopyTarFile


def extract_tar(
    src: str, dest: str, use_filter: Optional[bool] = None, target: Optional[str] = None
) -> None:
    """Extract ``src`` into the existing directory ``dest``, refusing hostile members.

    ``target`` is where ``dest`` will be renamed to, for the messages.
    """
    _screen_and_extract(lambda: _tarfile_class().open(src, "r:*"), dest, use_filter, target, src)


def _screen_and_extract(
    open_tar: Callable[[], tarfile.TarFile],
    dest: str,
    use_filter: Optional[bool],
    target: Optional[str],
    what: str,
    written: Callable[[tarfile.TarInfo], bool] = lambda member: True,
) -> None:
    """Open, screen every member, check the space the ``written`` ones need, extract."""
    import tarfile

    # FilterError exists only where extraction filters do (3.9.17+, 3.11.4+).
    filter_errors = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
    if use_filter is None:
        use_filter = hasattr(tarfile, "data_filter")
    try:
        with open_tar() as tar:
            members = screened_members(tar, dest) if use_filter else checked_members(tar, dest)
            check_space(dest, space_needed([m for m in members if written(m)]), target or dest)
            extract_members(tar, dest, members, use_filter)
    except filter_errors as exc:
        raise ReleaseError(f"unsafe archive member: {exc}", EXIT_UNSAFE) from exc
    except tarfile.TarError as exc:
        raise ReleaseError(f"{what} is not a readable tarball: {exc}") from exc


# --- a plain tarball whose file data a peer wrote as files (``murder peer --unpack-map``)
# The seeder maps where each regular member's bytes sit in the tarball. A peer given the
# map writes those bytes straight into DIR/<name> while it downloads and keeps only the
# rest (headers, padding) in the payload file. Installing runs the usual screened
# extraction over the two spliced back together, but writes only what the map did not
# place, and fails unless every mapped file is exactly the member tar says is there.
UNPACK_MAP_VERSION = 1


def _plain_name(name: str) -> Optional[str]:
    """``name`` as a map path ("a/b"), or None when it is not one we can place safely."""
    while name.startswith("./"):
        name = name[2:]
    parts = name.split("/")
    if not name or os.path.normpath(name) != name or "\0" in name:
        return None
    if any(part in ("", ".", "..") for part in parts):
        return None
    return name


def unpack_map(tarball: str) -> dict[str, object]:
    """The map of ``tarball``: regular members with a name that only they use.

    Anything else (links, sparse or empty files, a name tar lists twice, a file under
    something that is not a directory) stays in the payload file and is extracted the
    usual way.
    """
    import tarfile

    try:
        with tarfile.open(tarball, "r:") as tar:
            members = tar.getmembers()
    except tarfile.TarError as exc:
        raise ReleaseError(f"{tarball} is not a plain tarball: {exc}") from exc
    seen: dict[str, int] = {}
    not_dirs = set()
    for m in members:
        key = _plain_name(m.name) or m.name
        seen[key] = seen.get(key, 0) + 1
        if not m.isdir():
            not_dirs.add(key)
    rows = []
    for m in members:
        name = _plain_name(m.name)
        if name is None or not m.isreg() or m.sparse is not None or m.size == 0:
            continue
        parts = name.split("/")
        if seen[name] != 1 or any("/".join(parts[:k]) in not_dirs for k in range(1, len(parts))):
            continue
        rows.append([m.offset_data, m.size, name])
    return {"version": UNPACK_MAP_VERSION, "length": os.path.getsize(tarball), "files": rows}


def write_unpack_map(tarball: str, out: str) -> None:
    partial = out + ".part"
    with open(partial, "w", encoding="utf-8") as fh:
        json.dump(unpack_map(tarball), fh, separators=(",", ":"))
    os.replace(partial, out)


def _read_unpack_map(path: str) -> list[tuple[int, int, str]]:
    with open(path, "rb") as fh:
        doc = json.loads(fh.read(MAX_MANIFEST_BYTES + 1))
    if not isinstance(doc, dict) or doc.get("version") != UNPACK_MAP_VERSION:
        raise ReleaseError(f"{path} is not an unpack map of version {UNPACK_MAP_VERSION}")
    rows = []
    for row in doc.get("files", []):
        if not isinstance(row, list) or len(row) != 3:
            raise ReleaseError(f"{path}: entry {row!r} is not [offset, length, path]")
        offset, length, name = _int(row[0], "offset"), _int(row[1], "length"), row[2]
        if not isinstance(name, str) or _plain_name(name) != name:
            raise ReleaseError(f"{path}: bad path {name!r}")
        rows.append((offset, length, name))
    return rows


def _spliced(rest: str, directory: str, rows: list[tuple[int, int, str]]) -> Any:
    """A read-only file of the whole tarball: the map's files placed into the rest file."""
    import bisect
    import io

    # Where each run of the payload starts, and (its file, None for the rest file; what
    # to add to a payload offset to get the position in that file).
    starts: list[int] = []
    places: list[tuple[Optional[str], int]] = []
    at = pos = 0
    for offset, length, name in rows:
        if offset > pos:
            starts.append(pos)
            places.append((None, at - pos))
            at += offset - pos
        starts.append(offset)
        places.append((os.path.join(directory, name), -offset))
        pos = offset + length
    starts.append(pos)
    places.append((None, at - pos))

    class Spliced(io.RawIOBase):
        def __init__(self) -> None:
            self.rest = os.open(rest, os.O_RDONLY)
            self.pos = 0

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return True

        def seek(self, offset: int, whence: int = 0) -> int:
            base = {0: 0, 1: self.pos}[whence]  # tarfile seeks from the start or here
            self.pos = base + offset
            return self.pos

        def tell(self) -> int:
            return self.pos

        def readinto(self, buf: Any) -> int:
            slot = bisect.bisect_right(starts, self.pos) - 1
            end = starts[slot + 1] if slot + 1 < len(starts) else None
            want = len(buf) if end is None else min(len(buf), end - self.pos)
            path, shift = places[slot]
            if path is None:
                data = os.pread(self.rest, want, self.pos + shift)
            else:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    data = os.pread(fd, want, self.pos + shift)
                finally:
                    os.close(fd)
            buf[: len(data)] = data
            self.pos += len(data)
            return len(data)

        def close(self) -> None:
            if not self.closed:
                os.close(self.rest)
            super().close()

    return Spliced()


def _adopt_download(directory: str, rows: list[tuple[int, int, str]]) -> None:
    """Check the download holds the map's files and their directories, nothing else,
    and give its directories the modes a plain extraction gives those tar does not list.

    The peer made them under umask 077; tar's own members get their modes from the
    extraction after this.
    """
    files = {name for _, _, name in rows}
    dirs = {"/".join(name.split("/")[:k]) for name in files for k in range(1, name.count("/") + 1)}
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o755 & ~umask)
    for top, subdirs, names in os.walk(directory):
        rel = os.path.relpath(top, directory)
        for sub in subdirs:
            path = os.path.normpath(os.path.join(rel, sub))
            if path not in dirs or os.path.islink(os.path.join(top, sub)):
                raise ReleaseError(
                    f"{directory} holds {path!r}, which the unpack map does not list"
                )
            os.chmod(os.path.join(top, sub), 0o777 & ~umask)
        for name in names:
            path = os.path.normpath(os.path.join(rel, name))
            there = os.path.join(top, name)
            if path not in files or os.path.islink(there) or not os.path.isfile(there):
                raise ReleaseError(
                    f"{directory} holds {path!r}, which the unpack map does not list"
                )


def extract_unpacked(
    rest: str, directory: str, map_path: str, use_filter: Optional[bool] = None, target: str = ""
) -> None:
    """Finish ``directory`` (the map's files, downloaded) into the tarball's release."""

    rows = _read_unpack_map(map_path)
    _adopt_download(directory, rows)
    placed = {offset: (os.path.join(directory, name), length) for offset, length, name in rows}
    claimed: set[int] = set()
    base = _tarfile_class()

    class UnpackedTarFile(base):  # type: ignore[valid-type,misc]
        def makefile(self, tarinfo: tarfile.TarInfo, targetpath: Any) -> None:
            there = placed.get(tarinfo.offset_data)
            if there == (os.path.normpath(targetpath), tarinfo.size) and tarinfo.sparse is None:
                claimed.add(tarinfo.offset_data)
            else:
                super().makefile(tarinfo, targetpath)

    source = _spliced(rest, directory, rows)
    try:
        _screen_and_extract(
            lambda: UnpackedTarFile.open(fileobj=source, mode="r:"),
            directory,
            use_filter,
            target,
            f"{rest} with {directory}",
            written=lambda m: placed.get(m.offset_data, ("", -1))[1] != m.size,
        )
    finally:
        source.close()
    missed = sorted(name for offset, _, name in rows if offset not in claimed)
    if missed:
        raise ReleaseError(
            f"the unpack map does not match the tarball: {len(missed)} mapped files are not "
            f"where tar has them (first: {missed[0]!r})"
        )


# --- a release sent as its own files (transfer=tree) --------------------------------
# The torrent carries the regular files; the manifest carries what BitTorrent cannot:
# directories (empty ones too), symlinks, modes and mtimes. Both come from the same walk
# of the seeder's tree, so the peer checks that what it downloaded is what the manifest
# lists, then makes the rest of the tree as tar's ``data`` filter would.
MANIFEST_VERSION = 1
#: A manifest is a few hundred bytes per entry: cap what a host will read.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode) & 0o755  # no setuid/setgid/sticky, no group/other write


def build_manifest(src: str, exclude: Sequence[str]) -> Manifest:
    """Walk ``src`` (not following symlinks), refusing what a deploy could not recreate."""
    import fnmatch

    if not os.path.isdir(src) or os.path.islink(src):
        raise ReleaseError(f"{src} is not a directory", EXIT_REFUSED)
    dirs, files, links = [], [], []
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(src, rel)) as entries:
            listed = sorted((e.name, e.stat(follow_symlinks=False)) for e in entries)
        for name, st in listed:
            if any(fnmatch.fnmatchcase(name, glob) for glob in exclude):
                continue
            path = f"{rel}/{name}" if rel else name
            if stat.S_ISDIR(st.st_mode):
                dirs.append([path, _mode(st), st.st_mtime_ns])
                pending.append(path)
            elif stat.S_ISREG(st.st_mode):
                files.append([path, _mode(st), st.st_mtime_ns, st.st_size])
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(os.path.join(src, path))
                _check_link(path, target)
                links.append([path, target, st.st_mtime_ns])
            else:
                raise ReleaseError(f"refusing special file {path!r} in {src}", EXIT_UNSAFE)
    return {"version": MANIFEST_VERSION, "dirs": dirs, "files": files, "links": links}


def write_manifest(src: str, out: str, exclude: Sequence[str]) -> None:
    data = json.dumps(build_manifest(src, exclude), separators=(",", ":")).encode()
    tmp = f"{out}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, out)


def _check_path(path: object) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path:
        raise ReleaseError(f"unsafe manifest path {path!r}", EXIT_UNSAFE)
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ReleaseError(f"unsafe manifest path {path!r}: it leaves the release", EXIT_UNSAFE)
    return path


def _check_link(path: str, target: object) -> str:
    """As tar's ``data`` filter: a symlink must point inside the release, by a relative path."""
    if not isinstance(target, str) or not target or "\0" in target or target.startswith("/"):
        raise ReleaseError(f"unsafe symlink {path!r} to {target!r}: absolute", EXIT_UNSAFE)
    where = os.path.normpath(os.path.join("/r", os.path.dirname(path), target))
    if not _within("/r", where):
        raise ReleaseError(
            f"unsafe symlink {path!r} to {target!r}: it leaves the release", EXIT_UNSAFE
        )
    return target


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ReleaseError(f"bad manifest: {what} must be a non-negative integer, got {value!r}")
    return value


def read_manifest(path: str) -> Manifest:
    """The manifest at ``path``, every field checked before anything is touched."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ReleaseError(f"bad manifest {path}: more than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ReleaseError(f"bad manifest {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION:
        raise ReleaseError(f"bad manifest {path}: not a version {MANIFEST_VERSION} manifest")
    shapes = {"dirs": 3, "files": 4, "links": 3}
    for key, width in shapes.items():
        rows = doc.get(key)
        if not isinstance(rows, list) or any(
            not isinstance(r, list) or len(r) != width for r in rows
        ):
            raise ReleaseError(f"bad manifest {path}: {key} must be rows of {width} fields")
    seen: set[str] = set()
    for row in doc["dirs"] + doc["files"] + doc["links"]:
        if _check_path(row[0]) in seen:
            raise ReleaseError(f"bad manifest {path}: {row[0]!r} appears twice")
        seen.add(row[0])
    for name, mode, mtime in doc["dirs"]:
        _int(mode, f"the mode of {name!r}"), _int(mtime, f"the mtime of {name!r}")
    for name, mode, mtime, size in doc["files"]:
        _int(mode, f"the mode of {name!r}"), _int(mtime, f"the mtime of {name!r}")
        _int(size, f"the size of {name!r}")
    links = set()
    for name, target, mtime in doc["links"]:
        _check_link(name, target), _int(mtime, f"the mtime of {name!r}")
        links.add(name)
    for name in seen:  # nothing may live under a symlink: writes would follow it
        parts = name.split("/")
        if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
            raise ReleaseError(f"unsafe manifest path {name!r}: below a symlink", EXIT_UNSAFE)
    return doc


def _regular_files(root: str) -> dict[str, int]:
    """Relative path -> size of every regular file under ``root``; refuses anything else."""
    found = {}
    for top, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(top, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if stat.S_ISREG(st.st_mode):
                found[rel] = st.st_size
            elif not stat.S_ISDIR(st.st_mode):
                raise ReleaseError(f"unexpected {rel!r} in the downloaded release", EXIT_UNSAFE)
    return found


def apply_manifest(root: str, doc: Manifest, copy_from: Optional[str] = None) -> None:
    """Make ``root`` the tree ``doc`` describes.

    ``root`` holds the downloaded files, or (``copy_from``) they are copied in from the
    seeder's own tree. Directories get their modes and mtimes last, deepest first,
    since making anything inside one changes its mtime.
    """
    if copy_from is not None:
        import shutil

        for name, _, _ in doc["dirs"]:
            os.makedirs(os.path.join(root, name), exist_ok=True)
        for name, _, _, _ in doc["files"]:
            shutil.copyfile(os.path.join(copy_from, name), os.path.join(root, name))
    # Checked before anything is made in a download: it then holds no symlink to follow.
    expected = {name: size for name, _, _, size in doc["files"]}
    found = _regular_files(root)
    if found != expected:
        extra = sorted(set(found) - set(expected))[:3]
        other = sorted(n for n in expected if found.get(n) != expected[n])[:3]
        raise ReleaseError(
            f"the files in {root} do not match the manifest (missing or wrong size: "
            f"{other}, not listed: {extra})"
        )
    for name, _, _ in doc["dirs"]:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for name, target, mtime in doc["links"]:
        path = os.path.join(root, name)
        os.symlink(target, path)
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
    for name, mode, mtime, _ in doc["files"]:
        path = os.path.join(root, name)
        os.chmod(path, mode | 0o600)  # tar's data filter keeps files readable by the owner
        os.utime(path, ns=(mtime, mtime))
    for name, mode, mtime in sorted(doc["dirs"], key=lambda row: -row[0].count("/")):
        path = os.path.join(root, name)
        os.chmod(path, mode | 0o700)
        os.utime(path, ns=(mtime, mtime))
    os.chmod(root, 0o755)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        import shutil

        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def extract(
    src: str,
    target: str,
    kind: str,
    name: str,
    replace: bool,
    use_filter: Optional[bool] = None,
    unpacked: str = "",
) -> None:
    """Build the release beside ``target`` and rename it into place.

    Nothing appears under ``target`` until the payload is fully extracted; a failure
    leaves only the hidden work directory, which the next attempt clears. For
    ``tar-unpacked``, ``unpacked`` is the peer's directory of mapped files and
    ``name`` the map.
    """
    target = os.path.abspath(target)
    if os.path.lexists(target):
        empty = os.path.isdir(target) and not os.path.islink(target) and not os.listdir(target)
        if not empty and not replace:
            raise ReleaseError(f"destination {target} exists and is not empty", EXIT_REFUSED)
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    work = os.path.join(parent, f".{base}.murder-tmp")
    old = os.path.join(parent, f".{base}.murder-old")
    _remove(old)
    if kind in ("tree", "tar-unpacked"):
        # The downloaded tree itself becomes the release.
        work = os.path.abspath(unpacked if kind == "tar-unpacked" else src)
        if os.path.dirname(work) != parent:
            raise ReleaseError(f"{work} must be beside {target} to be renamed into place")
    else:
        _remove(work)
        os.mkdir(work, 0o755)
    try:
        if kind in ("tree", "tree-copy"):
            doc = read_manifest(name)
            if kind == "tree-copy":
                needed = sum(row[3] + MEMBER_OVERHEAD for row in doc["files"])
                check_space(work, needed, target)
            apply_manifest(work, doc, copy_from=src if kind == "tree-copy" else None)
        elif kind == "file":
            if not name or "/" in name or name in (".", ".."):
                raise ReleaseError(f"bad file name {name!r}")
            check_space(work, os.path.getsize(src) + MEMBER_OVERHEAD, target)
            import shutil

            shutil.copyfile(src, os.path.join(work, name))
        elif kind == "tar":
            extract_tar(src, work, use_filter, target)
        elif kind == "tar-unpacked":
            extract_unpacked(src, work, name, use_filter, target)
        else:
            raise ReleaseError(f"unknown payload kind {kind!r}")
    except OSError as exc:
        _remove(work)
        raise ReleaseError(f"cannot extract {src} into {target}: {exc}") from exc
    except BaseException:
        _remove(work)
        raise
    if os.path.lexists(target):
        os.rename(target, old)
    os.rename(work, target)
    _remove(old)
    now = time.time()
    os.utime(target, (now, now))


def _releases_dir(dest: str) -> str:
    return os.path.join(dest, "releases")


def releases(dest: str) -> list[str]:
    """Tags under DEST/releases, oldest first (by install time, then name)."""
    root = _releases_dir(dest)
    try:
        names = [n for n in os.listdir(root) if not n.startswith(".")]
    except FileNotFoundError:
        return []
    dirs = [n for n in names if os.path.isdir(os.path.join(root, n))]
    return sorted(dirs, key=lambda n: (os.stat(os.path.join(root, n)).st_mtime_ns, n))


def current(dest: str) -> str:
    link = os.path.join(dest, "current")
    if not os.path.islink(link):
        if os.path.lexists(link):
            raise ReleaseError(f"{link} exists and is not a symlink", EXIT_REFUSED)
        return ""
    target = os.readlink(link)
    head, tag = os.path.split(target.rstrip("/"))
    if os.path.basename(head) != "releases":
        raise ReleaseError(f"{link} points at {target}, not at a release", EXIT_REFUSED)
    return tag


def switch(dest: str, tag: str) -> None:
    """``ln -s`` to a temp name, then rename over ``current``: never a moment without it."""
    if not os.path.isdir(os.path.join(_releases_dir(dest), tag)):
        raise ReleaseError(f"no release {tag!r} in {_releases_dir(dest)}", EXIT_REFUSED)
    current(dest)  # refuses a ``current`` that is a real directory or a foreign link
    link = os.path.join(dest, "current")
    tmp = os.path.join(dest, f".current.{os.getpid()}.tmp")
    _remove(tmp)
    os.symlink(os.path.join("releases", tag), tmp)
    os.replace(tmp, link)


def prune(dest: str, keep: int) -> list[str]:
    if keep < 1:
        raise ReleaseError(f"keep must be at least 1, got {keep}")
    live = current(dest)
    ordered = releases(dest)
    doomed = [t for t in ordered[: max(0, len(ordered) - keep)] if t != live]
    if doomed:
        import shutil

    for tag in doomed:
        shutil.rmtree(os.path.join(_releases_dir(dest), tag))
    return doomed


def rollback(dest: str, tag: str = "") -> str:
    live = current(dest)
    ordered = releases(dest)
    if tag:
        if tag not in ordered:
            raise ReleaseError(f"no release {tag!r} in {_releases_dir(dest)}", EXIT_REFUSED)
        chosen = tag
    else:
        if live not in ordered:
            raise ReleaseError(f"no current release in {dest} to roll back from", EXIT_REFUSED)
        index = ordered.index(live)
        if index == 0:
            raise ReleaseError(f"no release older than {live!r} in {dest}", EXIT_REFUSED)
        chosen = ordered[index - 1]
    switch(dest, chosen)
    return f"{live} -> {chosen}"


def main(argv: Sequence[str]) -> int:
    try:
        if not argv:
            raise ReleaseError(
                "usage: manifest|extract|install|switch|prune|rollback|current ...", 2
            )
        cmd, args = argv[0], list(argv[1:])
        if cmd == "extract" and len(args) in (5, 6):
            src, target, kind, name, replace = args[:5]
            extract(src, target, kind, name, replace == "1", None, *args[5:])
        elif cmd == "install" and len(args) in (7, 8):
            src, dest, tag, kind, name, replace, keep = args[:7]
            target = os.path.join(_releases_dir(dest), tag)
            extract(src, target, kind, name, replace == "1", None, *args[7:])
            switch(dest, tag)
            print(" ".join(prune(dest, int(keep))))
        elif cmd == "manifest" and len(args) >= 2:
            write_manifest(args[0], args[1], args[2:])
        elif cmd == "unpack-map" and len(args) == 2:
            write_unpack_map(args[0], args[1])
        elif cmd == "switch" and len(args) == 2:
            switch(args[0], args[1])
        elif cmd == "prune" and len(args) == 2:
            print(" ".join(prune(args[0], int(args[1]))))
        elif cmd == "rollback" and len(args) in (1, 2):
            print(rollback(args[0], args[1] if len(args) == 2 else ""))
        elif cmd == "current" and len(args) == 1:
            print(current(args[0]))
        else:
            raise ReleaseError(f"bad command line: {' '.join(argv)!r}", 2)
    except ReleaseError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return exc.code
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
