"""Network namespaces: name one (by ``ip netns`` name or PID), run code inside one."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import overload

from procns.syscalls import CLONE_NEWNET, setns


@overload
def netns_path(name: str, pid: None = None) -> str: ...
@overload
def netns_path(name: None = None, *, pid: int) -> str: ...
@overload
def netns_path(name: None = None, pid: None = None) -> None: ...
@overload
def netns_path(name: str | None = None, pid: int | None = None) -> str | None: ...


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
