"""The user plane staged on a destination namespace and kept equal to the source while
UEs attach and detach (criu_ext.migrate.stage), over migrate's message framing.

Two copies of the lab's segments: the source gateway (lab.gateway, 2,000 contexts,
masquerade) with its eNB and PDN, and a staged namespace with the same links and
addresses on an eNB and PDN of its own. The sender and the staged plane talk over a
socket pair (the framing of criu_ext.migrate.wire; TLS is wire's business). While
the stage follows, 500 UEs attach and 300 detach on the source. Then:

* the staged copy holds exactly the source's contexts, routes and NAT rules, with
  the count check of ``pdp-end`` passing, and the conntrack entries of the UE flows
  pinged through the source, with their NAT binding: those of the first UEs sent
  before the freeze (``flows``), those of the UEs pinged after it with ``finish``
  (conntrack's NEW events);
* it forwards on its own, through those entries: no task in it, only the socket the
  stager holds, and UEs pinged through it (old and newly attached) answer with their
  own downlink TEIDs, a detached UE does not; the source forwards on as before;
* ``remove`` leaves the staged namespace without a gtp device and with port 2152
  free; the source's list is untouched.

What was seen goes to out/stage.json.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import gtp_util
from criu_ext.migrate.stage import IMAGE, StagedPlane, StageSender, pools
from criu_ext.migrate.wire import Channel
from gtp_util.model import PdpTable
from gtp_util.natflows import translated
from gtp_util.netlink import PdpChannel
from lab.enb import Enb
from lab.files import record_json
from lab.gateway import ENB_ADDR, I_TEI_BASE, O_TEI_BASE, UE_BASE
from lab.netns import NetnsSet, sh
from lab.procs import kill_all
from lab.topology import ENB_IP, GW_S1U_IP, PDN_IP, UE_POOL, segment, ue_addr
from procns.netns import in_netns
from scenario.functions import spawn, wait_line

pytestmark = pytest.mark.vm

RESULTS = Path(__file__).resolve().parents[2] / "out" / "stage.json"
BASE, ATTACH, DETACH = 2000, 500, 300


def contexts(path: str) -> set:
    t = gtp_util.take_snapshot(path).device("gtp0").contexts
    return {t[i] for i in range(len(t))}


def receive(rx: Channel, dst: str, workdir: str, out: dict) -> None:
    """The destination's loop: the image, then every change until ``pdp-end``."""
    try:
        rx.recv_file(rx.recv("file"), workdir, 64 << 20)
        plane = out["plane"] = StagedPlane(dst, f"{workdir}/{IMAGE}")
        while True:
            msg = rx.recv("pdp", "nat", "pdp-end")
            if msg["op"] == "pdp-end":
                out["count"] = plane.finish(msg)
                return
            if msg["op"] == "nat":
                plane.install_nat(msg)
                continue
            out["messages"] = out.get("messages", 0) + 1
            plane.apply(msg)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        out["error"] = exc


def ping(enb_ns: str, ues: list[int], through: dict[int, int]) -> dict[int, int | None]:
    """Ping UE i (uplink TEID ``through[i]``) from the eNB in ``enb_ns``; {i: downlink TEID}."""
    e = Enb(NetnsSet.path(enb_ns), ENB_IP, GW_S1U_IP)
    try:
        got = e.ping([(ue_addr(i), through[i]) for i in ues], PDN_IP, timeout=5.0)
    finally:
        e.close()
    return {i: got[ue_addr(i)] for i in ues}


def test_staged_copy_follows_the_source_and_forwards_on_its_own(tmp_path):
    ns = NetnsSet("st")
    procs = []
    try:
        src, dst = ns.add("src"), ns.add("dst")
        enb_a, _ = segment(ns, src, "a")
        enb_b, _ = segment(ns, dst, "b")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=src)
        sh("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", UE_POOL, "-o", "sgi0",
           "-j", "MASQUERADE", ns=src)
        gw = spawn(src, [sys.executable, "-m", "lab.gateway", "--ues", str(BASE)],
                   tmp_path / "gateway.log")
        procs.append(gw)
        wait_line(tmp_path / "gateway.log", "READY", gw, timeout=300)
        src_path, dst_path = NetnsSet.path(src), NetnsSet.path(dst)
        link = gtp_util.take_snapshot(src_path).device("gtp0").ifindex

        a, b = socket.socketpair()
        tx, rx = Channel(a), Channel(b)
        seen: dict = {}
        workdir = tempfile.mkdtemp(dir=tmp_path)
        t0 = time.monotonic()
        sender = StageSender(src_path, tx)
        receiver = threading.Thread(target=receive, args=(rx, dst_path, workdir, seen))
        receiver.start()
        image_bytes = sender.send_base()

        # UEs attach and detach on the source while the stage follows
        new = PdpTable()
        for i in range(BASE, BASE + ATTACH):
            new.append_v1(ENB_ADDR, UE_BASE + i, I_TEI_BASE + i, O_TEI_BASE + i)
        gone = PdpTable()
        for i in range(DETACH):
            gone.append_v1(ENB_ADDR, UE_BASE + i, I_TEI_BASE + i, O_TEI_BASE + i)
        with PdpChannel(src_path) as chan:
            for start in range(0, ATTACH, 100):
                chan.add(link, PdpTable(new[j] for j in range(start, start + 100)))
                sender.pump()
            chan.delete(link, gone)
        # UE flows through the source's masquerade: the conntrack entries of the first
        # (UE 0 detached: none) go before the freeze (flows()), those conntrack confirms
        # after it with finish() (its NEW events)
        ues = [0, DETACH, DETACH + 1, BASE - 1, BASE, BASE + ATTACH - 1]
        up = {i: I_TEI_BASE + i for i in ues}
        early, later = ues[:3], ues[3:]
        before = ping(enb_a, early, {i: up[i] for i in early})
        flows_early = sender.flows()
        before |= ping(enb_a, later, {i: up[i] for i in later})
        t_freeze = time.monotonic()
        count = sender.finish()  # what the frozen window would hold
        final_s = time.monotonic() - t_freeze
        receiver.join(timeout=120)
        sender.close()
        assert "error" not in seen, seen.get("error")
        plane: StagedPlane = seen["plane"]
        assert count == seen["count"] == ATTACH + DETACH

        src_ctx, dst_ctx = contexts(src_path), contexts(dst_path)
        src_snap, dst_snap = gtp_util.take_snapshot(src_path), gtp_util.take_snapshot(dst_path)
        assert len(src_ctx) == BASE + ATTACH - DETACH and dst_ctx == src_ctx
        assert [r.cidr() for r in dst_snap.routes] == [r.cidr() for r in src_snap.routes]
        assert [r.rule for r in dst_snap.nat_rules] == [r.rule for r in src_snap.nat_rules]
        assert dst_snap.device("gtp0").sock1.kind == "kernel"  # only the stager holds it

        # the flows' NAT state: the source's translated entries, bound, in the stage
        key = lambda f: (f.proto, f.ue, f.peer, f.ue_port, f.nat_addr, f.nat_port)  # noqa: E731
        src_flows = {key(f) for f in translated(src_path, pools(src_snap))}
        dst_entries = translated(dst_path, pools(src_snap))
        assert flows_early == 2
        assert len(src_flows) == len(ues) - 1 and {key(f) for f in dst_entries} == src_flows
        assert plane.nat_flows == len(src_flows) and plane.nat_failed == []

        # it forwards on its own, through those entries; the source does too
        via_stage = ping(enb_b, ues, up)
        via_source = ping(enb_a, ues, up)
        want = {i: (None if i < DETACH else O_TEI_BASE + i) for i in ues}

        plane.remove()
        after = gtp_util.take_snapshot(dst_path)
        with in_netns(dst_path):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with probe:
            probe.bind(("0.0.0.0", 2152))  # free again
        record_json(RESULTS, "stage", {
            "contexts": BASE, "attached": ATTACH, "detached": DETACH,
            "image_bytes": image_bytes, "pdp_messages": seen.get("messages", 0),
            "staged_s": round(t_freeze - t0, 3), "final_check_s": round(final_s, 4),
            "nat_flows": len(src_flows), "before": before,
            "via_stage": via_stage, "via_source": via_source})
        assert before == want, before
        assert via_stage == want, via_stage
        assert via_source == want, via_source
        assert after.devices == [] and len(contexts(src_path)) == BASE + ATTACH - DETACH
    finally:
        kill_all(procs)
        ns.cleanup()
