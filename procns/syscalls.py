"""System calls Python 3.11 has no wrapper for: setns, unshare, pidfd_getfd.

``os.setns`` and ``os.unshare`` arrive only in 3.12; ``pidfd_getfd`` has no
wrapper at all. Errors come back as OSError with the call's name.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
SYS_PIDFD_GETFD = 438  # x86_64 and every architecture using the generic table

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
