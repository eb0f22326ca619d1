"""Repair mode as a drain: the association takes no more DATA but still takes SACKs.

This is what lets a checkpoint tool empty an association's queues while its
peer keeps sending (kernel-patches/0005): the peer's SACKs come bundled with
new DATA, which the kernel drops while the socket is in repair mode; the peer
sends it again once repair mode is off.
"""

from __future__ import annotations

import select
import socket
import subprocess
import time

import pytest

from procns.netns import in_netns
from sctp_repair import abi, pause, resume
from sctp_repair.sockopts import queued

pytestmark = pytest.mark.repair


def pair(ns: str):
    subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "sysctl", "-qw", "net.sctp.rto_min=100",
                    "net.sctp.rto_initial=300", "net.sctp.rto_max=500"], check=True)
    with in_netns(f"/run/netns/{ns}"):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, abi.IPPROTO_SCTP)
        cl = socket.socket(socket.AF_INET, socket.SOCK_STREAM, abi.IPPROTO_SCTP)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    cl.connect(ls.getsockname())
    srv, _ = ls.accept()
    ls.close()
    return srv, cl


def readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def test_repair_mode_drops_incoming_data_but_takes_sacks(netns):
    srv, cl = pair(netns("drain"))
    cl.send(b"before")
    assert srv.recv(100) == b"before"

    pause(srv)
    cl.send(b"during")           # dropped by srv's kernel, retransmitted by cl
    assert not readable(srv, 1.5)
    srv.send(b"reply")           # srv still sends; cl's SACK comes bundled with "during"
    assert cl.recv(100) == b"reply"
    end = time.monotonic() + 5
    while queued(srv)[0] and time.monotonic() < end:
        time.sleep(0.05)
    assert queued(srv) == (0, 0, 0)  # acked, nothing unread: a state that can be saved

    resume(srv)
    assert readable(srv, 5), "the peer's retransmission was not taken after repair mode"
    assert srv.recv(100) == b"during"
    cl.send(b"after")
    assert srv.recv(100) == b"after"
