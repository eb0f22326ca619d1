"""The gtp and netfilter plugins' decisions, with gtp_util's kernel calls replaced by fakes
(the real thing runs in tests/vm/test_criu_gtp.py)."""

from __future__ import annotations

import json
import os
import socket

import pytest

import gtp_util
from criu_ext.plugin import Log, PluginError
from criu_ext.plugins import gtp as gtp_plugin
from criu_ext.plugins.gtp import GtpPlugin, bind_pid_for
from criu_ext.plugins.netfilter import NetfilterPlugin
from criu_ext.session import PhaseFailed, Session
from gtp_util import natflows
from gtp_util.model import Device, NatRule, PdpTable, Route, Snapshot, SocketRef


def snap(pid: int | None = None, n=3) -> Snapshot:
    pid = os.getpid() if pid is None else pid
    t = PdpTable()
    for i in range(n):
        t.append_v1(0x0A000002, 0x0A800001 + i, 1000 + i, 50000 + i)
    ref = SocketRef(kind="task", pid=pid, fd=3, family=socket.AF_INET, addr="0.0.0.0", port=2152)
    return Snapshot(devices=[Device("gtp0", 7, up=True, sock1=ref, contexts=t)],
                    routes=[Route(socket.AF_INET, "10.128.0.0", 16, "gtp0")],
                    nat_rules=[NatRule("iptables-nft", socket.AF_INET, "nat", "POSTROUTING",
                                       "-s 10.128.0.0/16 -o sgi0 -j MASQUERADE")])


class Kernel:
    """Stands in for the netns: what take_snapshot sees, what remove/restore did."""

    def __init__(self, s: Snapshot | None):
        self.live = s
        self.calls = []
        self.fail_restore = None
        self.changed = False  # what the watch opened at pre-dump says at network-lock
        self.contexts_changed = False

    def take_snapshot(self, netns, **kw):
        self.calls.append(("snapshot", netns, kw))
        return self.live if self.live is not None else Snapshot()

    def remove(self, s, netns, **kw):
        self.calls.append(("remove", netns, kw))
        self.live = None

    def watch(self, netns, contexts=False):
        kernel = self

        class W:
            def changed(self):
                return kernel.changed

            def contexts_changed(self):
                return kernel.contexts_changed or not contexts

            def close(self):
                pass
        return W()

    def refresh(self, base, netns, contexts=True):
        self.calls.append(("refresh", netns, {"contexts": contexts}))
        return self.live

    def delete_links(self, netns, ifindexes):
        self.calls.append(("delete_links", netns, {"ifindexes": list(ifindexes)}))
        self.live = None

    def restore(self, s, netns, **kw):
        self.calls.append(("restore", netns, kw))
        if self.fail_restore:
            raise gtp_util.Conflict(self.fail_restore)
        self.live = s

        class R:
            already_present = False
            created_devices = [d.name for d in s.devices]
            contexts = s.n_contexts
        return R()


@pytest.fixture
def kernel(monkeypatch):
    k = Kernel(snap())
    for name in ("take_snapshot", "remove", "restore", "watch", "refresh", "delete_links"):
        monkeypatch.setattr(gtp_util, name, getattr(k, name))
    monkeypatch.setattr(gtp_plugin, "_warm", lambda action: None)
    return k


def session(tmp_path, action, plugins=None):
    s = Session(action, str(tmp_path), plugins or [GtpPlugin()], "rpc", Log(level=0))
    s.init_pid = os.getpid()
    return s


def test_network_lock_saves_then_removes_and_keeps_nat(kernel, tmp_path):
    s = session(tmp_path, "dump")
    s.run("network-lock")
    assert [c[0] for c in kernel.calls] == ["snapshot", "remove"]
    assert kernel.calls[0][2] == {"with_nat": False}  # no iptables runs in the freeze window
    assert kernel.calls[1][2] == {"nat_rules": False}
    saved = gtp_util.load(str(tmp_path / "criu-ext-gtp.img"))
    assert saved.n_contexts == 3 and saved.devices[0].sock1.pid == os.getpid()
    assert s.state["gtp"]["removed"] is True


@pytest.mark.parametrize("contexts_changed", [False, True])
def test_rpc_pre_dump_leaves_the_freeze_only_what_changed(contexts_changed, kernel, tmp_path):
    s = session(tmp_path, "dump")
    s.run("pre-dump")
    assert kernel.calls == [("snapshot", f"/proc/{os.getpid()}/ns/net", {"with_nat": False})]
    kernel.contexts_changed = contexts_changed
    s.run("network-lock")
    assert [c[0] for c in kernel.calls[1:]] == ["refresh", "delete_links"]
    assert kernel.calls[1][2] == {"contexts": contexts_changed}  # re-read only if notified
    assert kernel.calls[2][2] == {"ifindexes": [7]}
    saved = gtp_util.load(str(tmp_path / "criu-ext-gtp.img"))
    assert saved.n_contexts == 3 and saved.devices[0].sock1.pid == os.getpid()
    assert s.state["gtp"]["removed"] is True


def test_a_change_after_pre_dump_means_a_full_read_in_the_freeze(kernel, tmp_path):
    s = session(tmp_path, "dump")
    s.run("pre-dump")
    kernel.changed = True
    s.run("network-lock")
    assert [c[0] for c in kernel.calls] == ["snapshot", "snapshot", "remove"]
    assert kernel.calls[1][2] == {"with_nat": False}


def test_external_netns_snapshot_holds_nat_and_leaves_the_devices(kernel, tmp_path):
    """runc's --external net[INO]:extRootNetNS: CRIU dumps none of the netns, so the
    snapshot carries the masquerade and nothing is removed (nothing to roll back)."""
    s = session(tmp_path, "dump")
    ino = os.stat(f"/proc/{os.getpid()}/ns/net").st_ino
    s.options["external"] = [f"net[{ino}]:extRootNetNS"]
    s.run("pre-dump")
    s.run("network-lock")
    assert kernel.calls == [("snapshot", f"/proc/{os.getpid()}/ns/net", {"with_nat": True})]
    assert gtp_util.load(str(tmp_path / "criu-ext-gtp.img")).nat_rules == snap().nat_rules
    assert not s.state["gtp"].get("removed")
    s.run("network-unlock")  # a failed dump: the devices never left
    assert [c[0] for c in kernel.calls] == ["snapshot"]


def test_another_netns_external_is_not_ours(kernel, tmp_path):
    s = session(tmp_path, "dump")
    s.options["external"] = ["net[1]:other", "veth[eth0]:x@br0"]
    s.run("network-lock")
    assert [c[0] for c in kernel.calls] == ["snapshot", "remove"]


def test_script_mode_reads_everything_at_network_lock(kernel, tmp_path):
    s = Session("dump", str(tmp_path), [GtpPlugin()], "script", Log(level=0))
    s.init_pid = os.getpid()
    s.run("pre-dump")
    s.run("network-lock")
    assert [c[0] for c in kernel.calls] == ["snapshot", "remove"]


def test_no_device_no_image_and_no_rollback(kernel, tmp_path):
    kernel.live = None
    (tmp_path / "criu-ext-gtp.img").write_bytes(b"stale")
    s = session(tmp_path, "dump")
    s.run("network-lock")
    s.run("network-unlock")
    assert not (tmp_path / "criu-ext-gtp.img").exists()
    assert [c[0] for c in kernel.calls] == ["snapshot"]


def test_unlock_at_dump_puts_the_source_back(kernel, tmp_path):
    s = session(tmp_path, "dump")
    s.run("network-lock")
    assert kernel.live is None
    s.run("network-unlock")
    assert kernel.calls[-1][0] == "restore" and kernel.calls[-1][2] == {}  # recorded PIDs
    assert kernel.live is not None and s.state["gtp"]["removed"] is False


def test_rollback_failure_names_the_snapshot(kernel, tmp_path):
    s = session(tmp_path, "dump")
    s.run("network-lock")
    kernel.fail_restore = "device gtp0 exists and differs"
    errs = s.rollback()
    assert len(errs) == 1 and "criu-ext-gtp.img" in errs[0].message and "gtp-restore" in \
        errs[0].message


def test_a_socket_nobody_holds_fails_the_dump_before_anything_is_removed(kernel, tmp_path):
    kernel.live.devices[0].sock1 = SocketRef(kind="unknown")
    s = session(tmp_path, "dump")
    with pytest.raises(PhaseFailed, match="held by no task"):
        s.run("network-lock")
    assert [c[0] for c in kernel.calls] == ["snapshot"]
    s.run("network-unlock")
    assert [c[0] for c in kernel.calls] == ["snapshot"]  # nothing to put back


def test_post_restore_binds_to_the_restored_task(kernel, tmp_path):
    gtp_util.save(snap(), str(tmp_path / "criu-ext-gtp.img"))
    kernel.live = None
    s = session(tmp_path, "restore")
    s.run("pre-restore")
    s.run("post-restore", os.getpid())
    (name, netns, kw) = kernel.calls[-1]
    assert name == "restore" and netns == f"/proc/{os.getpid()}/ns/net"
    assert kw == {"bind_pid": None, "validated": True}  # the holder is alive in that netns


def test_prepare_reads_the_image_before_criu_and_refuses_a_bad_one(kernel, tmp_path):
    path = tmp_path / "criu-ext-gtp.img"
    gtp_util.save(snap(), str(path))
    kernel.live = None
    s = session(tmp_path, "restore")
    s.prepare()
    path.unlink()  # post-restore uses what prepare read
    gtp_util.save(snap(n=1), str(path))
    s.run("post-restore", os.getpid())
    assert kernel.live.n_contexts == 3
    bad = snap()
    bad.devices[0].role = 7
    gtp_util.save(bad, str(path))
    with pytest.raises(PhaseFailed, match="prepare: plugin gtp: .*role 7"):
        session(tmp_path, "restore").prepare()


def test_post_restore_failure_aborts(kernel, tmp_path):
    gtp_util.save(snap(), str(tmp_path / "criu-ext-gtp.img"))
    kernel.fail_restore = "nothing restored: device gtp0 exists and differs: role"
    s = session(tmp_path, "restore")
    with pytest.raises(PhaseFailed, match="cannot re-create the gtp devices.*role"):
        s.run("post-restore", os.getpid())


def test_post_restore_without_image_does_nothing(kernel, tmp_path):
    s = session(tmp_path, "restore")
    s.run("post-restore", os.getpid())
    assert kernel.calls == []


def test_bind_pid_follows_a_renumbered_single_holder():
    assert bind_pid_for(snap(pid=os.getpid()), os.getpid()) is None
    assert bind_pid_for(snap(pid=999999999), os.getpid()) == os.getpid()
    two = snap()
    two.devices[0].sock0 = SocketRef(kind="task", pid=999999998, fd=4, port=3386)
    two.devices[0].sock1.pid = 999999999
    with pytest.raises(PluginError, match="PID namespace"):
        bind_pid_for(two, os.getpid())
    assert bind_pid_for(Snapshot(), os.getpid()) is None


def test_show_describes_the_image(tmp_path):
    gtp_util.save(snap(), str(tmp_path / "criu-ext-gtp.img"))
    shown = GtpPlugin().show(str(tmp_path))
    assert shown["contexts"] == 3 and shown["devices"] == 1
    assert "gtp0 version 1 tei 1000/50000" in shown["text"]
    assert GtpPlugin().show(str(tmp_path / "nope")) is None


def test_netfilter_records_at_pre_dump_and_re_adds_only_missing(monkeypatch, tmp_path):
    from gtp_util import nat

    k = Kernel(snap())
    monkeypatch.setattr(gtp_util, "take_snapshot", k.take_snapshot)
    s = session(tmp_path, "dump", [NetfilterPlugin()])
    s.run("pre-dump")
    assert k.calls[0][2] == {"with_sockets": False, "with_contexts": False}
    shown = NetfilterPlugin().show(str(tmp_path))
    assert shown["pools"] == ["10.128.0.0/16"] and "MASQUERADE" in shown["text"]


    monkeypatch.setattr(natflows, "rebind", lambda netns, pools: ([], []))
    added = []
    monkeypatch.setattr(nat, "add", lambda netns, r: added.append(r))
    monkeypatch.setattr(nat, "read_rules", lambda netns, pools: [])
    r = session(tmp_path, "restore", [NetfilterPlugin()])
    r.run("post-restore", os.getpid())
    assert [a.rule for a in added] == ["-s 10.128.0.0/16 -o sgi0 -j MASQUERADE"]
    added.clear()
    monkeypatch.setattr(nat, "read_rules", lambda netns, pools: snap().nat_rules)
    r.run("post-restore", os.getpid())
    assert added == []  # CRIU brought it back: no second copy


NFT_CHAIN = """table ip nat {
	chain POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "sgi0" ip saddr 10.128.0.0/16 counter packets %d bytes %d masquerade # handle 4
	}
}
"""


def test_nft_view_ignores_counters_and_handles(monkeypatch):
    from criu_ext.plugins import netfilter

    calls = []

    class P:
        def __init__(self, out, rc=0):
            self.stdout, self.returncode = out, rc

    def run(argv, **kw):
        calls.append(argv)
        return P(NFT_CHAIN % (len(calls), 99))

    monkeypatch.setattr(netfilter.subprocess, "run", run)
    lines = netfilter.nft_rules("/proc/1/ns/net", "ip nat", "POSTROUTING")
    assert lines == ['oifname "sgi0" ip saddr 10.128.0.0/16 counter masquerade']
    assert calls[0][:3] == ["nsenter", "--net=/proc/1/ns/net", "--"]
    assert netfilter.chains_match(None, {"ip nat POSTROUTING": lines})
    assert not netfilter.chains_match(None, {"ip nat POSTROUTING": lines * 2})  # one copy only
    monkeypatch.setattr(netfilter.subprocess, "run", lambda argv, **kw: P("", 1))
    assert not netfilter.chains_match(None, {"ip nat POSTROUTING": lines})
    r = snap().nat_rules[0]
    from gtp_util.natrule import nft_chain
    assert nft_chain(r) == ("ip nat", "POSTROUTING")


RULESET = """table ip filter {
	chain CRIU {
		meta mark 0x0000c114 counter packets 0 bytes 0 accept
	}
	set pool {
		type ipv4_addr
		elements = { 10.128.0.1 }
	}
}
table ip nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
	}
	chain POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "sgi0" ip saddr 10.128.0.0/16 counter packets 12 bytes 1008 masquerade
	}
}
"""


def test_rules_found_in_crius_nft_image_need_no_nft_run(tmp_path, monkeypatch):
    from criu_ext.plugins import netfilter

    chains = netfilter.ruleset_chains(RULESET)
    assert chains["ip nat POSTROUTING"] == ['oifname "sgi0" ip saddr 10.128.0.0/16 counter '
                                            'masquerade']
    assert chains["ip nat PREROUTING"] == [] and "ip filter pool" not in chains
    recorded = {"ip nat POSTROUTING": chains["ip nat POSTROUTING"]}
    assert netfilter.criu_image_chains(str(tmp_path)) == {}
    (tmp_path / "nftables-9.img").write_text(RULESET)
    assert netfilter._held(recorded, netfilter.criu_image_chains(str(tmp_path)))
    assert not netfilter._held({"ip nat POSTROUTING": recorded["ip nat POSTROUTING"] * 2},
                               netfilter.criu_image_chains(str(tmp_path)))
    r = snap().nat_rules[0]
    r = type(r)(backend="iptables-nft", family=r.family, table="nat", chain="POSTROUTING",
                rule=r.rule)
    (tmp_path / netfilter.IMAGE).write_text(json.dumps(
        {"pools": ["10.128.0.0/16"], "rules": [vars(r)], "nft_chains": recorded}))
    monkeypatch.setattr(netfilter.subprocess, "run", lambda *a, **k: pytest.fail("ran nft"))
    monkeypatch.setattr(natflows, "rebind", lambda netns, pools: ([], []))
    s = session(tmp_path, "restore", [NetfilterPlugin()])
    s.run("post-restore", os.getpid())
    assert s.timings[-1]["ok"]
