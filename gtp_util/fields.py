"""Every field of a snapshot read from an image, checked before anything uses it.

Images cross hosts and arrive as archives: :func:`check_snapshot` runs on what the
binary and JSON loaders built and raises :class:`~gtp_util.errors.BadImage` (one
line) at the first field of the wrong type, out of range, or not what the kernel
accepts: addresses that do not parse, interface names the kernel would refuse,
text with control characters, NAT rules of a form the toolkit does not write,
sysctls other than the two forwarding switches it records. Pure.
"""

from __future__ import annotations

import ipaddress
import math
import socket

from . import natrule
from .errors import BadImage
from .model import (
    SOCKET_KERNEL,
    SOCKET_NONE,
    SOCKET_TASK,
    SOCKET_UNKNOWN,
    Address,
    Device,
    NatRule,
    Route,
    Snapshot,
    SocketRef,
)

# the sysctls gtp_util records (dump.SYSCTLS, dotted) and the values they may take
SYSCTLS = {'net.ipv4.ip_forward': ('0', '1'), 'net.ipv6.conf.all.forwarding': ('0', '1')}
MAX_TEXT = 4096
PID_MAX = 1 << 22  # PID_MAX_LIMIT on 64-bit
U8, U16, U32, U64 = 0xFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _int(v: object, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise BadImage(f"{what} {v!r} is not an integer in [{lo}, {hi}]")
    return v


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        raise BadImage(f"{what} {v!r} is not true or false")
    return v


def text(v: object, what: str, limit: int = MAX_TEXT) -> str:
    """A string without control characters, at most ``limit`` characters."""
    if not isinstance(v, str):
        raise BadImage(f"{what} {v!r:.60} is not a string")
    if len(v) > limit:
        raise BadImage(f"{what} is longer than {limit} characters")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in v):
        raise BadImage(f"{what} {v!r:.60} holds control characters")
    return v


def _ifname(v: object, what: str) -> str:
    try:
        return natrule.check_ifname(v, what)
    except ValueError as e:
        raise BadImage(str(e)) from None


def _family(v: object, what: str, allow_zero: bool = False) -> int:
    if type(v) is not int or v not in FAMILIES + ((0,) if allow_zero else ()):
        raise BadImage(f"{what} address family {v!r} is neither AF_INET nor AF_INET6")
    return v


def _ip(v: object, family: int, what: str, empty_ok: bool = True) -> str:
    if v == '' and empty_ok:
        return v
    checked = text(v, what, 64)
    try:
        a = ipaddress.ip_address(checked)
    except ValueError:
        raise BadImage(f"{what} {v!r} is not an IP address") from None
    if family and a.version != (6 if family == socket.AF_INET6 else 4):
        raise BadImage(f"{what} {v!r} is not of address family {family}")
    return v  # type: ignore[return-value]


def _prefixlen(v: object, family: int, what: str) -> int:
    return _int(v, 0, 128 if family == socket.AF_INET6 else 32, what)


def check_socket(s: SocketRef, what: str) -> None:
    if s.kind not in (SOCKET_KERNEL, SOCKET_TASK, SOCKET_NONE, SOCKET_UNKNOWN):
        raise BadImage(f"{what}: socket kind {s.kind!r:.40} is unknown")
    _int(s.pid, 0, PID_MAX, f"{what}: PID")
    _int(s.fd, -1, (1 << 31) - 1, f"{what}: fd")
    fam = _family(s.family, what, allow_zero=True)
    _ip(s.addr, fam, f"{what}: address")
    _int(s.port, 0, U16, f"{what}: port")
    _int(s.inode, 0, U64, f"{what}: inode")
    _bool(s.guessed, f"{what}: guessed")


def check_address(a: Address, what: str) -> None:
    fam = _family(a.family, what)
    _ip(a.local, fam, f"{what}: local address", empty_ok=False)
    _prefixlen(a.prefixlen, fam, f"{what}: prefix length")
    _ip(a.address, fam, f"{what}: peer address")


def check_device(d: Device) -> None:
    name = _ifname(d.name, 'device name')
    what = f"device {name}"
    _int(d.ifindex, 0, (1 << 31) - 1, f"{what}: ifindex")
    _int(d.role, 0, 1, f"{what}: role")
    _int(d.hashsize, 1, (1 << 31) - 1, f"{what}: PDP hash size")
    _int(d.restart_count, 0, U8, f"{what}: restart count")
    _int(d.mtu, 0, U16, f"{what}: MTU")
    _bool(d.up, f"{what}: up")
    if not isinstance(d.addresses, list):
        raise BadImage(f"{what}: addresses is not a list")
    for a in d.addresses:
        check_address(a, f"{what} address")
    check_socket(d.sock0, f"{what} GTPv0 socket")
    check_socket(d.sock1, f"{what} GTPv1 socket")
    t = d.contexts
    if set(t.version.tobytes()) - {0, 1}:
        raise BadImage(f"{what}: a PDP context has an unknown GTP version")
    for row, pair in t.v6.items():
        if type(row) is not int or not 0 <= row < len(t) or not isinstance(pair, tuple) \
                or len(pair) != 2:
            raise BadImage(f"{what}: IPv6 addresses for PDP context row {row!r} of {len(t)}")
        for addr in pair:
            _ip(addr, socket.AF_INET6, f"{what}: PDP context IPv6 address")


def check_route(r: Route) -> None:
    fam = _family(r.family, 'route')
    what = f"route {r.dst!r:.40}"
    _ip(r.dst, fam, f"{what}: destination", empty_ok=False)
    _prefixlen(r.dst_len, fam, f"{what}: prefix length")
    _ifname(r.dev, f"{what}: device")
    _int(r.table, 0, U32, f"{what}: table")
    _int(r.type, 0, U8, f"{what}: type")
    _int(r.scope, 0, U8, f"{what}: scope")
    _int(r.proto, 0, U8, f"{what}: protocol")
    _int(r.priority, 0, U32, f"{what}: priority")
    _ip(r.prefsrc, fam, f"{what}: preferred source")
    _ip(r.gateway, fam, f"{what}: gateway")


def check_nat_rule(n: NatRule) -> None:
    for f in ('backend', 'table', 'chain', 'rule', 'chain_spec'):
        text(getattr(n, f), f"NAT rule {f}", natrule.MAX_RULE)
    try:
        natrule.parse_rule(n)
    except ValueError as e:
        raise BadImage(str(e)) from None


def check_snapshot(snap: Snapshot) -> Snapshot:
    """``snap`` when every field is well-formed; raise :class:`BadImage` otherwise."""
    text(snap.netns, 'netns')
    text(snap.kernel, 'kernel release', 256)
    if type(snap.created) not in (int, float) or not math.isfinite(snap.created):
        raise BadImage(f"creation time {snap.created!r:.40} is not a number")
    for k, v in snap.sysctls.items():
        if k not in SYSCTLS:
            raise BadImage(f"sysctl {k!r:.60} is not one gtp_util records "
                           f"({', '.join(SYSCTLS)})")
        if v not in SYSCTLS[k]:
            raise BadImage(f"sysctl {k} value {v!r:.40} is not one of {', '.join(SYSCTLS[k])}")
    for d in snap.devices:
        check_device(d)
    for r in snap.routes:
        check_route(r)
    for n in snap.nat_rules:
        check_nat_rule(n)
    return snap


__all__ = ['SYSCTLS', 'check_snapshot', 'text']
