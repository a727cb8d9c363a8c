"""create_torrent / download_torrent: the payload on the seeder and its .torrent.

As in Murder, the payload is ``temp_path/TAG.tgz``: a tarball of ``files_path`` without
``.git*``, or (``path_is_file``) that one file as is. With ``transfer=tree`` the torrent
holds ``files_path``'s own files instead, and ``temp_path/TAG.tree.json`` the rest of
the tree (see ``remote_release``). ``--local-path`` stages a
workstation directory or file onto the seeder first, as Murder's deploy strategy did.

Each deploy's .torrent carries a fresh secret in its announce URL (``make-torrent
--auth``, so the token is born on the seeder and never appears on a command line); the
tracker serves the torrent only to requests bearing it. Whoever holds the .torrent holds
the secret, so it and everything beside it stay readable by the deploy user only: files
0600, directories 0700, here and on the hosts.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from fabfile.release import helper_command
from fabfile.remote import Connections, HostError, sh
from fabfile.settings import Settings
from fabfile.tracker import tracker_address
from murder_core.errors import DeployError, MurderError
from murder_core.tracker.requests import announce_auth

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
#: Left out of every release, as Murder's ``tar --exclude '.git*'`` did.
EXCLUDE = (".git*",)


def private_dir_script(path: str) -> str:
    """Create ``path`` (mode 700) or check an existing one is ours alone; exit 3 if not.

    An existing directory is never chmod-ed (temp_path might be a shared one such as
    /tmp), and one that is a symlink, someone else's, or open to group or others is
    refused: the .torrent and payload put there must not be readable by other users.
    """
    q = sh(path)
    problem = sh(
        f"{path} must be a directory owned by the deploy user with mode 700 "
        "(not a symlink, no group or other access)"
    )
    return (
        f"mkdir -p -m 700 -- {q} && [ ! -L {q} ] && [ -O {q} ] && "
        f"case $(ls -ld -- {q}) in d???------*) ;; *) false;; esac "
        f"|| {{ printf '%s\\n' {problem} >&2; exit 3; }}"
    )


def stats_path(announce: str) -> str:
    """The tracker's ``/stats.json`` as this torrent's holder may see it (with its token)."""
    try:
        token = announce_auth(announce)
    except MurderError:
        token = None
    if token is None:
        return "/stats.json"
    return "/stats.json?auth=" + quote(token, safe="")


def local_torrent_path(settings: Settings) -> Path:
    return Path(settings.local_torrent_dir) / f"{settings.payload_name}.torrent"


def _excluded(name: str) -> bool:
    """Murder's ``tar --exclude '.git*'``: any path component matching EXCLUDE."""
    return any(fnmatch.fnmatchcase(part, g) for part in Path(name).parts for g in EXCLUDE)


def tar_local_dir(source: Path, out: Path, compress: bool = True) -> None:
    """Tar (and gzip) ``source``'s contents (not the directory itself), skipping ``.git*``."""

    def keep(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
        if _excluded(info.name):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(out, "w:gz" if compress else "w") as tar:
        for entry in sorted(os.listdir(source)):
            tar.add(str(source / entry), arcname=entry, filter=keep)


def stage_local(conns: Connections, settings: Settings, local_path: str) -> bool:
    """Upload a workstation directory (as a tarball) or file to the seeder.

    Returns whether the payload is a plain file (``path_is_file``)."""
    source = Path(local_path)
    host = conns.inventory.seeder.name
    conns.run(host, private_dir_script(settings.temp_path))
    if source.is_dir():
        with tempfile.TemporaryDirectory(prefix="murder-stage-") as tmp:
            tarball = Path(tmp) / settings.payload_name
            tar_local_dir(source, tarball, settings.compress)
            conns.put(host, str(tarball), settings.payload)
        return False
    if source.is_file():
        conns.put(host, str(source), settings.payload)
        return True
    raise DeployError(f"local_path {local_path!r} is neither a directory nor a file")


def payload_script(settings: Settings, files_path: str, path_is_file: bool) -> str:
    temp, payload = settings.temp_path, settings.payload
    head = f"umask 077 && {{ {private_dir_script(temp)}; }} && "
    if settings.tree:
        # No tarball: the manifest of what the torrent cannot carry is all there is to make.
        return head + helper_command(settings, "manifest", files_path, settings.manifest, *EXCLUDE)
    if path_is_file:
        return head + f"cp -- {sh(files_path)} {sh(payload)}"
    return head + (
        f"test -d {sh(files_path)} || {{ echo {sh(f'{files_path} is not a directory')} >&2; "
        "exit 3; }; "
        f"tar -c{' -z' if settings.compress else ''} -C {sh(files_path + '/')} "
        f"{' '.join(f'--exclude {sh(g)}' for g in EXCLUDE)} -f {sh(payload)} ."
    )


def make_payload(conns: Connections, settings: Settings) -> None:
    """Build ``temp_path/TAG.tgz`` on the seeder from ``files_path``."""
    if settings.files_path is None:
        raise DeployError(
            "files_path is required: the directory on the seeder with the files to "
            "distribute (or use `fab deploy --local-path` from the workstation)"
        )
    script = payload_script(settings, settings.files_path, settings.path_is_file)
    conns.run(conns.inventory.seeder.name, script)


def make_torrent(conns: Connections, settings: Settings, unpack_map: bool = False) -> str:
    """Hash the payload on the seeder into ``TAG.tgz.torrent``; returns the info_hash.

    ``--auth`` puts a fresh token in the announce URL: every deploy has its own secret.
    With ``unpack_map`` the tarball's map is written meanwhile, on the other core.
    """
    host = conns.inventory.seeder.name
    tracker = tracker_address(conns.ip_of(conns.inventory.tracker.name), settings.tracker_port)
    argv = make_torrent_argv(settings, tracker)
    script = f"umask 077 && {sh(*argv)}"
    if unpack_map:
        mapper = helper_command(settings, "unpack-map", settings.payload, settings.unpack_map)
        script = (
            f"umask 077 && {mapper} & mapper=$!; {script}; made=$?; "
            'wait "$mapper" || exit $?; exit "$made"'
        )
    result = conns.run(host, script)
    info_hash = str(result.stdout).strip().splitlines()[-1:] or [""]
    if not _HEX40.match(info_hash[0]):
        raise HostError(
            host, f"make-torrent printed {result.stdout.strip()[:100]!r}, not an info_hash"
        )
    return info_hash[0]


def make_torrent_argv(settings: Settings, tracker: str) -> list[str]:
    # A tree's symlinks travel in the manifest; .git* stays out of both, as from the tarball.
    tree = [f"--exclude={glob}" for glob in EXCLUDE] + ["--skip-symlinks"] if settings.tree else []
    return [
        *(*settings.python_argv, settings.pyz_remote, "make-torrent", settings.seed_source),
        *("--tracker", tracker, "--auth", "--mode", "600", "-o", settings.torrent, *tree),
    ]


def open_private(path: Path) -> None:
    """Create (or truncate) ``path`` as an empty file of mode 0600, never via a symlink.

    The download then writes into it and keeps that mode: a fresh file would be
    created with the umask's mode and be readable by others until a chmod.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise DeployError(f"cannot create {path}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _fetch_private(conns: Connections, remote: str, local: Path) -> Path:
    """Fetch ``remote`` from the seeder to ``local`` (mode 0600), via a .part name."""
    local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = local.with_name(local.name + ".part")
    open_private(partial)
    conns.get(conns.inventory.seeder.name, remote, str(partial))
    partial.chmod(0o600)
    partial.replace(local)
    return local


def download_torrent(conns: Connections, settings: Settings) -> Path:
    """Fetch the .torrent from the seeder into ``local_torrent_dir`` (mode 0600)."""
    return _fetch_private(conns, settings.torrent, local_torrent_path(settings))


def download_companion(conns: Connections, settings: Settings, remote: str) -> Path:
    """Fetch a file the seeder made for the peers (a tree's manifest, a tarball's map)
    beside the local .torrent, under its own name (mode 0600)."""
    return _fetch_private(conns, remote, local_torrent_path(settings).with_name(Path(remote).name))


def publish_torrent(conns: Connections, settings: Settings, local: Path) -> None:
    """Copy the .torrent into the tracker's allowed dir: the only torrent it serves."""
    host = conns.inventory.tracker.name
    conns.run(host, private_dir_script(settings.allowed_dir))
    conns.put(host, str(local), settings.tracker_torrent)


def create_torrent(conns: Connections, settings: Settings) -> tuple[str, Path]:
    """Murder's create_torrent: payload, .torrent, download, and hand it to the tracker."""
    make_payload(conns, settings)
    info_hash = make_torrent(conns, settings)
    local = download_torrent(conns, settings)
    publish_torrent(conns, settings, local)
    return info_hash, local
