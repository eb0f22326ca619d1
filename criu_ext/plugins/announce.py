"""``announce``: a restored namespace tells the switches where its addresses live now.

CRIU restores a veth with its MAC address, but every switch between the peers
and the new host still maps that MAC to the port of the old one, and peers with
a warm ARP cache never broadcast: their frames go to the old host until the
switch's entry ages out (300 s by default). A VM hypervisor announces a migrated
guest for the same reason. At post-restore, before the tasks run again, this
plugin sends one gratuitous ARP per IPv4 address and one unsolicited Neighbor
Advertisement (RFC 4861 7.2.6: to all nodes, Override set) per IPv6 address of
each Ethernet link of the restored network namespace. Raw frames are not filtered
by CRIU's network lock, and an address still in duplicate address detection can
be announced: the frame is built whole here, not sent through the IPv6 stack.
"""

from __future__ import annotations

import socket
import struct
import threading

from criu_ext.plugin import Plugin
from procns.netns import in_netns

ARPHRD_ETHER = 1
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
IFF_UP = 0x1
BROADCAST = b"\xff" * 6
ALL_NODES = socket.inet_pton(socket.AF_INET6, "ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
ND_NEIGHBOR_ADVERT, NA_OVERRIDE, ND_OPT_TARGET_LLADDR = 136, 0x20000000, 2


def garp_frame(mac: bytes, ip: str) -> bytes:
    """An Ethernet broadcast ARP request whose sender and target are both ``ip`` (RFC 5227)."""
    addr = socket.inet_aton(ip)
    arp = struct.pack("!HHBBH6s4s6s4s", ARPHRD_ETHER, 0x0800, 6, 4, 1, mac, addr,
                      b"\x00" * 6, addr)
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def na_frame(mac: bytes, ip: str) -> bytes:
    """An unsolicited Neighbor Advertisement for ``ip`` from ``mac``: to all nodes,
    Override set, Solicited and Router clear, the target's link-layer address as its
    option; hop limit 255, as receivers require of neighbor discovery."""
    src = socket.inet_pton(socket.AF_INET6, ip)
    body = struct.pack("!I16sBB6s", NA_OVERRIDE, src, ND_OPT_TARGET_LLADDR, 1, mac)
    pseudo = src + ALL_NODES + struct.pack("!I3xB", 4 + len(body), socket.IPPROTO_ICMPV6)
    head = struct.pack("!BBH", ND_NEIGHBOR_ADVERT, 0, 0)
    icmp = struct.pack("!BBH", ND_NEIGHBOR_ADVERT, 0, _checksum(pseudo + head + body)) + body
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), socket.IPPROTO_ICMPV6, 255, src,
                      ALL_NODES)
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + icmp


def frame(mac: bytes, ip: str) -> tuple[bytes, int]:
    """The announcement of ``ip`` (either family) and its ethertype."""
    if ":" in ip:
        return na_frame(mac, ip), ETH_P_IPV6
    return garp_frame(mac, ip), ETH_P_ARP


def announce(netns_path: str | None, close_later: bool = False) -> list[tuple[str, str]]:
    """Send the gratuitous ARPs and unsolicited neighbor advertisements in
    ``netns_path``; returns (link, address) pairs announced.

    Closing a packet socket waits for an RCU grace period (synchronize_net), tens
    of milliseconds under emulation: with ``close_later`` a thread of its own
    closes it and the caller returns at once.
    """
    from gtp_util.rtnl import Rtnl

    with in_netns(netns_path):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sent = []
    try:
        with Rtnl(netns_path) as rt:
            for ifname, mac, ip in _addresses(rt):
                data, proto = frame(mac, ip)
                sock.sendto(data, (ifname, proto))
                sent.append((ifname, ip))
    finally:
        if close_later:
            threading.Thread(target=sock.close, name="announce-close", daemon=True).start()
        else:
            sock.close()
    return sent


def _addresses(rt) -> list[tuple[str, bytes, str]]:
    """(link, MAC, address) of every IPv4 and IPv6 address of every Ethernet link that is
    up."""
    from pyroute2.netlink.rtnl import RTM_GETADDR, RTM_GETLINK
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    links, out = {}, []
    for link in rt.dump(RTM_GETLINK, ifinfmsg):
        mac = link.get_attr("IFLA_ADDRESS")
        if link["ifi_type"] == ARPHRD_ETHER and link["flags"] & IFF_UP and mac:
            links[link["index"]] = (link.get_attr("IFLA_IFNAME"),
                                    bytes.fromhex(mac.replace(":", "")))
    for family in (socket.AF_INET, socket.AF_INET6):
        for addr in rt.dump(RTM_GETADDR, ifaddrmsg, family):
            if addr["index"] not in links:
                continue
            ifname, mac = links[addr["index"]]
            out.append((ifname, mac, addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")))
    return out


class AnnouncePlugin(Plugin):
    name = "announce"
    order = 800  # after the plugins that re-create links and addresses
    summary = ("after a restore, gratuitous ARP / unsolicited NA for every address so "
               "switches learn the new port")
    images = ()

    def warm(self, action: str) -> None:
        if action != "restore":
            return
        # the first dumps build pyroute2's decoders: pay that in our own netns, before CRIU
        from gtp_util.rtnl import Rtnl

        with Rtnl(None) as rt:
            _addresses(rt)

    def post_restore(self, ctx) -> None:
        # a resident process lives on: the socket's close need not hold the tasks
        sent = announce(ctx.netns_path, close_later=ctx.resident)
        ctx.log.info("announced " + (", ".join(f"{ip} on {dev}" for dev, ip in sent) or
                                     "nothing (no Ethernet link with an address)"))
