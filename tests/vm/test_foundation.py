"""The three things the whole toolkit stands on, checked against the real kernel in the VM:
a gtp link, an SCTP association, and a CRIU dump/restore that keeps a process's memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from gtp_util.netlink import register_link_kind
from lab.files import wait_for
from procns.netns import in_netns

pytestmark = pytest.mark.vm

IPPROTO_SCTP = 132
PROGRAMS = Path(__file__).parent / "programs"


def test_gtp_link_read_back_through_pyroute2(netns):
    ns = netns("gtp")
    subprocess.run(["ip", "-n", ns, "link", "add", "gtp0", "type", "gtp", "role", "sgsn",
                    "hsize", "2048"], check=True)
    register_link_kind()
    with in_netns(f"/run/netns/{ns}"):
        ipr = IPRoute()
    with ipr:
        (link,) = ipr.link("get", ifname="gtp0")
    info = link.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "gtp"
    data = info.get_attr("IFLA_INFO_DATA")
    assert data.get_attr("IFLA_GTP_ROLE") == 1  # sgsn
    assert data.get_attr("IFLA_GTP_PDP_HASHSIZE") == 2048
    assert link.get_attr("IFLA_MTU") == 1452  # the gtp driver's default


def test_sctp_association_between_two_netns_carries_a_message_each_way(netns):
    a, b = netns("sa"), netns("sb")
    subprocess.run(["ip", "link", "add", "va", "netns", a, "type", "veth",
                    "peer", "vb", "netns", b], check=True)
    for ns, dev, addr in ((a, "va", "10.77.0.1/24"), (b, "vb", "10.77.0.2/24")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    with in_netns(f"/run/netns/{b}"):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP)
    with in_netns(f"/run/netns/{a}"):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP)
    with server, client:
        server.bind(("10.77.0.2", 36412))  # S1-MME's port
        server.listen(1)
        client.settimeout(10)
        client.connect(("10.77.0.2", 36412))
        conn, peer = server.accept()
        with conn:
            conn.settimeout(10)
            assert peer[0] == "10.77.0.1"
            client.sendall(b"S1 Setup Request")
            assert conn.recv(100) == b"S1 Setup Request"
            conn.sendall(b"S1 Setup Response")
            assert client.recv(100) == b"S1 Setup Response"
            # The association lives in the kernel of netns b: its table lists it,
            # ESTABLISHED (ST column, state 3), local port 36412.
            assocs = subprocess.run(["ip", "netns", "exec", b, "cat", "/proc/net/sctp/assocs"],
                                    capture_output=True, text=True, check=True).stdout
            rows = [line.split() for line in assocs.splitlines()[1:]]
            assert any(r[4] == "3" and r[11] == "36412" for r in rows), assocs


def test_criu_dump_and_restore_keep_a_process_memory(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    out = tmp_path / "memstate"
    proc = subprocess.Popen([sys.executable, str(PROGRAMS / "memstate.py"), str(out)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path)
    expect = wait_for(Path(f"{out}.expect")).split()
    time.sleep(0.3)
    dump = subprocess.run(["criu", "dump", "-t", str(proc.pid), "-D", str(images),
                           "-o", "dump.log", "-v4"], capture_output=True, text=True)
    assert dump.returncode == 0, (images / "dump.log").read_text()[-3000:]
    assert proc.wait(timeout=10) == -signal.SIGKILL  # CRIU ended the original
    assert not Path(f"{out}.result").exists()
    restore = subprocess.run(["criu", "restore", "-D", str(images), "-o", "restore.log",
                              "-v4", "--restore-detached", "--pidfile",
                              str(tmp_path / "pid")], capture_output=True, text=True)
    assert restore.returncode == 0, (images / "restore.log").read_text()[-3000:]
    pid = int((tmp_path / "pid").read_text())
    assert pid == proc.pid
    try:
        os.kill(pid, signal.SIGUSR1)
        verdict, token, digest, ticks = wait_for(Path(f"{out}.result")).split()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert verdict == "PASS"
    assert [token, digest] == expect  # the token existed only in memory
    assert int(ticks) > 0
