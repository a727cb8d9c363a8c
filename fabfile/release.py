"""Put a downloaded payload in place on a host: extract, switch ``current``, prune, roll back.

The work is done on the host by :mod:`fabfile.remote_release`, sent as the source of a
``python3 -c`` (see that module for why). Murder's ``peer`` task extracts into
``destination_path/TAG`` (or ``destination_path`` with ``no_tag_directory``); ``fab
deploy`` uses Capistrano's ``releases/TAG`` plus a ``current`` symlink.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional

from fabfile.remote import Connections, HostError, Outcome, sh
from fabfile.settings import Settings


@lru_cache(maxsize=1)
def helper_source() -> str:
    return Path(__file__).with_name("remote_release.py").read_text(encoding="utf-8")


def helper_command(settings: Settings, *args: str) -> str:
    return sh(*settings.python_argv, "-c", helper_source(), *args)


def payload_name(settings: Settings, source: Optional[str]) -> str:
    """With ``path_is_file``, the file keeps the name it had where it came from."""
    if source:
        name = Path(source.rstrip("/")).name
        if name:
            return name
    return settings.payload_name


def extract_on(
    conns: Connections,
    host: str,
    settings: Settings,
    target: str,
    *,
    path_is_file: bool,
    file_name: str,
    replace: bool,
) -> None:
    kind = "file" if path_is_file else "tar"
    conns.run(
        host,
        helper_command(
            settings, "extract", settings.payload, target, kind, file_name, "1" if replace else "0"
        ),
    )


def install_release(
    conns: Connections,
    host: str,
    settings: Settings,
    *,
    path_is_file: bool,
    file_name: str,
    downloaded: bool = True,
) -> None:
    """releases/TAG, then the atomic switch of ``current``, then prune to keep_releases.

    A tree's download (or a tarball's unpacked files) is renamed into place; a seeder
    that is also a peer (it did not download) copies the files from its own tree.
    """
    kind, src = ("file" if path_is_file else "tar"), settings.payload
    unpacked = []
    if settings.tree:
        kind, src = ("tree", settings.download_target)
        if not downloaded:
            kind, src = ("tree-copy", settings.seed_source)
        file_name = settings.manifest
    elif downloaded and settings.unpacks(path_is_file):
        kind, file_name, unpacked = "tar-unpacked", settings.unpack_map, [settings.incoming_dir]
    args = [src, settings.destination_path, settings.require_tag(), kind, file_name]
    args += ["1" if settings.force else "0", str(settings.keep_releases), *unpacked]
    conns.run(host, helper_command(settings, "install", *args))


def rollback_on(conns: Connections, host: str, settings: Settings, tag: str = "") -> str:
    args = ["rollback", settings.destination_path] + ([tag] if tag else [])
    out = str(conns.run(host, helper_command(settings, *args)).stdout).strip()
    if "->" not in out:
        raise HostError(host, f"rollback said {out!r}")
    return out


def current_on(conns: Connections, host: str, settings: Settings) -> str:
    out = conns.run(host, helper_command(settings, "current", settings.destination_path))
    return str(out.stdout).strip()


def rollback_all(
    conns: Connections, settings: Settings, hosts: List[str], tag: str = ""
) -> Dict[str, Outcome[str]]:
    return conns.map(hosts, lambda h: rollback_on(conns, h, settings, tag))
