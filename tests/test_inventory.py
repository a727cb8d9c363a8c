"""fabfile.inventory: Ansible INI inventories -> tracker, seeder, peers."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabfile.inventory import Host, load_inventory, parse_inventory
from murder_core.errors import InventoryError

EXAMPLE = Path(__file__).resolve().parent.parent / "hosts.example.ini"


def test_roles_and_connection_variables() -> None:
    inv = parse_inventory(
        """
        # comment
        [tracker]
        t1 ansible_host=10.0.0.1

        [seeder]
        s1 ansible_host=10.0.0.2 ansible_port=2222 ansible_user=deploy

        [peers]
        p1 ansible_host=10.0.0.11 ansible_ssh_private_key_file=~/.ssh/deploy
        p2 murder_ip=10.1.0.12  # trailing comment
        """,
        path="hosts.ini",
    )
    assert inv.tracker == Host("t1", address="10.0.0.1", variables=(("ansible_host", "10.0.0.1"),))
    assert (inv.seeder.address, inv.seeder.port, inv.seeder.user) == ("10.0.0.2", 2222, "deploy")
    assert [p.name for p in inv.peers] == ["p1", "p2"]
    assert inv.peers[0].key_file == "~/.ssh/deploy"
    assert inv.peers[0].known_ip == "10.0.0.11"
    assert inv.peers[1].known_ip == "10.1.0.12"
    assert [h.name for h in inv.all_hosts] == ["t1", "s1", "p1", "p2"]


def test_without_tracker_and_seeder_the_first_peer_is_both() -> None:
    inv = parse_inventory("[peers]\nweb1\nweb2\n")
    assert inv.tracker.name == inv.seeder.name == "web1"
    assert [h.name for h in inv.all_hosts] == ["web1", "web2"]


def test_group_vars_children_and_all_vars() -> None:
    inv = parse_inventory(
        """
        [all:vars]
        ansible_user=ops
        [web]
        w1
        w2 ansible_user=root
        [db]
        d1
        [db:vars]
        ansible_port=2200
        [peers:children]
        web
        db
        """
    )
    assert [(p.name, p.user, p.port) for p in inv.peers] == [
        ("w1", "ops", None),
        ("w2", "root", None),
        ("d1", "ops", 2200),
    ]


def test_quoted_values_are_one_word() -> None:
    inv = parse_inventory('[peers]\np1 ansible_ssh_private_key_file="/keys/my key"\n')
    assert inv.peers[0].key_file == "/keys/my key"


def test_hostname_is_not_an_ip() -> None:
    inv = parse_inventory("[peers]\nweb.example.com\n192.0.2.7\n")
    assert inv.peers[0].known_ip is None
    assert inv.peers[1].known_ip == "192.0.2.7"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p1\n[peers]\n", "hosts.ini:1: host line before any [group] header: 'p1'"),
        ("[peers\np1\n", "hosts.ini:1: unclosed section header '[peers'"),
        (
            "[peers]\np1 ansible_port=abc\n",
            "hosts.ini:2: ansible_port must be an integer in 1..65535, got 'abc'",
        ),
        (
            "[peers]\np1 ansible_port=70000\n",
            "hosts.ini:2: ansible_port must be an integer in 1..65535, got '70000'",
        ),
        ("[peers]\np1 novalue\n", "hosts.ini:2: expected key=value, got 'novalue'"),
        ("[peers]\np1\n\np1\n", "hosts.ini:4: host 'p1' listed twice in [peers] (first on line 2)"),
        (
            "[peers]\nweb[01:10]\n",
            "hosts.ini:2: bad host name 'web[01:10]' (host ranges are not supported)",
        ),
        ("[peers]\np;1\n", "hosts.ini:2: bad host name 'p;1' (host ranges are not supported)"),
        ("[peers]\np1 ansible_host=$(reboot)\n", "hosts.ini:2: bad ansible_host '$(reboot)'"),
        (
            "[peers]\np1 murder_ip=nope\n",
            "hosts.ini:2: murder_ip must be an IP address, got 'nope'",
        ),
        (
            "[peers]\np1 'unclosed\n",
            'hosts.ini:2: cannot split "p1 \'unclosed": No closing quotation',
        ),
        (
            "[tracker]\nt1\nt2\n[peers]\np1\n",
            "hosts.ini:3: [tracker] must list exactly one host, got 2 (t1, t2)",
        ),
        ("[tracker]\nt1\n", "hosts.ini:1: the [peers] group is missing or empty"),
        ("[tracker]\nt1\n[peers]\n", "hosts.ini:3: the [peers] group is missing or empty"),
        ("[peers:nope]\n", "hosts.ini:1: unknown section kind 'nope' (expected vars or children)"),
        ("[pe ers]\n", "hosts.ini:1: bad group name 'pe ers'"),
        (
            "[peers:children]\nghosts\n",
            "hosts.ini:1: [peers:children] names unknown group 'ghosts'",
        ),
        ("[a:children]\nb\n[b:children]\na\n[peers]\np\n", "hosts.ini:3: group cycle: a -> b -> a"),
        ("[peers:vars]\n1bad=x\n", "hosts.ini:2: bad variable name '1bad'"),
    ],
)
def test_malformed_inventory_names_the_line(text: str, message: str) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, path="hosts.ini")
    assert str(info.value) == message
    assert info.value.path == "hosts.ini"


def test_load_inventory_from_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts.ini"
    path.write_text("[peers]\nh2 ansible_host=198.18.0.12\n")
    inv = load_inventory(path)
    assert inv.peers[0].address == "198.18.0.12"
    assert inv.path == str(path)


def test_load_inventory_errors(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"cannot read inventory .*missing\.ini"):
        load_inventory(tmp_path / "missing.ini")
    bad = tmp_path / "bad.ini"
    bad.write_bytes(b"[peers]\nh\xff\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(bad)
    assert str(info.value) == f"{bad}:2: not valid UTF-8"


def test_example_inventory_parses() -> None:
    inv = load_inventory(EXAMPLE)
    assert inv.tracker.name == "h1"
    assert inv.seeder.name == "h1"
    assert len(inv.peers) >= 2
