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
