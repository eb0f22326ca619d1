"""Linux system calls Python 3.11 lacks, shared by the three packages.

setns/unshare (os.setns arrives only in 3.12), pidfd_getfd (no Python wrapper at
all), capability bits, and a context manager that runs code inside another
network namespace and always comes back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
SYS_PIDFD_GETFD = 438  # x86_64 and every architecture using the generic table
CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def setns(fd: int, nstype: int = 0) -> None:
    """Move the calling thread into the namespace that ``fd`` refers to."""
    _check(_libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """Duplicate file descriptor ``targetfd`` of the process behind ``pidfd``.

    Needs PTRACE_MODE_ATTACH_REALCREDS over the target (root does). The copy
    refers to the same open file: same socket, same kernel state.
    """
    ret = _libc.syscall(SYS_PIDFD_GETFD, ctypes.c_int(pidfd), ctypes.c_int(targetfd),
                        ctypes.c_uint(0))
    return _check(ret, f"pidfd_getfd(fd {targetfd})")


def steal_fd(pid: int, fd: int) -> int:
    """Return our own copy of fd ``fd`` of process ``pid``."""
    pidfd = os.pidfd_open(pid)
    try:
        return pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)


def effective_caps() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_cap(cap: int) -> bool:
    return bool(effective_caps() >> cap & 1)


def netns_path(name: str | None = None, pid: int | None = None) -> str | None:
    """Path of a network namespace given by name (``ip netns``) or by PID.

    None for both means the caller's own namespace. Raises FileNotFoundError
    with a message that names what was not found.
    """
    if name is not None and pid is not None:
        raise ValueError("give a netns name or a PID, not both")
    if name is not None:
        path = name if name.startswith("/") else f"/run/netns/{name}"
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, f"no network namespace named {name!r}", path)
        return path
    if pid is not None:
        path = f"/proc/{pid}/ns/net"
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ESRCH, f"no process with PID {pid}", path)
        return path
    return None


@contextlib.contextmanager
def in_netns(path: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside the netns at ``path``.

    Sockets opened in the body stay bound to that namespace after we return,
    which is how netlink sockets for another namespace are made without forking.
    ``None`` runs the body where we are.
    """
    if path is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home, CLONE_NEWNET)
    finally:
        os.close(home)
