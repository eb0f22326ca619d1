"""Read the GTP user plane of a network namespace into a :class:`Snapshot`, and take it away."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import socket
import time

from procns.caps import CAP_NET_ADMIN, has_cap
from procns.netns import in_netns

from . import nat
from .errors import GtpError, GtpUnavailable, NoPermission, NoSuchTarget
from .model import SOCKET_TASK, Address, Device, PdpTable, Route, Snapshot
from .netlink import PdpChannel, register_link_kind

IFF_UP = 0x1
RTPROT_KERNEL = 2
RT_TABLE_LOCAL = 255
RT_SCOPE_LINK = 253
SYSCTLS = ('net/ipv4/ip_forward', 'net/ipv6/conf/all/forwarding')


def check_target(netns: str | None) -> None:
    """Raise the right error when ``netns`` is missing or we lack CAP_NET_ADMIN."""
    if netns is not None and not os.path.exists(netns):
        raise NoSuchTarget(f"network namespace {netns} does not exist")
    if not has_cap(CAP_NET_ADMIN):
        raise NoPermission("CAP_NET_ADMIN is needed (run as root)")


def open_iproute(netns: str | None):
    from pyroute2.iproute.linux import IPRoute
    register_link_kind()
    try:
        with in_netns(netns):
            return IPRoute()
    except FileNotFoundError:
        raise NoSuchTarget(f"network namespace {netns} does not exist") from None
    except PermissionError:
        raise NoPermission(f"cannot enter network namespace {netns}") from None


def gtp_links(ipr) -> list:
    out = []
    for link in ipr.get_links():
        info = link.get_attr('IFLA_LINKINFO')
        if info is not None and info.get_attr('IFLA_INFO_KIND') == 'gtp':
            out.append(link)
    return out


def _device(ipr, link) -> Device:
    data = link.get_attr('IFLA_LINKINFO').get_attr('IFLA_INFO_DATA')
    get = data.get_attr if data is not None else (lambda _k: None)
    idx = link['index']
    dev = Device(name=link.get_attr('IFLA_IFNAME'), ifindex=idx,
                 role=get('IFLA_GTP_ROLE') or 0,
                 hashsize=get('IFLA_GTP_PDP_HASHSIZE') or 1024,
                 restart_count=get('IFLA_GTP_RESTART_COUNT') or 0,
                 mtu=link.get_attr('IFLA_MTU'), up=bool(link['flags'] & IFF_UP))
    for a in ipr.get_addr(index=idx):
        if a['family'] == socket.AF_INET6 and a['scope'] == RT_SCOPE_LINK:
            continue  # fe80:: made by the kernel when the link goes up
        local = a.get_attr('IFA_LOCAL') or a.get_attr('IFA_ADDRESS')
        peer = a.get_attr('IFA_ADDRESS') or ''
        dev.addresses.append(Address(family=a['family'], local=local, prefixlen=a['prefixlen'],
                                     address='' if peer == local else peer))
    return dev


def read_routes(ipr, names: dict[int, str]) -> list[Route]:
    """Routes (all tables, both families) whose output device is one of ``names``."""
    routes = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.route('dump', family=fam):
            oif = r.get_attr('RTA_OIF')
            table = r.get_attr('RTA_TABLE') or r['table']
            if oif not in names or r['proto'] == RTPROT_KERNEL or table == RT_TABLE_LOCAL:
                continue
            dst = r.get_attr('RTA_DST') or ('0.0.0.0' if fam == socket.AF_INET else '::')
            routes.append(Route(family=fam, dst=dst, dst_len=r['dst_len'], dev=names[oif],
                                table=table, type=r['type'], scope=r['scope'],
                                proto=r['proto'], priority=r.get_attr('RTA_PRIORITY') or 0,
                                prefsrc=r.get_attr('RTA_PREFSRC') or '',
                                gateway=r.get_attr('RTA_GATEWAY') or ''))
    return routes


def read_sysctls(netns: str | None) -> dict[str, str]:
    out = {}
    with in_netns(netns):
        for name in SYSCTLS:
            try:
                with open(f'/proc/sys/{name}', encoding='ascii') as f:
                    out[name.replace('/', '.')] = f.read().strip()
            except FileNotFoundError:
                pass
    return out


def ue_pools(snap: Snapshot) -> list:
    """UE prefixes: the routes through gtp devices."""
    return [ipaddress.ip_network(r.cidr(), strict=False) for r in snap.routes]


def take_snapshot(netns: str | None = None, *, with_nat: bool = True,
                  with_sockets: bool = True, with_contexts: bool = True) -> Snapshot:
    """Snapshot the GTP user plane of the namespace at path ``netns`` (None: our own).

    ``with_contexts`` false leaves the PDP contexts out (see :func:`refresh`).
    """
    check_target(netns)
    from .sockets import assign, discover
    ipr = open_iproute(netns)
    try:
        snap = Snapshot(netns=netns or '', kernel=os.uname().release, created=time.time())
        links = gtp_links(ipr)
        snap.devices = [_device(ipr, link) for link in links]
        if snap.devices and with_contexts:
            with PdpChannel(netns) as chan:
                tables = chan.dump()
            for dev in snap.devices:
                tab = tables.pop(dev.ifindex, None)
                if tab is not None:
                    dev.contexts = tab
        if snap.devices:  # routes too when contexts are left out: refresh() keeps them
            names = {d.ifindex: d.name for d in snap.devices}
            snap.routes = read_routes(ipr, names)
        if with_sockets and snap.devices:
            refs = assign([d.ifindex for d in snap.devices], discover(netns))
            for dev in snap.devices:
                dev.sock0, dev.sock1 = refs[dev.ifindex]
        snap.sysctls = read_sysctls(netns)
        if with_nat and snap.routes:
            snap.nat_rules = nat.read_rules(netns, ue_pools(snap))
    finally:
        ipr.close()
    return snap.normalize(contexts=False)


class Watch:
    """Tells whether links, addresses, routes (and PDP contexts) of a namespace changed
    since it was opened.

    A netlink socket of that namespace subscribed to rtnetlink's link, address and
    route groups: the kernel sends it a message for every such change (or flags an
    overflow), so nothing to read means nothing changed. Statistics never notify.
    With ``contexts``, a generic netlink socket in the gtp family's multicast group
    does the same for PDP contexts (``contexts_changed``).
    """

    GROUPS = 0x1 | 0x10 | 0x40 | 0x100 | 0x400  # RTMGRP_LINK, IPV4_IFADDR, IPV4_ROUTE,
    # IPV6_IFADDR, IPV6_ROUTE

    def __init__(self, netns: str | None = None, *, contexts: bool = False):
        self.pdp: PdpChannel | None = None
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC
                                      | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
        try:
            self.sock.bind((0, self.GROUPS))
            if contexts:
                try:
                    self.pdp = PdpChannel(netns, rcvbuf=4 << 20)
                except GtpUnavailable:  # no gtp family: a device appearing is a link change
                    self.contexts_watched = True
                else:
                    self.contexts_watched = self.pdp.subscribe()
            else:
                self.contexts_watched = False
        except BaseException:
            self.close()
            raise

    def changed(self) -> bool:
        """Links, addresses or routes changed."""
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:  # ENOBUFS: so many changes that some were dropped
            return True
        return True

    def contexts_changed(self) -> bool:
        """PDP contexts added or deleted (True when they were not watched)."""
        if not self.contexts_watched:
            return True
        return self.pdp is not None and self.pdp.changes_pending()

    def close(self) -> None:
        self.sock.close()
        if self.pdp is not None:
            self.pdp.close()


def refresh(base: Snapshot, netns: str | None = None, *,
            contexts: bool = True) -> Snapshot | None:
    """``base`` (taken with or without contexts) with the PDP contexts read again now.

    The quick way to snapshot a namespace whose links, addresses and routes are
    known not to have changed since ``base`` (a :class:`Watch` says so): one GETPDP
    dump and the sysctls; ``contexts`` false keeps ``base``'s contexts (the watch
    saw none change). Returns None when ``base`` no longer describes the
    namespace: a task socket it names is not at its fd any more, or the dump shows
    a gtp device ``base`` does not have. Then take a full snapshot.
    """
    check_target(netns)
    for dev in base.devices:
        for ref in (dev.sock0, dev.sock1):
            if ref.kind == SOCKET_TASK:
                try:
                    if os.stat(f'/proc/{ref.pid}/fd/{ref.fd}').st_ino != ref.inode:
                        return None
                except OSError:
                    return None
    if not contexts:
        tables = {d.ifindex: d.contexts for d in base.devices}
    elif base.devices:
        with PdpChannel(netns) as chan:
            tables = chan.dump()
    else:
        tables = {}
    by_index = {d.ifindex: d for d in base.devices}
    if tables.keys() - by_index.keys():
        return None
    snap = Snapshot(netns=netns or '', kernel=base.kernel, created=time.time(),
                    routes=list(base.routes), nat_rules=list(base.nat_rules),
                    sysctls=read_sysctls(netns))
    for dev in base.devices:
        snap.devices.append(dataclasses.replace(dev, addresses=list(dev.addresses),
                                                contexts=tables.get(dev.ifindex, PdpTable())))
    return snap.normalize(contexts=False)


def delete_links(netns: str | None, ifindexes) -> None:
    """Delete links by ifindex with one RTM_DELLINK each on a plain netlink socket.

    For indexes just read from the same namespace (a snapshot taken in the freeze
    window): no pyroute2 session to set up, which costs more than the deletions.
    A link already gone is fine.
    """
    from .rtnl import Rtnl, RtnlError

    with Rtnl(netns) as rt:
        for idx in ifindexes:
            try:
                rt.delete_link(idx)
            except RtnlError as exc:
                if exc.errno != errno.ENODEV:
                    raise


def remove(snap: Snapshot, netns: str | None = None, *, nat_rules: bool = True) -> None:
    """Delete what ``snap`` records from the namespace: devices (their contexts and routes
    go with them) and, unless ``nat_rules`` is false, the NAT rules. Missing items are fine.
    """
    check_target(netns)
    ipr = open_iproute(netns)
    try:
        live = {link.get_attr('IFLA_IFNAME'): link['index'] for link in gtp_links(ipr)}
        for dev in snap.devices:
            idx = live.get(dev.name)
            if idx is not None:
                try:
                    ipr.link('del', index=idx)
                except Exception as e:  # pyroute2 NetlinkError
                    raise GtpError(f"deleting device {dev.name}: {e}") from e
    finally:
        ipr.close()
    if nat_rules:
        for rule in snap.nat_rules:
            nat.delete(netns, rule)
