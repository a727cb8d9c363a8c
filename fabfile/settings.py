"""Every knob of a deploy: defaults, validation, and the layout of remote paths.

Values come from ``ns.configure`` (these defaults), then ``fabric.yaml``, then
``FABRIC_MURDER_*`` environment variables, then task flags; Invoke merges the first
three and :func:`settings_from_config` lays the flags on top. Everything a remote shell
will see is validated here once, so the stages can trust it (and still quote it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Mapping, Optional

from murder_core.errors import DeployError

#: The ``murder`` section of the config; names are Murder's where Murder had one.
DEFAULTS: Dict[str, Any] = {
    "inventory": "hosts.ini",
    "tag": None,
    "files_path": None,
    "local_path": None,
    "path_is_file": False,
    # gzip the tarball, as Murder did. Off for releases that are already compressed, or
    # where the network is faster than gzip (about 20-60 MB/s per core); fab deploy's
    # peers then write a plain tarball's files as they download it (see ``unpacks``).
    "compress": True,
    # fab deploy sends the release as one tarball (Murder's way: gzip can shrink it, and
    # every peer extracts it) or, with "tree", as its own files: no tarball to pack on
    # the seeder and none to extract on the peers, whose download becomes the release.
    "transfer": "tarball",
    "no_tag_directory": False,
    "unsafe_please_delete": False,
    "destination_path": "/srv/murder/app",
    "temp_path": "/tmp/murder",
    "remote_murder_path": "/srv/murder/bin",
    "tracker_port": 8998,
    # A deploy is short: frequent announces find peers sooner and keep the progress bar live.
    "announce_interval": 2,
    "keep_releases": 5,
    "force": False,
    "pyz": "dist/murder.pyz",
    "python": "python3",
    "local_torrent_dir": ".murder",
    "max_parallel": 50,
    "connect_timeout": 10,
    "command_timeout": 300,
    "peer_timeout": 1800,
    "linger": 600,
    # Once the seeder is gone, how long the swarm may move no byte before the peers
    # still downloading are stopped (instead of each waiting out peer_timeout).
    "stall_timeout": 30,
    # fab deploy's tracker and seeder stop by themselves once the deploy has not renewed
    # their lease for this long (the workstation died, or their host is cut off from it).
    "lease_seconds": 120,
    "progress": True,
    "stats_interval": 1.0,
    "json": None,
}

_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
#: A command name or path: no shell syntax at all, so it reads the same quoted or not.
_PYTHON_RE = re.compile(r"^[A-Za-z0-9_./+-]+$")
MAX_TAG_LENGTH = 100
_INT_KEYS = {
    "tracker_port": (1, 65535),
    "announce_interval": (1, 3600),
    "keep_releases": (1, 10_000),
    "max_parallel": (1, 10_000),
    "connect_timeout": (1, 3600),
    "command_timeout": (1, 86_400),
    "peer_timeout": (1, 86_400),
    "linger": (0, 86_400),
    "stall_timeout": (1, 86_400),
    "lease_seconds": (10, 86_400),
}
_BOOL_KEYS = (
    "path_is_file",
    "compress",
    "no_tag_directory",
    "unsafe_please_delete",
    "force",
    "progress",
)
TRANSFERS = ("tarball", "tree")
_REMOTE_PATH_KEYS = ("destination_path", "temp_path", "remote_murder_path")


def check_tag(tag: Any) -> str:
    """A tag names a directory on every host: refuse anything that is not a plain name."""
    if not isinstance(tag, str) or not tag:
        raise DeployError("a tag is required (--tag, or murder.tag in the config)")
    if "/" in tag or not _TAG_RE.match(tag) or len(tag) > MAX_TAG_LENGTH:
        raise DeployError(
            "tag must be 1-100 characters of [A-Za-z0-9._-], not start with '.' or '-', "
            f"and contain no '/', got {tag!r}"
        )
    return tag


def check_remote_path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise DeployError(f"{key} must be an absolute path, got {value!r}")
    if any(ch in value for ch in "\0\n\r"):
        raise DeployError(f"{key} must not contain NUL or newlines, got {value!r}")
    stripped = value.rstrip("/")
    if stripped == "" or ".." in stripped.split("/"):
        raise DeployError(f"{key} must be a directory below / without '..', got {value!r}")
    return stripped


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if value is None or (
        isinstance(value, str) and value.lower() in ("", "0", "false", "no", "off")
    ):
        return False
    raise DeployError(f"{key} must be true or false, got {value!r}")


def _to_int(key: str, value: Any) -> int:
    low, high = _INT_KEYS[key]
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DeployError(f"{key} must be an integer in {low}..{high}, got {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high or str(number) != str(value).strip():
        raise DeployError(f"{key} must be an integer in {low}..{high}, got {value!r}")
    return number


@dataclass(frozen=True)
class Settings:
    """The validated ``murder`` config for one task run."""

    inventory: str = DEFAULTS["inventory"]
    tag: Optional[str] = None
    files_path: Optional[str] = None
    local_path: Optional[str] = None
    path_is_file: bool = False
    compress: bool = True
    transfer: str = DEFAULTS["transfer"]
    no_tag_directory: bool = False
    unsafe_please_delete: bool = False
    destination_path: str = DEFAULTS["destination_path"]
    temp_path: str = DEFAULTS["temp_path"]
    remote_murder_path: str = DEFAULTS["remote_murder_path"]
    tracker_port: int = DEFAULTS["tracker_port"]
    announce_interval: int = DEFAULTS["announce_interval"]
    keep_releases: int = DEFAULTS["keep_releases"]
    force: bool = False
    pyz: str = DEFAULTS["pyz"]
    python: str = DEFAULTS["python"]
    local_torrent_dir: str = DEFAULTS["local_torrent_dir"]
    max_parallel: int = DEFAULTS["max_parallel"]
    connect_timeout: int = DEFAULTS["connect_timeout"]
    command_timeout: int = DEFAULTS["command_timeout"]
    peer_timeout: int = DEFAULTS["peer_timeout"]
    linger: int = DEFAULTS["linger"]
    stall_timeout: int = DEFAULTS["stall_timeout"]
    lease_seconds: int = DEFAULTS["lease_seconds"]
    progress: bool = True
    stats_interval: float = DEFAULTS["stats_interval"]
    json: Optional[str] = None

    def __post_init__(self) -> None:
        if self.tag is not None:
            check_tag(self.tag)
        for key in _REMOTE_PATH_KEYS:
            check_remote_path(key, getattr(self, key))
        if self.files_path is not None:
            check_remote_path("files_path", self.files_path)
        if self.files_path is not None and self.local_path is not None:
            raise DeployError("give either files_path (on the seeder) or local_path, not both")
        if self.transfer not in TRANSFERS:
            raise DeployError(f"transfer must be tarball or tree, got {self.transfer!r}")
        if self.tree and (self.local_path is not None or self.path_is_file):
            raise DeployError(
                "transfer=tree sends a directory on the seeder (files_path); "
                "--local-path and path_is_file go as one file: use transfer=tarball"
            )
        if not self.python or any(ch.isspace() for ch in self.python):
            raise DeployError(f"python must be one command without spaces, got {self.python!r}")
        if self.python.startswith("-") or not _PYTHON_RE.match(self.python):
            raise DeployError(
                "python must be a command name or path of [A-Za-z0-9_./+-] not starting "
                f"with '-', got {self.python!r}"
            )
        if not 0.05 <= self.stats_interval <= 60:
            raise DeployError(
                f"stats_interval must be in 0.05..60 seconds, got {self.stats_interval}"
            )

    # Remote layout: one place, so stages and teardown agree on every name.
    def require_tag(self) -> str:
        return check_tag(self.tag)

    @property
    def tree(self) -> bool:
        return self.transfer == "tree"

    @property
    def python_argv(self) -> tuple[str, str]:
        """How every remote python starts: ``-S`` skips site-packages and its ``.pth``
        hooks, which nothing we run there needs (murder.pyz carries its dependencies).
        It is a third of a bare interpreter's start-up (valgrind: 21 M instructions
        against 32 M) and more on hosts whose ``.pth`` files import things."""
        return (self.python, "-S")

    @property
    def payload(self) -> str:
        """Murder's ``filename``: the tarball (or the file itself) being swarmed."""
        return f"{self.temp_path}/{self.payload_name}"

    @property
    def payload_name(self) -> str:
        """``TAG.tgz`` as in Murder, ``TAG.tar`` with ``compress`` off, ``TAG.tree``."""
        if self.tree:
            return f"{self.require_tag()}.tree"
        return f"{self.require_tag()}.{'tgz' if self.compress else 'tar'}"

    @property
    def manifest(self) -> str:
        """transfer=tree: what the torrent cannot carry (see ``remote_release``)."""
        return f"{self.temp_path}/{self.require_tag()}.tree.json"

    def unpacks(self, path_is_file: bool) -> bool:
        """Peers write a plain tarball's file data straight into the release directory.

        Only an uncompressed tarball has its members' bytes as they are (see
        ``murder peer --unpack-map``); the install then copies nothing a second time.
        """
        return not (self.tree or self.compress or path_is_file)

    @property
    def unpack_map(self) -> str:
        """Where each member's bytes sit in the tarball, made by the seeder."""
        return f"{self.payload}.map.json"

    @property
    def incoming_dir(self) -> str:
        """A peer's download beside the releases, renamed to releases/TAG by the install."""
        return f"{self.releases_dir}/.{self.require_tag()}.incoming"

    @property
    def seed_source(self) -> str:
        """What the seeder serves: the tarball, or the release directory itself."""
        if self.tree and self.files_path is not None:
            return self.files_path
        return self.payload

    @property
    def download_target(self) -> str:
        """Where a peer downloads: the tarball in temp_path, or (tree) beside the releases."""
        if self.tree:
            return self.incoming_dir
        return self.payload

    @property
    def torrent(self) -> str:
        return self.payload + ".torrent"

    @property
    def allowed_dir(self) -> str:
        return f"{self.temp_path}/torrents"

    @property
    def tracker_torrent(self) -> str:
        return f"{self.allowed_dir}/{self.payload_name}.torrent"

    @property
    def pyz_remote(self) -> str:
        return f"{self.remote_murder_path}/murder.pyz"

    def pidfile(self, role: str) -> str:
        """``role`` is ``tracker``, ``seeder``, ``peer`` or ``peer-fg``."""
        if role == "tracker":
            return f"{self.temp_path}/tracker.pid"
        return f"{self.temp_path}/{role}-{self.require_tag()}.pid"

    @property
    def lease_file(self) -> str:
        """Touched by ``fab deploy`` while it runs; its tracker and seeder watch it."""
        return f"{self.temp_path}/lease-{self.require_tag()}"

    def lease_args(self) -> list[str]:
        return ["--lease", self.lease_file, "--lease-seconds", str(self.lease_seconds)]

    def logfile(self, role: str) -> str:
        if role == "tracker":
            return f"{self.temp_path}/tracker.log"
        return f"{self.temp_path}/{role}-{self.require_tag()}.log"

    @property
    def releases_dir(self) -> str:
        return f"{self.destination_path}/releases"

    @property
    def release_dir(self) -> str:
        return f"{self.releases_dir}/{self.require_tag()}"

    @property
    def murder_target(self) -> str:
        """Where Murder's own ``peer`` task extracts: destination_path[/TAG]."""
        if self.no_tag_directory:
            return self.destination_path
        return f"{self.destination_path}/{self.require_tag()}"


def settings_from_config(config: Mapping[str, Any], **flags: Any) -> Settings:
    """Merge the ``murder`` config section with task flags (flags left at None don't count).

    Boolean flags can only switch a setting on: Invoke's boolean flags have no "unset"
    state, so a False flag means "not given".
    """
    merged: Dict[str, Any] = dict(DEFAULTS)
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise DeployError(f"unknown murder config keys: {', '.join(unknown)}")
    merged.update({k: v for k, v in config.items()})
    for key, value in flags.items():
        if key not in DEFAULTS:
            raise DeployError(f"unknown murder setting {key!r}")
        if value is None or (key in _BOOL_KEYS and value is False):
            continue
        merged[key] = value
    values: Dict[str, Any] = {}
    for f in fields(Settings):
        value = merged[f.name]
        if f.name in _BOOL_KEYS:
            value = _to_bool(f.name, value)
        elif f.name in _INT_KEYS:
            value = _to_int(f.name, value)
        elif f.name == "stats_interval":
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise DeployError(f"stats_interval must be a number, got {value!r}") from None
        elif value is not None and not isinstance(value, str):
            value = str(value)
        if f.name in ("tag", "files_path", "local_path", "json") and value == "":
            value = None
        if value is not None and f.name in (*_REMOTE_PATH_KEYS, "files_path"):
            value = check_remote_path(f.name, value)
        values[f.name] = value
    return Settings(**values)


def with_tag(settings: Settings, tag: str) -> Settings:
    return replace(settings, tag=check_tag(tag))
