"""A UE's TCP download through the SGi masquerade, its conntrack entry put in the form
CRIU 3.17 restores it (translated tuples, no NAT binding), and gtp_util.natflows.rebind.

The UE is a real stack behind a GTP tunnel (lab.ue_stack: an SGSN-role gtp device in
its own netns), the gateway lab.gateway with its gtp0, the PDN a paced stream
(lab.bulk). Two downloads, one after the other, through the same bearer:

* the first one's entry is replaced by CRIU's form (behind a lock like CRIU's network
  lock: a packet in between would make a fresh entry) and left so: the PDN's next
  segments reach the gateway's own stack and the PDN gets a reset (this is what a
  move did to a download before rebind);
* the second one's entry is replaced the same way, then ``rebind`` gives it its
  binding back and the lock goes: the download carries on and ends with every byte
  intact, no reset.

(A download across real moves, CRIU restoring the entry: tests/vm/test_migrate.py.)
What was seen goes to out/nat-flows.json.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gtp_util.natflows import bound, entry_attrs, flow_of, rebind
from lab.files import record_json
from lab.netns import NetnsSet, sh
from lab.procs import kill_all
from lab.topology import GW_S1U_IP, GW_SGI_IP, PDN_IP, UE_POOL
from lab.ue_stack import attach
from procns.netns import in_netns
from scenario.functions import spawn, wait_line

pytestmark = pytest.mark.vm

RESULTS = Path(__file__).resolve().parents[2] / "out" / "nat-flows.json"
UE, UE_ENB = "10.128.200.1", "10.0.0.3"
GW_TEI, UE_TEI = 7001, 8001  # each end's incoming TEI
POOLS = [ipaddress.ip_network(UE_POOL)]


def entries(gw: str, port: int) -> list:
    from pyroute2.conntrack import Conntrack

    with in_netns(NetnsSet.path(gw)):
        ct = Conntrack()
        try:
            return [e for e in ct.dump_entries()
                    if e.tuple_orig.proto == socket.IPPROTO_TCP and e.tuple_orig.dport == port]
        finally:
            ct.close()


def locked(gw: str, then: Callable[[], Any]) -> Any:
    """``then()`` with every packet into ``gw`` dropped, as CRIU's network lock does while
    it restores a netns (lifted after post-restore, where the plugins ran)."""
    sh("iptables", "-w", "-t", "raw", "-I", "PREROUTING", "-j", "DROP", ns=gw)
    try:
        return then()
    finally:
        sh("iptables", "-w", "-t", "raw", "-D", "PREROUTING", "-j", "DROP", ns=gw)


def as_criu_restores(gw: str, port: int) -> None:
    """Replace the download's entry by what CRIU 3.17's restore makes of it: the same
    tuples (the reply one translated), state and timeout, and no NAT binding. (Behind
    :func:`locked`: a packet in between would make a fresh entry.)"""
    from pyroute2.conntrack import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    [e] = entries(gw, port)
    flow = flow_of(e, POOLS)
    assert flow is not None and bound(e), e
    attrs = entry_attrs(flow)
    del attrs["nat_src"]
    attrs["tuple_reply"] = NFCTAttrTuple(saddr=flow.peer, daddr=flow.nat_addr, proto=flow.proto,
                                         sport=flow.peer_port, dport=flow.nat_port)
    with in_netns(NetnsSet.path(gw)):
        ct = Conntrack()
        try:
            ct.entry("del", tuple_orig=attrs["tuple_orig"])
            ct.entry("add", **attrs)
        finally:
            ct.close()
    [e] = entries(gw, port)
    assert not bound(e) and flow_of(e, POOLS) is not None, e


def progress(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def wait_received(path: Path, more_than: int, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while (seen := progress(path)).get("received", 0) <= more_than:
        assert time.monotonic() < end, f"{path.name}: {seen}"
        time.sleep(0.2)
    return seen


def test_a_download_through_the_masquerade_survives_only_when_rebound(tmp_path):
    ns = NetnsSet("nf")
    procs = []
    try:
        gw, ue, pdn = ns.add("gw"), ns.add("ue"), ns.add("pdn")
        ns.veth(ue, "s1u0", f"{UE_ENB}/24", gw, "s1u0", f"{GW_S1U_IP}/24")
        ns.veth(gw, "sgi0", f"{GW_SGI_IP}/24", pdn, "eth0", f"{PDN_IP}/24")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=gw)
        sh("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", UE_POOL, "-o", "sgi0",
           "-j", "MASQUERADE", ns=gw)
        gateway = spawn(gw, [sys.executable, "-m", "lab.gateway", "--ues", "1"],
                        tmp_path / "gateway.log")
        procs.append(gateway)
        wait_line(tmp_path / "gateway.log", "READY", gateway)
        attach(NetnsSet.path(gw), "gtp0", UE, UE_ENB, GW_TEI, UE_TEI)

        servers, outs = {}, {}
        for case, port in (("left", 5001), ("rebound", 5002)):
            log = tmp_path / f"server-{case}.log"
            servers[case] = spawn(pdn, [sys.executable, "-m", "lab.bulk", "serve", "--port",
                                        str(port), "--rate", "200000", "--out",
                                        str(tmp_path / f"server-{case}.json")], log)
            procs.append(servers[case])
            wait_line(log, "LISTENING", servers[case])
            outs[case] = tmp_path / f"ue-{case}.json"
        reader = spawn(ue, [sys.executable, "-m", "lab.ue_stack", "--ue", UE, "--gateway",
                            GW_S1U_IP, "--pdn", PDN_IP, "--i-tei", str(UE_TEI), "--o-tei",
                            str(GW_TEI), "--stall", "12",
                            "--port", "5001", "--out", str(outs["left"]),
                            "--port", "5002", "--out", str(outs["rebound"])],
                       tmp_path / "ue.log")
        procs.append(reader)

        # 1. the entry as CRIU restores it, left so
        wait_received(outs["left"], 200_000)
        locked(gw, lambda: as_criu_restores(gw, 5001))
        servers["left"].wait(timeout=60)  # its send fails: the gateway reset the flow
        left = json.loads((tmp_path / "server-left.json").read_text())

        # 2. the same, then rebind
        wait_received(outs["rebound"], 200_000, timeout=90)  # after the first one stalled
        def restore_and_rebind():
            as_criu_restores(gw, 5002)
            t = time.monotonic()
            done, failed = rebind(NetnsSet.path(gw), POOLS)
            return done, failed, time.monotonic() - t

        done, failed, rebind_s = locked(gw, restore_and_rebind)
        [e] = entries(gw, 5002)
        assert bound(e), e
        at_rebind = progress(outs["rebound"])["received"]
        wait_received(outs["rebound"], at_rebind + 1_000_000)
        servers["rebound"].send_signal(signal.SIGTERM)
        servers["rebound"].wait(timeout=120)
        reader.wait(timeout=120)
        sent = json.loads((tmp_path / "server-rebound.json").read_text())
        got = json.loads(outs["rebound"].read_text())
        record_json(RESULTS, "download", {
            "left_as_criu_restores": {"server": left, "ue": progress(outs["left"])},
            "rebound": {"server": sent, "ue": got, "rebind_s": round(rebind_s, 4),
                        "rebound": [f.describe() for f in done],
                        "not_rebound": [[f.describe(), why] for f, why in failed]}})

        assert left["error"] and "reset" in left["error"].lower(), left
        assert any(":5002 as" in f.describe() for f in done), (done, failed)
        assert sent["error"] is None and sent["clean_close"], sent
        assert got["error"] is None and got["eof"] and got["intact"], got
        assert got["received"] == sent["sent"] >= 1_200_000
    finally:
        kill_all(procs)
        ns.cleanup()
