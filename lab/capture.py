"""Frames arriving at a link of a namespace, read off the wire (AF_PACKET), for the
tests that check what a peer saw: whose frames reached a port, who announced what."""

from __future__ import annotations

import socket

from procns.netns import in_netns

ETH_P_ALL, ETH_P_ARP = 0x0003, 0x0806


class Capture:
    """Frames of ``proto`` (an ethertype; all by default) coming in at ``dev`` of netns
    ``ns`` from now on; the frames the link itself sends are left out."""

    def __init__(self, ns_path: str, dev: str, proto: int = ETH_P_ALL) -> None:
        with in_netns(ns_path):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
        self.sock.bind((dev, 0))
        self.sock.setblocking(False)

    def frames(self) -> list[bytes]:
        """Every frame that came in since the last call."""
        out = []
        while True:
            try:
                frame, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                return out
            if addr[2] != socket.PACKET_OUTGOING:
                out.append(frame)

    def sources(self) -> list[str]:
        """The source MAC of each frame that came in since the last call."""
        return [f[6:12].hex(":") for f in self.frames()]

    def close(self) -> None:
        self.sock.close()


def garps(frames: list[bytes]) -> set[tuple[str, str]]:
    """The gratuitous ARPs among ``frames`` (sender address = target address), as
    (sender MAC, IPv4 address)."""
    out = set()
    for f in frames:
        arp = f[14:42]
        if f[12:14] == b"\x08\x06" and len(arp) == 28 and arp[14:18] == arp[24:28]:
            out.add((arp[8:14].hex(":"), socket.inet_ntoa(arp[14:18])))
    return out
