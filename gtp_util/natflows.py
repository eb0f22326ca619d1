"""The UE flows the SGi masquerade translated, as conntrack holds them, and how to put
one back with its NAT binding (ctnetlink requests packed and parsed here: pyroute2's
session and codec cost too much in a freeze window).

A masqueraded flow's conntrack entry has two parts: its tuples, and the NAT binding
(status bits IPS_SRC_NAT / IPS_SRC_NAT_DONE) that makes the kernel rewrite its
packets. CRIU 3.17 restores an entry's tuples only: the reply tuple still names the
SGi address and port, but nothing translates, so the uplink leaves with the UE's own
address and a download's next segment from the PDN reaches the gateway's own stack,
which answers it with a reset. ctnetlink cannot add a binding to an existing entry,
so :func:`rebind` deletes such an entry and creates it again with ``CTA_NAT_SRC``
set to the address and port (or ICMP id) of its reply tuple: the kernel binds it
exactly as MASQUERADE had.

The entry's TCP window tracking is gone with it (the kernel restarts it from the
next packets), so re-created TCP entries are made liberal (IP_CT_TCP_FLAG_BE_LIBERAL
on both directions), as conntrackd does for the entries it commits.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
TCP_FLAG_BE_LIBERAL = 0x08
_ICMP_ECHO = {socket.IPPROTO_ICMP: (8, 0), socket.IPPROTO_ICMPV6: (128, 129)}
# netlink and ctnetlink numbers (linux/netlink.h, linux/netfilter/nfnetlink*.h)
_HDR, _ERR = struct.Struct("<IHHII"), struct.Struct("<i")
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_REQUEST, _NLM_ACK, _NLM_DUMP, _NLM_EXCL, _NLM_CREATE = 0x1, 0x4, 0x300, 0x200, 0x400
_NETLINK_NETFILTER, _SUBSYS_CTNETLINK, _CT_NEW, _CT_GET, _CT_DELETE = 12, 1, 0, 1, 2


@dataclass(frozen=True)
class NatFlow:
    """One UE flow and the SGi address/port it was translated to. For ICMP echo the
    "ports" are the echo identifier before and after translation."""

    family: int
    proto: int
    ue: str  # the UE's address (original source)
    peer: str  # the PDN host's address (original destination, not translated)
    ue_port: int
    peer_port: int  # 0 for ICMP
    nat_addr: str
    nat_port: int
    timeout: int  # seconds left
    status: int  # IPS_SEEN_REPLY / IPS_ASSURED, what ctnetlink lets one set
    tcp_state: int | None = None
    mark: int = 0

    @property
    def key(self) -> tuple:
        """Its original tuple: a table holds one entry per key."""
        return (self.family, self.proto, self.ue, self.ue_port, self.peer, self.peer_port)

    def describe(self) -> str:
        name = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}.get(self.proto, "icmp")
        return (f"{name} {self.ue}:{self.ue_port} -> {self.peer}:{self.peer_port} "
                f"as {self.nat_addr}:{self.nat_port}")


def in_pools(addr, pools) -> bool:
    """``addr`` (an ip_address) lies in one of ``pools`` (ip_networks, either family)."""
    return any(addr.version == p.version and addr in p for p in pools)


def flow_of(entry, pools) -> NatFlow | None:
    """The NatFlow of a conntrack entry (a :class:`CtEntry`, or pyroute2's ConntrackEntry,
    which has the same fields) when it is a UE flow (source in one of
    ``pools``) source-translated and nothing else; None otherwise."""
    o, r = entry.tuple_orig, entry.tuple_reply
    if o is None or r is None or o.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        ue = ipaddress.ip_address(o.saddr)
    except (TypeError, ValueError):
        return None
    if not in_pools(ue, pools):
        return None
    if r.saddr != o.daddr or r.daddr == o.saddr:  # translated destination, or not at all
        return None
    if o.proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        if r.sport != o.dport:
            return None
        ports = (o.sport, o.dport, r.dport)
    elif o.proto in _ICMP_ECHO and o.icmp_type == _ICMP_ECHO[o.proto][0]:
        ports = (o.icmp_id, 0, r.icmp_id)
    else:
        return None
    if any(not isinstance(p, int) or not 0 <= p <= 0xFFFF for p in ports):
        return None
    tcp_state = entry.protoinfo.state if entry.protoinfo is not None else None
    return NatFlow(o.family, o.proto, str(ue), str(o.daddr), ports[0], ports[1],
                   str(r.daddr), ports[2], max(int(entry.timeout or 0), 1),
                   int(entry.status or 0) & (IPS_SEEN_REPLY | IPS_ASSURED), tcp_state,
                   int(entry.mark or 0))


def bound(entry) -> bool:
    """The kernel translates this entry's packets (it holds a NAT binding)."""
    return bool(int(entry.status or 0) & (IPS_SRC_NAT | IPS_DST_NAT))


def _tuples(f: NatFlow):
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    if f.proto in _ICMP_ECHO:
        req, rep = _ICMP_ECHO[f.proto]
        orig = NFCTAttrTuple(family=f.family, saddr=f.ue, daddr=f.peer, proto=f.proto,
                             icmp_id=f.ue_port, icmp_type=req, icmp_code=0)
        reply = NFCTAttrTuple(family=f.family, saddr=f.peer, daddr=f.ue, proto=f.proto,
                              icmp_id=f.ue_port, icmp_type=rep, icmp_code=0)
    else:
        orig = NFCTAttrTuple(family=f.family, saddr=f.ue, daddr=f.peer, proto=f.proto,
                             sport=f.ue_port, dport=f.peer_port)
        reply = orig.reverse()  # untranslated: the binding below computes the SGi side
    return orig, reply


def entry_attrs(f: NatFlow) -> dict:
    """The ctnetlink attributes that create ``f`` with its source NAT binding."""
    orig, reply = _tuples(f)
    v = "V4" if f.family == socket.AF_INET else "V6"
    nat = {"attrs": [[f"CTA_NAT_{v}_MINIP", f.nat_addr], [f"CTA_NAT_{v}_MAXIP", f.nat_addr],
                     ["CTA_NAT_PROTO", {"attrs": [["CTA_PROTONAT_PORT_MIN", f.nat_port],
                                                  ["CTA_PROTONAT_PORT_MAX", f.nat_port]]}]]}
    # CONFIRMED: ctnetlink confirms a new entry before it applies CTA_STATUS, and
    # refuses (EBUSY) a status that would clear it
    attrs = {"tuple_orig": orig, "tuple_reply": reply, "timeout": f.timeout,
             "status": f.status | IPS_CONFIRMED, "nat_src": nat}
    if f.mark:
        attrs["mark"] = f.mark
    if f.tcp_state is not None:
        liberal = {"value": (TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL)}
        attrs["protoinfo"] = {"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
            ["CTA_PROTOINFO_TCP_STATE", f.tcp_state],
            ["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", liberal],
            ["CTA_PROTOINFO_TCP_FLAGS_REPLY", liberal]]}]]}
    return attrs


# -- ctnetlink requests packed by hand: pyroute2's classes took about 10 ms a message in
# the emulated VM, in a freeze window; entry_attrs above is the same request in
# pyroute2's form (tests/unit/test_gtp_natflows.py checks the two decode alike)

_NLA_F_NESTED = 0x8000


def _nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("<HH", n, kind) + payload + bytes(-n % 4)


def _nest(kind: int, *parts: bytes) -> bytes:
    return _nla(kind | _NLA_F_NESTED, b"".join(parts))


def _tuple(kind: int, family: int, src: str, dst: str, proto: int, sport: int, dport: int,
           icmp_type: int | None) -> bytes:
    """CTA_TUPLE_ORIG/REPLY: addresses (CTA_IP_V4_* 1-2, V6_* 3-4), then the protocol and
    its ports (CTA_PROTO_* 1-3) or echo id/type/code (ICMP 4-6, ICMPv6 7-9)."""
    a = 1 if family == socket.AF_INET else 3
    ip = _nest(1, _nla(a, socket.inet_pton(family, src)), _nla(a + 1, socket.inet_pton(family, dst)))
    if icmp_type is None:
        l4 = _nla(2, struct.pack(">H", sport)) + _nla(3, struct.pack(">H", dport))
    else:
        b = 4 if proto == socket.IPPROTO_ICMP else 7
        l4 = _nla(b, struct.pack(">H", sport)) + _nla(b + 1, bytes((icmp_type,))) \
            + _nla(b + 2, b"\0")
    return _nest(kind, ip, _nest(2, _nla(1, bytes((proto,))), l4))


def _orig(f: NatFlow) -> bytes:
    req = _ICMP_ECHO[f.proto][0] if f.proto in _ICMP_ECHO else None
    return _tuple(1, f.family, f.ue, f.peer, f.proto, f.ue_port, f.peer_port, req)


def _create_attrs(f: NatFlow) -> bytes:
    """What :func:`entry_attrs` says, packed: tuples (the reply one untranslated), status,
    the source-NAT binding, timeout, mark, TCP state with liberal window tracking."""
    rep = _ICMP_ECHO[f.proto][1] if f.proto in _ICMP_ECHO else None
    reply = _tuple(2, f.family, f.peer, f.ue, f.proto,
                   f.peer_port if rep is None else f.ue_port, f.ue_port, rep)
    ip = socket.inet_pton(f.family, f.nat_addr)
    a = 1 if f.family == socket.AF_INET else 4  # CTA_NAT_V4_MINIP/MAXIP, V6_MINIP/MAXIP
    port = struct.pack(">H", f.nat_port)
    nat = _nest(6, _nla(a, ip), _nla(a + 1, ip), _nest(3, _nla(1, port), _nla(2, port)))
    out = [_orig(f), reply, _nla(3, struct.pack(">I", f.status | IPS_CONFIRMED)), nat,
           _nla(7, struct.pack(">I", f.timeout))]
    if f.mark:
        out.append(_nla(8, struct.pack(">I", f.mark)))
    if f.tcp_state is not None:
        liberal = bytes((TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL))
        out.append(_nest(4, _nest(1, _nla(1, bytes((f.tcp_state,))), _nla(4, liberal),
                                  _nla(5, liberal))))
    return b"".join(out)


def request(mtype: int, flags: int, seq: int, family: int, attrs: bytes) -> bytes:
    """A ctnetlink request: nlmsghdr, nfgenmsg (family, version 0, res_id 0), attributes."""
    body = struct.pack("<BBH", family, 0, 0) + attrs
    return _HDR.pack(_HDR.size + len(body), (_SUBSYS_CTNETLINK << 8) | mtype, flags, seq, 0) + body


# -- conntrack entries read by hand from a dump: pyroute2 took about 19 ms natively (tens
# of times that under TCG) to decode 50, in a freeze window

@dataclass(frozen=True)
class CtTuple:
    """One direction of an entry, as :func:`flow_of` reads it."""

    family: int
    saddr: str | None
    daddr: str | None
    proto: int | None
    sport: int | None = None
    dport: int | None = None
    icmp_id: int | None = None
    icmp_type: int | None = None


@dataclass(frozen=True)
class TcpInfo:
    state: int


@dataclass(frozen=True)
class CtEntry:
    """A conntrack entry, the fields :func:`flow_of` and :func:`bound` use."""

    tuple_orig: CtTuple | None
    tuple_reply: CtTuple | None
    status: int = 0
    timeout: int = 0
    mark: int = 0
    protoinfo: TcpInfo | None = None


def _walk(buf: bytes, off: int, end: int) -> dict[int, tuple[int, int]]:
    """{attribute type: (payload start, end)} of the netlink attributes in buf[off:end]."""
    out = {}
    while off + 4 <= end:
        n, kind = struct.unpack_from("<HH", buf, off)
        if n < 4 or off + n > end:
            break
        out[kind & 0x3FFF] = (off + 4, off + n)  # flags (nested, byte order) dropped
        off += (n + 3) & ~3
    return out


def _be(buf: bytes, span: tuple[int, int] | None) -> int | None:
    return int.from_bytes(buf[span[0]:span[1]], "big") if span else None


def _ct_tuple(buf: bytes, span: tuple[int, int] | None, family: int) -> CtTuple | None:
    if span is None:
        return None
    top = _walk(buf, *span)
    ip = _walk(buf, *top[1]) if 1 in top else {}
    pr = _walk(buf, *top[2]) if 2 in top else {}
    a = 1 if family == socket.AF_INET else 3

    def addr(k: int) -> str | None:
        sp = ip.get(k)
        return socket.inet_ntop(family, buf[sp[0]:sp[1]]) if sp else None

    proto = _be(buf, pr.get(1))
    icmp = 4 if proto == socket.IPPROTO_ICMP else 7 if proto == socket.IPPROTO_ICMPV6 else None
    if icmp is not None:
        return CtTuple(family, addr(a), addr(a + 1), proto, icmp_id=_be(buf, pr.get(icmp)),
                       icmp_type=_be(buf, pr.get(icmp + 1)))
    return CtTuple(family, addr(a), addr(a + 1), proto, _be(buf, pr.get(2)), _be(buf, pr.get(3)))


def parse_entry(buf: bytes, off: int, end: int) -> CtEntry:
    """The entry of one dump message's payload (nfgenmsg, then attributes) in buf[off:end]."""
    family = buf[off]
    top = _walk(buf, off + 4, end)
    info = None
    if 4 in top:  # CTA_PROTOINFO / CTA_PROTOINFO_TCP / CTA_PROTOINFO_TCP_STATE
        tcp = _walk(buf, *top[4]).get(1)
        state = _be(buf, _walk(buf, *tcp).get(1)) if tcp else None
        info = TcpInfo(state) if state is not None else None
    return CtEntry(_ct_tuple(buf, top.get(1), family), _ct_tuple(buf, top.get(2), family),
                   _be(buf, top.get(3)) or 0, _be(buf, top.get(7)) or 0,
                   _be(buf, top.get(8)) or 0, info)


def _messages(data: bytes):
    """(payload start, end, type, sequence) of each netlink message in ``data``."""
    off = 0
    while off + _HDR.size <= len(data):
        length, mtype, _, seq, _ = _HDR.unpack_from(data, off)
        if length < _HDR.size or off + length > len(data):
            return
        yield off + _HDR.size, off + length, mtype, seq
        off += (length + 3) & ~3


class CtBatch:
    """A NETLINK_NETFILTER socket of one namespace that creates entries in batches: one
    send of many requests (packed by hand), their acknowledgements read in bulk.
    pyroute2's session makes one round trip per request, tens of milliseconds each in
    the emulated VM: two hundred flows took seconds, in a freeze window."""

    def __init__(self, netns: str | None = None, batch: int = 128) -> None:
        from procns.netns import in_netns

        with in_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      _NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.batch, self.seq = batch, 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> CtBatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def dump(self) -> list[CtEntry]:
        """Every entry of the namespace's table (every family), read by hand."""
        self.seq += 1
        self.sock.send(request(_CT_GET, _NLM_REQUEST | _NLM_DUMP, self.seq, socket.AF_UNSPEC,
                               b""))
        out: list[CtEntry] = []
        while True:
            data = self.sock.recv(1 << 17)
            for off, end, mtype, seq in _messages(data):
                if seq != self.seq:
                    continue
                if mtype == _NLMSG_DONE:
                    return out
                if mtype == _NLMSG_ERROR:
                    err = -_ERR.unpack_from(data, off)[0]
                    raise OSError(err, f"conntrack dump: {os.strerror(err)}")
                if mtype == (_SUBSYS_CTNETLINK << 8) | _CT_NEW:
                    out.append(parse_entry(data, off, end))

    def install(self, flows) -> tuple[list[NatFlow], list[tuple[NatFlow, str]]]:
        """Create each flow's entry with its binding, in place of any entry of the same
        original tuple. Returns (installed, [(flow, why) not]): the kernel's refusal, as
        EEXIST when a packet of the flow made a fresh entry first (that one is then
        masqueraded anew)."""
        done: list[NatFlow] = []
        failed: list[tuple[NatFlow, str]] = []
        for i in range(0, len(flows), self.batch):
            data, adds = [], {}
            for f in flows[i:i + self.batch]:
                self.seq += 2
                data.append(request(_CT_DELETE, _NLM_REQUEST | _NLM_ACK, self.seq - 1,
                                    f.family, _orig(f)))
                data.append(request(_CT_NEW, _NLM_REQUEST | _NLM_ACK | _NLM_CREATE | _NLM_EXCL,
                                    self.seq, f.family, _create_attrs(f)))
                adds[self.seq] = f
            self.sock.send(b"".join(data))
            errors = self._acks(self.seq - len(data) + 1, self.seq)
            for seq, f in adds.items():
                if errors[seq]:
                    failed.append((f, os.strerror(errors[seq])))
                else:
                    done.append(f)
        return done, failed

    def _acks(self, first: int, last: int) -> dict[int, int]:
        """{sequence: errno (0: done)} of requests ``first``..``last``."""
        out: dict[int, int] = {}
        while len(out) < last - first + 1:
            data = self.sock.recv(1 << 16)
            for off, _, mtype, seq in _messages(data):
                if mtype == _NLMSG_ERROR and first <= seq <= last:
                    out[seq] = -_ERR.unpack_from(data, off)[0]
        return out


class CtEvents:
    """The entries conntrack confirms in one namespace from now on (ctnetlink's NEW
    event group): what a copy of the table taken now misses later, read without a dump.
    The kernel dropping events (the buffer overflowed) raises :class:`EventsLost`."""

    GROUP_NEW = 1  # NFNLGRP_CONNTRACK_NEW, as a bind() group mask

    def __init__(self, netns: str | None = None, rcvbuf: int = 8 << 20) -> None:
        from procns.netns import in_netns

        with in_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      _NETLINK_NETFILTER)
        try:
            try:  # root: past net.core.rmem_max
                self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, self.GROUP_NEW))
        except BaseException:
            self.sock.close()
            raise

    def read(self) -> list[CtEntry]:
        """Every entry confirmed since the last read (never blocks)."""
        out: list[CtEntry] = []
        while True:
            try:
                data = self.sock.recv(1 << 17, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == 105:  # ENOBUFS
                    raise EventsLost("conntrack events were dropped") from None
                raise
            for off, end, mtype, _ in _messages(data):
                if mtype == (_SUBSYS_CTNETLINK << 8) | _CT_NEW:
                    out.append(parse_entry(data, off, end))

    def close(self) -> None:
        self.sock.close()


class EventsLost(OSError):
    """A :class:`CtEvents` reader fell behind: a dump must say what it missed."""


def translated(netns: str | None, pools, ct: CtBatch | None = None) -> list[NatFlow]:
    """Every UE flow of ``pools`` in ``netns`` the masquerade translated (bound or not).
    ``ct``: a socket of ``netns`` already open to use (opened beforehand, out of a
    freeze window)."""
    if ct is not None:
        return [f for e in ct.dump() if (f := flow_of(e, pools)) is not None]
    with CtBatch(netns) as own:
        return translated(netns, pools, own)


def install_all(netns: str | None, flows) -> tuple[list[NatFlow], list[tuple[NatFlow, str]]]:
    """Create each of ``flows`` in ``netns`` with its binding (another host's flows, the
    user plane staged there). Returns (installed, [(flow, why) not])."""
    with CtBatch(netns) as b:
        return b.install(list(flows))


def rebind(netns: str | None, pools) -> tuple[list[NatFlow], list[tuple[NatFlow, str]]]:
    """Give the UE flows of ``pools`` in ``netns`` that are translated but unbound (as
    CRIU restores them) their binding back. Returns (rebound, [(flow, why) not])."""
    with CtBatch(netns) as b:
        return b.install([f for e in b.dump() if not bound(e)
                          and (f := flow_of(e, pools)) is not None])


# -- the wire form: a flow as a JSON row, read back typed and range-checked --------------

_PROTOS = (socket.IPPROTO_TCP, socket.IPPROTO_UDP, *_ICMP_ECHO)


def to_row(f: NatFlow) -> list:
    return [f.family, f.proto, f.ue, f.peer, f.ue_port, f.peer_port, f.nat_addr, f.nat_port,
            f.timeout, f.status, f.tcp_state, f.mark]


def from_row(row, pools) -> NatFlow:
    """The NatFlow of a row :func:`to_row` wrote; ValueError for anything else, or a UE
    outside ``pools``."""
    if not isinstance(row, list) or len(row) != 12:
        raise ValueError("not a NAT flow row")
    family, proto, ue, peer, ue_port, peer_port, nat_addr, nat_port, timeout, status, \
        tcp_state, mark = row
    ints = (family, proto, ue_port, peer_port, nat_port, timeout, status, mark)
    if any(type(v) is not int for v in ints) or not all(isinstance(a, str)
                                                        for a in (ue, peer, nat_addr)):
        raise ValueError("NAT flow field of the wrong type")
    version = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(family)
    addrs = [ipaddress.ip_address(a) for a in (ue, peer, nat_addr)]
    if version is None or any(a.version != version for a in addrs):
        raise ValueError(f"NAT flow of family {family} with addresses of another")
    if proto not in _PROTOS or (proto in _ICMP_ECHO) != (peer_port == 0):
        raise ValueError(f"NAT flow of protocol {proto}")
    if not all(0 <= p <= 0xFFFF for p in (ue_port, peer_port, nat_port)) \
            or not 1 <= timeout < 1 << 31 or status & ~(IPS_SEEN_REPLY | IPS_ASSURED) \
            or status < 0 or not 0 <= mark < 1 << 32:
        raise ValueError("NAT flow field out of range")
    if (tcp_state is None) != (proto != socket.IPPROTO_TCP) \
            or (tcp_state is not None and (type(tcp_state) is not int or not 0 <= tcp_state < 10)):
        raise ValueError("NAT flow with a bad TCP state")
    if not in_pools(addrs[0], pools):
        raise ValueError(f"NAT flow of {addrs[0]}, outside the UE pools")
    return NatFlow(family, proto, str(addrs[0]), str(addrs[1]), ue_port, peer_port,
                   str(addrs[2]), nat_port, timeout, status, tcp_state, mark)
