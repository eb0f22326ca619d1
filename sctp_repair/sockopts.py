"""What makes an SCTP socket what it is, apart from its association: options and bind addresses.

A socket re-created elsewhere must behave as the old one for its program:
same notifications subscribed, same blocking mode, same defaults for new
associations, same buffers. ``read_setup`` takes them from a live socket
(any kernel: stock getsockopt calls only), ``apply_setup`` puts them on a new
socket before it is bound. Options are kept as the raw bytes the kernel gave,
since getsockopt and setsockopt share their layouts for all of them.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

from . import abi

SO_ACCEPTCONN = 30
SO_PROTOCOL = 38
SCTP_FRAGMENT_INTERLEAVE = 18
SCTP_PARTIAL_DELIVERY_POINT = 19
SCTP_RECVRCVINFO = 32
SCTP_RECVNXTINFO = 33
SCTP_SOCKOPT_BINDX_ADD = 100
LISTEN_BACKLOG = 128  # the kernel does not report it through getsockopt

# (level, option, size): read whole, written back as read. Buffer sizes are
# handled apart (the kernel doubles what it is given).
CARRIED = (
    (socket.SOL_SOCKET, socket.SO_REUSEADDR, 4),
    (socket.SOL_SOCKET, socket.SO_LINGER, 8),
    (socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16),
    (socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16),
    (socket.SOL_SOCKET, socket.SO_PRIORITY, 4),
    (abi.SOL_SCTP, abi.SCTP_NODELAY, 4),
    (abi.SOL_SCTP, abi.SCTP_INITMSG, 8),
    (abi.SOL_SCTP, abi.SCTP_DEFAULT_SEND_PARAM, 32),
    (abi.SOL_SCTP, SCTP_FRAGMENT_INTERLEAVE, 4),
    (abi.SOL_SCTP, SCTP_PARTIAL_DELIVERY_POINT, 4),
    (abi.SOL_SCTP, SCTP_RECVRCVINFO, 4),
    (abi.SOL_SCTP, SCTP_RECVNXTINFO, 4),
)
BUFFERS = (socket.SO_RCVBUF, socket.SO_SNDBUF)
# SCTP_ASSOC_CHANGE .. SCTP_SEND_FAILED_EVENT, what SCTP_EVENT accepts in Linux 6.1
EVENT_TYPES = range(abi.SCTP_SN_TYPE_BASE + 1, abi.SCTP_SN_TYPE_BASE + 14)


class SetupError(Exception):
    """The socket's setup could not be read or applied."""


@dataclass
class SocketSetup:
    family: int
    type: int
    nonblocking: bool
    listening: bool
    local_addrs: list[tuple[str, int]] = field(default_factory=list)
    options: list[tuple[int, int, bytes]] = field(default_factory=list)
    buffers: dict[int, int] = field(default_factory=dict)
    events: list[int] = field(default_factory=list)  # subscribed notification types

    @property
    def port(self) -> int:
        return self.local_addrs[0][1] if self.local_addrs else 0

    def to_dict(self) -> dict:
        return {"family": self.family, "type": self.type, "nonblocking": self.nonblocking,
                "listening": self.listening,
                "local_addrs": [list(a) for a in self.local_addrs],
                "options": [[lv, opt, val.hex()] for lv, opt, val in self.options],
                "buffers": {str(k): v for k, v in self.buffers.items()},
                "events": self.events}

    @classmethod
    def from_dict(cls, d: dict) -> SocketSetup:
        """From :meth:`to_dict`'s form, every field checked (it comes from an image):
        only the options of :data:`CARRIED` at their size, buffer sizes of
        :data:`BUFFERS`, known event types, addresses that parse. ValueError or
        TypeError (one line) otherwise."""
        family = _int(d["family"], "family")
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"socket family {family} is neither AF_INET nor AF_INET6")
        if _int(d["type"], "type") != socket.SOCK_STREAM:
            raise ValueError(f"socket type {d['type']} is not SOCK_STREAM")
        carried = {(lv, opt): size for lv, opt, size in CARRIED}
        options = []
        for lv, opt, val in _items(d["options"], len(CARRIED), "options"):
            raw = bytes.fromhex(val) if isinstance(val, str) else None
            if carried.get((lv, opt)) is None or raw is None or len(raw) != carried[(lv, opt)]:
                raise ValueError(f"socket option {lv!r:.20}/{opt!r:.20} is not one carried "
                                 "(or not at its size)")
            options.append((lv, opt, raw))
        buffers = {}
        for k, v in _items(list(d["buffers"].items()), len(BUFFERS), "buffers"):
            if int(k) not in BUFFERS or _int(v, "buffer size") > 1 << 31:
                raise ValueError(f"buffer {k!r:.20} = {v!r:.20} is not a socket buffer size")
            buffers[int(k)] = v
        events = [_int(e, "event") for e in _items(d["events"], len(EVENT_TYPES), "events")]
        if set(events) - set(EVENT_TYPES):
            raise ValueError(f"notification types {sorted(set(events) - set(EVENT_TYPES))} "
                             "are unknown")
        addrs = []
        for a, p in _items(d["local_addrs"], 64, "local addresses"):
            if not isinstance(a, str) or _int(p, "port") > 0xFFFF:
                raise ValueError(f"local address {a!r:.60}:{p!r:.10} is not an address and port")
            ipaddress.ip_address(a)
            addrs.append((a, p))
        nonblocking, listening = d["nonblocking"], d["listening"]
        if type(nonblocking) is not bool or type(listening) is not bool:
            raise ValueError("nonblocking and listening must be true or false")
        return cls(family=family, type=socket.SOCK_STREAM, nonblocking=nonblocking,
                   listening=listening, local_addrs=addrs, options=options, buffers=buffers,
                   events=events)


def _int(v: object, what: str) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"{what} {v!r:.40} is not a non-negative integer")
    return v


def _items(v: object, most: int, what: str) -> list:
    if not isinstance(v, list) or len(v) > most:
        raise ValueError(f"{what}: not a list of at most {most}")
    return v


def is_sctp(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.SOL_SOCKET, SO_PROTOCOL) == abi.IPPROTO_SCTP


def is_listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, SO_ACCEPTCONN))


def _unpack_addrs(raw: bytes, count: int) -> list[tuple[str, int]]:
    out, off = [], 0
    for _ in range(count):
        fam, = struct.unpack_from("=H", raw, off)
        size = 16 if fam == socket.AF_INET else 28
        ss = abi.SockaddrStorage.from_buffer_copy(raw[off:off + size].ljust(128, b"\0"))
        out.append(abi.sockaddr_to_tuple(ss))
        off += size
    return out


# The kernel answers ENOMEM when the buffer cannot hold every address; grow
# it up to this many addresses (a sockaddr_in6 each).
MAX_ADDRS = 4096


def sctp_addrs(sock: socket.socket, opt: int) -> list[tuple[str, int]]:
    """SCTP_GET_LOCAL_ADDRS / SCTP_GET_PEER_ADDRS of a one-to-one socket, all of them.

    Read through libc: CPython's getsockopt refuses buffers over 1024 bytes,
    which is 36 IPv6 addresses.
    """
    count = 16
    while True:
        try:
            # The length the kernel reports leaves out the 8-byte header
            # (a known quirk it keeps for compatibility): take the buffer whole.
            raw = getsockopt_raw(sock, abi.SOL_SCTP, opt, 8 + 28 * count, whole=True)
            break
        except OSError as exc:
            if exc.errno != errno.ENOMEM or count >= MAX_ADDRS:
                raise
            count *= 4
    _, num = struct.unpack_from("=iI", raw)
    return _unpack_addrs(raw[8:], num)


def local_addrs(sock: socket.socket) -> list[tuple[str, int]]:
    """Addresses the socket is bound to (the endpoint's, or its association's).

    A socket bound to the wildcard address keeps it (the kernel would list
    every address of the host instead); an unbound one has none.
    """
    name = sock.getsockname()
    if not name[1]:
        return []
    if ipaddress.ip_address(name[0].split("%")[0]).is_unspecified:
        return [(name[0], name[1])]
    try:
        addrs = sctp_addrs(sock, abi.SCTP_GET_LOCAL_ADDRS)
    except OSError as exc:
        raise SetupError(f"SCTP_GET_LOCAL_ADDRS: {exc.strerror}") from exc
    return addrs or [(name[0], name[1])]


def read_setup(sock: socket.socket) -> SocketSetup:
    flags = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
    setup = SocketSetup(family=sock.family, type=sock.getsockopt(socket.SOL_SOCKET,
                                                                 socket.SO_TYPE),
                        nonblocking=bool(flags & os.O_NONBLOCK), listening=is_listening(sock),
                        local_addrs=local_addrs(sock))
    for level, opt, size in CARRIED:
        try:
            setup.options.append((level, opt, getsockopt_raw(sock, level, opt, size)))
        except OSError as exc:
            if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
                raise SetupError(f"getsockopt({level}, {opt}): {exc.strerror}") from exc
    for opt in BUFFERS:
        setup.buffers[opt] = sock.getsockopt(socket.SOL_SOCKET, opt)
    for etype in EVENT_TYPES:
        ev = abi.SctpEvent(0, etype, 0)
        try:
            _getsockopt_in(sock, abi.SOL_SCTP, abi.SCTP_EVENT, ev)
        except OSError:
            continue
        if ev.se_on:
            setup.events.append(etype)
    return setup


_libc = ctypes.CDLL(None, use_errno=True)


def getsockopt_raw(sock: socket.socket, level: int, opt: int, size: int,
                   whole: bool = False) -> bytes:
    """getsockopt into a zeroed buffer of any size, through libc.

    Bytes the kernel leaves alone read as 0; unlike socket.getsockopt there
    is no 1024-byte limit. ``whole``: the buffer whatever length the kernel
    reports.
    """
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    if _libc.getsockopt(sock.fileno(), level, opt, buf, ctypes.byref(length)):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw if whole else buf.raw[:length.value]


def getsockopt_sized(sock: socket.socket, level: int, opt: int, size: int) -> bytes:
    """getsockopt of an option whose length varies: a buffer of ``size`` first, and if
    the kernel answers ERANGE with the size it needs (as SO_PEERGROUPS does), one of
    that size (again while the value grows between the two calls, a few times)."""
    for _ in range(4):
        buf = ctypes.create_string_buffer(size)
        length = ctypes.c_uint32(size)
        if not _libc.getsockopt(sock.fileno(), level, opt, buf, ctypes.byref(length)):
            return buf.raw[:length.value]
        err = ctypes.get_errno()
        if err != errno.ERANGE or length.value <= size:
            raise OSError(err, os.strerror(err))
        size = length.value
    raise OSError(errno.ERANGE, "the option's value kept growing between reads")


def _getsockopt_in(sock: socket.socket, level: int, opt: int, value: ctypes.Structure) -> None:
    """getsockopt whose value is also an input (Python's socket.getsockopt cannot pass one)."""
    size = ctypes.c_uint32(ctypes.sizeof(value))
    if _libc.getsockopt(sock.fileno(), level, opt, ctypes.byref(value), ctypes.byref(size)):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def new_socket(setup: SocketSetup) -> socket.socket:
    return socket.socket(setup.family, socket.SOCK_STREAM, abi.IPPROTO_SCTP)


def apply_setup(sock: socket.socket, setup: SocketSetup) -> None:
    """Options and notification subscriptions of ``setup`` on a new, unbound socket."""
    what = ""
    try:
        for opt, value in setup.buffers.items():
            what = f"SOL_SOCKET/{opt}"
            sock.setsockopt(socket.SOL_SOCKET, opt, max(value // 2, 1))
        for level, opt, raw in setup.options:
            what = f"{level}/{opt}"
            sock.setsockopt(level, opt, raw)
        for etype in EVENT_TYPES:
            what = f"SCTP_EVENT {etype:#x}"
            sock.setsockopt(abi.SOL_SCTP, abi.SCTP_EVENT,
                            bytes(abi.SctpEvent(0, etype, int(etype in setup.events))))
    except OSError as exc:
        raise SetupError(f"setsockopt {what} on the new socket: {exc.strerror}") from exc
    sock.setblocking(not setup.nonblocking)


def bind_and_listen(sock: socket.socket, setup: SocketSetup) -> None:
    """Bind to every saved address (sctp_bindx for the extra ones); listen if it did."""
    if not setup.local_addrs:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(setup.local_addrs[0])
        for addr, port in setup.local_addrs[1:]:
            ss = abi.tuple_to_sockaddr(addr, port)
            size = 16 if ss.ss_family == socket.AF_INET else 28
            sock.setsockopt(abi.SOL_SCTP, SCTP_SOCKOPT_BINDX_ADD, bytes(ss)[:size])
        if setup.listening:
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        where = ", ".join(f"[{a}]:{p}" for a, p in setup.local_addrs)
        raise SetupError(f"bind/listen on {where}: {exc.strerror}") from exc
    finally:
        reuse = dict(((lv, o), v) for lv, o, v in setup.options).get(
            (socket.SOL_SOCKET, socket.SO_REUSEADDR))
        if reuse is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)


def queued(sock: socket.socket) -> tuple[int, int, int]:
    """(unacknowledged chunks, chunks awaiting delivery, bytes of the next unread message)."""
    st = abi.SctpStatus.from_buffer_copy(
        sock.getsockopt(abi.SOL_SCTP, abi.SCTP_STATUS, 176).ljust(176, b"\0"))
    inq = struct.unpack("i", fcntl.ioctl(sock.fileno(), 0x541B, b"\0" * 4))[0]  # SIOCINQ
    return st.sstat_unackdata, st.sstat_penddata, inq


def assoc_state(sock: socket.socket) -> abi.State | None:
    """The association's state, None when the socket has none."""
    try:
        raw = sock.getsockopt(abi.SOL_SCTP, abi.SCTP_STATUS, 176)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTCONN):
            return None
        raise
    st = abi.SctpStatus.from_buffer_copy(raw.ljust(176, b"\0"))
    return abi.State(st.sstat_state)
