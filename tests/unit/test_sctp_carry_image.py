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
    ({"role": "teleport"}, "role 'teleport' is not one of"),
    ({"assoc": None}, "needs a saved association"),
    ({"role": "restart", "assoc": None, "peer": None}, "role restart needs its peer"),
])
def test_image_fields_are_checked_before_use(tmp_path, monkeypatch, change, message):
    """The peer ends up in nft rules and connect(): only an address and a port get through."""
    monkeypatch.setattr(sctp_carry, "vpid_of", lambda pid: pid)
    path = tmp_path / "criu-ext-sctp.json"
    sctp_carry.write_image(str(path), 10, [10], [item()])
    data = json.loads(path.read_text())
    data["sockets"][0].update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(sctp_carry.CarryError, match=f"corrupt: .*ValueError: .*{message}"):
        sctp_carry.read_image(str(path))


def test_a_missing_image_says_so(tmp_path):
    with pytest.raises(sctp_carry.CarryError, match="missing"):
        sctp_carry.read_image(str(tmp_path / "nope.json"))


def test_describe_names_role_addresses_and_place():
    text = item().describe()
    assert text == "association [10.0.0.1]:36412 <-> [10.0.0.11]:40000 (fd 5 of pid 10)"


def _rules(commands):
    """The rules of a stage, as (chain, [expression ...]) without the final drop."""
    out = []
    for cmd in commands:
        rule = cmd.get("add", {}).get("rule")
        if rule:
            assert rule["table"] == sctp_fence.TABLE and rule["expr"][-1] == {"drop": None}
            out.append((rule["chain"], rule["expr"][:-1]))
    return out


def _match(left, right):
    return {"match": {"op": "==", "left": left, "right": right}}


def _sctp(field):
    return {"payload": {"protocol": "sctp", "field": field}}


def test_fence_rules_drain_then_hold():
    drain = sctp_fence.stage_commands("drain", [36412, 2905, 36412])
    # the kernel drops DATA in repair mode, letting SACKs in: only INITs are dropped
    assert _rules(drain) == [("in", [_match(_sctp("dport"), {"set": [2905, 36412]}),
                                     _match({"sctp chunk": {"name": "init"}}, True)])]
    # one transaction: the table and its chains come first, emptied, then the rules
    assert [next(iter(c)) for c in drain[:5]] == ["add", "add", "add", "flush", "flush"]
    hold = sctp_fence.stage_commands("hold", [36412])
    assert _rules(hold) == [("in", [_match(_sctp("dport"), {"set": [36412]})]),
                            ("out", [_match(_sctp("sport"), {"set": [36412]})])]


def test_fence_restart_stage_drops_only_the_restart_peers_strays():
    rules = _rules(sctp_fence.restart_commands([("fd00::11", 40001), ("10.0.0.11", 40000)]))
    assert [chain for chain, _ in rules] == ["in", "in"]  # the INIT and COOKIE ECHO go out
    missing = [_match({"sctp chunk": {"name": n}}, False)
               for n in ("init-ack", "cookie-ack", "abort")]
    assert rules[0][1] == [_match({"payload": {"protocol": "ip", "field": "saddr"}}, "10.0.0.11"),
                           _match(_sctp("sport"), 40000), *missing]
    assert rules[1][1][0] == _match({"payload": {"protocol": "ip6", "field": "saddr"}},
                                    "fd00::11")


@pytest.mark.parametrize("peer, message", [
    (("10.0.0.1\nadd table inet x", 36412), "not an IP address"),
    (("10.0.0.1 ; flush ruleset", 36412), "not an IP address"),
    (("10.0.0.1", 0), "not an SCTP port"),
    (("10.0.0.1", 65536), "not an SCTP port"),
    (("10.0.0.1", "36412"), "not an SCTP port"),
    (("10.0.0.1", True), "not an SCTP port"),
])
def test_fence_and_seal_refuse_what_is_not_an_address_and_port(peer, message):
    """Peers come from images: text never reaches a rule, and nothing is applied."""
    with pytest.raises(sctp_fence.FenceError, match=message):
        sctp_fence.restart_commands([peer])
    with pytest.raises(sctp_fence.FenceError, match=message):
        sctp_fence.seal_messages([peer])


def test_seal_is_one_blackhole_fib_rule_per_peer():
    msgs = sctp_fence.seal_messages([("10.0.0.11", 40000), ("fd00::11", 40001),
                                     ("10.0.0.11", 40000)])
    assert len(msgs) == 2
    for msg, (family, plen, dst, port) in zip(msgs, [(2, 32, "10.0.0.11", 40000),
                                                     (10, 128, "fd00::11", 40001)]):
        assert (msg["family"], msg["dst_len"], msg["action"]) == (family, plen, 6)
        attrs = dict(msg["attrs"])
        assert attrs == {"FRA_DST": dst, "FRA_PRIORITY": sctp_fence.SEAL_PREF,
                         "FRA_IP_PROTO": 132, "FRA_DPORT_RANGE": f"{port}:{port}"}
        msg.encode()  # pyroute2 can put it on the wire


def test_epoll_fdinfo_fields_parse():
    line = "tfd:        5 events:       19 data: 7f0000000005  pos:0 ino:2a1 sdev:8"
    kv = dict(_FIELD.findall(line))
    assert (kv["tfd"], kv["events"], kv["data"], kv["ino"]) == ("5", "19", "7f0000000005", "2a1")


def test_socket_setup_survives_json():
    setup = item().setup
    assert SocketSetup.from_dict(json.loads(json.dumps(setup.to_dict()))) == setup
