"""Which UDP sockets back the gtp devices of a namespace, and who holds them.

The kernel does not say which socket a gtp device uses (``gtp_fill_info`` reports
only hash size, role and restart count). We look at the namespace's UDP sockets on
the GTP ports (``/proc/thread-self/net/udp{,6}`` read from inside the namespace),
find the tasks holding them (``/proc/<pid>/fd`` links ``socket:[inode]``), and keep
those whose UDP encapsulation (``getsockopt(SOL_UDP, UDP_ENCAP)`` on a copy taken
with ``pidfd_getfd``) is GTP. A GTP-port socket no task holds is one the kernel
created (``IFLA_GTP_CREATE_SOCKETS``).

With several devices in a namespace, sockets are matched to devices by creation
order (socket inode order against ifindex order), and the match is flagged as
guessed. Socket I/O lives here; :func:`assign` is pure.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from procns.fds import steal_fd
from procns.netns import in_netns

from .model import SOCKET_KERNEL, SOCKET_NONE, SOCKET_TASK, SOCKET_UNKNOWN, SocketRef

GTP0_PORT = 3386
GTP1U_PORT = 2152
SOL_UDP = 17
UDP_ENCAP = 100
UDP_ENCAP_GTP0 = 4
UDP_ENCAP_GTP1U = 5


@dataclass
class UdpSocket:
    family: int
    addr: str
    port: int
    inode: int
    holders: list[tuple[int, int]] = field(default_factory=list)  # (pid, fd), sorted
    encap: int | None = None  # None: unknown (no holder could be asked)


def parse_proc_udp(text: str, family: int) -> list[UdpSocket]:
    """Parse /proc/net/udp or udp6 (addresses are host-endian 32-bit words in hex)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        addr_hex, port_hex = f[1].split(':')
        raw = bytes.fromhex(addr_hex)
        # each 32-bit word is printed as a host-order integer: swap back per word
        words = b''.join(int.from_bytes(raw[i:i + 4], 'big').to_bytes(4, 'little')
                         for i in range(0, len(raw), 4))
        addr = socket.inet_ntop(family, words)
        out.append(UdpSocket(family, addr, int(port_hex, 16), int(f[9])))
    return out


def udp_sockets(netns: str | None, ports=(GTP0_PORT, GTP1U_PORT)) -> list[UdpSocket]:
    """UDP sockets of the namespace bound to one of ``ports``."""
    found = []
    with in_netns(netns):
        for name, fam in (('udp', socket.AF_INET), ('udp6', socket.AF_INET6)):
            try:
                with open(f'/proc/thread-self/net/{name}', encoding='ascii') as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            found += [s for s in parse_proc_udp(text, fam) if s.port in ports]
    return found


def socket_holders(inodes: set[int]) -> dict[int, list[tuple[int, int]]]:
    """For each socket inode, the (pid, fd) pairs of every process that holds it."""
    want = {f'socket:[{i}]': i for i in inodes}
    out: dict[int, list[tuple[int, int]]] = {i: [] for i in inodes}
    me = os.getpid()
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            fds = os.listdir(f'/proc/{pid}/fd')
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f'/proc/{pid}/fd/{fd}')
            except OSError:
                continue
            ino = want.get(link)
            if ino is not None:
                out[ino].append((pid, int(fd)))
    for v in out.values():
        v.sort()
    return out


def encap_of(pid: int, fd: int) -> int | None:
    """UDP encapsulation type of fd ``fd`` of ``pid`` (None when it cannot be read)."""
    try:
        mine = steal_fd(pid, fd)
    except OSError:
        return None
    try:
        s = socket.socket(fileno=mine)
        try:
            return s.getsockopt(SOL_UDP, UDP_ENCAP)
        finally:
            s.detach()
    except OSError:
        return None
    finally:
        os.close(mine)


def discover(netns: str | None) -> list[UdpSocket]:
    """The namespace's GTP-port UDP sockets, with holders and encapsulation filled in."""
    socks = udp_sockets(netns)
    holders = socket_holders({s.inode for s in socks})
    for s in socks:
        s.holders = holders.get(s.inode, [])
        for pid, fd in s.holders:
            s.encap = encap_of(pid, fd)
            if s.encap is not None:
                break
    return socks


def _ref(s: UdpSocket, guessed: bool) -> SocketRef:
    if not s.holders:
        return SocketRef(kind=SOCKET_KERNEL, family=s.family, addr=s.addr, port=s.port,
                         inode=s.inode, guessed=guessed)
    pid, fd = s.holders[0]
    return SocketRef(kind=SOCKET_TASK, pid=pid, fd=fd, family=s.family, addr=s.addr,
                     port=s.port, inode=s.inode, guessed=guessed)


def assign(ifindexes: list[int], socks: list[UdpSocket]
           ) -> dict[int, tuple[SocketRef, SocketRef]]:
    """Match sockets to devices: ``{ifindex: (sock0, sock1)}`` (pure).

    Candidates are sockets with GTP encapsulation (held by a task) or held by no
    task at all (the kernel's own). Kernel sockets come in pairs (3386 and 2152).
    Devices in ifindex order take sockets in inode order.
    """
    def candidates(port: int, encap: int) -> list[UdpSocket]:
        return sorted((s for s in socks if s.port == port and
                       (not s.holders or s.encap == encap)), key=lambda s: s.inode)

    v1 = candidates(GTP1U_PORT, UDP_ENCAP_GTP1U)
    v0 = candidates(GTP0_PORT, UDP_ENCAP_GTP0)
    devs = sorted(ifindexes)
    guessed = len(devs) > 1
    out: dict[int, tuple[SocketRef, SocketRef]] = {}
    unknown = SocketRef(kind=SOCKET_UNKNOWN)
    for i, dev in enumerate(devs):
        s1 = v1[i] if len(v1) == len(devs) else None
        s0 = None
        if s1 is not None and not s1.holders:
            # kernel-created: its GTPv0 twin is the unheld 3386 socket closest after it
            twins = [s for s in v0 if not s.holders]
            s0 = min(twins, key=lambda s: abs(s.inode - s1.inode)) if twins else None
        elif s1 is not None:
            same = [s for s in v0 if s.holders and s.holders[0][0] == s1.holders[0][0]
                    and s.addr == s1.addr]
            if len(same) == 1:
                s0 = same[0]
            elif len(v0) == len(devs):
                s0 = v0[i]
        elif len(v0) == len(devs):
            s0 = v0[i]
        ref1 = _ref(s1, guessed) if s1 is not None else (unknown if v1 else SocketRef())
        ref0 = _ref(s0, guessed) if s0 is not None else SocketRef(kind=SOCKET_NONE)
        out[dev] = (ref0, ref1)
    return out


def find_in_task(pid: int, ref: SocketRef) -> int:
    """Return our own copy of the task's socket matching ``ref``.

    Tries fd ``ref.fd`` first (CRIU restores fds with their numbers); falls back to
    any UDP socket of the task bound to the same family, address and port. Raises
    LookupError when none matches.
    """
    tried = set()
    if ref.fd >= 0:
        tried.add(ref.fd)
        fd = _matching_copy(pid, ref.fd, ref)
        if fd is not None:
            return fd
    try:
        fds = sorted(int(x) for x in os.listdir(f'/proc/{pid}/fd'))
    except OSError as e:
        raise LookupError(f"cannot list the fds of PID {pid}: {e.strerror}") from None
    for n in fds:
        if n in tried:
            continue
        try:
            if not os.readlink(f'/proc/{pid}/fd/{n}').startswith('socket:'):
                continue
        except OSError:
            continue
        fd = _matching_copy(pid, n, ref)
        if fd is not None:
            return fd
    raise LookupError(f"PID {pid} holds no UDP socket bound to {ref.addr}:{ref.port}")


def _matching_copy(pid: int, fd: int, ref: SocketRef) -> int | None:
    try:
        mine = steal_fd(pid, fd)
    except OSError:
        return None
    try:
        s = socket.socket(fileno=mine)  # ENOTSOCK: that descriptor is no socket
    except OSError:
        os.close(mine)
        return None
    try:
        ok = (s.type == socket.SOCK_DGRAM and s.family == (ref.family or s.family)
              and s.proto in (0, socket.IPPROTO_UDP))
        if ok:
            name = s.getsockname()
            ok = name[1] == ref.port and (not ref.addr or name[0] == ref.addr)
    except OSError:
        ok = False
    finally:
        s.detach()
    if ok:
        return mine
    os.close(mine)
    return None
