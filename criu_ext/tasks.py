"""A task tree as /proc shows it: its processes, their descriptors and epoll sets; stop and continue.

Pure reading of /proc plus SIGSTOP/SIGCONT. Stopping is how the SCTP carrier
keeps every thread still while it swaps descriptors and while CRIU, which
dumps and restores stopped tasks as stopped, takes over.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass

O_CLOEXEC = 0o2000000
# "tfd:        3 events:       19 data: 7f00000003  pos:0 ino:6ee54 sdev:8"
_FIELD = re.compile(r"(\w+):\s*([0-9a-fA-F]+)")


@dataclass(frozen=True)
class EpollWatch:
    """One descriptor registered in an epoll instance of a process."""

    epfd: int
    fd: int
    events: int
    data: int
    ino: int

    def to_dict(self) -> dict:
        return {"epfd": self.epfd, "fd": self.fd, "events": self.events, "data": self.data}


def tree(root: int) -> list[int]:
    """``root`` and its descendants, parents first."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        for tid in threads(pid):
            try:
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                    todo.extend(int(c) for c in f.read().split())
            except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
                pass
    return out


def threads(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return []


def thread_state(pid: int, tid: int) -> str:
    """The one-letter state of a thread ('' when it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def thread_status(pid: int, tid: int) -> tuple[str, int]:
    """A thread's one-letter state ('' when it is gone) and seccomp mode (0 none, 1
    strict, 2 filter), from one read of its status file."""
    state, mode = "", 0
    try:
        with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("State:"):
                    state = line.split()[1]
                elif line.startswith("Seccomp:"):
                    mode = int(line.split()[1])
                    break
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return "", 0
    return state, mode


def all_stopped(pids: list[int]) -> bool:
    """Every thread stopped, or a zombie (a thread group leader that exited before its
    siblings stays one until they do: it never runs again)."""
    return all(thread_state(p, t) in ("T", "t", "Z", "X", "") for p in pids for t in threads(p))


def stop(pids: list[int], timeout: float = 10.0) -> None:
    """SIGSTOP each process and wait until every thread of each is stopped."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not all_stopped(pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"tasks {pids} did not stop within {timeout:.0f} s")
        time.sleep(0.002)


def status_number(path: str, key: str) -> int:
    """The number after ``key:`` in a /proc status file (0: no such line, or the task is gone)."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def tracer(pid: int) -> int:
    """The pid tracing ``pid`` (0: none, or the task is gone)."""
    return status_number(f"/proc/{pid}/status", "TracerPid")


def wait_untraced(pids: list[int], timeout: float = 60.0) -> None:
    """Until no process of ``pids`` is traced (CRIU lets go of a tree after its last script)."""
    deadline = time.monotonic() + timeout
    while any(tracer(p) for p in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"tasks {pids} still traced after {timeout:.0f} s")
        time.sleep(0.005)


def cont(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def fds(pid: int) -> dict[int, str]:
    """Descriptor number -> what /proc/PID/fd says it is (``socket:[123]``, a path...)."""
    out = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            out[int(name)] = os.readlink(f"{base}/{name}")
        except FileNotFoundError:
            pass
    return out


def socket_inode(link: str) -> int | None:
    if link.startswith("socket:[") and link.endswith("]"):
        return int(link[8:-1])
    return None


def fdinfo(pid: int, fd: int) -> list[str]:
    with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
        return f.read().splitlines()


def cloexec(pid: int, fd: int) -> bool:
    for line in fdinfo(pid, fd):
        if line.startswith("flags:"):
            return bool(int(line.split()[1], 8) & O_CLOEXEC)
    return False


def epoll_watches(pid: int, links: dict[int, str] | None = None) -> list[EpollWatch]:
    """Every (epoll fd, registered fd) pair of a process, from fdinfo."""
    links = fds(pid) if links is None else links
    out = []
    for epfd, link in links.items():
        if link != "anon_inode:[eventpoll]":
            continue
        for line in fdinfo(pid, epfd):
            if not line.startswith("tfd:"):
                continue
            kv = dict(_FIELD.findall(line))
            out.append(EpollWatch(epfd, int(kv["tfd"]), int(kv["events"], 16),
                                  int(kv["data"], 16), int(kv.get("ino", "0"), 16)))
    return out
