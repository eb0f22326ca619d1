"""The switch of ``criu-ext migrate --stage`` against a real bridge (no CRIU): the
source's ports disabled by their state alone (switch.PortsOff), made fresh ports again
(switch.restore), and the announcement a destination sends from its namespace (a
gratuitous ARP per IPv4 address, an unsolicited neighbor advertisement per IPv6
address), read off the wire by a peer."""

from __future__ import annotations

import json
import socket
import time

import pytest

from criu_ext.migrate import switch
from criu_ext.plugins.announce import announce
from lab.capture import Capture
from lab.netns import NetnsSet, mac, sh
from procns.netns import in_netns

pytestmark = pytest.mark.vm


@pytest.fixture
def fabric():
    ns = NetnsSet("sw")
    try:
        host, _ = ns.hosts()
        fn, peer = ns.add("fn"), ns.add("peer")
        ns.leg(fn, "eth0", "10.9.0.1/24", host, "fn-eth0")
        ns.leg(peer, "eth0", "10.9.0.2/24", host, "peer-eth0")
        sh("ip", "-n", fn, "addr", "add", "2001:db8:9::1/64", "dev", "eth0", "nodad")
        yield ns, host, fn, peer
    finally:
        ns.cleanup()


def _pings(peer: str) -> bool:
    return sh("ping", "-c", "1", "-W", "1", "10.9.0.1", ns=peer, check=False).returncode == 0


def test_ports_off_stop_frames_at_once_and_restore_makes_them_forward_again(fabric):
    ns, host, fn, peer = fabric
    assert _pings(peer)
    with in_netns(NetnsSet.path(host)):
        with switch.PortsOff(["fn-eth0"]) as off:
            t0 = time.monotonic()
            off.run()
            took = time.monotonic() - t0
        # still on the bridge, only its state changed
        assert switch.masters(["fn-eth0"]) == {"fn-eth0": "br0"}
    state = sh("bridge", "-j", "link", "show", "dev", "fn-eth0", ns=host).stdout
    assert '"state":"disabled"' in state.replace(" ", ""), state
    assert not _pings(peer)
    with in_netns(NetnsSet.path(host)):
        switch.restore({"fn-eth0": "br0"})
    assert _pings(peer)
    print(f"ports off in {took * 1000:.1f} ms")
    with in_netns(NetnsSet.path(host)), pytest.raises(switch.SwitchError, match="no such link"):
        switch.PortsOff(["no-such-link"])


def test_announce_sends_a_garp_per_ipv4_and_a_neighbor_advertisement_per_ipv6_address(fabric):
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr
    from scapy.layers.l2 import ARP, Ether

    ns, host, fn, peer = fabric
    with in_netns(NetnsSet.path(peer)):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    cap.bind(("eth0", 0))
    cap.settimeout(0.5)
    try:
        sent = announce(NetnsSet.path(fn))
        frames = []
        end = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                frames.append(Ether(cap.recv(2048)))
            except TimeoutError:
                break
    finally:
        cap.close()
    fn_mac = mac(fn, "eth0")
    garps = {p[ARP].psrc for p in frames if ARP in p and p[ARP].psrc == p[ARP].pdst
             and p.src == fn_mac}
    nas = {p[ICMPv6ND_NA].tgt for p in frames if ICMPv6ND_NA in p and p[ICMPv6ND_NA].O
           and p[ICMPv6NDOptDstLLAddr].lladdr == fn_mac}
    assert ("eth0", "10.9.0.1") in sent and ("eth0", "2001:db8:9::1") in sent, sent
    assert "10.9.0.1" in garps, frames
    assert "2001:db8:9::1" in nas, frames


def test_a_port_in_standby_gets_nothing_of_the_fabric_until_ports_on(fabric):
    """The destination's half: a twin of the function (same MAC and address) waits on
    the bridge in standby, getting none of the peer's frames while the function
    answers (broadcast included); with the function's port off and the twin's on (and
    announced), the twin answers. (Frames the host itself floods through the bridge
    device, its own IPv6 neighbor discovery for one, still reach a port in standby:
    the bridge's flood flags do not apply to them, and the locked port drops what
    the twin sends back.)"""
    ns, host, fn, peer = fabric
    fn_mac, peer_mac = mac(fn, "eth0"), mac(peer, "eth0")
    twin = ns.add("twin")
    sh("ip", "-n", host, "link", "add", "twin-eth0", "type", "veth", "peer", "name", "eth0",
       "address", fn_mac, "netns", twin)
    sh("ip", "-n", twin, "addr", "add", "10.9.0.1/24", "dev", "eth0")
    sh("ip", "-n", twin, "link", "set", "eth0", "up")
    with in_netns(NetnsSet.path(host)):
        switch.standby({"twin-eth0": "br0"})
        assert switch.masters(["twin-eth0"]) == {"twin-eth0": "br0"}
    link = json.loads(sh("bridge", "-j", "-d", "link", "show", "dev", "twin-eth0",
                         ns=host).stdout)[0]
    assert link["state"] == "forwarding" and link["locked"] and not link["learning"] \
        and not link["flood"] and not link["mcast_flood"], link
    sh("ip", "-n", peer, "neigh", "flush", "all")  # its ARP request is broadcast
    cap = Capture(NetnsSet.path(twin), "eth0")
    try:
        assert _pings(peer)  # the function answers
        assert peer_mac not in cap.sources()  # the twin got nothing of the peer's
    finally:
        cap.close()
    with in_netns(NetnsSet.path(host)):
        with switch.PortsOff(["fn-eth0"]) as off:
            off.run()
        assert not _pings(peer)  # nobody: the function's port is off, the twin in standby
        with switch.PortsOn(["twin-eth0"]) as on:
            t0 = time.monotonic()
            on.run()
            took = time.monotonic() - t0
    announce(NetnsSet.path(twin))
    cap = Capture(NetnsSet.path(twin), "eth0")
    try:
        assert _pings(peer)
        assert peer_mac in cap.sources()  # the twin it is that answers
    finally:
        cap.close()
    link = json.loads(sh("bridge", "-j", "-d", "link", "show", "dev", "twin-eth0",
                         ns=host).stdout)[0]
    assert not link["locked"] and link["learning"] and link["flood"], link
    with in_netns(NetnsSet.path(host)):
        switch.detach(["twin-eth0"])
        assert switch.masters(["twin-eth0"]) == {"twin-eth0": None}
    print(f"ports on in {took * 1000:.1f} ms")
