"""The SCTP fence's restart stage against real associations (stock kernel).

The restart fallback re-creates a socket on the destination and sends a new
INIT from the old addresses, which the peer takes as a restart. Until that
INIT is answered the peer still retransmits for the association it knew; a
retransmission that meets the new socket meets no association, and the ABORT
the kernel answers it with ends the peer's side: the INIT then meets
ECONNREFUSED. Lifting the hold before the INIT leaves that window open (the
first case shows the hazard); the ``restart`` stage drops the stray packets
and lets the handshake through (the second case).

Hosts: P holds its address on a bridge; A and then B (same address, same MAC)
attach to it, as the service's address moves from A to B.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from criu_ext import sctp_fence
from lab import sctp_wire
from lab.files import wait_until
from lab.netns import sctp_mib
from procns.netns import in_netns

pytestmark = pytest.mark.vm

SVC, PEER, PORT = "10.77.0.1", "10.77.0.2", 36412
MAC = "02:00:0a:4d:00:01"


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def attach(ns: str, p: str, name: str) -> None:
    """``ns`` gets eth0 with the service's address and MAC, its other end on P's bridge."""
    ip(ns, "link", "add", "eth0", "address", MAC, "type", "veth", "peer", "name", name,
       "netns", p)
    ip(ns, "addr", "add", f"{SVC}/24", "dev", "eth0")
    ip(ns, "link", "set", "eth0", "up")
    ip(p, "link", "set", name, "master", "br0", "up")


def sctp_socket(ns: str) -> socket.socket:
    with in_netns(f"/run/netns/{ns}"):
        s = sctp_wire.new_socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


@pytest.mark.parametrize("stage", ["lift", "restart"])
def test_restart_window(netns, stage):
    p, a, b = netns("fp"), netns("fa"), netns("fb")
    ip(p, "link", "add", "br0", "type", "bridge")
    ip(p, "addr", "add", f"{PEER}/24", "dev", "br0")
    ip(p, "link", "set", "br0", "up")
    attach(a, p, "pa")

    # An association between the service on A and the peer.
    ls = sctp_socket(a)
    ls.bind((SVC, PORT))
    ls.listen(1)
    peer = sctp_socket(p)
    sctp_wire.subscribe(peer)
    peer.settimeout(5)
    peer.connect((SVC, PORT))
    conn, _ = ls.accept()
    conn.settimeout(5)
    peer.sendall(b"REQ 0\n")
    assert conn.recv(100) == b"REQ 0\n"
    assert sctp_wire.notification(peer.recv(1000)) == "ASSOC_CHANGE:COMM_UP"

    # The service leaves A without a word (the dump's hold), and comes up on B
    # held, its socket re-created but not yet connected (the restore).
    sctp_fence.hold(f"/run/netns/{a}", [PORT])
    conn.close()
    ls.close()
    ip(a, "link", "del", "eth0")
    attach(b, p, "pb")
    sctp_fence.hold(f"/run/netns/{b}", [PORT])
    new = sctp_socket(b)
    new.bind((SVC, PORT))

    # The peer sends on; its message goes unanswered and is retransmitted.
    # Counted from once the stage is in place, so the retransmission meets it.
    peer.sendall(b"REQ 1\n")
    if stage == "lift":
        sctp_fence.lift(f"/run/netns/{b}")
    else:
        sctp_fence.restart(f"/run/netns/{b}", [(PEER, peer.getsockname()[1])])
    rtx = sctp_mib(p)["SctpT3RtxExpireds"]
    wait_until(lambda: sctp_mib(p)["SctpT3RtxExpireds"] > rtx, 10, "the peer to retransmit")
    time.sleep(0.3)  # the retransmission crosses the bridge

    new.settimeout(10)
    if stage == "lift":
        # The retransmission met no association on B: B answered it with an
        # ABORT, the peer's side is gone, and the restart's INIT is refused.
        assert sctp_mib(b)["SctpOutOfBlues"] >= 1
        with pytest.raises(ConnectionRefusedError):
            new.connect((PEER, peer.getsockname()[1]))
        return

    assert sctp_mib(b)["SctpOutOfBlues"] == 0
    new.connect((PEER, peer.getsockname()[1]))
    sctp_fence.lift(f"/run/netns/{b}")
    assert sctp_wire.notification(peer.recv(1000)) == "ASSOC_CHANGE:RESTART"
    new.sendall(b"ACK 1\n")
    assert peer.recv(100) == b"ACK 1\n"
    peer.sendall(b"REQ 2\n")
    got = b""
    while not got.endswith(b"REQ 2\n"):  # REQ 1 may come first: the peer's queue
        got += new.recv(100)
    assert sctp_mib(p)["SctpAborteds"] == 0
    for s in (new, peer):
        s.close()
