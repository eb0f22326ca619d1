"""announce plugin: the gratuitous ARP frame, decoded by scapy as an independent reader."""

from scapy.layers.l2 import ARP, Ether

from criu_ext.plugins.announce import garp_frame


def test_gratuitous_arp_is_a_broadcast_request_for_the_address_itself():
    mac = bytes.fromhex("26332839 61b6".replace(" ", ""))
    pkt = Ether(garp_frame(mac, "10.0.0.1"))
    assert pkt.dst == "ff:ff:ff:ff:ff:ff"
    assert pkt.src == "26:33:28:39:61:b6"
    arp = pkt[ARP]
    assert arp.op == 1  # request, as RFC 5227 announcements are
    assert arp.psrc == arp.pdst == "10.0.0.1"
    assert arp.hwsrc == "26:33:28:39:61:b6"
    assert arp.hwdst == "00:00:00:00:00:00"


def test_unsolicited_na_is_to_all_nodes_with_override_and_a_checksum_scapy_agrees_with():
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6

    from criu_ext.plugins.announce import ETH_P_IPV6, frame

    mac = bytes.fromhex("263328396 1b6".replace(" ", ""))
    data, proto = frame(mac, "2001:db8::7")
    assert proto == ETH_P_IPV6
    pkt = Ether(data)
    assert (pkt.dst, pkt.src) == ("33:33:00:00:00:01", "26:33:28:39:61:b6")
    ip6 = pkt[IPv6]
    assert (ip6.src, ip6.dst, ip6.hlim, ip6.nh) == ("2001:db8::7", "ff02::1", 255, 58)
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (0, 0, 1, "2001:db8::7")
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == "26:33:28:39:61:b6"
    ours = na.cksum
    del na.cksum  # scapy computes it again on the way out
    assert Ether(bytes(pkt))[ICMPv6ND_NA].cksum == ours
    assert frame(mac, "10.0.0.1")[1] == 0x0806  # IPv4 still gets its ARP
