"""gtp_util against the real kernel gtp driver (stock Debian 6.1, in the test VM)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import gtp_util
from gtp_util import image
from gtp_util.model import Device, PdpContext, PdpTable, Route, Snapshot, SocketRef
from gtp_util.netlink import GtpGenl, PdpChannel
from lab import GtpLab, holder
from lab.gateway import contexts

pytestmark = pytest.mark.vm

BIN = os.path.dirname(sys.executable)


def cli(name: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, name), *args], capture_output=True, text=True,
                          close_fds=True, **kw)


def task_device(name, pid, fd, n=0, addr='0.0.0.0', **kw) -> Device:
    ref = SocketRef(kind='task', pid=pid, fd=fd, family=socket.AF_INET, addr=addr, port=2152)
    return Device(name, 0, sock1=ref, contexts=contexts(n, **kw) if n else PdpTable(), up=True)


@pytest.fixture
def lab():
    with GtpLab(n_ues=4) as lab:
        yield lab


def test_replies_flow_stop_and_flow_again_after_restore(lab, tmp_path):
    want = lab.expected_teids()
    assert lab.ping_ues() == want
    snap = gtp_util.take_snapshot(lab.gw_ns)
    dev = snap.device('gtp0')
    assert dev.sock1.kind == 'task' and dev.sock1.pid == lab.gateway_pid
    assert dev.sock1.fd == lab.gateway_fd and len(dev.contexts) == 4
    assert [n.rule for n in snap.nat_rules] == ['-s 10.128.0.0/16 -o sgi0 -j MASQUERADE']
    img = gtp_util.save(snap, str(tmp_path))
    gtp_util.remove(snap, lab.gw_ns)
    assert gtp_util.take_snapshot(lab.gw_ns).devices == []
    assert set(lab.ping_ues(timeout=1.0).values()) == {None}
    r = cli('gtp-restore', img, '--netns', lab.gw, '--bind-pid', str(lab.gateway_pid))
    assert r.returncode == 0, r.stderr
    assert lab.ping_ues() == want
    assert lab.gateway_check() == 'PASS'
    again = cli('gtp-restore', img, '--netns', lab.gw, '--bind-pid', str(lab.gateway_pid))
    assert again.returncode == 0 and 'already present' in again.stdout
    chk = cli('gtp-restore', img, '--netns', lab.gw, '--check')
    assert chk.returncode == 0, chk.stdout + chk.stderr
    tun = cli('gtp-dump', '--netns', lab.gw, '--tunnels')
    assert tun.stdout.splitlines()[0] == \
        'gtp0 version 1 tei 1000/50000 ms_addr 10.128.0.1 sgsn_addr 10.0.0.2'
    nft_reloaded_masquerade_still_read_and_restored(lab, snap, img)


def nft_reloaded_masquerade_still_read_and_restored(lab, snap, img):
    """CRIU 3.17 restores a netns's nftables from the text of ``nft list ruleset``: the
    rule iptables-nft made comes back in nft's own form, which iptables-nft-save calls
    incompatible. It still masquerades (the PDN host has no route to the UE pool), it is
    read from nft's listing as the same rule, and the snapshot taken before restores
    into that table."""
    from gtp_util.natrule import same_rule

    def in_gw(*argv, **kw):
        return subprocess.run(['ip', 'netns', 'exec', lab.gw, *argv], capture_output=True,
                              text=True, check=True, **kw).stdout

    text = in_gw('nft', 'list', 'ruleset')
    in_gw('nft', 'flush', 'ruleset')
    in_gw('nft', '-f', '-', input=text)
    assert 'incompatible' in in_gw('iptables-nft-save', '-t', 'nat')
    assert lab.ping_ues() == lab.expected_teids()
    (back,) = gtp_util.take_snapshot(lab.gw_ns).nat_rules
    assert (back.backend, back.table, back.chain) == ('nft', 'ip nat', 'POSTROUTING'), back
    assert same_rule(back, snap.nat_rules[0])
    chk = cli('gtp-restore', img, '--netns', lab.gw, '--check')
    assert chk.returncode == 0, chk.stdout + chk.stderr
    gtp_util.remove(snap, lab.gw_ns)  # iptables-nft refuses: deleted through nftables
    assert set(lab.ping_ues(timeout=1.0).values()) == {None}
    assert 'masquerade' not in in_gw('nft', 'list', 'table', 'ip', 'nat')
    r = cli('gtp-restore', img, '--netns', lab.gw, '--bind-pid', str(lab.gateway_pid))
    assert r.returncode == 0, r.stderr
    assert lab.ping_ues() == lab.expected_teids()
    (again,) = gtp_util.take_snapshot(lab.gw_ns).nat_rules
    assert same_rule(again, snap.nat_rules[0])


def test_10k_contexts_dump_wipe_restore_dump_equal(netns):
    ns = f'/run/netns/{netns("g10k")}'
    p, (fd,) = holder.start(ns, '0.0.0.0:2152')
    try:
        snap0 = Snapshot(devices=[task_device('gtp0', p.pid, fd, 10000)],
                         routes=[Route(socket.AF_INET, '10.128.0.0', 16, 'gtp0')])
        gtp_util.restore(snap0, ns)
        first = gtp_util.take_snapshot(ns)
        assert first.n_contexts == 10000
        # the fast dump decodes exactly what pyroute2's decoder sees
        from procns.netns import in_netns
        with in_netns(ns):
            g = GtpGenl()
        slow = sorted(ctx.sort_key() for _, ctx in g.get_pdps())
        g.close()
        assert slow == sorted(c.sort_key() for c in first.devices[0].contexts)
        data = gtp_util.dumps(first)
        gtp_util.remove(first, ns)
        assert gtp_util.take_snapshot(ns).devices == []
        res = gtp_util.restore(gtp_util.loads(data), ns)
        assert res.contexts == 10000
        second = gtp_util.take_snapshot(ns)
        assert second.state() == first.state()
        assert gtp_util.check(first, ns) == []
    finally:
        p.kill()


def test_kernel_socket_device_with_v0_and_v1_contexts(netns):
    ns = f'/run/netns/{netns("gk")}'
    tab = PdpTable([PdpContext(0, 0x0A000002, 0x0AA00001, tid=0x1122334455667788, flow=9),
                    PdpContext(0, 0x0A000002, 0x0AA00002, tid=7, flow=65535),
                    PdpContext(1, 0x0A000002, 0x0AA00003, i_tei=5, o_tei=6)])
    dev = Device('gtpk', 0, role=1, hashsize=4096, restart_count=3, mtu=1400, up=True,
                 sock0=SocketRef(kind='kernel'), sock1=SocketRef(kind='kernel'), contexts=tab)
    gtp_util.restore(Snapshot(devices=[dev]), ns)
    snap = gtp_util.take_snapshot(ns)
    d = snap.device('gtpk')
    assert (d.sock0.kind, d.sock1.kind) == ('kernel', 'kernel')
    assert (d.role, d.hashsize, d.restart_count, d.mtu) == (1, 4096, 3, 1400)
    assert d.contexts.sorted() == tab.sorted()  # the dump keeps the kernel's order
    gtp_util.remove(snap, ns)
    gtp_util.restore(snap, ns)
    assert gtp_util.take_snapshot(ns).state() == snap.state()


def test_watch_sees_pdp_contexts_come_and_go_and_nothing_else(netns):
    """The gtp family's multicast group (what lets the CRIU plugin skip re-reading
    contexts in the freeze window): an added or deleted context is seen, in that
    netns only; a quiet netns stays quiet."""
    ns = f'/run/netns/{netns("gw")}'
    other = f'/run/netns/{netns("gw2")}'
    ctx = lambda i: PdpTable([PdpContext(1, 0x0A000002, 0x0AA00000 + i, i_tei=i, o_tei=i)])  # noqa: E731
    for where in (ns, other):
        gtp_util.restore(Snapshot(devices=[Device('gtpw', 0, sock1=SocketRef(kind='kernel'),
                                                  contexts=ctx(1), up=True)]), where)
    idx = gtp_util.take_snapshot(ns).device('gtpw').ifindex
    idx2 = gtp_util.take_snapshot(other).device('gtpw').ifindex
    w = gtp_util.watch(ns, contexts=True)
    try:
        assert w.contexts_watched
        assert not w.contexts_changed() and not w.changed()
        with PdpChannel(other) as chan:
            chan.add(idx2, ctx(2))
        assert not w.contexts_changed()  # another netns's contexts
        with PdpChannel(ns) as chan:
            chan.add(idx, ctx(3))
        assert w.contexts_changed()
        assert not w.contexts_changed()  # read: quiet again
        with PdpChannel(ns) as chan:
            chan.delete(idx, ctx(1))
        assert w.contexts_changed()
        assert not w.changed()  # no link, address or route moved
    finally:
        w.close()
    snap = gtp_util.take_snapshot(ns)
    assert gtp_util.refresh(snap, ns, contexts=False).device('gtpw').contexts.sorted() == \
        ctx(3).sorted()


def test_follower_keeps_a_copy_equal_through_a_burst_and_churn(netns):
    """#14's replicated tunnel list: a follower joins the gtp group of the source, the
    list is copied, then 10,000 UEs attach in a burst while 300 of the copied ones
    detach and 100 of those come back; replaying what the follower read leaves the
    copy equal to the source, and a second read says nothing changed since. A change
    on a device with no copy is refused before anything is applied; a follower whose
    buffer overflows says so (Lost) instead of missing changes."""
    import time

    from gtp_util.errors import GtpError
    from gtp_util.follow import Follower, Lost, replay
    from lab.files import record_json

    src = f'/run/netns/{netns("fsrc")}'
    dst = f'/run/netns/{netns("fdst")}'
    kernel = SocketRef(kind='kernel')
    for where, n in ((src, 1000), (dst, 0)):
        gtp_util.restore(Snapshot(devices=[Device('gtpf', 0, sock1=kernel, up=True,
                                                  contexts=contexts(n))]), where)
    s_idx = gtp_util.take_snapshot(src).device('gtpf').ifindex
    d_idx = gtp_util.take_snapshot(dst).device('gtpf').ifindex
    with Follower(src) as f, PdpChannel(src) as s_chan, PdpChannel(dst) as d_chan:
        copied = gtp_util.take_snapshot(src).device('gtpf').contexts  # after joining
        d_chan.add(d_idx, copied)
        burst = contexts(10000, ue_base=0x0A800000 + 2000, i_tei_base=20000,
                         o_tei_base=90000)
        gone = PdpTable([copied[i] for i in range(300)])
        back = PdpTable([copied[i] for i in range(100)])
        s_chan.add(s_idx, burst)
        s_chan.delete(s_idx, gone)
        s_chan.add(s_idx, back)
        t0 = time.monotonic()
        changes = f.read()
        assert len(changes) == 10400 and f.count == 10400
        assert replay(d_chan, changes, {s_idx: d_idx}) == 10400
        lag = time.monotonic() - t0
        assert len(f.read()) == 0  # nothing changed since
        with pytest.raises(GtpError, match='no copy'):
            replay(d_chan, changes.slice(0, 1), {})
    want = gtp_util.take_snapshot(src).device('gtpf').contexts.sorted()
    assert len(want) == 1000 + 10000 - 200
    assert gtp_util.take_snapshot(dst).device('gtpf').contexts.sorted() == want
    with Follower(src, rcvbuf=4096) as small, PdpChannel(src) as s_chan:
        s_chan.delete(s_idx, burst)
        with pytest.raises(Lost, match='copy the list again'):
            small.read()
    record_json(Path(__file__).resolve().parents[2] / 'out' / 'gtp-follow.json', 'burst-10000',
                {'changes': 10400, 'read_and_replay_s': round(lag, 3)})
    print(f'10,400 changes read and replayed in {lag:.3f} s')


def test_several_devices_in_one_netns(netns):
    name = netns("gm")
    ns = f'/run/netns/{name}'
    subprocess.run(['ip', '-n', name, 'addr', 'add', '10.0.1.1/32', 'dev', 'lo'], check=True)
    subprocess.run(['ip', '-n', name, 'addr', 'add', '10.0.2.1/32', 'dev', 'lo'], check=True)
    p, (fa, fb) = holder.start(ns, '10.0.1.1:2152', '10.0.2.1:2152')
    try:
        a = task_device('gtpa', p.pid, fa, 50, addr='10.0.1.1')
        b = task_device('gtpb', p.pid, fb, 70, addr='10.0.2.1', ue_base=0x0A900001,
                        i_tei_base=9000)
        routes = [Route(socket.AF_INET, '10.128.0.0', 16, 'gtpa'),
                  Route(socket.AF_INET, '10.144.0.0', 16, 'gtpb', table=100)]
        gtp_util.restore(Snapshot(devices=[a, b], routes=routes), ns)
        snap = gtp_util.take_snapshot(ns)
        got = {d.name: (d.sock1.addr, d.sock1.fd, len(d.contexts)) for d in snap.devices}
        assert got == {'gtpa': ('10.0.1.1', fa, 50), 'gtpb': ('10.0.2.1', fb, 70)}
        assert {(r.dev, r.table) for r in snap.routes} == {('gtpa', 254), ('gtpb', 100)}
        gtp_util.remove(snap, ns)
        gtp_util.restore(snap, ns, bind_pid=p.pid)
        assert gtp_util.take_snapshot(ns).state() == snap.state()
    finally:
        p.kill()


@pytest.fixture
def small(netns, tmp_path):
    name = netns("gb")
    ns = f'/run/netns/{name}'
    p, (fd,) = holder.start(ns, '0.0.0.0:2152')
    snap = Snapshot(devices=[task_device('gtp0', p.pid, fd, 20)],
                    routes=[Route(socket.AF_INET, '10.128.0.0', 16, 'gtp0')])
    img = str(tmp_path / 'gtp.img')
    image.save(snap, img)
    yield name, ns, p, img, snap
    p.kill()


def test_bad_inputs_exit_codes_and_nothing_applied(small, tmp_path):
    name, ns, p, img, snap = small
    data = open(img, 'rb').read()
    cases = {
        'truncated': data[:len(data) // 2],
        'corrupt': data[:40] + bytes([data[40] ^ 0xFF]) + data[41:],
        'foreign': b'hello, this is not an image at all\n',
        'empty': b'',
        'magic': b'\0\0\0\0' + data[4:],
        'type': data[:4] + b'\x01\x02\x03\x04' + data[8:],
    }
    for what, blob in cases.items():
        f = tmp_path / what
        f.write_bytes(blob)
        r = cli('gtp-restore', str(f), '--netns', name)
        assert r.returncode == 3, (what, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (what, r.stderr)
    bad = gtp_util.dumps(snap)
    from gtp_util.proto import gtp_image_pb2 as pb
    head = pb.gtp_head_entry()
    size = int.from_bytes(bad[8:12], 'little')
    head.ParseFromString(bad[12:12 + size])
    head.version = 99
    hb = head.SerializeToString()
    (tmp_path / 'version').write_bytes(image.reframe(bad, hb))
    r = cli('gtp-restore', str(tmp_path / 'version'), '--netns', name)
    assert r.returncode == 3 and 'version 99' in r.stderr, r.stderr
    assert cli('gtp-restore', img, '--netns', 'no-such-ns').returncode == 4
    assert cli('gtp-restore', img, '--pid', '999999').returncode == 4
    assert cli('gtp-dump', '--pid', '999999').returncode == 4
    assert cli('gtp-restore', img, '--netns', name, '--bind-pid', '999999').returncode == 4
    public = f'/tmp/gtp-nobody-{os.getpid()}.img'
    with open(public, 'wb') as f:
        f.write(data)
    os.chmod(public, 0o644)
    nobody = subprocess.run(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups',
                             os.path.join(BIN, 'gtp-restore'), public, '--netns', name],
                            capture_output=True, text=True, close_fds=True)
    os.unlink(public)
    assert nobody.returncode == 5, nobody.stderr
    # nothing of all that was applied
    assert gtp_util.take_snapshot(ns).devices == []


def test_restore_conflict_rollback_dry_run_and_check(small):
    name, ns, p, img, snap = small
    dry = cli('gtp-restore', img, '--netns', name, '--dry-run')
    assert dry.returncode == 0 and 'create device gtp0' in dry.stdout
    assert gtp_util.take_snapshot(ns).devices == []
    assert cli('gtp-restore', img, '--netns', name, '--check').returncode == 1
    # a failing second device: the first one is rolled back
    broken = Snapshot(devices=[snap.devices[0],
                               Device('gtpz', 0, mtu=1 << 20, sock0=SocketRef(kind='kernel'),
                                      sock1=SocketRef(kind='kernel'))],
                      routes=snap.routes)
    with pytest.raises(gtp_util.RestoreFailed, match='gtpz'):
        gtp_util.restore(broken, ns)
    assert gtp_util.take_snapshot(ns).devices == []
    # a live device that differs: conflict, nothing changed
    assert cli('gtp-restore', img, '--netns', name).returncode == 0
    with PdpChannel(ns) as ch:
        live = gtp_util.take_snapshot(ns)
        ch.delete(live.devices[0].ifindex, live.devices[0].contexts.slice(0, 1))
    r = cli('gtp-restore', img, '--netns', name)
    assert r.returncode == 7 and 'gtp0' in r.stderr
    chk = cli('gtp-restore', img, '--netns', name, '--check')
    assert chk.returncode == 1 and '1 PDP contexts missing' in chk.stdout
    assert len(gtp_util.take_snapshot(ns).devices[0].contexts) == 19
    j = cli('gtp-dump', '--netns', name, '--json')
    assert j.returncode == 0, j.stderr
    # The one deleted is the first in the kernel's hash order, which is seeded per boot.
    teis = {c["i_tei"] for c in json.loads(j.stdout)["devices"][0]["contexts"]}
    assert len(teis) == 19 and teis < set(range(1000, 1020))


def test_nat_rules_go_through_typed_fields_only(netns):
    """nft rules through libnftables' JSON inside the namespace, iptables through the
    fixed masquerade form; crafted rules are refused and add nothing anywhere."""
    from gtp_util import nat
    from gtp_util.errors import GtpError
    from gtp_util.model import NatRule
    name = netns('nat')
    ns = f'/run/netns/{name}'
    host_before = subprocess.run(['nft', 'list', 'ruleset'], capture_output=True,
                                 text=True).stdout
    good = NatRule('nft', socket.AF_INET, 'inet sgw', 'post',
                   'ip saddr 10.128.0.0/16 oifname "sgi0" masquerade',
                   'type nat hook postrouting priority srcnat; policy accept;')
    nat.add(ns, good)
    listed = subprocess.run(['ip', 'netns', 'exec', name, 'nft', 'list', 'chain', 'inet', 'sgw',
                             'post'], capture_output=True, text=True, check=True).stdout
    assert 'ip saddr 10.128.0.0/16 oifname "sgi0" masquerade' in listed, listed
    assert 'hook postrouting priority srcnat' in listed, listed
    assert nat.present(ns, good)
    pools = [ipaddress.ip_network('10.128.0.0/16')]
    assert [r.rule for r in nat.read_rules(ns, pools) if r.backend == 'nft'] == [good.rule]
    nat.delete(ns, good)
    assert not nat.present(ns, good)
    ipt = NatRule('iptables-nft', socket.AF_INET, 'nat', 'POSTROUTING',
                  '-s 10.128.0.0/16 -o sgi0 -j MASQUERADE')
    nat.add(ns, ipt)
    assert nat.present(ns, ipt)
    assert [r.rule for r in nat.read_rules(ns, pools)
            if r.backend == 'iptables-nft'] == [ipt.rule]
    nat.delete(ns, ipt)
    assert not nat.present(ns, ipt)
    hostile = [
        NatRule('nft', socket.AF_INET, 'inet sgw', 'post',
                'ip saddr 10.128.0.0/16 masquerade; add table ip evil'),
        NatRule('nft', socket.AF_INET, 'inet sgw', 'post }; table ip evil { chain c {',
                'masquerade'),
        NatRule('nft', socket.AF_INET, 'inet sgw', 'post', 'masquerade',
                'type nat hook postrouting priority srcnat; }; table ip evil {'),
        NatRule('iptables-nft', socket.AF_INET, 'filter', 'INPUT',
                '-p tcp --dport 22 -j ACCEPT'),
        NatRule('iptables-nft', socket.AF_INET, 'nat', 'POSTROUTING',
                '-s 10.128.0.0/16 -j MASQUERADE -A INPUT -j ACCEPT'),
    ]
    for rule in hostile:
        with pytest.raises(GtpError, match='NAT rule refused'):
            nat.add(ns, rule)
    listing = subprocess.run(['ip', 'netns', 'exec', name, 'nft', 'list', 'ruleset'],
                             capture_output=True, text=True, check=True).stdout
    assert 'evil' not in listing and 'dport 22' not in listing, listing
    assert subprocess.run(['nft', 'list', 'ruleset'], capture_output=True,
                          text=True).stdout == host_before  # the VM's own netns untouched

