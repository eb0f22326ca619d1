"""Errors of gtp_util, each with the exit status the command-line tools use for it.

Exit statuses (documented in docs/gtp.md):

* 0  success (for ``gtp-restore --check``: live state equals the snapshot)
* 1  ``--check`` found a difference
* 2  usage error (click's own)
* 3  bad snapshot: truncated, corrupt, foreign file, wrong magic or version
* 4  unknown network namespace or PID
* 5  permission: no CAP_NET_ADMIN (or cannot reach the task's sockets)
* 6  the kernel has no gtp support
* 7  restore refused: the snapshot conflicts with the live state (nothing applied)
* 8  restore failed while applying; what it had created was removed again
* 9  any other netlink / system error
"""

from __future__ import annotations


class GtpError(Exception):
    """Base class; ``exit_code`` is what the command-line tools return."""

    exit_code = 9


class BadImage(GtpError):
    exit_code = 3


class NoSuchTarget(GtpError):
    exit_code = 4


class NoPermission(GtpError):
    exit_code = 5


class GtpUnavailable(GtpError):
    exit_code = 6


class Conflict(GtpError):
    exit_code = 7


class RestoreFailed(GtpError):
    exit_code = 8
