"""Hostile inventory, tag and path values never reach a shell as syntax (issue 5).

Tags, the python command and inventory names that could mean something to a shell are
refused outright. Paths may legitimately hold any character but NUL and newline, so
they are quoted instead, and that is proved by running the real deploy stages, the very
scripts they send over SSH, through ``sh -c`` locally: a ``Connections`` whose hosts
are all this machine. Every injection attempt would touch a canary file; it must not
exist afterwards, and the deploy must have worked with those paths.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from fabfile import install, peers, release, seed, teardown, torrent, tracker
from fabfile.inventory import parse_inventory
from fabfile.remote import Connections
from fabfile.settings import Settings, check_tag, settings_from_config
from murder_core.errors import DeployError, HostError, InventoryError
from murder_core.metainfo import read_metainfo
from murder_dev.build import build_pyz
from murder_dev.localswarm import free_port

#: What any of the shells involved would act on, if a value were pasted in unquoted.
ATTACKS = (
    "'; touch {c}; '",
    '"; touch {c}; "',
    "$(touch {c})",
    "`touch {c}`",
    "; touch {c}",
    "&& touch {c}",
    "| touch {c}",
    "> {c}",
)
#: Harmless if quoted, meaningful to a shell otherwise.
ODD = "sp ace\ttab *?[x] ~ $HOME ${IFS} # ! \\ -rf --help"

INVENTORY = """\
[tracker]
t murder_ip=127.0.0.1
[seeder]
s murder_ip=127.0.0.1
[peers]
p1 murder_ip=127.0.0.1
"""


def hostile_component(canary: Path) -> str:
    return " ".join(a.format(c=canary) for a in ATTACKS) + " " + ODD


@dataclass
class LocalResult:
    stdout: str
    stderr: str
    exited: int


class LocalConnections(Connections):
    """Every host is this machine; ``run`` goes through two shells as over SSH.

    Over SSH the remote login shell runs our ``sh -c 'SCRIPT'``; here ``sh`` plays the
    login shell, so the script passes the same two layers of shell parsing.
    """

    MAX_SECONDS = 120

    def __init__(self, cwd: Path) -> None:
        super().__init__(parse_inventory(INVENTORY), config=None)
        self.cwd = cwd
        self.scripts: list[str] = []

    def run(
        self, name: str, script: str, *, timeout: Optional[float] = None, check: bool = True
    ) -> Any:
        self.scripts.append(script)
        if name not in self._reached:
            self._reached.append(name)
        limit = min(self.MAX_SECONDS, timeout or self.MAX_SECONDS)
        done = subprocess.run(
            ["sh", "-c", "sh -c " + shlex.quote(script)],
            capture_output=True,
            text=True,
            timeout=limit,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
        )
        result = LocalResult(done.stdout, done.stderr, done.returncode)
        if check and result.exited != 0:
            raise HostError(name, f"exit {result.exited}: {result.stderr.strip()[-400:]}")
        return result

    def put(self, name: str, local: str, remote: str, mode: int = 0o600) -> None:
        partial = f"{remote}.part-{os.getpid()}"
        shutil.copyfile(local, partial)
        os.chmod(partial, mode)
        os.replace(partial, remote)

    def get(self, name: str, remote: str, local: str) -> None:
        with open(remote, "rb") as src, open(local, "r+b") as dst:
            dst.truncate()
            shutil.copyfileobj(src, dst)

    def close(self) -> None:
        return None


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_whole_deploy_with_hostile_paths_runs_only_what_it_means(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    evil = hostile_component(canary)
    base = tmp_path / "hosts"
    source = base / f"src {evil}"
    (source / "bin").mkdir(parents=True)
    (source / "bin" / "app").write_bytes(os.urandom(70_000))
    (source / f"odd {ODD}").write_text("name full of shell syntax\n")
    cwd = tmp_path / "cwd"  # where a mis-quoted "> file" would land
    cwd.mkdir()
    pyz = build_pyz(tmp_path / "dist" / "murder.pyz")
    settings = settings_from_config(
        {},
        inventory="unused",
        tag="v1.0-rc_1",
        files_path=str(source),
        destination_path=f"{base}/dest {evil}",
        temp_path=f"{base}/tmp {evil}",
        remote_murder_path=f"{base}/bin {evil}",
        python=sys.executable,
        pyz=str(pyz),
        local_torrent_dir=str(tmp_path / "workstation"),
        tracker_port=free_port(),
        announce_interval=1,
        linger=0,
        peer_timeout=60,
        keep_releases=2,
    )
    conns = LocalConnections(cwd)
    try:
        outcomes = install.distribute_files(conns, settings, ["t"], clear=True)
        assert outcomes["t"].ok, outcomes["t"].error
        tracker.start_tracker(conns, settings)
        torrent.make_payload(conns, settings)
        info_hash = torrent.make_torrent(conns, settings)
        local = torrent.download_torrent(conns, settings)
        torrent.publish_torrent(conns, settings, local)
        seed.start_seeding(conns, settings)
        peers.upload_torrent(conns, settings, local, "p1")
        assert peers.download(conns, settings, "p1") is True
        release.install_release(conns, "p1", settings, path_is_file=False, file_name="")
        assert release.current_on(conns, "p1", settings) == "v1.0-rc_1"
    finally:
        problems = teardown.teardown(conns, settings, ["p1"])
    assert problems == []
    assert not canary.exists()
    assert os.listdir(cwd) == []
    assert read_metainfo(local).info_hash.hex == info_hash
    assert "?auth=" in read_metainfo(local).announce
    assert tree_digest(Path(settings.release_dir)) == tree_digest(source)
    assert os.readlink(Path(settings.destination_path) / "current") == "releases/v1.0-rc_1"
    # Teardown found and stopped every process by its (hostile) pidfile path.
    temp = Path(settings.temp_path)
    assert sorted(p.name for p in temp.glob("*.pid")) == []
    assert not Path(settings.payload).exists() and not Path(settings.torrent).exists()
    # The .torrent holds the deploy's secret: 0600 in 0700 directories, everywhere.
    assert local.stat().st_mode & 0o777 == 0o600
    assert local.parent.stat().st_mode & 0o777 == 0o700
    assert temp.stat().st_mode & 0o777 == 0o700
    assert Path(settings.allowed_dir).stat().st_mode & 0o777 == 0o700
    # The path really reached the shells: every script that names it quotes it.
    assert any(shlex.quote(settings.temp_path) in s for s in conns.scripts)


def test_make_torrent_writes_a_private_torrent_on_the_seeder(tmp_path: Path) -> None:
    """``umask 077`` alone would not do: the engine sets the mode itself (``--mode``)."""
    payload = tmp_path / "tmp" / "v1.tgz"
    payload.parent.mkdir()
    payload.write_bytes(os.urandom(50_000))
    pyz = build_pyz(tmp_path / "bin" / "murder.pyz")
    settings = Settings(
        tag="v1",
        temp_path=str(tmp_path / "tmp"),
        remote_murder_path=str(pyz.parent),
        python=sys.executable,
    )
    conns = LocalConnections(tmp_path)
    first = torrent.make_torrent(conns, settings)
    token = read_metainfo(settings.torrent).announce.split("?auth=")[1]
    assert Path(settings.torrent).stat().st_mode & 0o777 == 0o600
    assert len(token) == 32 and int(token, 16) >= 0
    # A fresh secret for every torrent made, even of the very same payload.
    assert torrent.make_torrent(conns, settings) == first
    assert read_metainfo(settings.torrent).announce.split("?auth=")[1] != token


@pytest.mark.parametrize(
    ("mode", "owner_only"),
    [(0o700, True), (0o755, False), (0o770, False), (0o701, False), (0o1777, False)],
)
def test_private_dir_script_refuses_a_shared_temp_dir(
    tmp_path: Path, mode: int, owner_only: bool
) -> None:
    temp = tmp_path / "murder tmp"
    temp.mkdir()
    temp.chmod(mode)
    conns = LocalConnections(tmp_path)
    if owner_only:
        conns.run("s", torrent.private_dir_script(str(temp)))
    else:
        with pytest.raises(HostError) as caught:
            conns.run("s", torrent.private_dir_script(str(temp)))
        assert caught.value.reason == (
            f"exit 3: {temp} must be a directory owned by the deploy user with mode 700 "
            "(not a symlink, no group or other access)"
        )
    assert temp.stat().st_mode & 0o7777 == mode  # never chmod-ed: it may be shared


def test_private_dir_script_refuses_a_symlink_and_creates_missing_dirs(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    conns = LocalConnections(tmp_path)
    with pytest.raises(HostError, match="link must be a directory owned by the deploy user"):
        conns.run("s", torrent.private_dir_script(str(tmp_path / "link")))
    fresh = tmp_path / "a" / "b"
    conns.run("s", torrent.private_dir_script(str(fresh)))
    assert fresh.stat().st_mode & 0o777 == 0o700


# -- refused outright ------------------------------------------------------------------

HOSTILE_NAMES = ["v1'", 'v1"', "v1;id", "$(id)", "`id`", "v1\nid", "-rf", "v1 id", "v1|id"]


@pytest.mark.parametrize("tag", [*HOSTILE_NAMES, "../v1", "v1/..", ".hidden", "v1&id", "v1>x"])
def test_hostile_tags_are_refused(tag: str) -> None:
    with pytest.raises(DeployError) as caught:
        check_tag(tag)
    assert str(caught.value) == (
        "tag must be 1-100 characters of [A-Za-z0-9._-], not start with '.' or '-', "
        f"and contain no '/', got {tag!r}"
    )


@pytest.mark.parametrize("python", ["python3;id", "$(id)", "`id`", "py'3", "-c", "py|x", "p>x"])
def test_hostile_python_commands_are_refused(python: str) -> None:
    with pytest.raises(DeployError) as caught:
        Settings(python=python)
    assert str(caught.value) == (
        "python must be a command name or path of [A-Za-z0-9_./+-] not starting with '-', "
        f"got {python!r}"
    )


@pytest.mark.parametrize("key", ["temp_path", "destination_path", "remote_murder_path"])
@pytest.mark.parametrize("value", ["/x\nrm -rf /", "/x\rid", "/x\0y", "-rf", "relative; id"])
def test_paths_with_newlines_or_not_absolute_are_refused(key: str, value: str) -> None:
    with pytest.raises(DeployError, match=f"^{key} must "):
        settings_from_config({key: value})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("h1;id", "bad host name 'h1;id' (host ranges are not supported)"),
        ("$(id)", "bad host name '$(id)' (host ranges are not supported)"),
        ("`id`", "bad host name '`id`' (host ranges are not supported)"),
        ("'h1 id'", "bad host name 'h1 id' (host ranges are not supported)"),
        ("h1 ansible_host='$(id)'", "bad ansible_host '$(id)'"),
        ("h1 ansible_host=a;b", "bad ansible_host 'a;b'"),
        ("h1 murder_ip='1.2.3.4;id'", "murder_ip must be an IP address, got '1.2.3.4;id'"),
        ("h1 murder_ip=$(id)", "murder_ip must be an IP address, got '$(id)'"),
        ("h1 ansible_port=22;id", "ansible_port must be an integer in 1..65535, got '22;id'"),
    ],
)
def test_hostile_inventory_values_are_refused(line: str, message: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(f"[peers]\n{line}\n", path="hosts.ini")
    assert str(caught.value) == f"hosts.ini:2: {message}"
