"""Descriptor swaps in a stopped process, against the host kernel (ptrace, pipes, epoll).

No SCTP here (the host kernel has none): UDP sockets stand in, the mechanics
are the same. A child holds a socket in an epoll set and a thread blocked in
recv on another; both are swapped for pipes and back while it is stopped,
and after SIGCONT both loops still get their datagrams.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from criu_ext import inject, ptrace, tasks
from procns.syscalls import pidfd_getfd

pytestmark = pytest.mark.skipif(ptrace.supported() is not None, reason="x86_64 only")

CHILD = textwrap.dedent(r"""
    import os, select, socket, threading
    e = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); e.bind(("127.0.0.1", 0))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("127.0.0.1", 0))
    ep = select.epoll(); ep.register(e.fileno(), select.EPOLLIN)
    print(e.fileno(), e.getsockname()[1], b.fileno(), b.getsockname()[1], flush=True)
    def blocked():
        while True:
            os.write(1, b"recv " + b.recv(100) + b"\n")  # one write: no interleaving
    threading.Thread(target=blocked, daemon=True).start()
    while True:
        for fd, ev in ep.poll(5):
            os.write(1, b"epoll " + e.recv(100) + b"\n")
""")


@pytest.fixture
def child():
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    efd, eport, bfd, bport = map(int, p.stdout.readline().split())
    yield p, efd, eport, bfd, bport
    p.kill()
    p.wait()


def exchange(p, tx, eport, bport, tag):
    tx.sendto(f"e-{tag}".encode(), ("127.0.0.1", eport))
    tx.sendto(f"b-{tag}".encode(), ("127.0.0.1", bport))
    return sorted(p.stdout.readline().strip() for _ in range(2))


def test_sockets_leave_for_pipes_and_come_back_with_their_epoll_registration(child):
    p, efd, eport, bfd, bport = child
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert exchange(p, tx, eport, bport, 1) == ["epoll e-1", "recv b-1"]
    watches = tasks.epoll_watches(p.pid)
    assert [(w.fd, w.events & 1) for w in watches] == [(efd, 1)]  # EPOLLIN
    links = tasks.fds(p.pid)
    pidfd = os.pidfd_open(p.pid)
    copies = {fd: pidfd_getfd(pidfd, fd) for fd in (efd, bfd)}
    os.close(pidfd)

    tasks.stop([p.pid])
    with inject.Remote(p.pid) as r:
        for fd in (efd, bfd):
            for w in watches:
                if w.fd == fd:
                    assert r.epoll_del(w.epfd, fd)
            r.plug(fd, cloexec=False)
            for w in watches:
                if w.fd == fd:
                    r.epoll_add(w.epfd, fd, w.events, w.data)
    assert tasks.all_stopped([p.pid])
    swapped = tasks.fds(p.pid)
    assert swapped[efd].startswith("pipe:") and swapped[bfd].startswith("pipe:")
    assert [(w.fd, w.events, w.data) for w in tasks.epoll_watches(p.pid)] == \
        [(w.fd, w.events, w.data) for w in watches]

    with inject.Remote(p.pid) as r:
        for fd in (efd, bfd):
            for w in watches:
                if w.fd == fd:
                    r.epoll_del(w.epfd, fd)
            r.put(copies[fd], fd, cloexec=False)
            for w in watches:
                if w.fd == fd:
                    r.epoll_add(w.epfd, fd, w.events, w.data)
    for c in copies.values():
        os.close(c)
    assert tasks.fds(p.pid) == links
    tasks.cont([p.pid])
    assert exchange(p, tx, eport, bport, 2) == ["epoll e-2", "recv b-2"]


@pytest.mark.parametrize("runnable", [True, False], ids=["one-run-of-code", "call-by-call"])
def test_put_all_moves_several_descriptors_at_once_and_they_work(child, runnable):
    """put_all: both sockets swapped for pipes come back (their epoll registration
    aside: the plain socket and a second copy of the watched one's number), in one
    run of code in the scratch page, or call by call where it cannot be executable."""
    p, efd, eport, bfd, bport = child
    pidfd = os.pidfd_open(p.pid)
    copy = pidfd_getfd(pidfd, bfd)
    os.close(pidfd)
    links = tasks.fds(p.pid)
    tasks.stop([p.pid])
    with inject.Remote(p.pid) as r:
        r.plug(bfd, cloexec=False)
        spare = r.pipe()  # two more descriptors to land on, then gone again
    assert tasks.fds(p.pid)[bfd].startswith("pipe:")
    a, b = os.pipe()
    with inject.Remote(p.pid) as r:
        r.runnable = r.runnable and runnable
        stops = []
        real = r._run
        r._run = lambda *args: stops.append(args[3]) or real(*args)
        r.put_all([(copy, bfd, False), (a, spare[0], True), (b, spare[1], False)])
        assert stops.count("put_all") == (1 if runnable else 0), stops
        r._run = real
        got = tasks.fds(p.pid)
        assert [got[fd] for fd in spare] == [f"pipe:[{os.fstat(x).st_ino}]" for x in (a, b)]
        assert tasks.cloexec(p.pid, spare[0]) and not tasks.cloexec(p.pid, spare[1])
        for fd in spare:
            r.close(fd)
        before = tasks.fds(p.pid)
        with pytest.raises(inject.InjectError, match="Bad file descriptor"):
            r.put_all([(a, 1 << 30, False)])  # above any limit: dup3 refuses it
        assert tasks.fds(p.pid) == before  # what was received closed again
    for fd in (copy, a, b):
        os.close(fd)
    assert tasks.fds(p.pid) == links
    assert tasks.all_stopped([p.pid])
    tasks.cont([p.pid])
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert exchange(p, tx, eport, bport, 3) == ["epoll e-3", "recv b-3"]


def test_a_failing_system_call_says_so_and_leaves_the_task_as_it_was(child):
    p, efd, *_ = child
    tasks.stop([p.pid])
    before = tasks.fds(p.pid)
    with inject.Remote(p.pid) as r:
        with pytest.raises(inject.InjectError, match="Bad file descriptor"):
            r.close(999)
    assert tasks.fds(p.pid) == before
    assert tasks.all_stopped([p.pid])
    tasks.cont([p.pid])


def test_a_task_that_is_gone_cannot_be_borrowed():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with pytest.raises(inject.InjectError, match="cannot borrow task"):
        with inject.Remote(p.pid):
            pass


# --- hostile targets (issue 16): each case failed with the single-thread borrow -----------

SIGNALLED = textwrap.dedent(r"""
    import os, signal, sys, time
    for s in (signal.SIGUSR1, signal.SIGTRAP):
        signal.signal(s, lambda n, f: os.write(1, f"got {signal.Signals(n).name}\n".encode()))
    print("ready", flush=True)
    while True:
        time.sleep(0.01)
""")


def _start(code: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def _is_pipe(pid: int, fd: int, tid: int | None = None) -> bool:
    return os.readlink(f"/proc/{pid}/task/{tid or pid}/fd/{fd}").startswith("pipe:")


def test_signals_during_an_injection_are_delivered_afterwards_and_a_foreign_sigtrap_is_not_ours():
    p = _start(SIGNALLED)
    try:
        tasks.stop([p.pid])
        with inject.Remote(p.pid) as r:
            os.kill(p.pid, signal.SIGUSR1)
            os.kill(p.pid, signal.SIGTRAP)  # taken for the breakpoint: pipe() gave (0, 0)
            rfd, wfd = r.pipe()
            assert rfd > 2 and wfd > 2 and _is_pipe(p.pid, rfd) and _is_pipe(p.pid, wfd)
            r.close(rfd)
            r.close(wfd)
        tasks.cont([p.pid])
        got = sorted(p.stdout.readline().strip() for _ in range(2))  # were discarded
        assert got == ["got SIGTRAP", "got SIGUSR1"]
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_a_target_dying_mid_injection_is_an_inject_error_that_says_so():
    p = _start(SIGNALLED)
    tasks.stop([p.pid])
    with pytest.raises(inject.InjectError, match=f"task {p.pid} died during the injection"):
        with inject.Remote(p.pid) as r:
            os.kill(p.pid, signal.SIGKILL)  # surfaced as ProcessLookupError from the detach
            r.pipe()
    p.wait()


SECCOMP = textwrap.dedent(r"""
    import ctypes, time
    libc = ctypes.CDLL(None, use_errno=True)
    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                    ("k", ctypes.c_uint)]
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]
    # load the syscall number; kill the process on socketpair (53), allow the rest
    prog = (Filter * 4)(Filter(0x20, 0, 0, 0), Filter(0x15, 0, 1, 53),
                        Filter(0x06, 0, 0, 0x80000000), Filter(0x06, 0, 0, 0x7fff0000))
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(Prog(4, prog)), 0, 0) == 0  # SECCOMP_MODE_FILTER
    print("ready", flush=True)
    while True:
        time.sleep(0.01)
""")


def test_a_task_under_a_seccomp_filter_is_refused_before_anything_runs_in_it():
    p = _start(SECCOMP)
    try:
        tasks.stop([p.pid])
        with pytest.raises(inject.InjectError, match="seccomp"):
            with inject.Remote(p.pid) as r:
                r.receive(0)  # socketpair: the filter kills the task
        assert p.poll() is None and tasks.tracer(p.pid) == 0
        tasks.cont([p.pid])
    finally:
        p.kill()
        p.wait()


THREADS = textwrap.dedent(r"""
    import threading, time
    def spin():
        while True:
            time.sleep(0.001)  # every thread in clock_nanosleep: the same instruction
    for _ in range(4):
        threading.Thread(target=spin, daemon=True).start()
    print("ready", flush=True)
    spin()
""")


def test_no_sibling_thread_runs_the_patched_code_even_after_a_sigcont():
    p = _start(THREADS)
    try:
        tasks.stop([p.pid])
        with inject.Remote(p.pid) as r:
            os.kill(p.pid, signal.SIGCONT)  # siblings ran into "syscall; int3": SIGTRAP
            time.sleep(0.3)
            assert all(tasks.thread_state(p.pid, t) in ("t", "T") for t in tasks.threads(p.pid))
            rfd, wfd = r.pipe()
            r.close(rfd)
            r.close(wfd)
        time.sleep(0.3)
        assert p.poll() is None, f"died with {p.returncode}"
    finally:
        p.kill()
        p.wait()


LEADER_GONE = textwrap.dedent(r"""
    import ctypes, threading, time
    def spin():
        print("ready", flush=True)
        while True:
            time.sleep(0.01)
    threading.Thread(target=spin).start()
    time.sleep(0.2)
    ctypes.CDLL(None).pthread_exit(None)  # the main thread ends, the process goes on
""")


def test_a_task_whose_main_thread_has_exited_is_borrowed_through_another_thread():
    p = _start(LEADER_GONE)
    try:
        deadline = time.monotonic() + 5
        while tasks.thread_state(p.pid, p.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tasks.thread_state(p.pid, p.pid) == "Z"
        tasks.stop([p.pid])
        with inject.Remote(p.pid) as r:
            assert r.tid != p.pid
            rfd, wfd = r.pipe()
            assert _is_pipe(p.pid, rfd, r.tid)
            r.close(rfd)
            r.close(wfd)
        assert tasks.all_stopped([p.pid])
        tasks.cont([p.pid])
        time.sleep(0.1)
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()
