"""Netlink for kernel GTP: the rtnl link kind ``gtp`` and the generic netlink family ``gtp``.

Both are *declared* as pyroute2 message classes whose ``nla_map`` tables follow
``include/uapi/linux/if_link.h`` (``IFLA_GTP_*``) and ``include/uapi/linux/gtp.h``
(``GTPA_*``) line by line, with the attribute number written next to each name.

Two ways to talk to the ``gtp`` family:

* :class:`GtpGenl`, a pyroute2 ``GenericNetlinkSocket``: one request, one
  acknowledgement (what ``gtp-tunnel add`` does). Simple, and the baseline the
  benchmark compares against.
* :class:`PdpChannel`, a plain ``AF_NETLINK`` socket whose messages are packed
  from a layout computed out of the same ``nla_map``: thousands of NEWPDP /
  DELPDP requests per ``send()``, an acknowledgement asked only for the last one
  of each batch (the kernel still answers every failing request), and a GETPDP
  dump decoded with one ``struct`` call per context. This is where restore and
  dump speed come from.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from array import array

from pyroute2.netlink import (
    CTRL_CMD_GETFAMILY,
    GENL_ID_CTRL,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    ctrlmsg,
    genlmsg,
    nla,
)
from pyroute2.netlink.generic import GenericNetlinkSocket
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from procns.netns import in_netns

from .errors import GtpError, GtpUnavailable
from .model import PdpTable

# --- include/uapi/linux/if_link.h: IFLA_GTP_* (link kind "gtp", IFLA_INFO_DATA) -----------


class gtp_link_data(nla):
    """``IFLA_INFO_DATA`` of a ``gtp`` link."""

    prefix = 'IFLA_GTP_'
    # (name, type) pairs: pyroute2's link requests need this form; numbers as comments
    nla_map = (
        ('IFLA_GTP_UNSPEC', 'none'),  # 0
        ('IFLA_GTP_FD0', 'uint32'),  # 1, 4.7: GTPv0 UDP socket (port 3386)
        ('IFLA_GTP_FD1', 'uint32'),  # 2, 4.7: GTPv1-U UDP socket (port 2152)
        ('IFLA_GTP_PDP_HASHSIZE', 'uint32'),  # 3, 4.7: default 1024
        ('IFLA_GTP_ROLE', 'uint32'),  # 4, 4.12: 0 GGSN, 1 SGSN
        ('IFLA_GTP_CREATE_SOCKETS', 'uint8'),  # 5, 5.18: kernel opens its own sockets
        ('IFLA_GTP_RESTART_COUNT', 'uint8'),  # 6, 5.18
        ('IFLA_GTP_LOCAL', 'ip4addr'),  # 7, 6.10: listen address with CREATE_SOCKETS
        ('IFLA_GTP_LOCAL6', 'ip6addr'),  # 8, 6.10
    )


GTP_ROLE_GGSN = 0
GTP_ROLE_SGSN = 1
ROLE_NAMES = {GTP_ROLE_GGSN: 'ggsn', GTP_ROLE_SGSN: 'sgsn'}

_registered = False


def register_link_kind() -> None:
    """Make pyroute2 encode and decode every ``IFLA_GTP_*`` attribute (idempotent)."""
    global _registered
    if not _registered:
        ifinfmsg.ifinfo.register_link_kind(module={'gtp': gtp_link_data})
        _registered = True


# --- include/uapi/linux/gtp.h: generic netlink family "gtp" -------------------------------

GTP_GENL_NAME = 'gtp'
GTP_GENL_VERSION = 0
GTP_GENL_MCGRP_NAME = 'gtp'

GTP_CMD_NEWPDP = 0
GTP_CMD_DELPDP = 1
GTP_CMD_GETPDP = 2
GTP_CMD_ECHOREQ = 3  # 5.18

GTP_V0 = 0
GTP_V1 = 1


class gtpmsg(genlmsg):
    """A ``gtp`` generic netlink message (``enum gtp_attrs``)."""

    prefix = 'GTPA_'
    nla_map = (
        (0, 'GTPA_UNSPEC', 'none'),
        (1, 'GTPA_LINK', 'uint32'),
        (2, 'GTPA_VERSION', 'uint32'),
        (3, 'GTPA_TID', 'uint64'),  # GTPv0 only
        (4, 'GTPA_PEER_ADDRESS', 'ip4addr'),  # be32; legacy name GTPA_SGSN_ADDRESS
        (5, 'GTPA_MS_ADDRESS', 'ip4addr'),  # be32
        (6, 'GTPA_FLOW', 'uint16'),  # GTPv0 only
        (7, 'GTPA_NET_NS_FD', 'uint32'),
        (8, 'GTPA_I_TEI', 'uint32'),  # GTPv1 only
        (9, 'GTPA_O_TEI', 'uint32'),  # GTPv1 only
        (10, 'GTPA_PAD', 'none'),
        (11, 'GTPA_PEER_ADDR6', 'ip6addr'),  # 6.10
        (12, 'GTPA_MS_ADDR6', 'ip6addr'),  # 6.10
        (13, 'GTPA_FAMILY', 'uint8'),  # 6.10
    )


GTPA = {name: num for num, name, _ in gtpmsg.nla_map}
GTPA_IPV6_MIN = GTPA['GTPA_PEER_ADDR6']


# --- netlink plumbing constants not exported by Python's socket module ---------------------
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_ADD_MEMBERSHIP = 1
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
NETLINK_GENERIC = 16

_NLMSGHDR = struct.Struct('<IHHII')
_NLMSGERR = struct.Struct('<iIHHII')  # error, then the request's nlmsghdr
_NLA = struct.Struct('<HH')


def _layout(*attrs: tuple[str, str]) -> tuple[struct.Struct, tuple[int, ...]]:
    """A fixed message layout: nlmsghdr, genlmsghdr, then one (header, value) per attribute.

    Returns the ``struct`` (every attribute header packed as one u32 ``len | type << 16``)
    and the tuple of those header words, used both to build requests and to
    recognise dump replies of that exact shape.
    """
    fmt = '<IHHIIBBH'
    headers = []
    for name, code in attrs:
        size = struct.calcsize('<' + code)
        pad = (-size) % 4
        fmt += 'I' + code + ('%dx' % pad if pad else '')
        headers.append((4 + size) | GTPA[name] << 16)
    return struct.Struct(fmt), tuple(headers)


# Dump replies as gtp_genl_fill_info() writes them (6.1: VERSION, LINK, PEER, MS, then
# I_TEI/O_TEI or TID/FLOW); TID is a u64 put without GTPA_PAD on x86_64.
_DUMP_V1, _DUMP_V1_HDRS = _layout(('GTPA_VERSION', 'I'), ('GTPA_LINK', 'I'),
                                  ('GTPA_PEER_ADDRESS', 'I'), ('GTPA_MS_ADDRESS', 'I'),
                                  ('GTPA_I_TEI', 'I'), ('GTPA_O_TEI', 'I'))
_DUMP_V0, _DUMP_V0_HDRS = _layout(('GTPA_VERSION', 'I'), ('GTPA_LINK', 'I'),
                                  ('GTPA_PEER_ADDRESS', 'I'), ('GTPA_MS_ADDRESS', 'I'),
                                  ('GTPA_TID', 'Q'), ('GTPA_FLOW', 'H'))
# Requests use the same shapes; DELPDP needs only the key.
_NEW_V1, _NEW_V1_HDRS = _DUMP_V1, _DUMP_V1_HDRS
_NEW_V0, _NEW_V0_HDRS = _DUMP_V0, _DUMP_V0_HDRS
_DEL_V1, _DEL_V1_HDRS = _layout(('GTPA_VERSION', 'I'), ('GTPA_LINK', 'I'), ('GTPA_I_TEI', 'I'))
_DEL_V0, _DEL_V0_HDRS = _layout(('GTPA_VERSION', 'I'), ('GTPA_LINK', 'I'), ('GTPA_TID', 'Q'))


class PdpFailure(GtpError):
    """A batch had failing requests: ``failures`` is a list of (table index, errno, message)."""

    def __init__(self, what: str, failures: list[tuple[int, int, str]]):
        self.failures = failures
        self.created = 0  # contexts of the request that were created (set by the sender)
        idx, err, msg = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ''
        text = f"{what}: context #{idx}: {os.strerror(err)}"
        if msg:
            text += f" ({msg})"
        super().__init__(text + more)


class PdpChannel:
    """A raw generic netlink socket to the ``gtp`` family of one network namespace."""

    def __init__(self, netns: str | None = None, *, rcvbuf: int = 32 << 20,
                 sndbuf: int = 8 << 20):
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      NETLINK_GENERIC)
        try:
            for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
                                       (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)):
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, force, size)
                except PermissionError:
                    self.sock.setsockopt(socket.SOL_SOCKET, plain, size)
            self.sndbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.bind((0, 0))
            self.seq = 1
            self.buf = bytearray(64 << 10)
            self.family, self.maxattr, self.groups = self._resolve()
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> PdpChannel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- family lookup (pyroute2's ctrlmsg does the encoding) --
    def _resolve(self) -> tuple[int, int, dict[str, int]]:
        msg = ctrlmsg()
        msg['cmd'] = CTRL_CMD_GETFAMILY
        msg['version'] = 1
        msg['attrs'].append(['CTRL_ATTR_FAMILY_NAME', GTP_GENL_NAME])
        msg['header']['type'] = GENL_ID_CTRL
        msg['header']['flags'] = NLM_F_REQUEST
        msg['header']['sequence_number'] = self._next_seq()
        msg.encode()
        self.sock.send(msg.data)
        data = self.sock.recv(65536)
        length, mtype = _NLMSGHDR.unpack_from(data)[:2]
        if mtype == NLMSG_ERROR:
            err = -_NLMSGERR.unpack_from(data, 16)[0]
            if err == errno.ENOENT:
                raise GtpUnavailable("the kernel has no 'gtp' generic netlink family "
                                     "(is the gtp module available? try: modprobe gtp)")
            raise GtpError(f"looking up the gtp netlink family: {os.strerror(err)}")
        reply = ctrlmsg(data[:length])
        reply.decode()
        groups: dict[str, int] = {}
        for grp in reply.get_attr('CTRL_ATTR_MCAST_GROUPS') or ():
            groups[grp.get_attr('CTRL_ATTR_MCAST_GRP_NAME')] = grp.get_attr('CTRL_ATTR_MCAST_GRP_ID')
        return (reply.get_attr('CTRL_ATTR_FAMILY_ID'), reply.get_attr('CTRL_ATTR_MAXATTR'),
                groups)

    # -- change notifications (the family's multicast group, Linux 5.10+) --
    def subscribe(self) -> bool:
        """Join the family's multicast group: the kernel then copies every PDP context
        added or deleted in this namespace to this socket. False when the kernel has
        no such group (nothing can be watched). The socket becomes non-blocking."""
        group = self.groups.get(GTP_GENL_MCGRP_NAME)
        if group is None:
            return False
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        self.sock.setblocking(False)
        return True

    def changes_pending(self) -> bool:
        """After :meth:`subscribe`: True if a context was added or deleted since (or
        notifications were lost); echo requests, which the group also carries, do not
        count. Reads what is queued."""
        buf = self.buf
        while True:
            try:
                n = self.sock.recv_into(buf)
            except BlockingIOError:
                return False
            except OSError:  # ENOBUFS: so many that some were dropped
                return True
            off = 0
            while off + 20 <= n:
                length = _NLMSGHDR.unpack_from(buf, off)[0]
                if buf[off + 16] != GTP_CMD_ECHOREQ:
                    return True
                off += (length + 3) & ~3

    @property
    def has_ipv6(self) -> bool:
        """True when the kernel knows GTPA_PEER_ADDR6 / GTPA_MS_ADDR6 (Linux 6.10+)."""
        return self.maxattr >= GTPA['GTPA_FAMILY']

    def _next_seq(self, n: int = 1) -> int:
        seq = self.seq
        self.seq = (self.seq + n) & 0x7FFFFFFF or 1
        return seq

    # -- dump --
    def dump(self) -> dict[int, PdpTable]:
        """Every PDP context of the namespace, as ``{ifindex: PdpTable}`` (unsorted)."""
        seq = self._next_seq()
        req = _NLMSGHDR.pack(20, self.family, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + \
            bytes((GTP_CMD_GETPDP, GTP_GENL_VERSION, 0, 0))
        self.sock.send(req)
        tables: dict[int, PdpTable] = {}
        buf = bytearray(1 << 16)  # the kernel fills at most 32 KiB per dump skb
        view = memoryview(buf)
        fast = _VectorV1(self.family) if _LITTLE else None
        v1, v1_hdrs, v1_len = _DUMP_V1.unpack_from, _DUMP_V1_HDRS, _DUMP_V1.size
        v0, v0_hdrs, v0_len = _DUMP_V0.unpack_from, _DUMP_V0_HDRS, _DUMP_V0.size
        ntohl = socket.ntohl
        recv_into = self.sock.recv_into
        while True:
            n = recv_into(buf)
            off = fast.decode(buf, n, tables) if fast is not None else 0
            while off < n:
                length, mtype = _NLMSGHDR.unpack_from(buf, off)[:2]
                if length < 16 or off + length > n:
                    raise GtpError("malformed netlink message in the GETPDP dump")
                if mtype == NLMSG_DONE:
                    return tables
                if mtype == NLMSG_ERROR:
                    err = -_NLMSGERR.unpack_from(buf, off + 16)[0]
                    raise GtpError(f"GETPDP dump failed: {os.strerror(err)}")
                if length == v1_len:
                    t = v1(buf, off)
                    if t[8::2] == v1_hdrs:
                        # version, link, peer, ms, i_tei, o_tei
                        link = t[11]
                        tab = tables.get(link)
                        if tab is None:
                            tab = tables[link] = PdpTable()
                        tab.append_v1(ntohl(t[13]), ntohl(t[15]), t[17], t[19])
                        off += length
                        continue
                elif length == v0_len:
                    t = v0(buf, off)
                    if t[8::2] == v0_hdrs:
                        link = t[11]
                        tab = tables.get(link)
                        if tab is None:
                            tab = tables[link] = PdpTable()
                        tab.append_v0(ntohl(t[13]), ntohl(t[15]), t[17], t[19])
                        off += length
                        continue
                link, ctx = decode_pdp(bytes(view[off:off + length]))
                tab = tables.get(link)
                if tab is None:
                    tab = tables[link] = PdpTable()
                tab.append(ctx)
                off += length

    # -- batched requests --
    def add(self, link: int, table: PdpTable, *, excl: bool = True, batch: int = 2048,
            ack_every: bool = False, start: int = 0) -> int:
        """Create every context of ``table`` on device ``link``.

        ``batch`` requests go out in one ``send()``. Only the last request of a batch
        asks for an acknowledgement unless ``ack_every`` (then every success is
        acknowledged too, read in bulk). Stops after the first batch with failures
        and raises :class:`PdpFailure`; ``exc.created`` then says how many contexts,
        from ``start``, were created (they are exactly the ones not listed as failed
        in that batch and all those of earlier batches).
        """
        flags = NLM_F_REQUEST | NLM_F_CREATE | (NLM_F_EXCL if excl else 0)
        return self._batched(GTP_CMD_NEWPDP, link, table, flags, batch, ack_every, start,
                             'adding PDP contexts')

    def delete(self, link: int, table: PdpTable, *, batch: int = 2048,
               missing_ok: bool = False) -> int:
        """Delete the contexts of ``table`` (keyed by version + I_TEI or TID) from ``link``."""
        return self._batched(GTP_CMD_DELPDP, link, table, NLM_F_REQUEST, batch, False, 0,
                             'deleting PDP contexts', missing_ok=missing_ok)

    def _batched(self, cmd: int, link: int, table: PdpTable, flags: int, batch: int,
                 ack_every: bool, start: int, what: str, missing_ok: bool = False) -> int:
        n = len(table)
        done = start
        family = self.family
        htonl = socket.htonl
        cols = table.columns()
        ver, tid, flow, i_tei, o_tei, peer, ms = cols
        if cmd == GTP_CMD_NEWPDP:
            s1, s1h, s0, s0h = _NEW_V1, _NEW_V1_HDRS, _NEW_V0, _NEW_V0_HDRS
        else:
            s1, s1h, s0, s0h = _DEL_V1, _DEL_V1_HDRS, _DEL_V0, _DEL_V0_HDRS
        batch = max(1, min(batch, self.sndbuf // max(s0.size, s1.size) - 1))
        need = batch * max(s0.size, s1.size)
        if len(self.buf) < need:
            self.buf = bytearray(need)
        buf = self.buf
        p1, p0 = s1.pack_into, s0.pack_into
        l1, l0 = s1.size, s0.size
        a1 = s1h
        a0 = s0h
        vec = _VectorV1(family) if (_LITTLE and cmd == GTP_CMD_NEWPDP and not table.v6) else None
        while done < n:
            end = min(n, done + batch)
            seq0 = self._next_seq(end - done)
            off = 0
            last = end - 1
            if vec is not None and ver[done:end].count(GTP_V0) == 0:
                data = vec.encode(table, done, end, link, flags, seq0, ack_every)
                self.sock.send(data)
                failures = self._collect(seq0, seq0 + (end - done) - 1, ack_every, done)
                if failures:
                    exc = PdpFailure(what, failures)
                    exc.created = (done - start) + (end - done) - len(failures)
                    raise exc
                done = end
                continue
            for i in range(done, end):
                f = flags | NLM_F_ACK if (ack_every or i == last) else flags
                seq = seq0 + i - done
                if ver[i] == GTP_V1:
                    if cmd == GTP_CMD_NEWPDP:
                        p1(buf, off, l1, family, f, seq, 0, cmd, 0, 0,
                           a1[0], 1, a1[1], link, a1[2], htonl(peer[i]), a1[3], htonl(ms[i]),
                           a1[4], i_tei[i], a1[5], o_tei[i])
                    else:
                        p1(buf, off, l1, family, f, seq, 0, cmd, 0, 0,
                           a1[0], 1, a1[1], link, a1[2], i_tei[i])
                    off += l1
                else:
                    if cmd == GTP_CMD_NEWPDP:
                        p0(buf, off, l0, family, f, seq, 0, cmd, 0, 0,
                           a0[0], 0, a0[1], link, a0[2], htonl(peer[i]), a0[3], htonl(ms[i]),
                           a0[4], tid[i], a0[5], flow[i])
                    else:
                        p0(buf, off, l0, family, f, seq, 0, cmd, 0, 0,
                           a0[0], 0, a0[1], link, a0[2], tid[i])
                    off += l0
            self.sock.send(memoryview(buf)[:off])
            failures = self._collect(seq0, seq0 + (end - done) - 1, ack_every, done)
            if missing_ok:
                failures = [f for f in failures if f[1] != errno.ENOENT]
            if failures:
                exc = PdpFailure(what, failures)
                exc.created = (done - start) + (end - done) - len(failures)
                raise exc
            done = end
        return done - start

    def _collect(self, first: int, last: int, ack_every: bool, base: int
                 ) -> list[tuple[int, int, str]]:
        """Read acknowledgements until the one for ``last``; return the failures."""
        failures = []
        buf = bytearray(65536)
        recv_into = self.sock.recv_into
        while True:
            try:
                n = recv_into(buf)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    raise GtpError("netlink acknowledgements were lost (receive buffer "
                                   "overflow); retry with a smaller batch") from None
                raise
            off = 0
            while off < n:
                length, mtype, mflags, seq, _ = _NLMSGHDR.unpack_from(buf, off)
                if mtype == NLMSG_ERROR:
                    err, _, _, _, rseq, _ = _NLMSGERR.unpack_from(buf, off + 16)
                    if err:
                        text = ''
                        if mflags & NLM_F_ACK_TLVS:
                            text = _extack_msg(buf, off + 36, off + length)
                        failures.append((base + rseq - first, -err, text))
                    if rseq == last:
                        return failures
                off += (length + 3) & ~3


_LITTLE = sys.byteorder == 'little'


class _VectorV1:
    """Whole batches of GTPv1 NEWPDP messages / dump replies as arrays of u32 words.

    Every v1 message has the same 68-byte layout (:data:`_DUMP_V1`), i.e. 17 words;
    a column of the table is one strided slice of the word array, so packing and
    unpacking run in C (``array`` slicing, ``byteswap`` for the be32 addresses).
    Little-endian hosts only; other shapes fall back to the per-message code.
    """

    W = _DUMP_V1.size // 4

    def __init__(self, family: int):
        h = _DUMP_V1_HDRS
        self.family = family
        self.template = (68, 0, 0, 0, GTP_CMD_NEWPDP, h[0], GTP_V1, h[1], 0, h[2], 0, h[3], 0,
                         h[4], 0, h[5], 0)
        self.checks = {0: 68, 1: family | NLM_F_MULTI << 16, 5: h[0], 6: GTP_V1, 7: h[1], 9: h[2],
                       11: h[3], 13: h[4], 15: h[5]}
        self._const: dict[tuple[int, int], array] = {}

    def _col(self, value: int, k: int) -> array:
        a = self._const.get((value, k))
        if a is None:
            a = self._const[(value, k)] = array('I', [value]) * k
        return a

    def encode(self, table: PdpTable, start: int, end: int, link: int, flags: int, seq0: int,
               ack_every: bool) -> memoryview:
        W, k = self.W, end - start
        words = array('I', self.template) * k
        words[1::W] = self._col(self.family | (flags | (NLM_F_ACK if ack_every else 0)) << 16, k)
        words[(k - 1) * W + 1] = self.family | (flags | NLM_F_ACK) << 16
        words[2::W] = array('I', range(seq0, seq0 + k))
        words[8::W] = self._col(link, k)
        peer = table.peer[start:end]
        peer.byteswap()
        words[10::W] = peer
        ms = table.ms[start:end]
        ms.byteswap()
        words[12::W] = ms
        words[14::W] = table.i_tei[start:end]
        words[16::W] = table.o_tei[start:end]
        return memoryview(words).cast('B')

    def decode(self, buf, n: int, tables: dict[int, PdpTable]) -> int:
        """Consume the leading run of v1 replies of ``buf[:n]``; return bytes consumed."""
        W = self.W
        k = n // (W * 4)
        if k == 0:
            return 0
        words = array('I')
        words.frombytes(bytes(buf[:k * W * 4]))
        for pos, value in self.checks.items():
            if words[pos::W] != self._col(value, k):
                return 0
        links = words[8::W]
        link = links[0]
        if links != self._col(link, k):
            return 0
        tab = tables.get(link)
        if tab is None:
            tab = tables[link] = PdpTable()
        peer = words[10::W]
        peer.byteswap()
        ms = words[12::W]
        ms.byteswap()
        tab.version.extend(array('B', [GTP_V1]) * k)
        tab.tid.extend(array('Q', [0]) * k)
        tab.flow.extend(array('H', [0]) * k)
        tab.peer.extend(peer)
        tab.ms.extend(ms)
        tab.i_tei.extend(words[14::W])
        tab.o_tei.extend(words[16::W])
        return k * W * 4


def _extack_msg(buf, off: int, end: int) -> str:
    while off + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, off)
        if alen < 4:
            break
        if atype == NLMSGERR_ATTR_MSG:
            return bytes(buf[off + 4:off + alen]).rstrip(b'\0').decode(errors='replace')
        off += (alen + 3) & ~3
    return ''


def decode_pdp(data: bytes):
    """Decode one GTP genl message of any shape with pyroute2; returns (link, PdpContext)."""
    msg = gtpmsg(data)
    msg.decode()
    return context_of(msg)


def context_of(msg):
    """(link, PdpContext) of a decoded pyroute2 ``gtpmsg``."""
    from .model import PdpContext
    get = msg.get_attr
    peer = get('GTPA_PEER_ADDRESS')
    ms = get('GTPA_MS_ADDRESS')
    ctx = PdpContext(
        version=get('GTPA_VERSION'),
        peer=_ip4int(peer) if peer else 0,
        ms=_ip4int(ms) if ms else 0,
        i_tei=get('GTPA_I_TEI') or 0,
        o_tei=get('GTPA_O_TEI') or 0,
        tid=get('GTPA_TID') or 0,
        flow=get('GTPA_FLOW') or 0,
        peer6=get('GTPA_PEER_ADDR6') or '',
        ms6=get('GTPA_MS_ADDR6') or '',
    )
    return get('GTPA_LINK'), ctx


def _ip4int(addr: str) -> int:
    return int.from_bytes(socket.inet_aton(addr), 'big')


# --- pyroute2-style socket: one request, one acknowledgement -----------------------------


class GtpGenl(GenericNetlinkSocket):
    """pyroute2 generic netlink socket bound to the ``gtp`` family.

    Create it inside :func:`procns.netns.in_netns` to talk to another namespace.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            self.bind(GTP_GENL_NAME, gtpmsg)
        except Exception as e:
            self.close()
            if getattr(e, 'code', None) in (errno.ENOENT, errno.ENOTSUP):
                raise GtpUnavailable("the kernel has no 'gtp' generic netlink family "
                                     "(is the gtp module available? try: modprobe gtp)") from e
            raise

    def _msg(self, cmd: int, link: int, ctx=None) -> gtpmsg:
        msg = gtpmsg()
        msg['cmd'] = cmd
        msg['version'] = GTP_GENL_VERSION
        attrs = msg['attrs']
        attrs.append(['GTPA_LINK', link])
        if ctx is not None:
            attrs.append(['GTPA_VERSION', ctx.version])
            if cmd == GTP_CMD_NEWPDP:
                attrs.append(['GTPA_PEER_ADDRESS', socket.inet_ntoa(ctx.peer.to_bytes(4, 'big'))])
                attrs.append(['GTPA_MS_ADDRESS', socket.inet_ntoa(ctx.ms.to_bytes(4, 'big'))])
            if ctx.version == GTP_V0:
                attrs.append(['GTPA_TID', ctx.tid])
                if cmd == GTP_CMD_NEWPDP:
                    attrs.append(['GTPA_FLOW', ctx.flow])
            else:
                attrs.append(['GTPA_I_TEI', ctx.i_tei])
                if cmd == GTP_CMD_NEWPDP:
                    attrs.append(['GTPA_O_TEI', ctx.o_tei])
        return msg

    def new_pdp(self, link: int, ctx, excl: bool = True) -> None:
        """Add one context and wait for its acknowledgement."""
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | (NLM_F_EXCL if excl else 0)
        tuple(self.nlm_request(self._msg(GTP_CMD_NEWPDP, link, ctx), msg_type=self.prid,
                               msg_flags=flags))

    def del_pdp(self, link: int, ctx) -> None:
        tuple(self.nlm_request(self._msg(GTP_CMD_DELPDP, link, ctx), msg_type=self.prid,
                               msg_flags=NLM_F_REQUEST | NLM_F_ACK))

    def get_pdps(self) -> list:
        """GETPDP dump through pyroute2's decoder: list of (link, PdpContext)."""
        out = []
        for msg in self.nlm_request(self._msg(GTP_CMD_GETPDP, 0), msg_type=self.prid,
                                    msg_flags=NLM_F_REQUEST | NLM_F_DUMP):
            out.append(context_of(msg))
        return out


def encode_new_pdp(family: int, seq: int, link: int, ctx, flags: int) -> bytes:
    """One NEWPDP request as :class:`PdpChannel` packs it (used to cross-check with pyroute2)."""
    tab = PdpTable()
    tab.append(ctx)
    buf = bytearray(128)
    ver, tid, flow, i_tei, o_tei, peer, ms = tab.columns()
    if ctx.version == GTP_V1:
        h = _NEW_V1_HDRS
        _NEW_V1.pack_into(buf, 0, _NEW_V1.size, family, flags, seq, 0, GTP_CMD_NEWPDP, 0, 0,
                          h[0], 1, h[1], link, h[2], socket.htonl(peer[0]), h[3],
                          socket.htonl(ms[0]), h[4], i_tei[0], h[5], o_tei[0])
        return bytes(buf[:_NEW_V1.size])
    h = _NEW_V0_HDRS
    _NEW_V0.pack_into(buf, 0, _NEW_V0.size, family, flags, seq, 0, GTP_CMD_NEWPDP, 0, 0,
                      h[0], 0, h[1], link, h[2], socket.htonl(peer[0]), h[3],
                      socket.htonl(ms[0]), h[4], tid[0], h[5], flow[0])
    return bytes(buf[:_NEW_V0.size])


def decode_dump_buffer(data: bytes) -> dict[int, PdpTable]:
    """Decode a buffer of GETPDP replies the way :meth:`PdpChannel.dump` does (for tests)."""
    chan = PdpChannel.__new__(PdpChannel)

    class _FakeSock:  # a fake socket that hands out ``data`` once, then NLMSG_DONE
        def __init__(self):
            self.parts = [data, _NLMSGHDR.pack(20, NLMSG_DONE, 2, 1, 0) + b'\0\0\0\0']

        def send(self, _):
            return 0

        def recv_into(self, buf):
            part = self.parts.pop(0)
            buf[:len(part)] = part
            return len(part)

    chan.sock = _FakeSock()  # type: ignore[assignment]  # has what dump() calls of a socket
    chan.seq = 1
    chan.family = 0
    return chan.dump()


__all__ = [
    'GTPA', 'GTP_V0', 'GTP_V1', 'GtpGenl', 'PdpChannel', 'PdpFailure', 'gtp_link_data',
    'gtpmsg', 'register_link_kind',
]
