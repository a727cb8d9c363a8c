"""The fabfile's parts that need no remote host: settings, quoting, remote scripts run
locally, the release helper, the report, the progress parser, and `fab` loading it all."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from fabric import Config  # type: ignore[import-untyped]
from tqdm import tqdm

from fabfile import ns
from fabfile.install import _PROBE, clear_dir_script
from fabfile.inventory import parse_inventory
from fabfile.progress import SwarmProgress, SwarmSnapshot, parse_stats
from fabfile.release import payload_name
from fabfile.remote import Connections, last_line, sh, start_detached_script, stop_script
from fabfile.report import DeployReport, HostReport, format_table
from fabfile.settings import DEFAULTS, Settings, check_tag, settings_from_config
from fabfile.teardown import clean_script
from fabfile.torrent import payload_script, tar_local_dir
from murder_core.errors import DeployError, HostError

ROOT = Path(__file__).resolve().parent.parent


# -- settings -----------------------------------------------------------------------
@pytest.mark.parametrize("tag", ["v1", "2024.06.01-3", "release_7", "A" * 100])
def test_good_tags(tag: str) -> None:
    assert check_tag(tag) == tag


@pytest.mark.parametrize(
    "tag", ["a/b", "../x", ".hidden", "-rf", "x y", "x;reboot", "$(id)", "a\nb", "A" * 101, "é"]
)
def test_bad_tags_are_refused_with_the_value(tag: str) -> None:
    with pytest.raises(DeployError) as info:
        check_tag(tag)
    assert str(info.value) == (
        "tag must be 1-100 characters of [A-Za-z0-9._-], not start with '.' or '-', "
        f"and contain no '/', got {tag!r}"
    )


def test_missing_tag() -> None:
    with pytest.raises(DeployError, match=r"^a tag is required \(--tag"):
        Settings().require_tag()


def test_defaults_match_the_cluster_layout() -> None:
    s = settings_from_config({}, tag="v1")
    assert s.remote_murder_path == "/srv/murder/bin"
    assert s.destination_path == "/srv/murder/app"
    assert s.temp_path == "/tmp/murder"
    assert s.payload == "/tmp/murder/v1.tgz"
    assert s.torrent == "/tmp/murder/v1.tgz.torrent"
    assert s.tracker_torrent == "/tmp/murder/torrents/v1.tgz.torrent"
    assert s.release_dir == "/srv/murder/app/releases/v1"
    assert s.murder_target == "/srv/murder/app/v1"
    assert s.pidfile("tracker") == "/tmp/murder/tracker.pid"
    assert s.pidfile("seeder") == "/tmp/murder/seeder-v1.pid"
    assert (s.keep_releases, s.max_parallel, s.tracker_port) == (5, 50, 8998)


def test_flags_override_config_and_none_does_not() -> None:
    config = {"temp_path": "/var/tmp/m", "tracker_port": 9000, "path_is_file": True}
    s = settings_from_config(config, tag="v2", temp_path=None, tracker_port="9100")
    assert (s.temp_path, s.tracker_port, s.path_is_file) == ("/var/tmp/m", 9100, True)
    assert settings_from_config(config, no_tag_directory=True).no_tag_directory is True


def test_no_tag_directory_target() -> None:
    s = settings_from_config({"no_tag_directory": True}, tag="v1", destination_path="/srv/x/")
    assert s.murder_target == "/srv/x"


@pytest.mark.parametrize(
    ("config", "flags", "message"),
    [
        ({}, {"tracker_port": "http"}, "tracker_port must be an integer in 1..65535, got 'http'"),
        ({}, {"tracker_port": "0"}, "tracker_port must be an integer in 1..65535, got '0'"),
        ({"keep_releases": 0}, {}, "keep_releases must be an integer in 1..10000, got 0"),
        ({"max_parallel": True}, {}, "max_parallel must be an integer in 1..10000, got True"),
        ({}, {"temp_path": "tmp/m"}, "temp_path must be an absolute path, got 'tmp/m'"),
        (
            {},
            {"destination_path": "/"},
            "destination_path must be a directory below / without '..', got '/'",
        ),
        (
            {},
            {"destination_path": "/srv/../etc"},
            "destination_path must be a directory below / without '..', got '/srv/../etc'",
        ),
        (
            {},
            {"remote_murder_path": "/x\ny"},
            "remote_murder_path must not contain NUL or newlines, got '/x\\ny'",
        ),
        (
            {},
            {"files_path": "/a", "local_path": "b"},
            "give either files_path (on the seeder) or local_path, not both",
        ),
        ({"force": "maybe"}, {}, "force must be true or false, got 'maybe'"),
        (
            {"python": "python3 -S"},
            {},
            "python must be one command without spaces, got 'python3 -S'",
        ),
        ({"bogus": 1}, {}, "unknown murder config keys: bogus"),
    ],
)
def test_bad_settings(config: Dict[str, Any], flags: Dict[str, Any], message: str) -> None:
    with pytest.raises(DeployError) as info:
        settings_from_config(config, **flags)
    assert str(info.value) == message


def test_env_strings_are_converted() -> None:
    s = settings_from_config({"force": "true", "linger": "0", "progress": "no"})
    assert (s.force, s.linger, s.progress) == (True, 0, False)


@pytest.mark.parametrize(
    ("value", "expected"), [("false", False), ("no", False), ("0", False), ("true", True)]
)
def test_a_boolean_from_the_environment_means_what_it_says(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    """Through Fabric's own config loading, as ``fab`` does it."""
    from fabric import Config

    from fabfile import ns

    monkeypatch.setenv("FABRIC_MURDER_COMPRESS", value)
    monkeypatch.setenv("FABRIC_MURDER_PROGRESS", value)
    config = Config(lazy=True)
    config.load_collection(ns.configuration())
    config.load_shell_env()
    s = settings_from_config(dict(config.murder))
    assert (s.compress, s.progress) == (expected, expected)


def test_fabric_yaml_example_documents_every_key_with_its_default() -> None:
    # Invoke reads fabric.yaml with the PyYAML it vendors; use the same parser.
    yaml = importlib.import_module("invoke.vendor.yaml")
    doc = yaml.safe_load((ROOT / "fabric.yaml.example").read_text())
    assert doc["murder"] == DEFAULTS
    assert doc["tasks"] == {"auto_dash_names": False}


def test_fabric_yaml_overrides_defaults_and_env_overrides_it(tmp_path: Path) -> None:
    (tmp_path / "fabric.yaml").write_text("murder:\n  temp_path: yaml/relative\n")
    shutil.copytree(ROOT / "fabfile", tmp_path / "fabfile")
    inv = tmp_path / "hosts.ini"
    inv.write_text("[peers]\nunreachable.invalid\n")
    base = [
        sys.executable,
        "-m",
        "fabric",
        "deploy",
        "--tag",
        "v1",
        "--local-path",
        "x",
        "-i",
        str(inv),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "deploy: temp_path must be an absolute path, got 'yaml/relative'" in out.stderr
    env["FABRIC_MURDER_TEMP_PATH"] = "env/relative"
    out = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "deploy: temp_path must be an absolute path, got 'env/relative'" in out.stderr
    flagged = [*base, "--temp-path", "flag/relative"]
    out = subprocess.run(flagged, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "deploy: temp_path must be an absolute path, got 'flag/relative'" in out.stderr


def test_every_setting_is_a_config_key_in_ns() -> None:
    configured = ns.configuration()["murder"]
    assert settings_from_config(configured) == settings_from_config({})
    assert {k for k, v in configured.items() if v in ("true", "false")} == {
        k for k, v in DEFAULTS.items() if isinstance(v, bool)
    }
    assert set(DEFAULTS) == set(Settings.__dataclass_fields__)


# -- quoting and the remote scripts, run here with the same /bin/sh -------------------
HOSTILE = ["a b", "x;touch /tmp/pwned", "$(id)", "`id`", "'q'", '"dq"', "a\nb", "*", "-n"]


@pytest.mark.parametrize("word", HOSTILE)
def test_sh_quotes_each_argument_as_one_word(word: str) -> None:
    out = subprocess.run(
        ["sh", "-c", f"printf '%s\\0' {sh(word, 'two')}"], capture_output=True, check=True
    ).stdout
    assert out.split(b"\0")[:-1] == [word.encode(), b"two"]


def test_payload_script_quotes_hostile_paths(tmp_path: Path) -> None:
    src = tmp_path / "it's $(id) here"
    src.mkdir()
    (src / "f.txt").write_text("x")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref")
    s = settings_from_config({}, tag="v1", temp_path=str(tmp_path / "t;m p"))
    subprocess.run(["sh", "-c", payload_script(s, str(src), False)], check=True)
    with tarfile.open(s.payload) as tar:
        assert sorted(tar.getnames()) == [".", "./f.txt"]


@pytest.mark.parametrize(
    ("compress", "name", "magic"), [(True, "v1.tgz", b"\x1f\x8b"), (False, "v1.tar", b".")]
)
def test_compress_chooses_gzip_or_a_plain_tar(
    tmp_path: Path, compress: bool, name: str, magic: bytes
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x" * 10_000)
    s = settings_from_config({"compress": compress}, tag="v1", temp_path=str(tmp_path / "t"))
    assert (s.payload, s.tracker_torrent) == (
        f"{tmp_path}/t/{name}",
        f"{tmp_path}/t/torrents/{name}.torrent",
    )
    subprocess.run(["sh", "-c", payload_script(s, str(src), False)], check=True)
    assert Path(s.payload).read_bytes()[: len(magic)] == magic
    with tarfile.open(s.payload) as tar:  # extraction reads either ("r:*")
        assert sorted(tar.getnames()) == [".", "./f.txt"]
    local = tmp_path / name
    tar_local_dir(src, local, compress)
    assert local.read_bytes()[:2] == b"\x1f\x8b" if compress else local.stat().st_size > 10_000


def test_payload_script_path_is_file(tmp_path: Path) -> None:
    src = tmp_path / "app.bin"
    src.write_bytes(b"\x00payload")
    s = settings_from_config({}, tag="v1", temp_path=str(tmp_path / "t"))
    subprocess.run(["sh", "-c", payload_script(s, str(src), True)], check=True)
    assert Path(s.payload).read_bytes() == b"\x00payload"


def _spawn(argv: List[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_gone(proc: subprocess.Popen[bytes], limit: float = 15.0) -> bool:
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        return False
    return True


SLEEPER = (
    "import sys, time\nopen(sys.argv[1], 'w').write('%d' % __import__('os').getpid())\n"
    "time.sleep(120)\n"
)


def test_stop_script_stops_a_murder_process_by_pidfile(tmp_path: Path) -> None:
    pidfile = tmp_path / "seeder-v1.pid"
    # A real process whose command line names murder.pyz, as the engine's does.
    proc = _spawn([sys.executable, "-c", SLEEPER, str(pidfile), "/srv/murder/bin/murder.pyz"])
    try:
        deadline = time.monotonic() + 10
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["sh", "-c", stop_script([str(pidfile)])], check=True, timeout=30)
        assert _wait_gone(proc), "murder process still alive after stop_script"
        assert proc.returncode == -15
        assert not pidfile.exists()
    finally:
        proc.kill()
        proc.wait()


def test_stop_script_stops_several_at_once_and_globs(tmp_path: Path) -> None:
    """A seeder's host, say: seeder and tracker (and a glob of peers) in one call."""
    pidfiles = [tmp_path / "seeder-v1.pid", tmp_path / "tracker.pid", tmp_path / "peer-a.pid"]
    procs = [
        _spawn([sys.executable, "-c", "import time; time.sleep(120)", "murder.pyz", str(p)])
        for p in pidfiles
    ]
    try:
        for proc, pidfile in zip(procs, pidfiles):
            pidfile.write_text(f"{proc.pid}\n")
        script = stop_script(
            [str(p) for p in pidfiles[:2]], globs=[f"{sh(str(tmp_path))}/peer-*.pid"]
        )
        subprocess.run(["sh", "-c", script], check=True, timeout=30)
        assert [proc.wait(10) for proc in procs] == [-15, -15, -15]
        assert list(tmp_path.iterdir()) == []
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_stop_script_never_kills_a_pid_that_is_not_murder(tmp_path: Path) -> None:
    pidfile = tmp_path / "tracker.pid"
    proc = _spawn([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        pidfile.write_text(f"{proc.pid}\n")
        (tmp_path / "peer-x.pid").write_text("not-a-pid; rm -rf /\n")
        script = stop_script([str(pidfile)], globs=[f"{sh(str(tmp_path))}/peer-*.pid"])
        subprocess.run(["sh", "-c", script], check=True, timeout=30)
        assert proc.poll() is None, "a non-murder process was killed"
        assert not pidfile.exists() and not (tmp_path / "peer-x.pid").exists()
    finally:
        proc.kill()
        proc.wait()


def test_start_detached_script_waits_for_the_pidfile(tmp_path: Path) -> None:
    work = tmp_path / "w"
    pidfile = work / "tracker.pid"
    argv = [sys.executable, "-c", SLEEPER, str(pidfile), "murder.pyz"]
    script = start_detached_script(
        argv, workdir=str(work), pidfile=str(pidfile), output=str(work / "out")
    )
    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    pid = int(pidfile.read_text())
    assert "murder.pyz" in Path(f"/proc/{pid}/cmdline").read_text()
    assert os.stat(work).st_mode & 0o777 == 0o700
    subprocess.run(["sh", "-c", stop_script([str(pidfile)])], check=True, timeout=30)
    assert (
        not Path(f"/proc/{pid}/cmdline").exists()
        or "murder.pyz" not in Path(f"/proc/{pid}/cmdline").read_text()
    )


def test_start_detached_script_looks_for_the_pidfile_every_10_ms_at_first(
    tmp_path: Path,
) -> None:
    """A ``sleep`` on PATH that logs its argument shows how often the script looks."""
    shims = tmp_path / "bin"
    shims.mkdir()
    log = tmp_path / "sleeps"
    real_sleep = shutil.which("sleep")
    (shims / "sleep").write_text(f'#!/bin/sh\necho "$1" >> {log}\nexec {real_sleep} "$@"\n')
    (shims / "sleep").chmod(0o755)
    work = tmp_path / "w"
    pidfile = work / "seeder.pid"
    # A process that writes its pidfile a little after it starts, as ours do.
    late = "import time; time.sleep(0.05)\n" + SLEEPER
    argv = [sys.executable, "-c", late, str(pidfile), "murder.pyz"]
    script = start_detached_script(
        argv, workdir=str(work), pidfile=str(pidfile), output=str(work / "out")
    )
    env = dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}")
    subprocess.run(["sh", "-c", script], check=True, timeout=30, env=env)
    try:
        sleeps = log.read_text().split()
        assert sleeps and set(sleeps) == {"0.01"}, sleeps
    finally:
        subprocess.run(["sh", "-c", stop_script([str(pidfile)])], check=True, timeout=30)


def test_start_detached_script_reports_an_early_death(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('cannot bind 8998'); sys.exit(4)"]
    script = start_detached_script(
        argv, workdir=str(tmp_path), pidfile=str(tmp_path / "p"), output=str(tmp_path / "out")
    )
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot bind 8998" in result.stderr


@pytest.mark.parametrize("pyz", [True, False])
@pytest.mark.parametrize("release", ["absent", "present", "link", None])
def test_preflight_probe_answers_all_three_in_one_python_start(
    tmp_path: Path, pyz: bool, release: str | None
) -> None:
    """python's version, murder.pyz's sha256 (or "missing") and whether the release is
    there, from one run of the probe with this python; a dangling link counts as there."""
    pyz_path = tmp_path / "murder.pyz"
    if pyz:
        pyz_path.write_bytes(b"zip" * 1000)
    target = tmp_path / "releases" / "v1"
    target.parent.mkdir()
    if release == "present":
        target.mkdir()
    elif release == "link":
        target.symlink_to(tmp_path / "gone")
    argv = [sys.executable, "-S", "-c", _PROBE, str(pyz_path)]  # -S: as fab runs it
    argv += [str(target)] if release else []
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    expected = [".".join(map(str, sys.version_info[:3]))]
    expected.append(hashlib.sha256(b"zip" * 1000).hexdigest() if pyz else "missing")
    if release is not None:
        expected.append(str(release != "absent"))
    assert out.stdout.split() == expected


def test_every_remote_python_starts_without_site_packages() -> None:
    """``-S`` on every python fab starts on a host (see Settings.python_argv)."""
    from fabfile.peers import peer_script
    from fabfile.release import helper_command
    from fabfile.seed import seed_argv
    from fabfile.torrent import make_torrent_argv
    from fabfile.tracker import tracker_argv

    settings = Settings(tag="v1", python="/opt/py/bin/python3")
    commands = {
        "tracker": " ".join(tracker_argv(settings, "10.0.0.1")),
        "seed": " ".join(seed_argv(settings, "10.0.0.1")),
        "make-torrent": " ".join(make_torrent_argv(settings, "10.0.0.1:6969")),
        "peer": peer_script(settings, "10.0.0.2"),
        "release helper": helper_command(settings, "prune"),
    }
    for name, command in commands.items():
        assert "/opt/py/bin/python3 -S " in command, (name, command[:200])
        assert command.count("/opt/py/bin/python3") == 1, name


@pytest.mark.parametrize(("files", "refused"), [(5, False), (1000, False), (1001, True)])
def test_clear_dir_refuses_a_directory_with_more_than_1000_files(
    tmp_path: Path, files: int, refused: bool
) -> None:
    target = tmp_path / "murder bin"
    (target / "sub").mkdir(parents=True)
    for i in range(files):
        (target / "sub" / f"f{i}").write_text("")
    out = subprocess.run(
        ["sh", "-c", clear_dir_script(str(target))], capture_output=True, text=True, timeout=60
    )
    if refused:
        assert (out.returncode, out.stderr.strip()) == (
            3,
            f"refusing to clear {target}: it holds more than 1000 files",
        )
        assert len(list((target / "sub").iterdir())) == files
    else:
        assert out.returncode == 0, out.stderr
        assert list(target.iterdir()) == []


def test_clean_script_removes_only_this_tags_files(tmp_path: Path) -> None:
    s = settings_from_config({}, tag="v1", temp_path=str(tmp_path))
    (tmp_path / "torrents").mkdir()
    doomed = [s.payload, s.torrent, s.tracker_torrent, s.payload + ".part"]
    kept = [str(tmp_path / "v2.tgz"), s.logfile("peer")]
    for path in doomed + kept:
        Path(path).write_text("x")
    subprocess.run(["sh", "-c", clean_script(s)], check=True)
    assert [p for p in doomed if Path(p).exists()] == []
    assert [p for p in kept if Path(p).exists()] == kept


@pytest.mark.parametrize("transfer", ["tree", "tarball"])
def test_clean_script_removes_an_unfinished_tree_download_and_nothing_else(
    tmp_path: Path, transfer: str
) -> None:
    """A peer stopped mid-swarm leaves releases/.v1.incoming.part behind: a tree, or a
    plain tarball's unpacked files (with its map in temp_path)."""
    temp, dest, src = tmp_path / "tmp", tmp_path / "app", tmp_path / "src"
    s = settings_from_config(
        {"compress": False},
        tag="v1",
        temp_path=str(temp),
        destination_path=str(dest),
        files_path=str(src),
        transfer=transfer,
    )
    assert s.unpacks(path_is_file=False) == (transfer == "tarball")
    part = Path(s.incoming_dir + ".part")
    for d in (temp, src, part / "sub", dest / "releases" / "v0"):
        d.mkdir(parents=True)
    companion = s.manifest if transfer == "tree" else s.unpack_map
    for path in (companion, s.torrent, src / "f", part / "sub" / "f"):
        Path(path).write_text("x")
    subprocess.run(["sh", "-c", clean_script(s)], check=True)
    assert sorted(os.listdir(dest / "releases")) == ["v0"]
    assert os.listdir(temp) == [] and os.listdir(src) == ["f"]


@pytest.mark.parametrize(
    ("config", "path_is_file", "unpacks"),
    [
        ({"compress": False}, False, True),
        ({"compress": True}, False, False),  # gzip: no member's bytes are as they are
        ({"compress": False}, True, False),  # one file: nothing to unpack
        ({"compress": False, "transfer": "tree"}, False, False),
    ],
)
def test_peers_unpack_only_a_plain_tarball(
    config: Dict[str, Any], path_is_file: bool, unpacks: bool
) -> None:
    from fabfile.peers import peer_script

    s = settings_from_config(config, tag="v1")
    assert s.unpacks(path_is_file) is unpacks
    script = peer_script(s, "10.0.0.2", unpack=s.unpacks(path_is_file))
    flags = f"--unpack-map /tmp/murder/v1.tar.map.json --unpack-dir {s.releases_dir}/.v1.incoming"
    assert (flags in script) is unpacks
    # The releases directory is made with the usual modes before the private umask.
    assert script.startswith(f"mkdir -p {s.releases_dir} && ") is (unpacks or s.tree)


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"transfer": "rsync"}, "transfer must be tarball or tree, got 'rsync'"),
        ({"transfer": "tree", "local_path": "/x"}, "--local-path and path_is_file go as one"),
        ({"transfer": "tree", "path_is_file": True}, "use transfer=tarball"),
    ],
)
def test_transfer_setting_is_checked(flags: Dict[str, Any], message: str) -> None:
    with pytest.raises(DeployError, match=message):
        settings_from_config({}, tag="v1", **flags)


def test_last_line() -> None:
    assert last_line("a\n\nmurder: error: no space\n\n") == "murder: error: no space"
    assert last_line("") == ""
    assert len(last_line("x" * 1000)) == 400


def test_payload_name() -> None:
    s = settings_from_config({}, tag="v1")
    assert payload_name(s, "/srv/build/app.war") == "app.war"
    assert payload_name(s, "/srv/build/dir/") == "dir"
    assert payload_name(s, None) == "v1.tgz"


def test_tar_local_dir_skips_git_and_keeps_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / ".gitignore").parent.mkdir(parents=True)
    (src / "sub" / ".gitignore").write_text("x")
    (src / "sub" / "a.txt").write_text("a")
    (src / ".git" / "objects").mkdir(parents=True)
    (src / "top.txt").write_text("t")
    out = tmp_path / "p.tgz"
    tar_local_dir(src, out)
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["sub", "sub/a.txt", "top.txt"]
        assert {m.uid for m in tar.getmembers()} == {0}


def test_every_flag_of_every_fab_task_has_help() -> None:
    import fabfile

    undocumented = {
        name: [arg.name for arg in fabfile.ns[name].get_arguments() if not arg.help]
        for name in fabfile.ns.task_names
    }
    assert {name: args for name, args in undocumented.items() if args} == {}
    assert len(undocumented) >= 14  # deploy, rollback and Murder's twelve tasks


# -- parallelism without SSH: Connections.map runs any job ---------------------------
def _conns(max_parallel: int) -> Connections:
    inv = parse_inventory("[peers]\n" + "\n".join(f"p{i}" for i in range(8)) + "\n")
    return Connections(inv, Config(), max_parallel=max_parallel)


def test_map_bounds_parallel_jobs_and_keeps_host_order() -> None:
    conns = _conns(3)
    lock = threading.Lock()
    active, peak = [0], [0]

    def job(host: str) -> str:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)  # long enough for a broken bound to show, not a threshold
        with lock:
            active[0] -= 1
        if host == "p5":
            raise HostError(host, "exit 3: disk full")
        return host.upper()

    names = [f"p{i}" for i in range(8)]
    out = conns.map(list(reversed(names)), job)
    assert list(out) == list(reversed(names))
    assert 1 <= peak[0] <= 3
    assert out["p1"].value == "P1" and out["p1"].ok
    assert (out["p5"].ok, out["p5"].error) == (False, "exit 3: disk full")


def test_map_all_at_once_runs_every_job_together_past_max_parallel() -> None:
    """The swarm step: every job must be running at the same time, whatever the bound.
    Each job waits at a barrier for all eight; a pool of three would leave it broken."""
    conns = _conns(3)
    names = [f"p{i}" for i in range(8)]
    barrier = threading.Barrier(len(names), timeout=30)
    out = conns.map(names, lambda h: barrier.wait() >= 0, all_at_once=True)
    assert [o.value for o in out.values()] == [True] * len(names)


def test_map_skips_hosts_that_could_not_connect() -> None:
    conns = _conns(4)
    conns.failed["p2"] = "ssh: refused"
    ran: List[str] = []
    out = conns.map(["p1", "p2"], lambda h: ran.append(h))
    assert ran == ["p1"]
    assert out["p2"].error == "ssh: refused"
    with pytest.raises(HostError, match=r"^p2: ssh: refused$"):
        conns.run("p2", "true")


_CONNECTIONS_FOR_300 = """
import resource
from fabric import Config
from fabfile.inventory import parse_inventory
from fabfile.remote import Connections
from murder_core.errors import DeployError
inv = parse_inventory("[peers]\\n" + "\\n".join(f"p{i}" for i in range(300)) + "\\n")
try:
    Connections(inv, Config())
except DeployError as exc:
    print("refused:", exc)
else:
    print("soft:", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize(
    "hard, expected",
    [
        (2000, "soft: 2000"),
        (200, "refused: 300 hosts need about 3"),
    ],
)
def test_connections_make_room_for_every_hosts_socket(hard: int, expected: str) -> None:
    """A soft limit of 100 would run out part-way through opening 300 connections."""
    import resource

    _, ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    if ours != resource.RLIM_INFINITY and ours < hard:
        pytest.skip(f"needs a hard open-file limit of at least {hard}, not {ours}")
    out = subprocess.run(
        [sys.executable, "-c", _CONNECTIONS_FOR_300],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard)),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(expected), out.stdout
    if hard == 200:
        assert "but the limit is 200 (hard limit 200): raise it (ulimit -Hn" in out.stdout


# -- report -------------------------------------------------------------------------
def _report() -> DeployReport:
    report = DeployReport(tag="v1", info_hash="ab" * 20, payload_bytes=200_000_000, seconds=12.34)
    report.hosts = [
        HostReport("h2", "ok", 10.0, 20.0),
        HostReport("h10", "failed", None, None, "ssh: NoValidConnectionsError: refused"),
    ]
    return report


def test_format_table() -> None:
    assert format_table(_report()) == "\n".join(
        [
            "host  status  seconds  MB/s  error",
            "h2    ok         10.0  20.0",
            "h10   failed        -     -  ssh: NoValidConnectionsError: refused",
            "1/2 hosts ok in 12.3s; failed: h10",
        ]
    )


def test_report_json(tmp_path: Path) -> None:
    report = _report()
    report.teardown_problems = ["h10: stop_peering: ssh: refused"]
    report.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] is False
    assert data["failed_hosts"] == ["h10"]
    assert data["hosts"][0] == {
        "host": "h2",
        "status": "ok",
        "seconds": 10.0,
        "mbps": 20.0,
        "error": None,
    }
    assert data["payload_bytes"] == 200_000_000


def test_fail_keeps_the_first_error_and_fail_pending() -> None:
    report = DeployReport(tag="v1", hosts=[HostReport("a", "ok"), HostReport("b"), HostReport("c")])
    report.host("c").fail("first")
    report.host("c").fail("second")
    report.fail_pending("tracker h1: down")
    assert [(h.status, h.error) for h in report.hosts] == [
        ("ok", None),
        ("failed", "tracker h1: down"),
        ("failed", "first"),
    ]
    assert not report.ok


# -- progress -----------------------------------------------------------------------
def _stats(peers: List[Dict[str, Any]]) -> bytes:
    return json.dumps(
        {
            "time": 1.0,
            "interval": 10,
            "torrents": {
                "ab" * 20: {
                    "name": "v1.tgz",
                    "length": 1000,
                    "seeders": 1,
                    "leechers": 2,
                    "completed": 1,
                    "peers": peers,
                }
            },
        }
    ).encode()


def test_parse_stats_counts_only_our_peers() -> None:
    data = _stats(
        [
            {"ip": "10.0.0.1", "left": 0, "seeder": True},
            {"ip": "10.0.0.2", "left": 0, "seeder": True},
            {"ip": "10.0.0.3", "left": 400, "seeder": False},
            {"ip": "10.0.0.3", "left": 900, "seeder": False},
            {"ip": "10.0.0.4", "left": -5, "seeder": False},
            {"ip": "10.9.9.9", "left": 0, "seeder": True},
        ]
    )
    snap = parse_stats(data, "AB" * 20, {"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"}, 1000)
    # 10.0.0.2 done, .3 has its best report (400 left), .4's nonsense -5 clamps to done, .5 unseen
    assert snap == SwarmSnapshot(hosts_done=2, hosts_total=4, bytes_done=2600, bytes_total=4000)


def test_the_bar_shows_the_swarms_rate_between_announces_not_per_poll() -> None:
    # Peers announce every 2 s and the bar polls every second: every other poll sees
    # the same bytes. The rate shown must stay at 100 B/s, not swing between 50 and 150.
    now = [0.0]
    out = io.StringIO()
    progress = SwarmProgress([], "ab" * 20, {"10.0.0.2"}, 10_000)
    bar = tqdm(total=10_000, file=out, mininterval=0, miniters=0, smoothing=0.3)
    bar._time = lambda: now[0]
    bar.start_t = bar.last_print_t = 0.0
    progress._bar = bar
    rates = []
    for second, done in enumerate([100, 100, 300, 300, 500, 500, 700], start=1):
        now[0] = float(second)
        progress._update(SwarmSnapshot(0, 1, done, 10_000))
        rates.append(bar.format_dict["rate"])
    assert bar.n == 700
    assert rates == pytest.approx([100.0] * 7)
    assert "hosts 0/1" in out.getvalue()
    bar.close()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"torrents": {}}',
        b'{"torrents": {"' + b"ab" * 20 + b'": {"peers": 3}}}',
    ],
)
def test_parse_stats_garbage_means_no_progress(data: bytes) -> None:
    assert parse_stats(data, "ab" * 20, {"10.0.0.2"}, 10) == SwarmSnapshot(0, 1, 0, 10)


# -- fab itself ---------------------------------------------------------------------
def _fab(*args: str, env: Dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "fabric", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


MURDER_TASKS = [
    "clean_temp_files",
    "create_torrent",
    "distribute_files",
    "download_torrent",
    "peer",
    "start_seeding",
    "start_tracker",
    "stop_all_peering",
    "stop_all_seeding",
    "stop_peering",
    "stop_seeding",
    "stop_tracker",
]


def test_fab_lists_murders_task_names() -> None:
    tree = json.loads(_fab("--list", "--list-format", "json").stdout)
    assert [t["name"] for t in tree["tasks"]] == ["deploy", "rollback"]
    (murder,) = tree["collections"]
    assert murder["name"] == "murder"
    assert [t["name"] for t in murder["tasks"]] == MURDER_TASKS
    aliases = {t["name"]: t["aliases"] for t in murder["tasks"]}
    assert aliases["distribute_files"] == ["install"]


@pytest.mark.parametrize("name", [*(f"murder.{t}" for t in MURDER_TASKS), "murder.install"])
def test_fab_parses_murders_underscored_names(name: str) -> None:
    # The listing shows names the parser may still reject: ask for each task's help.
    out = _fab("--help", name)
    assert out.returncode == 0, out.stderr
    assert f"[--core-opts] {name} [--options]" in out.stdout


def test_fab_refuses_a_bad_tag_before_connecting(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text("[peers]\nunreachable.invalid\n")
    out = _fab("deploy", "--tag", "../etc", "--local-path", str(tmp_path), "-i", str(inv))
    assert out.returncode == 1
    assert "deploy: tag must be 1-100 characters" in out.stderr
    assert "got '../etc'" in out.stderr


def test_fab_reads_config_from_env(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text("[peers]\nunreachable.invalid\n")
    out = _fab(
        "deploy",
        "--local-path",
        str(tmp_path),
        "-i",
        str(inv),
        env={"FABRIC_MURDER_TAG": "v1", "FABRIC_MURDER_TEMP_PATH": "relative/tmp"},
    )
    assert out.returncode == 1
    assert "deploy: temp_path must be an absolute path, got 'relative/tmp'" in out.stderr


def test_fab_reports_a_malformed_inventory_line(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text("[peers]\nh1 ansible_port=x\n")
    out = _fab("murder.stop_tracker", "-i", str(inv))
    assert out.returncode == 1
    assert f"murder: {inv}:2: ansible_port must be an integer in 1..65535, got 'x'" in out.stderr
