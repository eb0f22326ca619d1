"""The sctp plugin's image and rules, as pure logic (no SCTP needed): round trips and bad input.

The rules against real associations: tests/vm/test_sctp_fence.py and the moves in
tests/vm/test_criu_sctp_stock.py, tests/repair/test_criu_sctp.py.
"""

from __future__ import annotations

import json

import pytest

from criu_ext import sctp_carry, sctp_fence
from criu_ext.tasks import _FIELD, EpollWatch
from sctp_repair.sockopts import SocketSetup
from sctp_repair.state import AssocState, Stream


def item(role="association") -> sctp_carry.Carried:
    setup = SocketSetup(family=2, type=1, nonblocking=True, listening=False,
                        local_addrs=[("10.0.0.1", 36412)], options=[(132, 3, b"\1\0\0\0")],
                        buffers={7: 212992}, events=[0x8001])
    assoc = AssocState(local_addr="10.0.0.1", local_port=36412, peer_addr="10.0.0.11",
                       peer_port=40000, my_vtag=7, next_tsn=99, out_streams=[Stream(3, 0)],
                       in_streams=[Stream(5, 0)])
    return sctp_carry.Carried(pid=10, vpid=10, fd=5, cloexec=True, role=role, setup=setup,
                              epoll=[EpollWatch(4, 5, 0x19, 0x500000004, 0)],
                              assoc=assoc if role == "association" else None,
                              peer=("10.0.0.11", 40000))


def test_image_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(sctp_carry, "vpid_of", lambda pid: pid)
    path = tmp_path / "criu-ext-sctp.json"
    sctp_carry.write_image(str(path), 10, [10, 11], [item(), item("listener")])
    vpids, items = sctp_carry.read_image(str(path))
    assert vpids == [10, 11]
    a, lst = items
    assert a.assoc == item().assoc and a.setup == item().setup and a.epoll == item().epoll
    assert (a.fd, a.cloexec, a.peer) == (5, True, ("10.0.0.11", 40000))
    assert lst.role == "listener" and lst.assoc is None


@pytest.mark.parametrize("text, message", [
    ("", "unreadable"),
    ("{\"format\": 1, \"tree_vpids\": [1]", "unreadable"),  # truncated
    ("{\"format\": 7, \"tree_vpids\": [], \"sockets\": []}", "unknown format 7"),
    ("[1, 2]", "unknown format"),
    ("{\"format\": 1, \"tree_vpids\": [1], \"sockets\": [{\"pid\": 1}]}", "corrupt"),
])
def test_bad_images_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "criu-ext-sctp.json"
    path.write_text(text)
    with pytest.raises(sctp_carry.CarryError, match=message) as exc:
        sctp_carry.read_image(str(path))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("change, message", [
    ({"peer": ["10.0.0.11 sctp sport 1 accept; flush ruleset #", 40000]}, "not a plain IP"),
    ({"peer": ["fe80::1%eth0", 40000]}, "not a plain IP"),
    ({"peer": ["10.0.0.11", 70000]}, "not a port number"),
    ({"peer": ["10.0.0.11", "40000"]}, "not a port number"),
    ({"peer": "10.0.0.11:40000"}, "not \\[address, port\\]"),
    ({"role": "teleport"}, "unknown role"),
    ({"assoc": None}, "without its state"),
    ({"role": "restart", "assoc": None, "peer": None}, "restart without a peer"),
])
def test_image_fields_are_checked_before_use(tmp_path, monkeypatch, change, message):
    """The peer ends up in nft rules and connect(): only an address and a port get through."""
    monkeypatch.setattr(sctp_carry, "vpid_of", lambda pid: pid)
    path = tmp_path / "criu-ext-sctp.json"
    sctp_carry.write_image(str(path), 10, [10], [item()])
    data = json.loads(path.read_text())
    data["sockets"][0].update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(sctp_carry.CarryError, match=f"corrupt: ValueError: .*{message}"):
        sctp_carry.read_image(str(path))


def test_a_missing_image_says_so(tmp_path):
    with pytest.raises(sctp_carry.CarryError, match="missing"):
        sctp_carry.read_image(str(tmp_path / "nope.json"))


def test_describe_names_role_addresses_and_place():
    text = item().describe()
    assert text == "association [10.0.0.1]:36412 <-> [10.0.0.11]:40000 (fd 5 of pid 10)"


def test_fence_rules_drain_then_hold():
    drain = sctp_fence._script("drain", [36412, 2905, 36412])
    assert "in sctp dport { 2905, 36412 } sctp chunk init exists drop" in drain
    assert "data" not in drain  # the kernel drops DATA in repair mode, letting SACKs in
    assert "drop" not in drain.split("flush chain")[0]  # the table itself drops nothing
    hold = sctp_fence._script("hold", [36412])
    assert "in sctp dport { 36412 } drop" in hold and "out sctp sport { 36412 } drop" in hold
    assert "chunk" not in hold


def test_fence_restart_stage_drops_only_the_restart_peers_strays():
    text = sctp_fence._restart_script([("10.0.0.11", 40000), ("fd00::11", 40001)])
    assert "out sctp" not in text  # the INIT and COOKIE ECHO go out
    rules = [line for line in text.splitlines() if line.startswith("add rule")]
    assert rules == [
        "add rule inet criu_ext_sctp in ip saddr 10.0.0.11 sctp sport 40000 sctp chunk init-ack "
        "missing sctp chunk cookie-ack missing sctp chunk abort missing drop",
        "add rule inet criu_ext_sctp in ip6 saddr fd00::11 sctp sport 40001 sctp chunk init-ack "
        "missing sctp chunk cookie-ack missing sctp chunk abort missing drop"]


def test_epoll_fdinfo_fields_parse():
    line = "tfd:        5 events:       19 data: 7f0000000005  pos:0 ino:2a1 sdev:8"
    kv = dict(_FIELD.findall(line))
    assert (kv["tfd"], kv["events"], kv["data"], kv["ino"]) == ("5", "19", "7f0000000005", "2a1")


def test_socket_setup_survives_json():
    setup = item().setup
    assert SocketSetup.from_dict(json.loads(json.dumps(setup.to_dict()))) == setup
