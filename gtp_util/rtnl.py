"""The few rtnetlink requests gtp_util makes in a freeze window (a gtp link, its
addresses and routes at restore; deleting links at dump), sent on a plain netlink socket.

pyroute2's message classes encode them; no pyroute2 session is opened: setting one
up and its request machinery cost more than the requests themselves, and a CRIU
restore makes them while the restored tasks wait.
"""

from __future__ import annotations

import os
import socket
import struct

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from procns.netns import in_netns

from .errors import GtpError
from .model import Address, Device, Route
from .netlink import register_link_kind

IFF_UP = 0x1
_HDR = struct.Struct('<IHHII')
_ERR = struct.Struct('<i')
_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL


class RtnlError(GtpError):
    def __init__(self, what: str, err: int):
        super().__init__(f"{what}: {os.strerror(err)}")
        self.errno = err


class Rtnl:
    """A NETLINK_ROUTE socket of one namespace; each request waits for its answer.

    Also the plain socket other rtnetlink requests of the toolkit go through
    (criu_ext.sctp_fence's fib rules).
    """

    def __init__(self, netns: str | None = None):
        register_link_kind()
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, msg, mtype: int, what: str, flags: int = _CREATE) -> None:
        """Send one request built with a pyroute2 message class and wait for its ack."""
        self.seq += 1
        msg['header']['type'] = mtype
        msg['header']['flags'] = flags
        msg['header']['sequence_number'] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _HDR.size <= len(data):
                length, rtype, _, seq, _ = _HDR.unpack_from(data, off)
                if rtype == NLMSG_ERROR and seq == self.seq:
                    err = -_ERR.unpack_from(data, off + 16)[0]
                    if err:
                        raise RtnlError(what, err)
                    return
                off += (length + 3) & ~3

    def encode(self, msg, mtype: int, flags: int = NLM_F_REQUEST | NLM_F_ACK) -> bytes:
        """A request built with a pyroute2 message class, encoded now for :meth:`send_all`
        later (its sequence number is set there)."""
        msg['header']['type'] = mtype
        msg['header']['flags'] = flags
        msg.encode()
        return bytes(msg.data)

    def send_all(self, requests: list[tuple[bytes, str]]) -> None:
        """Requests :meth:`encode` made, in one write; every acknowledgement read. The
        first refused, in order, raises RtnlError with its ``what``."""
        if not requests:
            return
        first = self.seq + 1
        out = bytearray()
        for data, _ in requests:
            self.seq += 1
            start = len(out)
            out += data
            struct.pack_into('<I', out, start + 8, self.seq)  # nlmsg_seq
        self.sock.send(out)
        errors: dict[int, int] = {}
        while len(errors) < len(requests):
            data = self.sock.recv(65536)
            off = 0
            while off + _HDR.size <= len(data):
                length, rtype, _, seq, _ = _HDR.unpack_from(data, off)
                if rtype == NLMSG_ERROR and first <= seq <= self.seq:
                    errors[seq] = -_ERR.unpack_from(data, off + 16)[0]
                off += (length + 3) & ~3
        for i, (_, what) in enumerate(requests):
            if errors[first + i]:
                raise RtnlError(what, errors[first + i])

    def dump(self, mtype: int, cls, family: int = socket.AF_UNSPEC) -> list:
        """A GET dump (RTM_GETLINK, RTM_GETADDR, ...) decoded with pyroute2's ``cls``."""
        self.seq += 1
        # nlmsghdr + rtgenmsg (the family, padded to 4)
        self.sock.send(_HDR.pack(_HDR.size + 4, mtype, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0)
                       + bytes((family, 0, 0, 0)))
        out: list = []
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + _HDR.size <= len(data):
                length, rtype, _, seq, _ = _HDR.unpack_from(data, off)
                if seq == self.seq:
                    if rtype == NLMSG_DONE:
                        return out
                    if rtype == NLMSG_ERROR:
                        raise RtnlError("netlink dump", -_ERR.unpack_from(data, off + 16)[0])
                    msg = cls(data[off:off + length])
                    msg.decode()
                    out.append(msg)
                off += (length + 3) & ~3

    def add_gtp_link(self, dev: Device, fd0: int | None, fd1: int | None, *,
                     mtu: int | None = None) -> None:
        """RTM_NEWLINK of kind gtp, up at once when ``dev.up`` (IFF_UP in the request)."""
        self.request(gtp_link_msg(dev, fd0, fd1, mtu), RTM_NEWLINK,
                      f"creating device {dev.name}")

    def delete_link(self, index: int) -> None:
        msg = ifinfmsg()
        msg['index'] = index
        self.request(msg, RTM_DELLINK, f"deleting link {index}", NLM_F_REQUEST | NLM_F_ACK)

    def add_address(self, index: int, a: Address) -> None:
        self.request(address_msg(index, a), RTM_NEWADDR, f"adding address {a.cidr()}")

    def add_route(self, index: int, r: Route) -> None:
        self.request(route_msg(index, r), RTM_NEWROUTE, f"adding route {r.cidr()} dev {r.dev}")


def gtp_link_msg(dev: Device, fd0: int | None, fd1: int | None, mtu: int | None) -> ifinfmsg:
    register_link_kind()  # pyroute2's own gtp map lacks ROLE, RESTART_COUNT, CREATE_SOCKETS
    data = [('IFLA_GTP_PDP_HASHSIZE', dev.hashsize), ('IFLA_GTP_ROLE', dev.role)]
    if dev.restart_count:
        data.append(('IFLA_GTP_RESTART_COUNT', dev.restart_count))
    if dev.kernel_sockets:
        data.append(('IFLA_GTP_CREATE_SOCKETS', 1))
    else:
        data += [(k, v) for k, v in (('IFLA_GTP_FD0', fd0), ('IFLA_GTP_FD1', fd1))
                 if v is not None]
    msg = ifinfmsg()
    msg['family'] = socket.AF_UNSPEC
    if dev.up:
        msg['flags'] = msg['change'] = IFF_UP
    msg['attrs'] = [('IFLA_IFNAME', dev.name),
                    ('IFLA_LINKINFO', {'attrs': [('IFLA_INFO_KIND', 'gtp'),
                                                 ('IFLA_INFO_DATA', {'attrs': data})]})]
    if mtu:
        msg['attrs'].append(('IFLA_MTU', mtu))
    return msg


def address_msg(index: int, a: Address) -> ifaddrmsg:
    msg = ifaddrmsg()
    msg['family'] = a.family
    msg['prefixlen'] = a.prefixlen
    msg['index'] = index
    msg['attrs'] = [('IFA_LOCAL', a.local), ('IFA_ADDRESS', a.address or a.local)]
    return msg


def route_msg(index: int, r: Route) -> rtmsg:
    msg = rtmsg()
    msg['family'] = r.family
    msg['dst_len'] = r.dst_len
    msg['table'] = r.table if r.table < 256 else 252  # RT_TABLE_COMPAT: RTA_TABLE says
    msg['proto'] = r.proto
    msg['scope'] = r.scope
    msg['type'] = r.type
    attrs = [('RTA_DST', r.dst), ('RTA_OIF', index), ('RTA_TABLE', r.table)]
    if r.priority:
        attrs.append(('RTA_PRIORITY', r.priority))
    if r.prefsrc:
        attrs.append(('RTA_PREFSRC', r.prefsrc))
    if r.gateway:
        attrs.append(('RTA_GATEWAY', r.gateway))
    msg['attrs'] = attrs
    return msg


def warm() -> None:
    """Encode one message of each kind: pyroute2 builds its encoders on first use."""
    register_link_kind()
    gtp_link_msg(Device('gtpwarm', 0, up=True), None, 3, 1400).encode()
    address_msg(1, Address(socket.AF_INET, '192.0.2.1', 32)).encode()
    route_msg(1, Route(socket.AF_INET, '192.0.2.0', 24, 'gtpwarm')).encode()


__all__ = ['Rtnl', 'RtnlError', 'address_msg', 'gtp_link_msg', 'route_msg', 'warm']
