"""`fab deploy`, `fab rollback` and Murder's tasks against a real local cluster (issue 3 §5).

Every host is a network + mount namespace with its own OpenSSH sshd; `fab` runs as a
real subprocess with the cluster's ssh_config and known_hosts, exactly as a user runs it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from clusterhosts import HostView, local_tree, need_cluster_tools

from fabfile.torrent import stats_path
from murder_core.metainfo import read_metainfo

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parent.parent
HOSTS = 7  # h1 = tracker + seeder, h2..h7 = six peers
PEERS = [f"h{i}" for i in range(2, HOSTS + 1)]
ALL_HOSTS = ["h1", *PEERS]
PYZ_REMOTE = "/srv/murder/bin/murder.pyz"  # the default remote_murder_path
PREFIX = "mfab"
SUBNET_WAIT_SECONDS = 300


def _wait_for_free_subnet() -> None:
    """Another cluster (test_cluster.py, a demo) may hold 198.18.0.0/24 for a while."""
    deadline = time.monotonic() + SUBNET_WAIT_SECONDS
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
        if "198.18.0." not in out:
            return
        time.sleep(1)
    pytest.fail(f"198.18.0.0/24 still in use after {SUBNET_WAIT_SECONDS}s by another cluster")


class Env(HostView):
    """The cluster plus what `fab` needs to drive it."""

    def __init__(self, info: Any, work: Path, pyz: Path) -> None:
        self.info = info
        self.work = work
        self.pyz = pyz

    def fab(
        self, *args: str, timeout: float = 300, soft_nofile: int = 0, **config: str
    ) -> subprocess.CompletedProcess[str]:
        """``fab ARGS`` as a user runs it; ``soft_nofile`` starts it with that soft open-file
        limit (the hard one unchanged)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
        env.update(
            FABRIC_MURDER_PYZ=str(self.pyz),
            FABRIC_MURDER_INVENTORY=str(self.info.inventory),
            FABRIC_MURDER_LOCAL_TORRENT_DIR=str(self.work / "torrents"),
            FABRIC_MURDER_PEER_TIMEOUT="120",
            FABRIC_MURDER_PROGRESS="false",
        )
        env.update({f"FABRIC_MURDER_{k.upper()}": v for k, v in config.items()})
        argv = [sys.executable, "-m", "fabric", "-S", str(self.info.ssh_config), *args]
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return subprocess.run(
            argv,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=(
                (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft_nofile, hard)))
                if soft_nofile
                else None
            ),
        )

    def stats_over_ssh(self, path: str = "/stats.json") -> bytes:
        from fabfile.deploy import make_config
        from fabfile.inventory import load_inventory
        from fabfile.progress import fetch_over_ssh
        from fabfile.remote import Connections

        conns = Connections(load_inventory(self.info.inventory), make_config(self.info.ssh_config))
        try:
            transport = conns.connection("h1").transport
            return fetch_over_ssh(transport, "198.18.0.11", 8998, path=path)
        finally:
            conns.close()


def make_release(root: Path, seed: int, size: int = 3_000_000) -> Path:
    root.mkdir(parents=True)
    rnd = __import__("random").Random(seed)
    (root / "app.bin").write_bytes(rnd.randbytes(size))
    (root / "conf").mkdir()
    (root / "conf" / "settings.ini").write_text(f"[app]\nrelease = {seed}\n")
    (root / "static" / "css").mkdir(parents=True)
    (root / "static" / "css" / "site.css").write_text("body { color: black }\n" * 100)
    (root / "empty.txt").write_text("")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    need_cluster_tools()
    from murder_dev import cluster
    from murder_dev.build import build_pyz

    work = Path(tempfile.mkdtemp(prefix="murder-fab-test-"))
    # The cluster refuses a workdir under /tmp, which every host mounts privately.
    cluster_dir = Path(tempfile.mkdtemp(prefix="murder-fab-cluster-", dir="/var/tmp"))
    pyz = build_pyz(work / "dist" / "murder.pyz")
    _wait_for_free_subnet()
    try:
        info = cluster.up(HOSTS, "1gbit", cluster_dir, prefix=PREFIX)
        yield Env(info, work, pyz)
    finally:
        cluster.down(cluster_dir, prefix=PREFIX)
        shutil.rmtree(cluster_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def assert_nothing_left(env: Env) -> None:
    assert env.murder_processes() == {}


def test_full_deploy_to_six_peers(env: Env) -> None:
    release = make_release(env.work / "rel-v1", 1)
    report = env.work / "v1.json"
    out = env.fab(
        "deploy",
        "--tag",
        "v1",
        "--local-path",
        str(release),
        "--json",
        str(report),
        progress="true",
    )
    assert out.returncode == 0, out.stderr + out.stdout
    data = json.loads(report.read_text())
    assert data["ok"] is True
    assert data["ssh_connections"] == HOSTS  # one per host, reused by every stage
    assert [h["host"] for h in data["hosts"]] == PEERS
    assert all(h["status"] == "ok" and h["mbps"] > 0 for h in data["hosts"])
    stages = data["stages"]  # where the time went: seconds from the start to each stage's end
    order = sorted(stages, key=stages.get)
    # The tracker starts while the seeder packs and hashes: either may end first.
    assert order[:2] == ["preflight", "install"]
    assert sorted(order[2:4]) == ["payload", "tracker"]
    assert order[4:] == ["torrent", "seeding", "swarm", "hosts", "teardown"]
    assert 0 < stages["teardown"] <= data["seconds"]
    assert "hosts 6/6" in out.stderr  # the swarm bar ended on every host done
    for line in out.stdout.splitlines()[1:7]:
        assert line.split()[1] == "ok", out.stdout
    expected = local_tree(release)
    assert ".git/HEAD" not in expected and "conf/settings.ini" in expected
    for host in PEERS:
        assert env.current(host) == "releases/v1"
        assert env.tree(host, "/srv/murder/app/current/") == expected, host
    # teardown: nothing running, this deploy's temp files gone
    assert_nothing_left(env)
    assert (
        env.sh(
            "h1", "ls /tmp/murder/v1.tgz /tmp/murder/torrents/v1.tgz.torrent 2>/dev/null || true"
        )
        == ""
    )
    assert env.sh("h2", "ls /tmp/murder/v1.tgz* 2>/dev/null || true") == ""


def test_existing_tag_is_refused_unless_forced(env: Env) -> None:
    release = make_release(env.work / "rel-v1b", 11)
    out = env.fab("deploy", "--tag", "v1", "--local-path", str(release))
    assert out.returncode == 1
    assert (
        "deploy: release v1 already exists in /srv/murder/app/releases on "
        f"{', '.join(PEERS)}; pass --force to deploy it again"
    ) in out.stderr
    assert env.tree("h2", "/srv/murder/app/current/") != local_tree(release)
    assert_nothing_left(env)
    installed = {h: env.sh(h, f"stat -c %i.%Y {PYZ_REMOTE}") for h in ALL_HOSTS}
    forced = env.fab("deploy", "--tag", "v1", "--local-path", str(release), "--force")
    assert forced.returncode == 0, forced.stderr + forced.stdout
    for host in PEERS:
        assert env.tree(host, "/srv/murder/app/current/") == local_tree(release)
    assert_nothing_left(env)
    # murder.pyz was current everywhere: not uploaded again (an upload renames a new file in)
    assert {h: env.sh(h, f"stat -c %i.%Y {PYZ_REMOTE}") for h in ALL_HOSTS} == installed


def test_rollback_and_keep_releases(env: Env) -> None:
    trees = {}
    for tag, seed in (("v2", 2), ("v3", 3)):
        release = make_release(env.work / f"rel-{tag}", seed, size=500_000)
        trees[tag] = local_tree(release)
        out = env.fab("deploy", "--tag", tag, "--local-path", str(release), "--keep-releases", "2")
        assert out.returncode == 0, out.stderr + out.stdout
    for host in PEERS:
        assert env.current(host) == "releases/v3"
        # keep_releases=2: v1 was pruned, v2 and v3 remain
        assert env.sh(host, "ls /srv/murder/app/releases").split() == ["v2", "v3"]
    back = env.fab("rollback")
    assert back.returncode == 0, back.stderr + back.stdout
    assert back.stdout.count("v3 -> v2") == len(PEERS)
    for host in PEERS:
        assert env.current(host) == "releases/v2"
        assert env.tree(host, "/srv/murder/app/current/") == trees["v2"]
    nothing_older = env.fab("rollback")
    assert nothing_older.returncode == 1
    assert "no release older than 'v2'" in nothing_older.stdout
    forward = env.fab("rollback", "--tag", "v3")
    assert forward.returncode == 0, forward.stderr + forward.stdout
    assert all(env.current(h) == "releases/v3" for h in PEERS)


def test_deploy_a_single_file(env: Env) -> None:
    payload = env.work / "server.war"
    payload.write_bytes(os.urandom(700_000))
    out = env.fab(
        "deploy", "--tag", "f1", "--local-path", str(payload), destination_path="/srv/murder/war"
    )
    assert out.returncode == 0, out.stderr + out.stdout
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    for host in PEERS:
        assert env.tree(host, "/srv/murder/war/current/") == {"server.war": digest}
    assert_nothing_left(env)


def test_murder_tasks_in_manual_order(env: Env) -> None:
    """Murder's README: distribute_files, start_tracker, create_torrent, start_seeding,
    peer, stop_seeding, stop_tracker (plus the other tasks, each on its own)."""
    src = "/srv/murder/src-m1"
    env.sh(
        "h1",
        f"mkdir -p {src}/lib {src}/.git && head -c 400000 /dev/urandom > {src}/lib/a.so"
        f" && echo hello > {src}/README && echo x > {src}/.git/config",
    )
    expected = {k: v for k, v in env.tree("h1", src).items() if not k.startswith(".git")}
    assert sorted(expected) == ["README", "lib/a.so"]

    def ok(*args: str) -> str:
        out = env.fab(*args)
        assert out.returncode == 0, f"{args}: {out.stderr}{out.stdout}"
        return out.stdout

    dist = ok("murder.distribute_files")
    assert all(f"h{i}: ok installed" in dist for i in range(1, HOSTS + 1))
    for host in ("h1", "h4"):
        names = env.sh(host, "ls /srv/murder/bin").split()
        assert names == [
            "murder.pyz",
            "murder_client.py",
            "murder_make_torrent.py",
            "murder_tracker.py",
        ]
    assert ok("murder.install").count("ok installed") == HOSTS

    assert "tracker running at 198.18.0.11:8998" in ok("murder.start_tracker")
    assert [" tracker " in c for c in env.murder_processes()["h1"]] == [True]

    info_hash, local = ok("murder.create_torrent", "--tag", "m1", "--files-path", src).split()
    assert len(info_hash) == 40 and Path(local).is_file()
    Path(local).unlink()
    assert ok("murder.download_torrent", "--tag", "m1").strip() == local
    assert Path(local).is_file()

    ok("murder.start_seeding", "--tag", "m1")
    assert sorted(" seed " in c for c in env.murder_processes()["h1"]) == [False, True]
    # The progress bar's path to /stats.json: a direct-tcpip channel over h1's SSH link.
    # The deploy's torrent shows only with the token from its .torrent.
    assert info_hash not in json.loads(env.stats_over_ssh())["torrents"]
    path = stats_path(read_metainfo(local).announce)
    assert path.startswith("/stats.json?auth=")
    stats = json.loads(env.stats_over_ssh(path))
    seeders = [p for p in stats["torrents"][info_hash]["peers"] if p["seeder"]]
    assert [p["ip"] for p in seeders] == ["198.18.0.11"]

    peered = ok("murder.peer", "--tag", "m1", "--destination-path", "/srv/murder/manual")
    assert peered.count(": ok /srv/murder/manual/m1") == len(PEERS)
    for host in PEERS:
        assert env.tree(host, "/srv/murder/manual/m1") == expected
    # Murder refused a non-empty destination unless told to delete it
    again = env.fab("murder.peer", "--tag", "m1", "--destination-path", "/srv/murder/manual")
    assert again.returncode == 1
    assert "destination /srv/murder/manual/m1 exists and is not empty" in again.stdout
    assert "peer failed on: " + ", ".join(PEERS) in again.stderr
    ok(
        "murder.peer",
        "--tag",
        "m1",
        "--destination-path",
        "/srv/murder/manual",
        "--unsafe-please-delete",
    )
    ok("murder.peer", "--tag", "m1", "--destination-path", "/srv/murder/flat", "--no-tag-directory")
    assert env.tree("h3", "/srv/murder/flat") == expected
    assert set(env.murder_processes()) == {"h1"}  # peers stop lingering once all are done

    ok("murder.stop_seeding", "--tag", "m1")
    assert [" tracker " in c for c in env.murder_processes()["h1"]] == [True]
    ok("murder.stop_tracker")
    assert_nothing_left(env)
    ok("murder.stop_all_seeding")
    ok("murder.stop_peering", "--tag", "m1")
    ok("murder.stop_all_peering")
    assert env.sh("h1", "ls /tmp/murder/m1.tgz /tmp/murder/m1.tgz.torrent").split() == [
        "/tmp/murder/m1.tgz",
        "/tmp/murder/m1.tgz.torrent",
    ]
    ok("murder.clean_temp_files", "--tag", "m1")
    assert env.sh("h1", "ls /tmp/murder/m1.tgz* 2>/dev/null || true") == ""
    assert_nothing_left(env)


def test_a_host_with_sshd_stopped(env: Env) -> None:
    from murder_dev import cluster

    release = make_release(env.work / "rel-v4", 4, size=800_000)
    before = env.current("h7")
    cluster.stop_sshd(env.info, "h7")
    try:
        report = env.work / "v4.json"
        out = env.fab("deploy", "--tag", "v4", "--local-path", str(release), "--json", str(report))
    finally:
        cluster.start_sshd(env.info, "h7")
    assert out.returncode == 1
    assert "deploy failed on: h7" in out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:7]}
    assert rows["h7"].split()[1] == "failed" and "ssh:" in rows["h7"]
    data = json.loads(report.read_text())
    assert data["failed_hosts"] == ["h7"]
    assert [h["status"] for h in data["hosts"]] == ["ok"] * 5 + ["failed"]
    for host in PEERS[:-1]:
        assert env.current(host) == "releases/v4"
        assert env.tree(host, "/srv/murder/app/current/") == local_tree(release)
    assert env.current("h7") == before
    assert_nothing_left(env)


def test_ctrl_c_still_tears_down(env: Env) -> None:
    """SIGINT as soon as the tracker runs: the deploy stops and leaves nothing behind."""
    release = make_release(env.work / "rel-v5", 5, size=2_000_000)
    report = env.work / "v5.json"
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    env_vars.update(
        FABRIC_MURDER_PYZ=str(env.pyz),
        FABRIC_MURDER_INVENTORY=str(env.info.inventory),
        FABRIC_MURDER_LOCAL_TORRENT_DIR=str(env.work / "torrents"),
        FABRIC_MURDER_PROGRESS="false",
    )
    argv = [
        sys.executable,
        "-m",
        "fabric",
        "-S",
        str(env.info.ssh_config),
        "deploy",
        "--tag",
        "v5",
        "--local-path",
        str(release),
        "--json",
        str(report),
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env_vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        seen = proc.stderr.readline()  # blocks until the tracker is up (or fab dies)
        assert seen.startswith("tracker on h1"), seen
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "deploy: interrupted; teardown done" in err
    data = json.loads(report.read_text())
    assert data["error"] == "interrupted"
    assert_nothing_left(env)
    assert (
        env.sh("h1", "ls /tmp/murder/v5.tgz* /tmp/murder/torrents 2>/dev/null || true")
        == "/tmp/murder/torrents:\n"
    )


def test_a_tracker_port_in_use_fails_the_deploy_naming_it(env: Env) -> None:
    """Something else listens on the tracker's port: the deploy fails with the
    tracker's own words, nothing is left running and no peer switches."""
    release = make_release(env.work / "rel-v9", 9, size=500_000)
    h1 = env.info.host("h1")
    before = {host: env.current(host) for host in PEERS}
    squatter = subprocess.Popen(
        ["ip", "netns", "exec", h1.netns, sys.executable, "-c", PORT_SQUATTER, h1.ip, "8998"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline() == "listening\n"
        report = env.work / "v9.json"
        out = env.fab("deploy", "--tag", "v9", "--local-path", str(release), "--json", str(report))
    finally:
        squatter.kill()
        squatter.wait(10)
    assert out.returncode == 1, out.stderr
    data = json.loads(report.read_text())
    assert "cannot listen on 198.18.0.11:8998: Address already in use" in data["error"]
    assert data["teardown_problems"] == []
    assert_nothing_left(env)
    assert {host: env.current(host) for host in PEERS} == before


def _log_time(line: str) -> datetime.datetime:
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_every_peer_joins_the_swarm_at_once_whatever_max_parallel(env: Env) -> None:
    """max_parallel bounds the SSH set-up and the short steps, not the swarm: in waves
    of max_parallel, each peer would start only once the one before had downloaded and
    installed, and a fleet would take N / max_parallel swarms."""
    release = make_release(env.work / "rel-v10", 10, size=8_000_000)
    out = env.fab("deploy", "--tag", "v10", "--local-path", str(release), max_parallel="1")
    assert out.returncode == 0, out.stderr + out.stdout
    started, finished = {}, {}
    for host in PEERS:
        lines = env.sh(host, "cat /tmp/murder/peer-v10.log").splitlines()
        started[host] = _log_time(next(x for x in lines if " listening on " in x))
        finished[host] = _log_time(next(x for x in lines if " complete; seeding" in x))
    first_done = min(finished.values())
    # Seconds from each peer's start to the first download's end: negative for a peer
    # that started only after someone had finished (every peer but one, in waves).
    margins = {h: round((first_done - t).total_seconds(), 3) for h, t in started.items()}
    # All six are started together, but a fast first peer may finish before a slow
    # sixth has started python: more than max_parallel in the swarm at once is the claim.
    assert sum(m > 0 for m in margins.values()) > 1, margins
    assert_nothing_left(env)


def test_a_soft_open_file_limit_too_low_for_the_fleet_is_raised(env: Env) -> None:
    """One SSH connection per host stays open for the whole deploy: a soft limit that
    leaves no room for them (12 here for 7 hosts; 1024 for a fleet of about a thousand)
    used to end the deploy part-way with "Too many open files". The hard limit is
    higher, and raising the soft one up to it needs no privilege."""
    release = make_release(env.work / "rel-v12", 12)
    out = env.fab("deploy", "--tag", "v12", "--local-path", str(release), soft_nofile=12)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "Too many open files" not in out.stderr + out.stdout
    for host in PEERS:
        assert env.current(host) == "releases/v12", host
    assert_nothing_left(env)


PORT_SQUATTER = """
import socket, sys, time
s = socket.socket()
# Past the TIME_WAITs of earlier deploys' trackers; a listener still keeps others out.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening", flush=True)
time.sleep(600)
"""


def test_run_deploy_from_python_with_files_on_the_seeder(env: Env) -> None:
    """The API `invoke demo` calls. The inventory is Murder's minimal one: bare names
    (ssh_config resolves them; each host's address is learnt from its own SSH connection)
    and only [peers], so the first peer is also tracker and seeder and installs the
    release straight from the payload it seeds."""
    from fabfile import run_deploy, settings_from_config

    src = "/srv/murder/src-p1"
    env.sh("h1", f"mkdir -p {src}/d && head -c 300000 /dev/urandom > {src}/d/blob")
    expected = env.tree("h1", src)
    inventory = env.work / "bare.ini"
    everyone = [h.name for h in env.info.hosts]
    inventory.write_text("[peers]\n" + "\n".join(everyone) + "\n")
    settings = settings_from_config(
        {},
        tag="p1",
        files_path=src,
        inventory=str(inventory),
        pyz=str(env.pyz),
        local_torrent_dir=str(env.work / "torrents"),
        progress=False,
        destination_path="/srv/murder/py",
    )
    with open(os.devnull, "w") as quiet:
        report = run_deploy(settings, ssh_config=env.info.ssh_config, out=quiet)
    assert report.ok, report.to_json()
    assert [h.host for h in report.hosts] == everyone
    assert report.ssh_connections == HOSTS
    assert report.payload_bytes is not None and report.payload_bytes > 300_000
    for host in everyone:
        assert env.tree(host, "/srv/murder/py/current/") == expected
    assert_nothing_left(env)


def test_tracker_and_seeder_stop_while_peers_still_install(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the last download ends, nothing needs the tracker, the seeder or the peers'
    linger-seeding: they are stopped while the installs run, not after all of them. A
    peer's own payload stays until its install is done. h7's install waits here, at most
    30 s, until h1 runs nothing of ours; without the early stop it would wait in vain."""
    from fabfile import run_deploy, settings_from_config

    deploy_module = sys.modules["fabfile.deploy"]  # ``fabfile.deploy`` is the task
    real_install = deploy_module.install_release
    seen: dict[str, Any] = {}

    def install_h7_last(conns: Any, host: str, settings: Any, **kwargs: Any) -> None:
        if host == "h7":
            deadline = time.monotonic() + 30
            while env.murder_processes().get("h1") and time.monotonic() < deadline:
                time.sleep(0.1)
            seen["h1"] = env.murder_processes().get("h1", [])
            seen["h7 payload"] = env.sh(
                "h7", "ls /tmp/murder/early.tgz 2>/dev/null || true"
            ).strip()
        real_install(conns, host, settings, **kwargs)

    monkeypatch.setattr(deploy_module, "install_release", install_h7_last)
    release = make_release(env.work / "rel-early", 5)
    settings = settings_from_config(
        {},
        tag="early",
        local_path=str(release),
        inventory=str(env.info.inventory),
        pyz=str(env.pyz),
        local_torrent_dir=str(env.work / "torrents"),
        progress=False,
    )
    with open(os.devnull, "w") as quiet:
        report = run_deploy(settings, ssh_config=env.info.ssh_config, out=quiet)
    assert report.ok, report.to_json()
    assert seen["h1"] == []  # tracker and seeder gone before h7's install began
    assert seen["h7 payload"] == "/tmp/murder/early.tgz"  # but not h7's own payload
    assert report.stages["swarm"] < report.stages["hosts"] <= report.stages["teardown"]
    assert env.current("h7") == "releases/early"
    assert env.tree("h7", "/srv/murder/app/current/") == local_tree(release)
    assert_nothing_left(env)
    for host in ("h1", "h7"):
        assert env.sh(host, "ls /tmp/murder/early.tgz* 2>/dev/null || true") == "", host


TREE_LISTING = (
    "cd {dir} && find . -mindepth 1 -name '.git*' -prune -o -printf '%y %m %T@ %p -> %l\\n' | sort"
)


def test_deploy_a_tree_keeps_modes_mtimes_links_and_empty_dirs(env: Env) -> None:
    """transfer=tree: the peers download the release's own files into releases/.TAG.incoming
    and the manifest makes the rest; h1 (tracker, seeder and a peer) copies its own."""
    src = "/srv/murder/src-t1"
    env.sh(
        "h1",
        f"mkdir -p {src}/bin {src}/empty/deeper {src}/.git && cd {src} && "
        "head -c 2000000 /dev/urandom > bin/app && chmod 750 bin/app && "
        "echo conf > app.ini && chmod 640 app.ini && : > zero && "
        "ln -s bin/app run && ln -s ../bin empty/up && echo ref > .git/HEAD && "
        "touch -h -d '2020-02-03 04:05:06.123456789' bin/app app.ini zero run empty/up "
        "empty/deeper empty bin",
    )
    want = env.sh("h1", TREE_LISTING.format(dir=src))
    assert "f 640" in want and "f 750" in want and "l 777" in want and ".git" not in want, want
    app = env.sh("h1", f"sha256sum < {src}/bin/app")
    inventory = env.work / "tree.ini"
    everyone = [h.name for h in env.info.hosts]
    inventory.write_text("[peers]\n" + "\n".join(everyone) + "\n")
    out = env.fab(
        "deploy",
        *("--tag", "t1", "--files-path", src, "--transfer", "tree"),
        *("--inventory", str(inventory)),
        destination_path="/srv/murder/tree",
    )
    assert out.returncode == 0, out.stderr + out.stdout
    for host in everyone:
        assert env.current(host, "/srv/murder/tree") == "releases/t1"
        got = env.sh(host, TREE_LISTING.format(dir="/srv/murder/tree/current/"))
        assert got == want, host
        assert env.sh(host, "sha256sum < /srv/murder/tree/current/bin/app") == app, host
        assert env.sh(host, "ls -A /srv/murder/tree/releases").split() == ["t1"], host
        temp = env.sh(host, "ls -A /tmp/murder | grep -v -e '[.]log$' -e '[.]out$' || true")
        assert "t1" not in temp, host  # manifest, torrent, lease: gone; logs stay
    assert_nothing_left(env)


def test_a_plain_tarball_is_unpacked_as_it_downloads_and_installs_as_a_gzipped_one(
    env: Env,
) -> None:
    """compress=false: peers write the members' bytes straight into releases/.TAG.incoming
    (``murder peer --unpack-map``) and keep only tar's headers in temp_path; the release is
    the one a gzipped tarball gives, modes, mtimes, links and all."""
    src = "/srv/murder/src-u"
    env.sh(
        "h1",
        f"mkdir -p {src}/bin {src}/empty/deeper {src}/.git && cd {src} && "
        "head -c 2000000 /dev/urandom > bin/app && chmod 750 bin/app && "
        "echo conf > app.ini && chmod 640 app.ini && : > zero && ln app.ini app.hard && "
        "ln -s bin/app run && echo ref > .git/HEAD && "
        "touch -h -d '2020-02-03 04:05:06' bin/app app.ini zero run empty/deeper empty bin",
    )
    for tag, compress in (("u1", "false"), ("u2", "true")):
        out = env.fab(
            "deploy",
            *("--tag", tag, "--files-path", src),
            compress=compress,
            destination_path=f"/srv/murder/{tag}",
            linger="0",
        )
        assert out.returncode == 0, out.stderr + out.stdout
    app = env.sh("h1", f"sha256sum < {src}/bin/app")

    def listing(host: str, tag: str) -> list[str]:
        # tarfile leaves a symlink's own mtime at the time it made it, in both deploys.
        lines = env.sh(host, TREE_LISTING.format(dir=f"/srv/murder/{tag}/current/")).splitlines()
        return [
            " ".join(w for i, w in enumerate(ln.split()) if i != 2 or ln[0] != "l") for ln in lines
        ]

    for host in PEERS:
        unpacked = "\n".join(listing(host, "u1"))
        assert listing(host, "u1") == listing(host, "u2")
        assert "f 750" in unpacked and "l 777" in unpacked and "./empty/deeper" in unpacked
        assert env.sh(host, "sha256sum < /srv/murder/u1/current/bin/app") == app, host
        assert env.sh(host, "stat -c %h /srv/murder/u1/current/app.hard") == "2\n", host
        log = env.sh(host, "cat /tmp/murder/peer-u1.log")
        assert "unpack map: 2 files, 2000005 of " in log, (host, log[-500:])
        assert "unpack map" not in env.sh(host, "cat /tmp/murder/peer-u2.log")
        temp = env.sh(host, "ls -A /tmp/murder /srv/murder/u1/releases | grep -v '[.]log$'")
        assert "u1.tar" not in temp and "incoming" not in temp, (host, temp)
    assert_nothing_left(env)


def test_deploy_a_tree_refuses_a_link_out_of_the_release_before_the_swarm(env: Env) -> None:
    src = "/srv/murder/src-t2"
    env.sh("h1", f"mkdir -p {src} && echo x > {src}/f && ln -sfn /etc/passwd {src}/pw")
    out = env.fab(
        "deploy", *("--tag", "t2", "--files-path", src, "--transfer", "tree"), timeout=120
    )
    assert out.returncode == 1
    assert "unsafe symlink 'pw' to '/etc/passwd': absolute" in out.stdout + out.stderr
    for host in PEERS:
        assert env.sh(host, "ls -a /srv/murder/app/releases | grep -c t2 || true").strip() == "0"
    assert_nothing_left(env)


def test_transfers_to_one_host_from_many_threads(env: Env) -> None:
    """A deploy uploads to a host from one thread while it downloads from it in another
    (the tracker's and the seeder's may be one host): each must get its own bytes."""
    from concurrent.futures import ThreadPoolExecutor

    from fabfile.deploy import make_config
    from fabfile.inventory import load_inventory
    from fabfile.remote import Connections

    conns = Connections(load_inventory(env.info.inventory), make_config(env.info.ssh_config))
    blobs = {i: os.urandom(200_000 + i) for i in range(8)}
    for i, blob in blobs.items():
        (env.work / f"up{i}").write_bytes(blob)

    def round_trip(i: int) -> bytes:
        conns.put("h1", str(env.work / f"up{i}"), f"/tmp/murder-sftp-{i}")
        conns.get("h1", f"/tmp/murder-sftp-{i}", str(env.work / f"down{i}"))
        return (env.work / f"down{i}").read_bytes()

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = dict(zip(blobs, pool.map(round_trip, blobs, timeout=120)))
    finally:
        conns.close()
    assert got == blobs


def test_unknown_host_keys_are_refused(env: Env) -> None:
    strict = env.work / "ssh_config_empty_known_hosts"
    empty = env.work / "known_hosts_empty"
    empty.write_text("")
    text = env.info.ssh_config.read_text().replace(str(env.info.known_hosts), str(empty))
    assert str(empty) in text
    strict.write_text(text)
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    env_vars["FABRIC_MURDER_INVENTORY"] = str(env.info.inventory)
    out = subprocess.run(
        [sys.executable, "-m", "fabric", "-S", str(strict), "murder.stop_tracker"],
        cwd=ROOT,
        env=env_vars,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "murder: h1: ssh: SSHException: Server '198.18.0.11' not found in known_hosts" in (
        out.stderr
    )


def test_every_remote_command_has_a_timeout(env: Env) -> None:
    from fabfile.deploy import make_config
    from fabfile.inventory import load_inventory
    from fabfile.remote import Connections
    from murder_core.errors import HostError

    conns = Connections(
        load_inventory(env.info.inventory), make_config(env.info.ssh_config), command_timeout=1
    )
    try:
        assert conns.run("h2", "echo $((6 * 7))").stdout == "42\n"
        with pytest.raises(HostError) as info:
            conns.run("h2", "sleep 30")
        assert str(info.value) == "h2: command timed out after 1s"
        assert conns.run("h2", "echo still usable", timeout=10).stdout == "still usable\n"
        assert conns.opens == 1
    finally:
        conns.close()


def test_ansible_connection_variables(env: Env) -> None:
    """Names no ssh_config block knows: address, user, port and key come from the inventory."""
    config = env.work / "ssh_config_generic"
    config.write_text(
        f"Host *\n  UserKnownHostsFile {env.info.known_hosts}\n  IdentitiesOnly yes\n"
        "  BatchMode yes\n"
    )
    inventory = env.work / "ansible.ini"
    inventory.write_text(
        "[peers]\n"
        + "".join(
            f"node{i} ansible_host=198.18.0.{10 + i} ansible_port=22 ansible_user=root "
            f"ansible_ssh_private_key_file={env.info.key}\n"
            for i in (2, 3)
        )
    )
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fabric",
            "-S",
            str(config),
            "murder.stop_all_peering",
            "-i",
            str(inventory),
        ],
        cwd=ROOT,
        env=env_vars,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["node2: ok", "node3: ok"]
    no_key = inventory.read_text().replace(f" ansible_ssh_private_key_file={env.info.key}", "")
    inventory.write_text(no_key)
    env_vars["HOME"] = str(env.work / "empty-home")  # no ~/.ssh keys to fall back on
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "fabric",
            "-S",
            str(config),
            "murder.stop_all_peering",
            "-i",
            str(inventory),
        ],
        cwd=ROOT,
        env=env_vars,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "node2: FAILED ssh: " in refused.stdout
