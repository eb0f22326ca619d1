"""Restore planning, validation and diffs (pure functions, no kernel; the same paths
against the kernel: tests/vm/test_gtp_restore.py, conflicts, rollback, dry run, check)."""

from gtp_util.model import Device, NatRule, PdpContext, PdpTable, Route, Snapshot, SocketRef
from gtp_util.restorer import diff, plan, validate

TASK = SocketRef(kind='task', pid=1, fd=3, addr='0.0.0.0', port=2152, family=2)


def dev(name='gtp0', n=3, **kw):
    return Device(name, 0, sock1=TASK, contexts=PdpTable(
        PdpContext(1, 1, 100 + i, 10 + i, 20 + i) for i in range(n)), **kw)


def test_valid_snapshot_has_no_problems():
    assert validate(Snapshot(devices=[dev()], routes=[Route(2, '10.0.0.0', 8, 'gtp0')])) == []


def test_validation_catches_bad_snapshots():
    dup = dev()
    dup.contexts.append(PdpContext(1, 1, 999, 10, 1))
    v0 = dev('gtpv0')
    v0.contexts.append(PdpContext(0, 1, 555, tid=1))
    probs = validate(Snapshot(devices=[
        dup, v0, dev('x' * 16), Device('gtpu', 0, sock1=SocketRef(kind='unknown')),
        dev('gtpr', role=7)], routes=[Route(2, '10.0.0.0', 8, 'nope')]))
    text = '\n'.join(probs)
    for needle in ('share a TEI', 'no GTPv0 socket', 'not a valid interface name',
                   'could not tell which sockets', 'role 7', 'not in the snapshot'):
        assert needle in text


def test_plan_creates_missing_and_reports_present():
    want = Snapshot(devices=[dev(), dev('gtp1')], routes=[Route(2, '10.0.0.0', 8, 'gtp0')],
                    nat_rules=[NatRule('iptables-nft', 2, 'nat', 'POSTROUTING', '-j MASQUERADE')],
                    sysctls={'net.ipv4.ip_forward': '1'})
    live = Snapshot(devices=[dev('gtp1')], sysctls={'net.ipv4.ip_forward': '0'})
    p = plan(want, live, [])
    assert [d.name for d in p.create] == ['gtp0']
    assert len(p.routes) == 1 and len(p.nat_rules) == 1
    assert p.sysctls == {'net.ipv4.ip_forward': ('0', '1')}
    assert any('gtp1' in x for x in p.present) and not p.conflicts
    assert plan(want, want, want.nat_rules).empty


def test_plan_conflict_when_live_device_differs():
    live = Snapshot(devices=[dev(n=2)])
    p = plan(Snapshot(devices=[dev()]), live, [])
    assert p.conflicts and 'missing' in p.conflicts[0] and not p.create


def test_diff_lists_every_difference():
    want = Snapshot(devices=[dev(mtu=1400)], routes=[Route(2, '10.0.0.0', 8, 'gtp0')])
    have = Snapshot(devices=[dev(n=4), dev('extra')])
    d = '\n'.join(diff(want, have))
    assert 'mtu 1452 instead of 1400' in d
    assert '1 unexpected PDP contexts' in d
    assert 'device extra is not in the snapshot' in d
    assert 'route 10.0.0.0/8 dev gtp0 table 254 is missing' in d
    assert diff(want, want) == []


def test_live_state_reads_only_sysctls_when_no_link_has_a_snapshot_name(monkeypatch):
    from gtp_util import restorer

    calls = []
    monkeypatch.setattr(restorer.socket, 'if_nameindex', lambda: [(1, 'lo'), (2, 'sgi0')])
    monkeypatch.setattr(restorer, 'read_sysctls', lambda ns: {'net.ipv4.ip_forward': '1'})
    monkeypatch.setattr(restorer, 'take_snapshot', lambda ns, **kw: calls.append(kw) or 'full')
    live = restorer._live_state(Snapshot(devices=[dev()]), None)
    assert calls == [] and live.devices == [] and live.sysctls == {'net.ipv4.ip_forward': '1'}
    # a link named like a snapshot device (a gtp0, or something squatting the name)
    monkeypatch.setattr(restorer.socket, 'if_nameindex', lambda: [(1, 'lo'), (5, 'gtp0')])
    assert restorer._live_state(Snapshot(devices=[dev()]), None) == 'full'
    assert calls == [{'with_nat': False, 'with_sockets': True}]
