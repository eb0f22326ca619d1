"""eNB side: GTP-U encapsulated ICMP echo from several UEs, replies checked by TEID.

Packets are built by hand (struct) and sent on a plain UDP socket bound to the eNB's
2152, so timing is not skewed by a packet library; :func:`scapy_packet` builds the
same packet with scapy for cross-checking.
"""

from __future__ import annotations

import select
import socket
import struct
import time

GTPU_PORT = 2152
GTP_TPDU = 0xFF


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b'\0'
    s = sum(struct.unpack(f'!{len(data) // 2}H', data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def icmp_echo(src: str, dst: str, ident: int, seq: int, payload: bytes = b'gtp-lab') -> bytes:
    icmp = struct.pack('!BBHHH', 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack('!H', _csum(icmp)) + icmp[4:]
    total = 20 + len(icmp)
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, total, ident & 0xFFFF, 0, 64, 1, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack('!H', _csum(ip)) + ip[12:]
    return ip + icmp


def gtpu(teid: int, inner: bytes) -> bytes:
    """GTPv1-U header (version 1, PT 1, no options), message type T-PDU."""
    return struct.pack('!BBHI', 0x30, GTP_TPDU, len(inner), teid) + inner


def parse_reply(data: bytes):
    """(teid, inner src, inner dst, icmp type, ident, seq) of a GTP-U T-PDU, or None."""
    if len(data) < 8 + 28:
        return None
    flags, mtype, _length, teid = struct.unpack_from('!BBHI', data)
    if flags >> 5 != 1 or mtype != GTP_TPDU:
        return None
    off = 8 + (4 if flags & 0x07 else 0)
    inner = data[off:]
    ihl = (inner[0] & 0x0F) * 4
    if inner[9] != 1:
        return None
    itype, _, _, ident, seq = struct.unpack_from('!BBHHH', inner, ihl)
    return (teid, socket.inet_ntoa(inner[12:16]), socket.inet_ntoa(inner[16:20]), itype,
            ident, seq)


def scapy_packet(gw: str, teid: int, ue: str, pdn: str, ident: int, seq: int):
    """The same encapsulated echo built with scapy (the reference, slower)."""
    from scapy.contrib.gtp import GTP_U_Header
    from scapy.layers.inet import ICMP, IP, UDP
    return (IP(dst=gw) / UDP(sport=GTPU_PORT, dport=GTPU_PORT) / GTP_U_Header(teid=teid)
            / IP(src=ue, dst=pdn) / ICMP(id=ident, seq=seq) / b'gtp-lab')


class Enb:
    """A GTP-U endpoint in the eNB namespace (socket made inside that namespace)."""

    def __init__(self, netns_path: str, local: str, gateway: str):
        from procns.netns import in_netns
        with in_netns(netns_path):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((local, GTPU_PORT))
        self.gateway = gateway
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def ping(self, ues: list[tuple[str, int]], pdn: str, timeout: float = 3.0
             ) -> dict[str, int | None]:
        """Send one echo per (UE address, uplink TEID); return {UE: downlink TEID or None}."""
        self.seq = (self.seq + 1) & 0xFFFF
        ident_of = {}
        for n, (ue, teid) in enumerate(ues):
            ident = 0x4000 + n
            ident_of[ident] = ue
            self.sock.sendto(gtpu(teid, icmp_echo(ue, pdn, ident, self.seq)),
                             (self.gateway, GTPU_PORT))
        got: dict[str, int | None] = {ue: None for ue, _ in ues}
        end = time.monotonic() + timeout
        while None in got.values():
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                break
            r = parse_reply(self.sock.recv(65535))
            if r is None:
                continue
            teid, src, dst, itype, ident, seq = r
            if itype == 0 and seq == self.seq and ident_of.get(ident) == dst and src == pdn:
                got[dst] = teid
        return got
