"""Taking a copy of another process's file descriptor (pidfd_open + pidfd_getfd)."""

from __future__ import annotations

import os

from procns.syscalls import pidfd_getfd


def steal_fd(pid: int, fd: int) -> int:
    """Return our own copy of fd ``fd`` of process ``pid``."""
    pidfd = os.pidfd_open(pid)
    try:
        return pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)
