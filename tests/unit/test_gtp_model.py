"""Snapshot model: column store, canonical order, JSON and tunnel-list renderings."""

from gtp_util.format import from_json, to_json, tunnel_lines
from gtp_util.model import Device, PdpContext, PdpTable, Snapshot


def test_table_rows_round_trip_through_contexts():
    ctxs = [PdpContext(1, 1, 2, 3, 4), PdpContext(0, 5, 6, tid=7, flow=8)]
    t = PdpTable(ctxs)
    assert list(t) == ctxs and len(t) == 2 and t[1].tid == 7


def test_sorted_is_canonical_whatever_the_input_order():
    a = PdpTable([PdpContext(1, 1, 10 + i, 100 - i, i) for i in range(50)])
    b = PdpTable(reversed(list(a)))
    assert a != b
    assert a.sorted() == b.sorted()
    assert [c.i_tei for c in a.sorted()] == sorted(c.i_tei for c in a)


def test_v0_sorts_by_tid_and_before_v1():
    t = PdpTable([PdpContext(1, 1, 1, 5, 5), PdpContext(0, 1, 2, tid=9), PdpContext(0, 1, 3, tid=2)])
    assert [(c.version, c.tid or c.i_tei) for c in t.sorted()] == [(0, 2), (0, 9), (1, 5)]


def test_snapshot_state_ignores_ifindex_and_dump_metadata():
    t = PdpTable([PdpContext(1, 1, 2, 3, 4)])
    a = Snapshot(devices=[Device('gtp0', 3, contexts=t)], created=1.0, netns='a')
    b = Snapshot(devices=[Device('gtp0', 9, contexts=t)], created=2.0, netns='b')
    assert a.state() == b.state()
    b.devices[0].mtu = 1000
    assert a.state() != b.state()


def test_json_round_trip():
    snap = Snapshot(devices=[Device('gtp0', 3, contexts=PdpTable(
        [PdpContext(1, 0x0A000002, 0x0A800001, 3, 4), PdpContext(0, 1, 2, tid=5, flow=6)]))])
    text = to_json(snap)
    assert '"ms": "10.128.0.1"' in text
    assert from_json(text).to_dict() == snap.to_dict()


def test_tunnel_lines_use_libgtpnl_format():
    snap = Snapshot(devices=[Device('gtp0', 3, contexts=PdpTable(
        [PdpContext(1, 0x0A000002, 0x0A800001, 100, 200),
         PdpContext(0, 0x0A000002, 0x0A800002, tid=5, flow=1)]))])
    assert list(tunnel_lines(snap)) == [
        'gtp0 version 1 tei 100/200 ms_addr 10.128.0.1 sgsn_addr 10.0.0.2',
        'gtp0 version 0 tid 5 ms_addr 10.128.0.2 sgsn_addr 10.0.0.2',
    ]
