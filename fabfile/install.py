"""distribute_files: put murder.pyz (and Murder's old script names) on every host."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

from fabfile.remote import Connections, HostError, Outcome, sh
from fabfile.settings import Settings
from murder_core.errors import DeployError

#: Murder refused to clear a directory this full: it is probably not ours.
MAX_FILES_TO_CLEAR = 1000
LEGACY_SCRIPTS = ("murder_tracker.py", "murder_make_torrent.py", "murder_client.py")

_SHA256 = (
    "import hashlib, sys\n"
    "try:\n"
    "    f = open(sys.argv[1], 'rb')\n"
    "except OSError:\n"
    "    print('missing')\n"
    "else:\n"
    "    h = hashlib.sha256()\n"
    "    for chunk in iter(lambda: f.read(1 << 20), b''):\n"
    "        h.update(chunk)\n"
    "    print(h.hexdigest())\n"
)
# One python start per host answers "is python3 new enough", "is murder.pyz current"
# and, for a peer, "is this release already there": under a loaded fleet (or sixteen
# hosts on two cores) each start and round trip is dear.
_PROBE = (
    (
        "import sys\nv = sys.version_info\nprint('%d.%d.%d' % v[:3])\n"
        "if v < (3, 9):\n    sys.exit(1)\n"
    )
    + _SHA256
    + "if len(sys.argv) > 2:\n    import os\n    print(os.path.lexists(sys.argv[2]))\n"
)


class Probe(NamedTuple):
    python_version: str
    pyz_sha256: str  # "missing" when there is none
    release_exists: Optional[bool]  # None when not asked


def local_pyz(settings: Settings) -> Path:
    """The zipapp to ship; built on the spot (``murder_dev.build``) when missing."""
    path = Path(settings.pyz)
    if path.is_file():
        return path
    try:
        from murder_dev.build import build_pyz
    except ImportError as exc:
        raise DeployError(
            f"murder.pyz not found at {str(path)!r} and murder_dev is not importable "
            "to build it: run `invoke build` in a murder checkout"
        ) from exc
    return Path(build_pyz(path))


def files_to_ship(pyz: Path) -> List[Path]:
    """The pyz plus whichever legacy shims were built beside it."""
    return [pyz] + [pyz.parent / n for n in LEGACY_SCRIPTS if (pyz.parent / n).is_file()]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_python(
    conns: Connections, host: str, settings: Settings, release: Optional[str] = None
) -> Probe:
    """The remote python3's version, the sha256 of the installed murder.pyz and, given a
    ``release`` directory, whether it exists; HostError saying what is wrong with that
    python."""
    args = [settings.pyz_remote] + ([release] if release is not None else [])
    result = conns.run(
        host,
        f"command -v {sh(settings.python)} >/dev/null || exit 127; "
        f"{sh(*settings.python_argv, '-c', _PROBE, *args)}",
        check=False,
    )
    if result.exited == 127:
        raise HostError(host, f"{settings.python} not found on PATH")
    lines = str(result.stdout).split()
    version = lines[0] if lines else ""
    if result.exited != 0 or len(lines) != 1 + len(args):
        raise HostError(host, f"{settings.python} >= 3.9 is required, found {version or '?'}")
    exists = lines[2] == "True" if release is not None else None
    return Probe(version, lines[1], exists)


def clear_dir_script(path: str) -> str:
    """``rm -rf`` the murder dir, unless it holds so many files it cannot be ours."""
    limit = MAX_FILES_TO_CLEAR
    return "\n".join(
        [
            f"n=$(find {sh(path)} -type f 2>/dev/null | head -n {limit + 1} | wc -l)",
            f'if [ "$n" -gt {limit} ]; then',
            f"  echo {sh(f'refusing to clear {path}: it holds more than {limit} files')} >&2",
            "  exit 3",
            "fi",
            f"rm -rf {sh(path)} && mkdir -p {sh(path)}",
        ]
    )


def install_on(
    conns: Connections,
    host: str,
    settings: Settings,
    files: Sequence[Path],
    *,
    clear: bool,
    installed_sha256: Optional[str] = None,
) -> str:
    """Install on one host; returns ``"installed"`` or ``"up to date"``.

    ``installed_sha256``: what ``check_python`` found on the host; without it the
    host is probed here.
    """
    if installed_sha256 is None:
        installed_sha256 = check_python(conns, host, settings).pyz_sha256
    target = settings.remote_murder_path
    if clear:
        conns.run(host, clear_dir_script(target))
    else:
        if installed_sha256 == sha256_file(files[0]):
            return "up to date"
        conns.run(host, f"mkdir -p {sh(target)}")
    for path in files:
        mode = 0o644 if path.suffix == ".pyz" else 0o755
        conns.put(host, str(path), f"{target}/{path.name}", mode=mode)
    # The bytes that landed, not a test run: the remote python was checked already, and
    # importing the engine costs a host ten times what hashing 150 KiB does.
    landed = conns.run(host, sh(*settings.python_argv, "-c", _SHA256, settings.pyz_remote))
    if landed.stdout.strip() != sha256_file(files[0]):
        raise HostError(host, f"{settings.pyz_remote} does not match murder.pyz after upload")
    return "installed"


def distribute_files(
    conns: Connections,
    settings: Settings,
    hosts: Sequence[str],
    *,
    clear: bool = True,
    installed: Optional[Mapping[str, str]] = None,
) -> Dict[str, Outcome[str]]:
    """Murder's distribute_files; ``clear=False`` (the deploy) skips hosts already current.

    ``installed``: host -> sha256 of its murder.pyz, from the caller's ``check_python``.
    """
    files = files_to_ship(local_pyz(settings))
    known = installed or {}
    return conns.map(
        hosts,
        lambda h: install_on(conns, h, settings, files, clear=clear, installed_sha256=known.get(h)),
    )
