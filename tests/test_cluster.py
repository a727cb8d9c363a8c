"""The namespace cluster, against real namespaces, real tc and real OpenSSH sshd."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from clusterhosts import need_cluster_tools
from conftest import need, need_program

from murder_core.errors import ClusterError
from murder_dev import cluster, netns

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
# Not the defaults (mrd, 198.18.0.0/24): a demo cluster can stay up while these run.
PREFIX = "mrdt"
SUBNET = 250
RATE = "40mbit"

# Hosts have private /tmp and /srv/murder: a virtualenv living there (a CI clone under
# /tmp) is invisible inside them, so run the interpreter the venv was made from.
HOST_PYTHON = os.path.realpath(sys.executable)

# Prints the errno name (or "connected") of a TCP connect: argv host port.
CONNECT = """
import errno, socket, sys

try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("connected")
except socket.timeout:
    print("timeout")
except OSError as exc:
    print(errno.errorcode.get(exc.errno or 0, repr(exc)))
"""


def _need_namespaces() -> None:
    need_cluster_tools()
    need_program("ssh")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    need(probe.returncode == 0, f"`ip netns` does not work here: {probe.stderr.strip()}")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: that lies under /tmp, which every host mounts privately.
    path = Path(tempfile.mkdtemp(prefix="murder-cluster-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def info(workdir: Path) -> Iterator[cluster.ClusterInfo]:
    _need_namespaces()
    try:
        yield cluster.up(3, RATE, workdir, prefix=PREFIX, subnet=SUBNET)
    finally:
        cluster.down(workdir, prefix=PREFIX)


def ssh(info: cluster.ClusterInfo, host: str, command: str) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-F", str(info.ssh_config), host, command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def connect(info: cluster.ClusterInfo, host: str, ip: str, port: int) -> str:
    argv = [HOST_PYTHON, "-c", CONNECT, ip, str(port)]
    proc = cluster.run_on(info, host, argv, capture_output=True, text=True, timeout=30, check=True)
    return str(proc.stdout).strip()


def ours_left() -> tuple[list[str], list[str]]:
    return netns.ours(netns.list_netns(), PREFIX), netns.ours(netns.list_links(), PREFIX)


def test_ssh_reaches_every_host_as_itself(info: cluster.ClusterInfo) -> None:
    assert [h.name for h in info.hosts] == ["h1", "h2", "h3"]
    for h in info.hosts:
        proc = ssh(info, h.name, "hostname; cat /etc/hostname; id -u; ip -4 -o addr show dev eth0")
        assert proc.returncode == 0, proc.stderr
        name, etc_hostname, uid, addr = proc.stdout.splitlines()
        assert (name, etc_hostname, uid) == (h.name, h.name, "0")
        assert f"inet {h.ip}/24" in addr


def _connections(info: cluster.ClusterInfo):  # type: ignore[no-untyped-def]
    from fabfile.deploy import make_config
    from fabfile.inventory import load_inventory
    from fabfile.remote import Connections

    return Connections(load_inventory(str(info.inventory)), make_config(info.ssh_config))


def test_fab_sees_a_command_end_without_polling_for_it(
    info: cluster.ClusterInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command's end wakes the waiting thread (the channel's status event): with the
    output drained only every 30 s, a 0.3 s command still returns at once."""
    from fabfile import remote_exec

    monkeypatch.setattr(remote_exec, "DRAIN_EVERY", 30.0)
    conns = _connections(info)
    try:
        begun = time.monotonic()
        result = conns.run("h2", "sleep 0.3; echo done; echo warn >&2", timeout=20)
        took = time.monotonic() - begun
    finally:
        conns.close()
    assert (result.exited, result.stdout, result.stderr) == (0, "done\n", "warn\n")
    assert took < 15, f"the end of the command was only seen by the {took:.1f} s drain"


def test_a_command_printing_more_than_the_channel_window_finishes(
    info: cluster.ClusterInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6.9 MB of output, over three 2 MiB windows: drained as it comes, the last MiB kept."""
    from fabfile import remote_exec

    monkeypatch.setattr(remote_exec, "DRAIN_EVERY", 0.1)
    conns = _connections(info)
    try:
        result = conns.run("h2", "seq 1 1000000; echo fine >&2", timeout=60)
    finally:
        conns.close()
    assert result.exited == 0 and result.stderr == "fine\n"
    assert len(result.stdout) == remote_exec.KEEP_BYTES
    assert result.stdout.endswith("\n999999\n1000000\n")


def test_a_running_command_costs_the_deploying_process_no_thread(
    info: cluster.ClusterInfo,
) -> None:
    """During the swarm every peer's download runs at once: Fabric's runner gave each
    command two reader threads and a timer (25,000 threads for 5,000 hosts, against a
    default pid_max of 32,768). Six commands at once on one host add only the six
    threads that wait for them."""
    import threading

    conns = _connections(info)
    try:
        conns.run("h2", "true")  # the connection and its transport thread are up
        before = threading.active_count()
        callers = [
            threading.Thread(target=conns.run, args=("h2", "sleep 1.5")) for _ in range(6)
        ]
        for caller in callers:
            caller.start()
        time.sleep(0.8)  # all six are running on h2 now
        during = threading.active_count()
        for caller in callers:
            caller.join(30)
    finally:
        conns.close()
    assert during - before == 6, (before, during)


def test_cluster_json_and_written_files(info: cluster.ClusterInfo, workdir: Path) -> None:
    assert cluster.load(workdir) == info
    assert cluster.ClusterInfo.from_json(info.to_json()) == info
    assert info.workdir == workdir.resolve()
    assert (info.bridge, info.gateway_ip, info.rate) == ("mrdt-br0", "198.18.250.1", RATE)
    assert info.private_dirs == ("/srv/murder", "/tmp")
    assert info.hosts[1] == cluster.HostInfo("h2", "198.18.250.12", "mrdt-h2", "mrdt-v2")
    assert info.inventory.read_text() == (
        "[tracker]\nh1 ansible_host=198.18.250.11\n\n"
        "[seeder]\nh1 ansible_host=198.18.250.11\n\n"
        "[peers]\nh2 ansible_host=198.18.250.12\nh3 ansible_host=198.18.250.13\n"
    )
    known = info.known_hosts.read_text().splitlines()
    assert [line.split()[:2] for line in known] == [
        ["h1,198.18.250.11", "ssh-ed25519"],
        ["h2,198.18.250.12", "ssh-ed25519"],
        ["h3,198.18.250.13", "ssh-ed25519"],
    ]
    config = info.ssh_config.read_text()
    assert "Host h2\n    HostName 198.18.250.12\n" in config
    assert (
        f"    UserKnownHostsFile {info.known_hosts}\n    GlobalKnownHostsFile /dev/null\n" in config
    )


@pytest.mark.parametrize("private_dir", ["/srv/murder", "/tmp"])
def test_private_dir_contents_stay_on_their_host(
    info: cluster.ClusterInfo, private_dir: str
) -> None:
    name = f"only-on-h2-{os.getpid()}"
    path = f"{private_dir}/{name}"
    assert ssh(info, "h2", f"echo secret > {path}").returncode == 0
    seen = cluster.run_on(info, "h2", ["cat", path], capture_output=True, text=True, check=False)
    assert seen.stdout == "secret\n"
    assert cluster.run_on(info, "h3", ["test", "-e", path]).returncode == 1
    assert ssh(info, "h3", f"test -e {path}").returncode == 1
    assert not Path(path).exists()  # the root namespace's own directory
    # cwd is honoured inside the host's mount namespace.
    listing = cluster.run_on(info, "h2", ["ls"], cwd=private_dir, capture_output=True, text=True)
    assert name in listing.stdout.split()


def test_hosts_reach_each_other_but_not_beyond(info: cluster.ClusterInfo) -> None:
    assert connect(info, "h2", "198.18.250.13", 22) == "connected"
    assert connect(info, "h3", "198.18.250.11", 22) == "connected"
    routes = cluster.run_on(info, "h2", ["ip", "-4", "route"], capture_output=True, text=True)
    assert routes.stdout.split()[:3] == ["198.18.250.0/24", "dev", "eth0"]
    assert len(routes.stdout.splitlines()) == 1  # and no default route
    assert connect(info, "h2", "192.0.2.1", 80) == "ENETUNREACH"
    assert connect(info, "h2", "2001:db8::1", 80) == "ENETUNREACH"


def test_loopback_is_per_host_and_host_pids_sees_ssh_started_process(
    info: cluster.ClusterInfo,
) -> None:
    listener = (
        "import os, socket, time\n"
        "s = socket.socket()\n"
        "s.bind(('127.0.0.1', 7777))\n"
        "s.listen()\n"
        "open('/tmp/listener.pid', 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"  # its lifetime bound; down() kills it long before
    )
    command = f"nohup {HOST_PYTHON} -c {shlex.quote(listener)} >/dev/null 2>&1 &"
    assert ssh(info, "h3", command).returncode == 0
    pid = None
    for _ in range(200):  # bounded: at most ~10 s
        proc = cluster.run_on(info, "h3", ["cat", "/tmp/listener.pid"], capture_output=True)
        if proc.returncode == 0 and proc.stdout:
            pid = int(proc.stdout)
            break
        time.sleep(0.05)
    assert pid is not None, "listener on h3 never started"
    assert pid in cluster.host_pids(info, "h3")
    assert pid not in cluster.host_pids(info, "h2")
    assert connect(info, "h3", "127.0.0.1", 7777) == "connected"
    assert connect(info, "h2", "127.0.0.1", 7777) == "ECONNREFUSED"


def test_tc_shapes_uplink_and_downlink(info: cluster.ClusterInfo) -> None:
    for h in info.hosts:
        down_q = subprocess.run(
            ["tc", "qdisc", "show", "dev", h.veth], capture_output=True, text=True, check=True
        )
        up_q = subprocess.run(
            ["tc", "-n", h.netns, "qdisc", "show", "dev", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        )
        for shown in (down_q.stdout, up_q.stdout):
            assert "qdisc tbf" in shown
            assert "rate 40Mbit" in shown


def test_stop_sshd_refuses_fast_and_start_sshd_restores(info: cluster.ClusterInfo) -> None:
    before = cluster.sshd_pids(info, "h3")
    assert len(before) == 1
    cluster.stop_sshd(info, "h3")
    cluster.stop_sshd(info, "h3")  # already stopped: nothing to do
    assert cluster.sshd_pids(info, "h3") == []
    assert not netns.alive(before[0])
    refused = ssh(info, "h3", "true")
    assert refused.returncode == 255
    assert "port 22: Connection refused" in refused.stderr
    assert ssh(info, "h2", "true").returncode == 0  # the others are unaffected
    hostname = cluster.run_on(info, "h3", ["hostname"], capture_output=True, text=True)
    assert hostname.stdout == "h3\n"  # its namespaces outlive its sshd
    cluster.start_sshd(info, "h3")
    after = cluster.sshd_pids(info, "h3")
    cluster.start_sshd(info, "h3")  # already running: nothing to do
    assert cluster.sshd_pids(info, "h3") == after
    assert ssh(info, "h3", "hostname").stdout == "h3\n"


def test_link_down_cuts_a_host_off_until_link_up(info: cluster.ClusterInfo) -> None:
    cluster.link_down(info, "h2")
    assert netns.link_states()["mrdt-v2"] == "DOWN"
    assert connect(info, "h2", "198.18.250.13", 22) in ("timeout", "EHOSTUNREACH")
    assert connect(info, "h3", "198.18.250.12", 22) in ("timeout", "EHOSTUNREACH")
    assert connect(info, "h1", "198.18.250.13", 22) == "connected"
    cluster.link_up(info, "h2")
    assert connect(info, "h2", "198.18.250.13", 22) == "connected"
    assert ssh(info, "h2", "hostname").stdout == "h2\n"
    shaped = subprocess.run(
        ["tc", "qdisc", "show", "dev", "mrdt-v2"], capture_output=True, text=True
    )
    assert "rate 40Mbit" in shaped.stdout


def test_run_on_unknown_host(info: cluster.ClusterInfo) -> None:
    with pytest.raises(ClusterError) as err:
        cluster.run_on(info, "h9", ["true"])
    assert str(err.value) == "no host 'h9' in this cluster (hosts: h1, h2, h3)"


def test_second_cluster_cannot_take_the_same_subnet(info: cluster.ClusterInfo) -> None:
    other = Path(tempfile.mkdtemp(prefix="murder-cluster-other-", dir="/var/tmp"))
    try:
        with pytest.raises(ClusterError) as err:
            cluster.up(2, workdir=other, prefix="mrdu", subnet=SUBNET)
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert str(err.value) == (
        "198.18.250.0/24 is already in use here: [('mrdt-br0', '198.18.250.1')] "
        "(another cluster? take it down, or pick another subnet)"
    )
    assert netns.ours(netns.list_links(), "mrdu") == []
    assert ssh(info, "h1", "true").returncode == 0  # ours untouched


def _everything(info: cluster.ClusterInfo) -> list[int]:
    """Every PID in the cluster, after checking each host has its holder and one sshd."""
    pids = []
    for h in info.hosts:
        here = cluster.host_pids(info, h.name)
        holder = int((info.workdir / h.name / "holder.pid").read_text())
        assert holder in here
        assert len(cluster.sshd_pids(info, h.name)) == 1
        assert set(cluster.sshd_pids(info, h.name)) <= set(here)
        pids += here
    return pids


def _assert_gone(workdir: Path, pids: list[int]) -> None:
    assert ours_left() == ([], [])
    assert [p for p in pids if netns.alive(p)] == []
    assert not workdir.exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(workdir) not in mounts
    assert f"/run/netns/{PREFIX}-" not in mounts


def test_down_removes_everything_and_is_idempotent(workdir: Path) -> None:
    _need_namespaces()
    try:
        info = cluster.up(2, RATE, workdir, prefix=PREFIX, subnet=SUBNET)
        pids = _everything(info)
        assert ours_left() == (["mrdt-h1", "mrdt-h2"], ["mrdt-br0", "mrdt-v1", "mrdt-v2"])
        cluster.down(workdir, prefix=PREFIX)
        _assert_gone(workdir, pids)
        cluster.down(workdir, prefix=PREFIX)
        _assert_gone(workdir, pids)
    finally:
        cluster.down(workdir, prefix=PREFIX)


@pytest.mark.parametrize("crash", ["json deleted", "json truncated", "workdir deleted"])
def test_down_cleans_up_after_a_crash(workdir: Path, crash: str) -> None:
    _need_namespaces()
    try:
        info = cluster.up(2, RATE, workdir, prefix=PREFIX, subnet=SUBNET)
        pids = _everything(info)
        if crash == "json deleted":
            (workdir / "cluster.json").unlink()
        elif crash == "json truncated":
            (workdir / "cluster.json").write_text(info.to_json()[:40])
        else:
            shutil.rmtree(workdir)
        cluster.down(workdir, prefix=PREFIX)
        _assert_gone(workdir, pids)
    finally:
        cluster.down(workdir, prefix=PREFIX)


def test_down_cleans_up_a_half_made_cluster(workdir: Path) -> None:
    # As if up() died right after wiring the network: no cluster.json, no processes.
    _need_namespaces()
    try:
        netns.build(PREFIX, 2, RATE, SUBNET)
        assert ours_left() == (["mrdt-h1", "mrdt-h2"], ["mrdt-br0", "mrdt-v1", "mrdt-v2"])
        cluster.down(workdir, prefix=PREFIX)
        _assert_gone(workdir, [])
    finally:
        cluster.down(workdir, prefix=PREFIX)


def test_down_never_removes_what_a_doctored_json_names(workdir: Path) -> None:
    _need_namespaces()
    bystander = "mrdtjunk0"  # a veth of the test's own, named unlike anything of a cluster
    try:
        info = cluster.up(1, RATE, workdir, prefix=PREFIX, subnet=SUBNET)
        add = ["ip", "link", "add", bystander, "type", "veth", "peer", "name", "mrdtjunk1"]
        subprocess.run(add, check=True)
        doctored = info.to_json().replace('"mrdt-br0"', f'"{bystander}"')
        (workdir / "cluster.json").write_text(doctored)
        assert cluster.load(workdir).bridge == bystander
        cluster.down(workdir, prefix=PREFIX)
        assert bystander in netns.list_links()
        assert ours_left() == ([], [])  # the prefix scan still found the real bridge
    finally:
        subprocess.run(["ip", "link", "delete", bystander], check=False, capture_output=True)
        cluster.down(workdir, prefix=PREFIX)


def test_down_refuses_to_delete_through_a_leaked_mount(workdir: Path) -> None:
    _need_namespaces()
    try:
        cluster.up(1, RATE, workdir, prefix=PREFIX, subnet=SUBNET)
        target = workdir / "h1" / "srv"
        subprocess.run(["mount", "--bind", str(workdir / "h1" / "tmp"), str(target)], check=True)
        try:
            with pytest.raises(ClusterError) as err:
                cluster.down(workdir, prefix=PREFIX)
            assert str(err.value).startswith(
                f"mounts of the cluster at {workdir} are still present: ["
            )
            assert f" {target} " in str(err.value)
            assert (workdir / "cluster.json").exists()  # nothing deleted through it
        finally:
            subprocess.run(["umount", str(target)], check=True)
        cluster.down(workdir, prefix=PREFIX)
        assert not workdir.exists()
    finally:
        cluster.down(workdir, prefix=PREFIX)


def test_up_replaces_the_cluster_already_there(workdir: Path) -> None:
    _need_namespaces()
    try:
        first = cluster.up(2, RATE, workdir, prefix=PREFIX, subnet=SUBNET)
        old = _everything(first)
        second = cluster.up(3, "10mbit", workdir, prefix=PREFIX, subnet=SUBNET)
        assert [p for p in old if netns.alive(p)] == []
        assert [h.name for h in second.hosts] == ["h1", "h2", "h3"]
        _everything(second)
        assert cluster.load(workdir).rate == "10mbit"
        assert ssh(second, "h3", "hostname").stdout == "h3\n"
    finally:
        cluster.down(workdir, prefix=PREFIX)


def test_up_refuses_a_foreign_workdir(workdir: Path) -> None:
    _need_namespaces()
    (workdir / "precious.txt").write_text("keep me")
    with pytest.raises(ClusterError) as err:
        cluster.up(2, RATE, workdir, prefix=PREFIX, subnet=SUBNET)
    assert str(err.value) == (
        f"workdir {workdir} is not empty and not a cluster of ours; refusing to use it"
    )
    cluster.down(workdir, prefix=PREFIX)
    assert (workdir / "precious.txt").read_text() == "keep me"


def test_cli_up_status_down(workdir: Path) -> None:
    _need_namespaces()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "murder_dev.cluster", *args, "--workdir", str(workdir)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)

    try:
        made = cli("up", "--hosts", "2", "--rate", RATE, "--prefix", PREFIX, "--subnet", "250")
        assert made.returncode == 0, made.stderr
        shown = cli("status").stdout.splitlines()
        assert shown[0] == f"cluster at {workdir}: 2 hosts, 40mbit each way"
        assert shown[1].split() == ["host", "ip", "netns", "sshd", "link", "pids"]
        # Not the pids column: sshd forks briefly for each probe.
        assert shown[2].split()[:5] == ["h1", "198.18.250.11", "mrdt-h1", "up", "up"]
        assert cli("down", "--prefix", PREFIX).returncode == 0
        assert ours_left() == ([], [])
        missing = cli("status")
        assert missing.returncode == 1
        assert missing.stderr == (
            f"cluster status: no cluster at {workdir}: cluster.json is missing\n"
        )
    finally:
        cluster.down(workdir, prefix=PREFIX)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hosts": 0}, "hosts must be an integer from 1 to 200, got 0"),
        ({"hosts": 201}, "hosts must be an integer from 1 to 200, got 201"),
        (
            {"hosts": 2, "rate": "100 mbit"},
            "rate must be a positive number followed by one of bit, kbit, mbit, gbit, tbit, "
            "bps, kbps, mbps, gbps, tbps (e.g. 100mbit), got '100 mbit'",
        ),
        ({"hosts": 2, "rate": "1bit"}, "rate must be between 8kbit and 100gbit, got '1bit'"),
        (
            {"hosts": 2, "subnet": 256},
            "subnet must be an integer from 0 to 255 (198.18.SUBNET.0/24), got 256",
        ),
        (
            {"hosts": 2, "prefix": "toolongprefix"},
            "prefix must be 1-10 characters of [a-z0-9] starting with a letter, "
            "got 'toolongprefix'",
        ),
        (
            {"hosts": 2, "workdir": "/tmp/cluster"},
            "workdir /tmp/cluster lies under /tmp, which every host mounts privately; "
            "choose a workdir elsewhere",
        ),
        (
            {"hosts": 2, "workdir": "/srv/murder"},
            "workdir /srv/murder lies under /srv/murder, which every host mounts privately; "
            "choose a workdir elsewhere",
        ),
        (
            {"hosts": 2, "workdir": "/var/tmp/my cluster"},
            "workdir must be a path of [A-Za-z0-9._/+@=,-] other than /, got '/var/tmp/my cluster'",
        ),
    ],
)
def test_up_rejects_bad_arguments_before_touching_anything(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ClusterError) as err:
        cluster.up(**kwargs)  # type: ignore[arg-type]
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{",
            "cluster.json is not valid JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)",
        ),
        ("[]", "cluster.json must hold an object, got list"),
        ('{"hosts": 3}', "cluster.json: hosts must be a list, got 3"),
        (
            '{"hosts": [{"name": "h1"}]}',
            "cluster.json: hosts entries need string ('name', 'ip', 'netns', 'veth'), "
            "got {'name': 'h1'}",
        ),
    ],
)
def test_from_json_rejects_malformed_files(text: str, message: str) -> None:
    with pytest.raises(ClusterError) as err:
        cluster.ClusterInfo.from_json(text)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("rate", "burst"),
    [("100mbit", "125000"), ("1gbit", "1250000"), ("10mbit", "65536"), ("200mbps", "2000000")],
)
def test_tbf_bucket_holds_10ms_but_at_least_one_gso_segment(rate: str, burst: str) -> None:
    assert netns.tbf_args(rate) == ["rate", rate, "burst", burst, "latency", "20ms"]


@pytest.mark.parametrize(
    ("index", "subnet", "ip"),
    [(1, None, "198.18.0.11"), (200, None, "198.18.0.210"), (2, 250, "198.18.250.12")],
)
def test_host_addresses(index: int, subnet: int | None, ip: str) -> None:
    if subnet is None:
        assert netns.host_ip(index) == ip
        assert (netns.gateway_ip(), netns.cidr()) == ("198.18.0.1", "198.18.0.0/24")
    else:
        assert netns.host_ip(index, subnet) == ip
