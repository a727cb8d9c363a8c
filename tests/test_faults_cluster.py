"""The fault suite of issue 5: `fab deploy` on the local cluster while things break.

Every test deploys a new release over a previous one (the module's ``base``), breaks
something in the middle, and then checks the same contract:

- the exit status and the per-host report tell the truth, naming each failed host
  with an error a person can act on;
- hosts reported ``ok`` hold the release byte for byte (sha256 of every file) and
  ``current`` points at it;
- failed hosts keep ``current`` on the release they had, with nothing (not even a
  hidden work directory) under the new release's name;
- no tracker, seeder or peer (a process whose command line names murder.pyz) is
  left on any host;
- the deploy ends within ``BOUND`` seconds (a guard against hangs, not a speed test).

"In the middle" is made reliable by shaping links with tc (each host's link is our
own veth) and by waiting for real progress: the pieces whose bytes already match
their SHA-1 in a peer's ``.part`` file, read through the host's private /tmp.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, TypeVar

import pytest
from clusterhosts import DEST, HostView, local_tree, need_cluster_tools

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "mflt"
SUBNET = 60
HOSTS = 6  # h1 tracker + seeder, h2..h5 peers, h6 outside the inventory (the bad peer)
PEERS = ["h2", "h3", "h4", "h5"]
OUTSIDER = "h6"
RATE = "40mbit"
#: A link this slow makes a 4 MiB download last about 8 s: "the middle" is wide.
SLOW = "4mbit"
PAYLOAD = 4 * 1024 * 1024
BOUND = 180.0
#: How long a test waits for the moment it breaks something.
MOMENT = 60.0
PEER_TIMEOUT = 60

T = TypeVar("T")


def _ip(index: int) -> str:
    return f"198.18.{SUBNET}.{10 + index}"


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    seconds: float
    report: Dict[str, Any]

    def row(self, host: str) -> Dict[str, Any]:
        rows = {r["host"]: r for r in self.report["hosts"]}
        return dict(rows[host])

    def __str__(self) -> str:
        return f"exit {self.code} after {self.seconds:.1f}s\n{self.stdout}\n{self.stderr[-3000:]}"


class Env(HostView):
    """The cluster, the inventory the deploys use, and ways to look inside the hosts."""

    def __init__(self, info: Any, work: Path, pyz: Path) -> None:
        self.info = info
        self.work = work
        self.pyz = pyz
        self.inventory = work / "hosts.ini"
        first = f"h1 ansible_host={_ip(1)}\n"
        self.inventory.write_text(
            f"[tracker]\n{first}\n[seeder]\n{first}\n[peers]\n"
            + "".join(f"{h} ansible_host={_ip(int(h[1:]))}\n" for h in PEERS)
        )
        self.torrents = work / "torrents"

    # -- looking at a host ---------------------------------------------------------------
    def releases(self, host: str, dest: str = DEST) -> List[str]:
        """Everything under releases/, hidden work directories included."""
        return sorted(self.sh(host, f"ls -A {dest}/releases 2>/dev/null || true").split())

    def tmp(self, host: str, name: str) -> Path:
        """A file under the host's private /tmp/murder, seen from here."""
        return Path(self.info.hostdir(host)) / "tmp" / "murder" / name

    def pid_from(self, host: str, pidfile: str, role: str) -> int:
        """The pid in a pidfile under /tmp/murder, checked to be murder's ``role``."""
        text = self.tmp(host, pidfile).read_text().strip()
        pid = int(text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"murder.pyz" in b" ".join(cmdline) and role.encode() in cmdline, cmdline
        return pid

    # -- the network ---------------------------------------------------------------------
    def shape(self, host: str, rate: str) -> None:
        """Both directions of ``host``'s link to ``rate`` (our own veth and its peer end)."""
        from murder_dev import netns

        h = self.info.host(host)
        args = netns.tbf_args(rate)
        netns.run(["tc", "qdisc", "replace", "dev", h.veth, "root", "tbf", *args])
        netns.run(["tc", "-n", h.netns, "qdisc", "replace", "dev", "eth0", "root", "tbf", *args])

    # -- deploying -----------------------------------------------------------------------
    def fab_env(self, **config: str) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
        env.update(
            FABRIC_MURDER_PYZ=str(self.pyz),
            FABRIC_MURDER_INVENTORY=str(self.inventory),
            FABRIC_MURDER_LOCAL_TORRENT_DIR=str(self.torrents),
            FABRIC_MURDER_PEER_TIMEOUT=str(PEER_TIMEOUT),
            FABRIC_MURDER_PROGRESS="0",  # Invoke casts any other non-empty string to True
        )
        env.update({f"FABRIC_MURDER_{k.upper()}": v for k, v in config.items()})
        return env

    def deploy(self, tag: str, release: Path, **config: str) -> Deploy:
        return Deploy(self, tag, release, **config)

    def currents(self, dest: str = DEST) -> Dict[str, str]:
        return {h: self.current(h, dest) for h in PEERS}


class Deploy:
    """`fab deploy` running in the background, so a test can break things meanwhile."""

    def __init__(self, env: Env, tag: str, release: Path, **config: str) -> None:
        self.env = env
        self.tag = tag
        self.report = env.work / f"{tag}.json"
        self._out: IO[str] = open(env.work / f"{tag}.out", "w+")  # noqa: SIM115 - closed in finish()
        self._err: IO[str] = open(env.work / f"{tag}.err", "w+")  # noqa: SIM115 - closed in finish()
        argv = [sys.executable, "-m", "fabric", "-S", str(env.info.ssh_config)]
        argv += ["deploy", "--tag", tag, "--local-path", str(release), "--json", str(self.report)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env.fab_env(**config), stdout=self._out, stderr=self._err
        )

    def output(self) -> str:
        self._out.seek(0)
        self._err.seek(0)
        return self._out.read() + self._err.read()

    def until(self, what: str, probe: Callable[[], Optional[T]], timeout: float = MOMENT) -> T:
        """Poll ``probe`` until it returns something; fail if the deploy ends first."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value is not None:
                return value
            assert self.proc.poll() is None, f"deploy ended before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s:\n{self.output()}"
            time.sleep(0.1)

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self) -> Finished:
        try:
            self.proc.wait(timeout=BOUND + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"deploy {self.tag} still running after {BOUND + 30:.0f}s")
        seconds = time.monotonic() - self.started
        self._out.seek(0)
        self._err.seek(0)
        stdout, stderr = self._out.read(), self._err.read()
        self._out.close()
        self._err.close()
        report = json.loads(self.report.read_text()) if self.report.exists() else {}
        return Finished(self.proc.returncode, stdout, stderr, seconds, report)

    def kill(self) -> None:
        """Ctrl-C first, so its teardown runs; SIGKILL if that does not end it in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_release(root: Path, seed: int, size: int = PAYLOAD) -> Path:
    root.mkdir(parents=True)
    rnd = __import__("random").Random(seed)
    (root / "app.bin").write_bytes(rnd.randbytes(size))
    (root / "conf").mkdir()
    (root / "conf" / "settings.ini").write_text(f"[app]\nrelease = {seed}\n")
    (root / "empty.txt").write_text("")
    return root


def verified_pieces(env: Env, host: str, tag: str) -> Optional[set[int]]:
    """Pieces whose bytes in ``host``'s payload (or its .part) match the torrent's SHA-1s.

    None until both the local .torrent and the host's file exist.
    """
    from murder_core.errors import MurderError
    from murder_core.metainfo import read_metainfo

    torrent = env.torrents / f"{tag}.tgz.torrent"
    try:
        meta = read_metainfo(torrent)
    except (OSError, MurderError):
        return None
    for name in (f"{tag}.tgz", f"{tag}.tgz.part"):
        try:
            data = env.tmp(host, name).read_bytes()
        except OSError:
            continue
        size = meta.piece_length
        return {
            i
            for i in range(meta.num_pieces)
            if hashlib.sha1(data[i * size : (i + 1) * size]).digest() == meta.piece_hash(i)
        }
    return None


def some_but_not_all_pieces_out(env: Env, tag: str) -> Optional[bool]:
    """True once some piece sits verified on a peer, None before; fails the test if
    the moment was missed and every piece has left the seeder already."""
    held = [verified_pieces(env, h, tag) for h in PEERS]
    union = set().union(*[h for h in held if h is not None])
    if not union:
        return None
    assert len(union) < num_pieces(env, tag), "every piece left the seeder already"
    return True


def num_pieces(env: Env, tag: str) -> int:
    from murder_core.metainfo import read_metainfo

    return read_metainfo(env.torrents / f"{tag}.tgz.torrent").num_pieces


def check(
    env: Env,
    done: Finished,
    tag: str,
    release: Path,
    before: Dict[str, str],
    failed: Dict[str, str],
    dest: str = DEST,
) -> None:
    """The contract every fault test ends with; ``failed`` maps host -> error substring."""
    failed_hosts = [h for h in PEERS if h in failed]
    assert done.report, f"no report written: {done}"
    assert done.report["failed_hosts"] == failed_hosts, done
    for host, needle in failed.items():
        row = done.row(host)
        assert row["status"] == "failed", (host, row)
        assert re.search(needle, row["error"]), (host, needle, row["error"])
    if failed:
        assert done.code == 1, done
        assert f"deploy failed on: {', '.join(failed_hosts)}" in done.stderr, done
    else:
        assert done.code == 0, done
        assert done.report["ok"] is True
    expected = local_tree(release)
    for host in PEERS:
        if host in failed:
            assert env.current(host, dest) == before[host], host
            assert not [n for n in env.releases(host, dest) if tag in n], host
        else:
            assert done.row(host)["status"] == "ok", (host, done)
            assert env.current(host, dest) == f"releases/{tag}", host
            assert env.tree(host, f"{dest}/current/") == expected, host
    assert env.murder_processes() == {}
    assert done.seconds < BOUND, done


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """The cluster with release ``base`` live on every peer."""
    need_cluster_tools()
    from murder_dev import cluster
    from murder_dev.build import build_pyz

    work = Path(tempfile.mkdtemp(prefix="murder-faults-"))
    # The cluster refuses a workdir under /tmp, which every host mounts privately.
    cluster_dir = Path(tempfile.mkdtemp(prefix="murder-faults-cluster-", dir="/var/tmp"))
    pyz = build_pyz(work / "dist" / "murder.pyz")
    try:
        info = cluster.up(HOSTS, RATE, cluster_dir, prefix=PREFIX, subnet=SUBNET)
        e = Env(info, work, pyz)
        done = e.deploy("base", make_release(work / "rel-base", 100, size=300_000)).finish()
        assert done.code == 0, done
        yield e
    finally:
        cluster.down(cluster_dir, prefix=PREFIX)
        shutil.rmtree(cluster_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def net(env: Env) -> Iterator[Callable[[str, str], None]]:
    """``net(host, rate)`` reshapes a link for one test; every link is restored after."""
    yield env.shape
    for h in env.info.hosts:
        env.shape(h.name, RATE)


@pytest.fixture
def running(env: Env) -> Iterator[List[Any]]:
    """Processes and deploys a test started: ended by pid if the test did not end them,
    and whatever a failed deploy left on the hosts, so one failure does not cascade."""
    started: List[Any] = []
    yield started
    for thing in started:
        if isinstance(thing, Deploy):
            thing.kill()
        elif thing.poll() is None:
            thing.kill()
            thing.wait()
    env.kill_leftovers()


def test_1_a_peer_serving_corrupt_blocks_is_banned_and_the_rest_complete(
    env: Env, net: Callable[[str, str], None], running: List[Any]
) -> None:
    """A liar on h6 joins through the tracker as a seeder and answers every request with
    random bytes: each peer's first piece from it fails the hash, the peer bans it and
    never dials it again, and every peer still ends with the exact release."""
    release = make_release(env.work / "rel-f1", 1)
    before = env.currents()
    net("h1", "8mbit")  # a slow honest seeder: the liar gets asked for plenty
    deploy = env.deploy("f1", release)
    running.append(deploy)
    torrent = env.torrents / "f1.tgz.torrent"
    deploy.until("the .torrent", lambda: torrent if torrent.exists() else None)
    bad_log = env.work / "badpeer.log"

    def liar_announced() -> Optional[bool]:
        """The liar announces once and exits if the tracker does not serve the torrent
        yet (it is published a moment after we see it here): start it until it sticks."""
        if running and isinstance(running[-1], subprocess.Popen):
            bad = running[-1]
            if b"announced" in bad_log.read_bytes():
                return True
            if bad.poll() is None:
                return None
        with open(bad_log, "wb") as log:
            running.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        env.info.host(OUTSIDER).netns,
                        sys.executable,
                        "-m",
                        "murder_dev.badpeer",
                        str(torrent),
                        "--ip",
                        _ip(6),
                        "--port",
                        "6881",
                        "--lifetime",
                        str(int(BOUND)),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]},
                )
            )
        return None

    deploy.until("the liar announced", liar_announced)
    bad = running[-1]
    done = deploy.finish()
    bad.terminate()
    bad.wait(10)
    check(env, done, "f1", release, before, failed={})
    dialled = re.findall(r"connection \d+ from \('([0-9.]+)'", bad_log.read_text())
    assert sorted(dialled) == [_ip(int(h[1:])) for h in PEERS], bad_log.read_text()
    for host in PEERS:
        log = env.tmp(host, "peer-f1.log").read_text()
        assert "failed its SHA-1 check" in log, host
        assert f"banning peer {_ip(6)}:6881" in log, (host, log[-2000:])


def test_2_a_peer_killed_mid_transfer_is_reported_failed(
    env: Env, net: Callable[[str, str], None], running: List[Any]
) -> None:
    """SIGKILL of h3's peer while it downloads: h3 is reported failed, naming the
    signal, and keeps its release; the others complete. No retry: a peer process that
    dies under a deploy (OOM killer, an operator) is something to look at, and a
    re-run of the deploy resumes from the verified pieces already on disk."""
    release = make_release(env.work / "rel-f2", 2)
    before = env.currents()
    net("h3", SLOW)
    deploy = env.deploy("f2", release)
    running.append(deploy)

    def halfway() -> Optional[int]:
        have = verified_pieces(env, "h3", "f2")
        if have and len(have) < num_pieces(env, "f2"):
            return env.pid_from("h3", "peer-f2.pid", "peer")
        return None

    os.kill(deploy.until("h3 halfway", halfway), signal.SIGKILL)
    done = deploy.finish()
    check(env, done, "f2", release, before, failed={"h3": r"murder peer: killed by SIGKILL"})
    assert not env.tmp("h3", "f2.tgz.part").exists()  # teardown cleaned the temp files


def test_3_the_seeder_killed_once_the_peers_hold_a_full_copy(
    env: Env, net: Callable[[str, str], None], running: List[Any]
) -> None:
    """SIGKILL of the seeder as soon as every piece sits verified on some peer (and
    no peer has them all): the peers finish from each other and the deploy succeeds."""
    release = make_release(env.work / "rel-f3", 3)
    before = env.currents()
    for host in PEERS:
        net(host, SLOW)
    deploy = env.deploy("f3", release)
    running.append(deploy)

    def full_copy_among_peers() -> Optional[int]:
        held = [verified_pieces(env, h, "f3") for h in PEERS]
        if any(h is None for h in held):
            return None
        total = num_pieces(env, "f3")
        union = set().union(*[h for h in held if h is not None])
        assert all(h is not None and len(h) < total for h in held), "a peer finished first"
        return env.pid_from("h1", "seeder-f3.pid", "seed") if len(union) == total else None

    seeder = deploy.until("a full copy among the peers", full_copy_among_peers)
    os.kill(seeder, signal.SIGKILL)
    done = deploy.finish()
    check(env, done, "f3", release, before, failed={})
    assert "seeding" in done.stderr and done.report["teardown_problems"] == []


def test_3b_the_seeder_killed_before_every_piece_left_it(
    env: Env, net: Callable[[str, str], None], running: List[Any]
) -> None:
    """SIGKILL of the seeder while some piece exists nowhere else: the swarm cannot
    finish, and the deploy must say so once it stalls (stall_timeout), not after every
    peer waited out its peer_timeout."""
    release = make_release(env.work / "rel-f3b", 33)
    before = env.currents()
    for host in PEERS:
        net(host, SLOW)
    deploy = env.deploy("f3b", release, stall_timeout="5")
    running.append(deploy)

    def first_pieces_only() -> Optional[int]:
        if not some_but_not_all_pieces_out(env, "f3b"):
            return None
        return env.pid_from("h1", "seeder-f3b.pid", "seed")

    seeder = deploy.until("the first verified piece", first_pieces_only)
    os.kill(seeder, signal.SIGKILL)
    killed = time.monotonic() - deploy.started
    done = deploy.finish()
    verdict = r"the seeder on h1 is gone \(.*\) and the swarm moved no byte for 5s"
    check(env, done, "f3b", release, before, failed={h: verdict for h in PEERS})
    assert re.search(verdict, done.report["error"]), done
    # Without the watch every peer waits PEER_TIMEOUT (60 s) before it gives up.
    assert done.seconds - killed < PEER_TIMEOUT / 2, done


def test_3c_the_seeders_host_cut_off_before_every_piece_left_it(
    env: Env, net: Callable[[str, str], None], running: List[Any]
) -> None:
    """h1 (tracker and seeder) unplugged while some piece exists nowhere else: the watch
    cannot reach the seeder, counts it gone, and once the swarm has stalled for
    stall_timeout the peers are stopped and every host fails naming h1, long before the
    peers' own timeout. Teardown cannot reach h1 either, and says so; the tracker and
    seeder there stop by themselves once their lease (10 s here) is not renewed."""
    from murder_dev import cluster

    release = make_release(env.work / "rel-f3c", 34)
    before = env.currents()
    for host in PEERS:
        net(host, SLOW)
    deploy = env.deploy("f3c", release, stall_timeout="5", peer_timeout="150", lease_seconds="10")
    running.append(deploy)

    deploy.until("the first verified piece", lambda: some_but_not_all_pieces_out(env, "f3c"))
    cluster.link_down(env.info, "h1")
    try:
        done = deploy.finish()
    finally:
        cluster.link_up(env.info, "h1")
    assert done.code == 1, done
    verdict = (
        r"the seeder on h1 is gone \(its host does not answer: .*\) "
        r"and the swarm moved no byte for 5s"
    )
    for host in PEERS:
        row = done.row(host)
        assert row["status"] == "failed" and re.search(verdict, row["error"]), (host, row)
        assert env.current(host) == before[host], host
        assert not [n for n in env.releases(host) if "f3c" in n], host
    # The peers would give up by themselves only 150 s after they started.
    assert all(done.row(h)["seconds"] < 120 for h in PEERS), done
    # One SSH attempt on h1 at teardown, not one per step.
    assert len([p for p in done.report["teardown_problems"] if p.startswith("h1:")]) == 1, done
    assert env.murder_processes() == {}, env.murder_processes()
    log = env.tmp("h1", "seeder-f3c.log").read_text()
    assert "stopping: lease file /tmp/murder/lease-f3c not renewed" in log, log[-2000:]


def test_4_the_tracker_killed_and_restarted_mid_transfer(
    env: Env, net: Callable[[str, str], None], running: List[Any]
) -> None:
    """SIGKILL of the tracker mid-transfer, then the same command line again (same
    dfile): it reloads the swarm from the dfile, every peer re-announces, the deploy
    completes and teardown stops the new tracker by the pidfile it rewrote."""
    from murder_dev import cluster

    release = make_release(env.work / "rel-f4", 4)
    before = env.currents()
    for host in PEERS:
        net(host, SLOW)
    deploy = env.deploy("f4", release)
    running.append(deploy)
    dfile = env.tmp("h1", "tracker.state")

    def saved_and_moving() -> Optional[int]:
        """Every peer is in the dfile and some piece has arrived somewhere."""
        torrent = env.torrents / "f4.tgz.torrent"
        held = [verified_pieces(env, h, "f4") for h in PEERS]
        if not torrent.exists() or not any(held):
            return None
        from murder_core.metainfo import read_metainfo

        info_hash = read_metainfo(torrent).info_hash.hex
        try:
            saved = json.loads(dfile.read_text())["torrents"][info_hash]
        except (OSError, ValueError, KeyError):
            return None
        ips = {str(p.get("ip")) for p in saved.get("peers") or []}
        if not {_ip(int(h[1:])) for h in PEERS} <= ips:
            return None
        return env.pid_from("h1", "tracker.pid", "tracker")

    old = deploy.until("every peer saved in the dfile", saved_and_moving)
    argv = Path(f"/proc/{old}/cmdline").read_bytes().split(b"\0")[:-1]
    os.kill(old, signal.SIGKILL)
    log = env.tmp("h1", "tracker.log")
    mark = len(log.read_bytes())
    command = " ".join(shlex.quote(a.decode()) for a in argv)
    cluster.run_on(
        env.info,
        "h1",
        ["sh", "-c", f"cd /tmp/murder && exec setsid {command} </dev/null >>tracker.out 2>&1 &"],
        check=True,
        timeout=30,
    )

    def restarted() -> Optional[int]:
        try:
            if int(env.tmp("h1", "tracker.pid").read_text()) == old:
                return None
        except (OSError, ValueError):
            return None  # being rewritten
        return env.pid_from("h1", "tracker.pid", "tracker")

    deploy.until("the new tracker", restarted, timeout=30)
    done = deploy.finish()
    check(env, done, "f4", release, before, failed={})
    after = log.read_text()[mark:]
    loaded = re.search(r"loaded (\d+) torrents, (\d+) peers from /tmp/murder/tracker.state", after)
    assert loaded and int(loaded.group(2)) >= len(PEERS), after
    reannounced = set(re.findall(r"announce ([0-9.]+):\d+ ", after[loaded.end() :]))
    assert {_ip(int(h[1:])) for h in PEERS} <= reannounced, after


def test_5a_a_host_down_before_the_deploy(env: Env, running: List[Any]) -> None:
    """h5's sshd stopped: h5 is named failed with the SSH error, the rest deploy."""
    from murder_dev import cluster

    release = make_release(env.work / "rel-f5a", 5)
    before = env.currents()
    cluster.stop_sshd(env.info, "h5")
    try:
        deploy = env.deploy("f5a", release)
        running.append(deploy)
        done = deploy.finish()
    finally:
        cluster.start_sshd(env.info, "h5")
    check(env, done, "f5a", release, before, failed={"h5": r"^ssh: .*[Cc]onnection refused"})


def test_5b_a_host_cut_off_mid_transfer(
    env: Env, net: Callable[[str, str], None], running: List[Any]
) -> None:
    """h4's link goes down while it downloads. Nothing can reach h4 any more, so the
    deploy waits for it no longer than its own peer timeout (after which the peer on
    h4 has given up by itself), names it failed, and tears down everywhere else
    without waiting on it. Once the link is back, h4 shows nothing left running and
    its old release still live."""
    from murder_dev import cluster

    release = make_release(env.work / "rel-f5b", 6)
    before = env.currents()
    net("h4", SLOW)
    deploy = env.deploy("f5b", release, peer_timeout="20")
    running.append(deploy)

    def halfway() -> Optional[bool]:
        have = verified_pieces(env, "h4", "f5b")
        return True if have and len(have) < num_pieces(env, "f5b") else None

    deploy.until("h4 halfway", halfway)
    cluster.link_down(env.info, "h4")
    try:
        done = deploy.finish()
    finally:
        cluster.link_up(env.info, "h4")
    # 20 s of peer timeout + 60 s of SSH slack, then one teardown attempt on h4 (an SSH
    # channel that cannot open), which also spares it the clean-up step.
    silent = r"^murder peer: no answer from the host for 80s"
    check(env, done, "f5b", release, before, failed={"h4": silent})
    gone = [p for p in done.report.get("teardown_problems", []) if p.startswith("h4:")]
    assert len(gone) <= 1, gone


TINY = "/srv/murder/tiny"


def test_6_a_host_whose_disk_is_full(env: Env, running: List[Any]) -> None:
    """h5's destination is a 1 MiB tmpfs holding a small release; the next one (4 MiB)
    cannot fit. h5 fails before writing anything, naming the path and the bytes needed
    and free, keeps its small release live, and the other hosts complete."""
    tiny = make_release(env.work / "rel-small6", 60, size=200_000)
    release = make_release(env.work / "rel-f6", 6)
    env.sh("h5", f"mkdir -p {TINY} && mount -t tmpfs -o size=1m murder-test-tiny {TINY}")
    try:
        done = env.deploy("small6", tiny, destination_path=TINY).finish()
        assert done.code == 0, done
        before = env.currents(TINY)
        assert before["h5"] == "releases/small6"
        done = env.deploy("f6", release, destination_path=TINY).finish()
        full = rf"not enough disk space for {TINY}/releases/f6: need \d+ bytes, \d+ bytes free"
        check(env, done, "f6", release, before, failed={"h5": full}, dest=TINY)
        assert env.tree("h5", f"{TINY}/current/") == local_tree(tiny)
    finally:
        env.sh("h5", f"umount {TINY} || true")


def test_7_ctrl_c_in_the_middle_of_the_transfer(
    env: Env, net: Callable[[str, str], None], running: List[Any]
) -> None:
    """SIGINT on the workstation while every peer is half-way: fab exits 130 after its
    teardown, every host keeps the release it had, and nothing of murder runs anywhere."""
    release = make_release(env.work / "rel-f7", 7)
    before = env.currents()
    for host in PEERS:
        net(host, SLOW)
    deploy = env.deploy("f7", release)
    running.append(deploy)

    def everyone_halfway() -> Optional[bool]:
        held = [verified_pieces(env, h, "f7") for h in PEERS]
        if not all(held):  # no .torrent yet, or a peer without a verified piece
            return None
        total = num_pieces(env, "f7")
        return True if all(h and len(h) < total for h in held) else None

    deploy.until("every peer halfway", everyone_halfway)
    deploy.interrupt()
    done = deploy.finish()
    assert done.code == 130, done
    assert "deploy: interrupted; teardown done" in done.stderr, done
    assert done.report["error"] == "interrupted"
    assert env.currents() == before
    for host in PEERS:
        assert not [n for n in env.releases(host) if "f7" in n], host
        assert not env.tmp(host, "f7.tgz.part").exists(), host
    assert env.murder_processes() == {}
    assert done.seconds < BOUND, done
