"""Descriptor swaps in a stopped process, against the host kernel (ptrace, pipes, epoll).

No SCTP here (the host kernel has none): UDP sockets stand in, the mechanics
are the same. A child holds a socket in an epoll set and a thread blocked in
recv on another; both are swapped for pipes and back while it is stopped,
and after SIGCONT both loops still get their datagrams.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

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
            rfd, wfd = r.pipe()
            r.close(wfd)
            r.install(rfd, fd, cloexec=False)
            for w in watches:
                if w.fd == fd:
                    r.epoll_add(w.epfd, fd, w.events, w.data)
    assert tasks.all_stopped([p.pid])
    swapped = tasks.fds(p.pid)
    assert swapped[efd].startswith("pipe:") and swapped[bfd].startswith("pipe:")
    assert [(w.fd, w.events, w.data) for w in tasks.epoll_watches(p.pid)] == \
        [(w.fd, w.events, w.data) for w in watches]

    inject.allow_tasks_to_fetch_from_us()
    with inject.Remote(p.pid) as r:
        for fd in (efd, bfd):
            for w in watches:
                if w.fd == fd:
                    r.epoll_del(w.epfd, fd)
            r.install(r.fetch(os.getpid(), copies[fd]), fd, cloexec=False)
            for w in watches:
                if w.fd == fd:
                    r.epoll_add(w.epfd, fd, w.events, w.data)
    for c in copies.values():
        os.close(c)
    assert tasks.fds(p.pid) == links
    tasks.cont([p.pid])
    assert exchange(p, tx, eport, bport, 2) == ["epoll e-2", "recv b-2"]


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
