"""The snapshot model: plain data, no I/O.

A :class:`Snapshot` is everything needed to rebuild the GTP user plane of one
network namespace: its gtp devices (with the PDP contexts of each, held in a
compact column store, :class:`PdpTable`), the routes through them, the SGi
NAT rules that concern the UE pool, and the forwarding sysctls.

Addresses of PDP contexts are IPv4 addresses as integers (``10.0.0.1`` is
``0x0a000001``): 100,000 contexts then fit in a few megabytes.
"""

from __future__ import annotations

import ipaddress
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

V0 = 0
V1 = 1


def ip4(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def ip4int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


class PdpContext(NamedTuple):
    """One PDP context (tunnel). v1 uses ``i_tei``/``o_tei``, v0 uses ``tid``/``flow``."""

    version: int
    peer: int  # peer GSN (SGSN / eNB / GGSN) IPv4 address as int
    ms: int  # mobile station (UE) IPv4 address as int
    i_tei: int = 0
    o_tei: int = 0
    tid: int = 0
    flow: int = 0
    peer6: str = ''  # Linux 6.10+ only
    ms6: str = ''

    @property
    def peer_addr(self) -> str:
        return ip4(self.peer)

    @property
    def ms_addr(self) -> str:
        return ip4(self.ms)

    def sort_key(self) -> tuple:
        return (self.version, self.i_tei if self.version == V1 else self.tid, self.ms,
                self.o_tei, self.flow, self.peer, self.peer6, self.ms6)

    def as_dict(self) -> dict:
        d: dict[str, Any] = {'version': self.version}
        if self.version == V1:
            d.update(i_tei=self.i_tei, o_tei=self.o_tei)
        else:
            d.update(tid=self.tid, flow=self.flow)
        d.update(peer=self.peer_addr, ms=self.ms_addr)
        if self.peer6 or self.ms6:
            d.update(peer6=self.peer6, ms6=self.ms6)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PdpContext:
        return cls(version=d['version'], peer=ip4int(d['peer']), ms=ip4int(d['ms']),
                   i_tei=d.get('i_tei', 0), o_tei=d.get('o_tei', 0), tid=d.get('tid', 0),
                   flow=d.get('flow', 0), peer6=d.get('peer6', ''), ms6=d.get('ms6', ''))


class PdpTable:
    """PDP contexts of one device, stored column by column (``array`` per field)."""

    __slots__ = ('version', 'tid', 'flow', 'i_tei', 'o_tei', 'peer', 'ms', 'v6')

    def __init__(self, contexts=()):
        self.version = array('B')
        self.tid = array('Q')
        self.flow = array('H')
        self.i_tei = array('I')
        self.o_tei = array('I')
        self.peer = array('I')
        self.ms = array('I')
        self.v6: dict[int, tuple[str, str]] = {}  # row -> (peer6, ms6), rare
        for c in contexts:
            self.append(c)

    def columns(self):
        return self.version, self.tid, self.flow, self.i_tei, self.o_tei, self.peer, self.ms

    def append_v1(self, peer: int, ms: int, i_tei: int, o_tei: int) -> None:
        self.version.append(V1)
        self.tid.append(0)
        self.flow.append(0)
        self.i_tei.append(i_tei)
        self.o_tei.append(o_tei)
        self.peer.append(peer)
        self.ms.append(ms)

    def append_v0(self, peer: int, ms: int, tid: int, flow: int) -> None:
        self.version.append(V0)
        self.tid.append(tid)
        self.flow.append(flow)
        self.i_tei.append(0)
        self.o_tei.append(0)
        self.peer.append(peer)
        self.ms.append(ms)

    def append(self, c: PdpContext) -> None:
        if c.peer6 or c.ms6:
            self.v6[len(self.version)] = (c.peer6, c.ms6)
        self.version.append(c.version)
        self.tid.append(c.tid)
        self.flow.append(c.flow)
        self.i_tei.append(c.i_tei)
        self.o_tei.append(c.o_tei)
        self.peer.append(c.peer)
        self.ms.append(c.ms)

    def __len__(self) -> int:
        return len(self.version)

    def __getitem__(self, i: int) -> PdpContext:
        p6, m6 = self.v6.get(i, ('', ''))
        return PdpContext(self.version[i], self.peer[i], self.ms[i], self.i_tei[i],
                          self.o_tei[i], self.tid[i], self.flow[i], p6, m6)

    def __iter__(self):
        for i in range(len(self.version)):
            yield self[i]

    def __eq__(self, other) -> bool:
        if not isinstance(other, PdpTable):
            return NotImplemented
        return self.columns() == other.columns() and self.v6 == other.v6

    def __repr__(self) -> str:
        return f'<PdpTable {len(self)} contexts>'

    def sorted(self) -> PdpTable:
        """A copy in canonical order (see :meth:`sort`)."""
        out = PdpTable()
        out.extend(self)
        out.sort()
        return out

    def order(self) -> list[int]:
        """Row numbers in canonical order: v0 by TID, then v1 by I_TEI, ties by MS address."""
        n = len(self.version)
        if not self.v6 and self.count_version(V1) == n and len(set(self.i_tei)) == n:
            # the usual table (GTPv1 only, I_TEI unique per device, as the kernel
            # keeps it): one sort with a key function written in C
            return sorted(range(n), key=self.i_tei.__getitem__)
        return sorted(range(n), key=lambda i: self[i].sort_key())

    def sort(self) -> None:
        """Put rows in canonical order (see :meth:`order`).

        Columns are replaced one at a time, so at most one extra column is alive.
        """
        order = self.order()
        if all(map(int.__eq__, order, range(len(order)))):
            return
        for name in ('version', 'tid', 'flow', 'i_tei', 'o_tei', 'peer', 'ms'):
            src = getattr(self, name)
            setattr(self, name, array(src.typecode, map(src.__getitem__, order)))
            del src
        if self.v6:
            self.v6 = {new: self.v6[old] for new, old in enumerate(order) if old in self.v6}

    def slice(self, start: int, stop: int) -> PdpTable:
        out = PdpTable()
        for src, dst in zip(self.columns(), out.columns()):
            dst.extend(src[start:stop])
        out.v6 = {i - start: v for i, v in self.v6.items() if start <= i < stop}
        return out

    def extend(self, other: PdpTable) -> None:
        base = len(self)
        for dst, src in zip(self.columns(), other.columns()):
            dst.extend(src)
        self.v6.update({base + i: v for i, v in other.v6.items()})

    def keys(self) -> set:
        """Identity of each row as the kernel sees it: (version, I_TEI or TID)."""
        return {(v, t if v else d) for v, t, d in zip(self.version, self.i_tei, self.tid)}

    def keys_unique(self) -> bool:
        """True when no two rows share a key (see :meth:`keys`)."""
        n = len(self.version)
        if self.count_version(V1) == n:
            return len(set(self.i_tei)) == n
        return len(self.keys()) == n

    def count_version(self, version: int) -> int:
        """Rows of that GTP version (on the column's bytes: no Python int per row)."""
        return self.version.tobytes().count(version)


SOCKET_KERNEL = 'kernel'  # IFLA_GTP_CREATE_SOCKETS: the kernel owns them
SOCKET_TASK = 'task'  # a task's UDP socket, found by its fd
SOCKET_NONE = 'none'  # the device has no socket for this version
SOCKET_UNKNOWN = 'unknown'  # a socket exists but its owner could not be found


@dataclass
class SocketRef:
    """Where the socket behind ``IFLA_GTP_FD0`` / ``FD1`` of a device comes from."""

    kind: str = SOCKET_NONE
    pid: int = 0
    fd: int = -1
    family: int = 0  # AF_INET / AF_INET6
    addr: str = ''
    port: int = 0
    inode: int = 0
    guessed: bool = False  # several devices: matched to the device by creation order

    def describe(self) -> str:
        if self.kind == SOCKET_TASK:
            g = ', guessed' if self.guessed else ''
            return f'task {self.pid} fd {self.fd} ({self.addr}:{self.port}{g})'
        return self.kind


@dataclass
class Address:
    family: int
    local: str
    prefixlen: int
    address: str = ''  # peer address (IFA_ADDRESS) when it differs from local

    def cidr(self) -> str:
        return f'{self.local}/{self.prefixlen}'


@dataclass
class Device:
    name: str
    ifindex: int
    role: int = 0  # 0 GGSN, 1 SGSN
    hashsize: int = 1024
    restart_count: int = 0
    mtu: int = 1452
    up: bool = False
    addresses: list[Address] = field(default_factory=list)
    sock0: SocketRef = field(default_factory=SocketRef)  # GTPv0, UDP 3386
    sock1: SocketRef = field(default_factory=SocketRef)  # GTPv1-U, UDP 2152
    contexts: PdpTable = field(default_factory=PdpTable)

    @property
    def kernel_sockets(self) -> bool:
        return self.sock1.kind == SOCKET_KERNEL or self.sock0.kind == SOCKET_KERNEL


@dataclass
class Route:
    family: int
    dst: str
    dst_len: int
    dev: str  # device name (ifindex changes across a restore)
    table: int = 254
    type: int = 1  # RTN_UNICAST
    scope: int = 0
    proto: int = 3  # RTPROT_BOOT, what `ip route add` uses
    priority: int = 0
    prefsrc: str = ''
    gateway: str = ''

    def cidr(self) -> str:
        return f'{self.dst}/{self.dst_len}'


@dataclass
class NatRule:
    """A NAT rule of the UE pool, kept in the syntax of the tool that shows it.

    ``backend`` is ``iptables-nft``, ``iptables-legacy`` (``rule`` is an
    ``iptables -S`` line without ``-A CHAIN``) or ``nft`` (``rule`` is the
    statement text of ``nft list chain``, ``table`` is ``<family> <name>``).
    """

    backend: str
    family: int
    table: str
    chain: str
    rule: str
    chain_spec: str = ''  # nft only: "type nat hook postrouting priority srcnat; ..."


@dataclass
class Snapshot:
    devices: list[Device] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    nat_rules: list[NatRule] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    netns: str = ''  # where it was taken (informative)
    kernel: str = ''  # uname -r at dump time (informative)
    created: float = 0.0  # time.time() at dump (informative)

    def device(self, name: str) -> Device | None:
        for d in self.devices:
            if d.name == name:
                return d
        return None

    @property
    def n_contexts(self) -> int:
        return sum(len(d.contexts) for d in self.devices)

    def normalize(self, contexts: bool = True) -> Snapshot:
        """Put everything in canonical order so equal states compare equal.

        With ``contexts`` false the PDP contexts keep their order (the kernel's, for a
        snapshot just taken): :meth:`state` and :meth:`PdpTable.sorted` compare them
        in canonical order anyway, and sorting 100,000 rows is not free.
        """
        self.devices.sort(key=lambda d: d.name)
        for d in self.devices:
            if contexts:
                d.contexts.sort()
            d.addresses.sort(key=lambda a: (a.family, a.local, a.prefixlen))
        self.routes.sort(key=lambda r: (r.family, r.table, r.dev, r.dst, r.dst_len,
                                        r.priority))
        self.nat_rules.sort(key=lambda n: (n.backend, n.family, n.table, n.chain, n.rule))
        self.sysctls = dict(sorted(self.sysctls.items()))
        return self

    def state(self, *, with_sockets: bool = True) -> dict:
        """The comparable state: everything but ifindexes, socket inodes and dump metadata."""
        d = self.to_dict(contexts=False)
        for dev, src in zip(d['devices'], self.devices):
            dev.pop('ifindex')
            for s in ('sock0', 'sock1'):
                dev[s].pop('inode')
                if not with_sockets:
                    dev[s] = dev[s]['kind']
            dev['contexts'] = src.contexts.sorted()
        for k in ('netns', 'kernel', 'created'):
            d.pop(k)
        return d

    def to_dict(self, contexts: bool = True) -> dict:
        out: dict[str, Any] = {
            'netns': self.netns,
            'kernel': self.kernel,
            'created': self.created,
            'devices': [],
            'routes': [asdict(r) for r in self.routes],
            'nat_rules': [asdict(n) for n in self.nat_rules],
            'sysctls': dict(self.sysctls),
        }
        for dev in self.devices:
            d = {k: v for k, v in asdict_shallow(dev).items() if k != 'contexts'}
            d['addresses'] = [asdict(a) for a in dev.addresses]
            d['sock0'] = asdict(dev.sock0)
            d['sock1'] = asdict(dev.sock1)
            if contexts:
                d['contexts'] = [c.as_dict() for c in dev.contexts]
            out['devices'].append(d)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Snapshot:
        snap = cls(netns=d.get('netns', ''), kernel=d.get('kernel', ''),
                   created=d.get('created', 0.0), sysctls=dict(d.get('sysctls', {})),
                   routes=[Route(**r) for r in d.get('routes', [])],
                   nat_rules=[NatRule(**n) for n in d.get('nat_rules', [])])
        for dd in d.get('devices', []):
            dd = dict(dd)
            dev = Device(
                name=dd.pop('name'), ifindex=dd.pop('ifindex', 0),
                addresses=[Address(**a) for a in dd.pop('addresses', [])],
                sock0=SocketRef(**dd.pop('sock0', {})), sock1=SocketRef(**dd.pop('sock1', {})),
                contexts=PdpTable(PdpContext.from_dict(c) for c in dd.pop('contexts', [])),
                **dd)
            snap.devices.append(dev)
        return snap


def asdict_shallow(obj) -> dict:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
