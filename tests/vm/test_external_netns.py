"""Stock CRIU 3.17 and a network namespace it did not make: the ground a staged user plane
stands on (issue #14; docs/migrate.md, "Restoring into a namespace made beforehand").

A task in namespace ``src`` (fdholder.py: a UDP socket and one end of a pipe) is dumped
with ``--external net[INODE]:stage`` and restored with ``--inherit-fd fd[N]:stage`` into
a namespace the test made, four times, each from a dump of its own (CRIU restores the
same PID, so a restored task is never in the next restore's way):

1. into an empty namespace: the task runs in it, and none of the source namespace's
   links comes along (a gtp device among them, which a dump of the namespace refuses):
   CRIU dumped nothing of the namespace but its key;
2. into a namespace where another socket holds the task's UDP port without
   SO_REUSEADDR: CRIU's bind fails (EADDRINUSE), and the restore with it;
3. into a namespace where a socket with SO_REUSEADDR holds the port and is offered for
   the task's socket with ``--inherit-fd fd[M]:socket:[INODE]``, beside a pipe offered
   the same way: the task gets the offered pipe, but a socket of CRIU's making, bound
   to the same port as the offered one. CRIU 3.17 consults ``--inherit-fd`` for pipes
   (and unix sockets, files, ...), never for an inet socket;
4. the plan that follows from 2 and 3, with a gtp device on the task's GTP-U socket:
   before the dump the socket is taken out of the task (pidfd_getfd) and a pipe put at
   its descriptor (criu_ext.inject), so CRIU dumps no inet socket, and the source's
   device keeps the socket we hold. The destination's namespace is staged before the
   restore: a socket of ours on port 2152 (no SO_REUSEADDR needed) and the device,
   its contexts and route restored onto it (gtp_util.restore). The task is restored
   into it, that very socket is put at its descriptor, and gtp_util then reads the
   device as bound to the task's socket, equal to the source's: one socket on the port.

What was seen goes to out/external-netns.json before anything is asserted.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gtp_util
from criu_ext import inject, tasks
from gtp_util.model import SOCKET_KERNEL, SOCKET_TASK, Device, SocketRef
from gtp_util.rtnl import Rtnl
from gtp_util.sockets import GTP1U_PORT, udp_sockets
from lab.files import record_json, wait_for
from lab.gateway import build_snapshot
from procns.fds import steal_fd
from procns.netns import in_netns
from tests.vm.test_criu_framework import PROGRAMS, kill, netns_inode, start_in_netns

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "out" / "external-netns.json"
PORT = 40152  # not a GTP port: the source's gtp device (kernel sockets) holds those
KEY = "stage"
CONTEXTS = 64


def fd_inode(pid: int, fd: int) -> int:
    """The inode in ``/proc/PID/fd/FD``'s link (``socket:[N]``, ``pipe:[N]``)."""
    return int(os.readlink(f"/proc/{pid}/fd/{fd}").rsplit("[", 1)[1].rstrip("]"))


def udp_bound(ns: str, port: int) -> int:
    """How many UDP sockets of namespace ``ns`` are bound to ``port``."""
    return len(udp_sockets(f"/run/netns/{ns}", (port,)))


def links(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def held_socket(ns: str, port: int, reuse: bool) -> socket.socket:
    with in_netns(f"/run/netns/{ns}"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    return s


def swap(pid: int, fd: int, ours: int | None) -> None:
    """Put our descriptor ``ours`` at the task's ``fd``, or a pipe's read end when None."""
    tasks.stop([pid])
    try:
        with inject.Remote(pid) as r:
            if ours is None:
                r.plug(fd, cloexec=False)
            else:
                r.put(ours, fd, cloexec=False)
    finally:
        tasks.cont([pid])


class Dumped:
    """fdholder.py started in ``src`` on ``port`` and dumped with the namespace external.
    ``prepare(pid, udp_fd)`` runs before the dump (its value kept as ``prepared``); with
    ``carry``, the UDP socket is then taken out of the task (``carried``), a pipe in its
    place."""

    def __init__(self, src: str, tmp: Path, tag: str, port: int = PORT, carry: bool = False,
                 prepare: Callable[[int, int], Any] | None = None):
        self.images = tmp / tag
        self.images.mkdir()
        out = tmp / f"{tag}.fds"
        proc = start_in_netns(src, [sys.executable, str(PROGRAMS / "fdholder.py"), str(out),
                                    str(port)], tmp)
        self.carried: socket.socket | None = None
        try:
            self.udp_fd, self.pipe_fd = map(int, wait_for(out, 60).split())
            self.udp_ino = fd_inode(proc.pid, self.udp_fd)
            self.pipe_ino = fd_inode(proc.pid, self.pipe_fd)
            self.prepared = prepare(proc.pid, self.udp_fd) if prepare else None
            if carry:
                self.carried = socket.socket(fileno=steal_fd(proc.pid, self.udp_fd))
                swap(proc.pid, self.udp_fd, None)
            d = subprocess.run(["criu", "dump", "-t", str(proc.pid), "-D", str(self.images),
                                "-o", "dump.log", "-v4",
                                "--external", f"net[{netns_inode(src)}]:{KEY}"],
                               capture_output=True, text=True)
            assert d.returncode == 0, (self.images / "dump.log").read_text()[-3000:]
            proc.wait(timeout=30)  # reaped: CRIU restores this PID
        except BaseException:
            kill(proc.pid)
            proc.poll()
            raise
        self.pid = proc.pid

    def restore(self, ns: str, offered: dict[int, str] | None = None) -> tuple[int, str]:
        """Restore into ``ns`` (its fd inherited under the dump's key) with ``offered``
        descriptors of ours, each under a key; CRIU's exit status and log tail."""
        nsfd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        inherit = {nsfd: KEY, **(offered or {})}
        try:
            cmd = ["criu", "restore", "-D", str(self.images), "-o", "restore.log", "-v4",
                   "--restore-detached", "--pidfile", str(self.images / "pid")]
            for fd, key in inherit.items():
                cmd += ["--inherit-fd", f"fd[{fd}]:{key}"]
            r = subprocess.run(cmd, pass_fds=tuple(inherit), capture_output=True, text=True)
        finally:
            os.close(nsfd)
        return r.returncode, (self.images / "restore.log").read_text()[-6000:]


def source_user_plane(src: str) -> Callable[[int, int], Any]:
    """A gtp device on the task's socket, CONTEXTS contexts and a route, in ``src``;
    returns the snapshot gtp_util takes of it."""
    path = f"/run/netns/{src}"

    def make(pid: int, fd: int):
        gtp_util.restore(build_snapshot("gtp1", fd, "0.0.0.0", CONTEXTS), path, bind_pid=pid)
        return gtp_util.take_snapshot(path)
    return make


def bound_to(ns: str) -> tuple[str, int, int, int]:
    """The socket of gtp1 in ``ns``: (kind, holder's pid, fd, inode). gtp_util does not
    count its own process as a holder: a socket only we hold reads as the kernel's."""
    ref = gtp_util.take_snapshot(f"/run/netns/{ns}").device("gtp1").sock1
    return ref.kind, ref.pid, ref.fd, ref.inode


def test_stock_criu_restores_into_a_namespace_it_did_not_make(tmp_path, netns):
    src = netns("xs")
    # what a dump of the namespace would carry: a gtp device (with sockets of the
    # kernel's) and a veth pair with an address
    rt = Rtnl(f"/run/netns/{src}")
    try:
        rt.add_gtp_link(Device("gtp0", 0, up=True, sock1=SocketRef(SOCKET_KERNEL)), None, None)
    finally:
        rt.close()
    for cmd in (["link", "add", "xv0", "type", "veth", "peer", "name", "xv1"],
                ["addr", "add", "192.0.2.1/24", "dev", "xv0"],
                ["link", "set", "xv0", "up"]):
        subprocess.run(["ip", "-n", src] + cmd, check=True)
    seen: dict = {"source_links": links(src)}
    restored: list[int] = []
    try:
        # 1. an empty namespace
        a = Dumped(src, tmp_path, "a")
        seen["dumped_files"] = sorted(p.name for p in a.images.iterdir() if p.suffix == ".img")
        import pycriu.images

        seen["netns_image"] = [e for img in sorted(a.images.glob("netns-*.img"))
                               for e in pycriu.images.loads(img.read_bytes())["entries"]]
        dst_a = netns("xa")
        rc, log = a.restore(dst_a)
        seen["empty"] = {"rc": rc}
        if rc == 0:
            restored.append(a.pid)
            seen["empty"].update(
                in_dst=os.stat(f"/proc/{a.pid}/ns/net").st_ino == netns_inode(dst_a),
                dst_links=links(dst_a), udp_bound=udp_bound(dst_a, PORT))
        else:
            seen["empty"]["log"] = log[-1500:]

        # 2. the port held without SO_REUSEADDR
        b = Dumped(src, tmp_path, "b")
        dst_b = netns("xb")
        held_b = held_socket(dst_b, PORT, reuse=False)
        rc, log = b.restore(dst_b)
        held_b.close()
        seen["held"] = {"rc": rc, "eaddrinuse": "Address already in use" in log}
        if rc == 0:
            restored.append(b.pid)

        # 3. the port held with SO_REUSEADDR, socket and pipe offered with --inherit-fd
        c = Dumped(src, tmp_path, "c")
        dst_c = netns("xc")
        held_c = held_socket(dst_c, PORT, reuse=True)
        r, w = os.pipe()
        try:
            rc, log = c.restore(dst_c, {held_c.fileno(): f"socket:[{c.udp_ino}]",
                                        r: f"pipe:[{c.pipe_ino}]"})
            seen["offered"] = {"rc": rc}
            if rc == 0:
                restored.append(c.pid)
                seen["offered"].update(
                    socket_is_offered=fd_inode(c.pid, c.udp_fd) == os.fstat(held_c.fileno()).st_ino,
                    pipe_is_offered=fd_inode(c.pid, c.pipe_fd) == os.fstat(r).st_ino,
                    udp_bound=udp_bound(dst_c, PORT))
            else:
                seen["offered"]["log"] = log[-1500:]
        finally:
            held_c.close()
            os.close(r)
            os.close(w)

        # 4. the user plane staged on the destination, the task's GTP-U socket carried
        subprocess.run(["ip", "-n", src, "link", "del", "gtp0"], check=True)  # frees 2152
        d = Dumped(src, tmp_path, "d", port=GTP1U_PORT, carry=True,
                   prepare=source_user_plane(src))
        want = d.prepared
        assert d.carried is not None
        me = os.getpid()
        seen["carried"] = {"source_kept": bound_to(src)[3] == os.fstat(d.carried.fileno()).st_ino}
        d.carried.close()  # a migration keeps it until the destination forwards
        dst_d = netns("xd")
        staged = held_socket(dst_d, GTP1U_PORT, reuse=False)
        try:
            dev = want.device("gtp1")
            dev.sock1 = dataclasses.replace(dev.sock1, pid=me, fd=staged.fileno())
            gtp_util.restore(want, f"/run/netns/{dst_d}", bind_pid=me)
            seen["carried"]["staged_on_ours"] = \
                bound_to(dst_d)[3] == os.fstat(staged.fileno()).st_ino
            rc, log = d.restore(dst_d)
            seen["carried"]["rc"] = rc
            if rc == 0:
                restored.append(d.pid)
                swap(d.pid, d.udp_fd, staged.fileno())
                staged.close()
                seen["carried"].update(
                    bound_to_task=bound_to(dst_d)[:3] == (SOCKET_TASK, d.pid, d.udp_fd),
                    differences=gtp_util.check(want, f"/run/netns/{dst_d}"),
                    udp_bound=udp_bound(dst_d, GTP1U_PORT))
            else:
                seen["carried"]["log"] = log[-1500:]
        finally:
            staged.close()
    finally:
        for pid in restored:
            kill(pid)
        record_json(RESULTS, "seen", seen)

    assert "gtp0" in seen["source_links"]
    assert not [f for f in seen["dumped_files"]
                if f.startswith(("netdev-", "ifaddr-", "route", "rule-", "iptables-"))]
    assert [e.get("ext_key") for e in seen["netns_image"]] == [KEY]
    assert seen["empty"] == {"rc": 0, "in_dst": True, "dst_links": ["lo"], "udp_bound": 1}
    assert seen["held"]["rc"] != 0 and seen["held"]["eaddrinuse"]
    assert seen["offered"] == {"rc": 0, "socket_is_offered": False, "pipe_is_offered": True,
                               "udp_bound": 2}
    assert seen["carried"] == {"source_kept": True, "staged_on_ours": True, "rc": 0,
                               "bound_to_task": True, "differences": [], "udp_bound": 1}
