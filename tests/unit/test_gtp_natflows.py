"""gtp_util.natflows' pure logic: which conntrack entries are UE flows the masquerade
translated, the ctnetlink attributes that re-create one with its binding, and a flow's
wire form (what a peer must not send is refused). The
entries are stand-ins (FakeEntry) built from pyroute2's own tuple type; the kernel
side (the binding really translating a TCP download across a move) is
tests/vm/test_nat_flows.py's, test_migrate.py's and test_stage.py's."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, nfct_msg

from gtp_util.natflows import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    bound,
    entry_attrs,
    flow_of,
)

POOLS = [ipaddress.ip_network("10.128.0.0/16")]
UE, PDN, SGI = "10.128.1.5", "192.168.50.2", "192.168.50.1"


class FakeEntry:
    """What pyroute2's ConntrackEntry offers, made by hand."""

    def __init__(self, orig, reply, status=0x0E, timeout=431999, tcp_state=None, mark=0):
        self.tuple_orig, self.tuple_reply = orig, reply
        self.status, self.timeout, self.mark = status, timeout, mark
        self.protoinfo = type("P", (), {"state": tcp_state})() if tcp_state is not None else None


def tcp(src, dst, sport, dport):
    return NFCTAttrTuple(saddr=src, daddr=dst, proto=6, sport=sport, dport=dport)


def test_a_masqueraded_tcp_flow_and_its_entry():
    e = FakeEntry(tcp(UE, PDN, 40000, 5001), tcp(PDN, SGI, 5001, 41234), tcp_state=3, mark=7)
    f = flow_of(e, POOLS)
    assert f is not None
    assert (f.ue, f.peer, f.ue_port, f.peer_port, f.nat_addr, f.nat_port) == \
        (UE, PDN, 40000, 5001, SGI, 41234)
    assert f.status == IPS_SEEN_REPLY | IPS_ASSURED  # CONFIRMED is not for ctnetlink to set
    assert f.tcp_state == 3 and f.timeout == 431999 and f.mark == 7

    msg = nfct_msg.create_from(**entry_attrs(f))
    msg["nfgen_family"] = socket.AF_INET
    msg.encode()
    back = nfct_msg(msg.data)
    back.decode()
    reply = back.get_attr("CTA_TUPLE_REPLY")
    # the reply tuple goes in untranslated: the kernel derives the SGi side from the binding
    assert reply.get_attr("CTA_TUPLE_IP").get_attr("CTA_IP_V4_DST") == UE
    assert reply.get_attr("CTA_TUPLE_PROTO").get_attr("CTA_PROTO_DST_PORT") == 40000
    nat = back.get_attr("CTA_NAT_SRC")
    assert nat.get_attr("CTA_NAT_V4_MINIP") == SGI == nat.get_attr("CTA_NAT_V4_MAXIP")
    proto = nat.get_attr("CTA_NAT_PROTO")
    assert proto.get_attr("CTA_PROTONAT_PORT_MIN") == 41234 == proto.get_attr("CTA_PROTONAT_PORT_MAX")
    tcpinfo = back.get_attr("CTA_PROTOINFO").get_attr("CTA_PROTOINFO_TCP")
    assert tcpinfo.get_attr("CTA_PROTOINFO_TCP_STATE") == 3
    assert tcpinfo.get_attr("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL") == (8, 8)  # be liberal
    assert back.get_attr("CTA_MARK") == 7
    assert back.get_attr("CTA_STATUS") == IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED


def test_an_icmp_echo_flow_keeps_its_translated_identifier():
    orig = NFCTAttrTuple(saddr=UE, daddr=PDN, proto=1, icmp_id=9, icmp_type=8, icmp_code=0)
    reply = NFCTAttrTuple(saddr=PDN, daddr=SGI, proto=1, icmp_id=12, icmp_type=0, icmp_code=0)
    f = flow_of(FakeEntry(orig, reply, timeout=0), POOLS)
    assert f is not None and (f.ue_port, f.nat_port, f.timeout) == (9, 12, 1)
    attrs = entry_attrs(f)
    assert (attrs["tuple_reply"].icmp_type, attrs["tuple_reply"].icmp_id) == (0, 9)
    assert "protoinfo" not in attrs


def test_what_is_not_a_translated_ue_flow_is_left_alone():
    untranslated = FakeEntry(tcp(UE, PDN, 40000, 5001), tcp(PDN, UE, 5001, 40000))
    elsewhere = FakeEntry(tcp("10.0.0.7", PDN, 40000, 5001), tcp(PDN, SGI, 5001, 40000))
    dnat = FakeEntry(tcp(UE, PDN, 40000, 5001), tcp("192.168.50.9", SGI, 5001, 40000))
    port_dnat = FakeEntry(tcp(UE, PDN, 40000, 5001), tcp(PDN, SGI, 8080, 40000))
    reply_first = FakeEntry(NFCTAttrTuple(saddr=UE, daddr=PDN, proto=1, icmp_id=9, icmp_type=0,
                                          icmp_code=0),
                            NFCTAttrTuple(saddr=PDN, daddr=SGI, proto=1, icmp_id=9, icmp_type=8,
                                          icmp_code=0))
    sctp = FakeEntry(NFCTAttrTuple(saddr=UE, daddr=PDN, proto=132),
                     NFCTAttrTuple(saddr=PDN, daddr=SGI, proto=132))
    for e in (untranslated, elsewhere, dnat, port_dnat, reply_first, sctp):
        assert flow_of(e, POOLS) is None


def test_bound_is_the_kernels_nat_status():
    assert bound(FakeEntry(None, None, status=IPS_SRC_NAT | 0x0E))
    assert not bound(FakeEntry(None, None, status=0x0E))


def test_a_flow_crosses_the_wire_as_a_row_and_comes_back_equal():
    from gtp_util.natflows import NatFlow, from_row, to_row

    for f in (NatFlow(2, 6, UE, PDN, 40000, 5001, SGI, 41234, 431999, 6, 3, 7),
              NatFlow(2, 1, UE, PDN, 9, 0, SGI, 12, 30, 2, None, 0)):
        assert from_row(to_row(f), POOLS) == f


@pytest.mark.parametrize("change", [
    {0: 3}, {1: 132}, {2: "10.200.0.1"}, {2: "::1"}, {3: "not an address"},  # family, proto, pool
    {4: 70000}, {5: 65536}, {7: -1}, {8: 0}, {9: 1 << 4}, {10: None}, {10: 99}, {11: 1 << 32},
    {4: "40000"}, {10: True},
])
def test_a_row_a_peer_must_not_send_is_refused(change):
    from gtp_util.natflows import NatFlow, from_row, to_row

    row = to_row(NatFlow(2, 6, UE, PDN, 40000, 5001, SGI, 41234, 431999, 6, 3, 7))
    for i, v in change.items():
        row[i] = v
    with pytest.raises(ValueError):
        from_row(row, POOLS)


def _plain(value):
    """A decoded pyroute2 message or attribute as nested dicts (name: value)."""
    if hasattr(value, "get") and value.get("attrs") is not None:
        return {name: _plain(v) for name, v in value["attrs"]}
    return value


@pytest.mark.parametrize("flow", [
    (2, 6, UE, PDN, 40000, 5001, SGI, 41234, 431999, 6, 3, 7),
    (2, 17, UE, PDN, 5353, 53, SGI, 5353, 30, 2, None, 0),
    (2, 1, UE, PDN, 9, 0, SGI, 12, 30, 2, None, 0),
    (10, 58, "fd00::5", "2001:db8::2", 9, 0, "2001:db8::1", 9, 30, 2, None, 0),
])
def test_the_hand_packed_requests_decode_as_pyroute2s(flow):
    """CtBatch packs its requests by hand (pyroute2's encoder is slow in a freeze
    window): pyroute2 decodes them exactly as the same request built its own way."""
    from gtp_util.natflows import NatFlow, _create_attrs, _orig, _tuples, request

    f = NatFlow(*flow)
    for attrs, packed in (({"tuple_orig": _tuples(f)[0]}, _orig(f)),
                          (entry_attrs(f), _create_attrs(f))):
        ref = nfct_msg.create_from(**attrs)
        ref["nfgen_family"] = f.family
        ref.encode()
        want, got = nfct_msg(ref.data), nfct_msg(request(0, 5, 1, f.family, packed))
        want.decode()
        got.decode()
        assert _plain(got) == _plain(want)
        assert got["nfgen_family"] == f.family


@pytest.mark.parametrize("orig, reply, tcp_state", [
    (tcp(UE, PDN, 40000, 5001), tcp(PDN, SGI, 5001, 41234), 3),
    (NFCTAttrTuple(saddr=UE, daddr=PDN, proto=1, icmp_id=9, icmp_type=8, icmp_code=0),
     NFCTAttrTuple(saddr=PDN, daddr=SGI, proto=1, icmp_id=12, icmp_type=0, icmp_code=0), None),
    (NFCTAttrTuple(family=10, saddr="fd00::5", daddr="2001:db8::2", proto=17, sport=5353,
                   dport=53),
     NFCTAttrTuple(family=10, saddr="2001:db8::2", daddr="2001:db8::1", proto=17, sport=53,
                   dport=5353), None),
])
def test_a_dumped_entry_read_by_hand_is_what_pyroute2_reads(orig, reply, tcp_state):
    """CtBatch.dump parses entries by hand (pyroute2's decoder is slow in a freeze
    window): the flow found in an entry is the one found in pyroute2's reading of it,
    attributes the parser does not use (id, use, counters) in the message too."""
    from pyroute2.conntrack import ConntrackEntry

    from gtp_util.natflows import parse_entry

    attrs = {"tuple_orig": orig, "tuple_reply": reply, "status": 0x19E, "timeout": 117,
             "mark": 5, "id": 77, "use": 1}
    if tcp_state is not None:
        flags = {"value": (0, 0)}  # the kernel always sends both (pyroute2 reads them)
        attrs["protoinfo"] = {"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
            ["CTA_PROTOINFO_TCP_STATE", tcp_state], ["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", flags],
            ["CTA_PROTOINFO_TCP_FLAGS_REPLY", flags]]}]]}
    m = nfct_msg.create_from(**attrs)
    m["nfgen_family"] = orig.family
    m.encode()
    ref = nfct_msg(m.data)
    ref.decode()
    theirs = ConntrackEntry(orig.family, ref.get_attr("CTA_TUPLE_ORIG"),
                            ref.get_attr("CTA_TUPLE_REPLY"), ref.get_attr("CTA_STATUS"),
                            ref.get_attr("CTA_TIMEOUT"), ref.get_attr("CTA_PROTOINFO"),
                            ref.get_attr("CTA_MARK"), 77, 1, None)
    ours = parse_entry(m.data, 16, len(m.data))
    pools = POOLS + [ipaddress.ip_network("fd00::/64")]
    assert flow_of(ours, pools) == flow_of(theirs, pools) is not None
    assert (ours.status, ours.timeout, ours.mark) == (0x19E, 117, 5)
    assert bound(ours) and (ours.protoinfo.state if ours.protoinfo else None) == tcp_state
