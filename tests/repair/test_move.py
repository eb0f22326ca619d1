"""An established association moves from host A to host B; the peer P goes on.

The endpoint's state is saved in repair mode, its socket closed silently, its
service address moved to B, a new socket restored there from the state, and
its SCTP packets dropped by netfilter while it is away. Numbered messages
flow on several streams both ways before, during and after. The peer must see
no SCTP_ASSOC_CHANGE after its COMM_UP, and neither side may lose, duplicate
or reorder a message within a stream.
"""

from __future__ import annotations

import socket

import pytest

from lab.sctpnet import (
    NOTIFY_TYPES,
    NSTREAMS,
    P_HOST,
    SVC_HOST,
    V4,
    V6,
    Endpoint,
    Net,
    Peer,
    move,
    subscribe,
    wait_until,
)
from sctp_repair import abi, status

pytestmark = pytest.mark.repair

SVC_PORT = 36412
PEER_PORT = 5000


@pytest.fixture
def net():
    n = Net().up()
    yield n
    n.down()


def establish(net: Net, fam, role: str) -> tuple[Endpoint, Peer]:
    """Endpoint on A (server or client) and peer on P, both subscribed to events."""
    net.add_svc("A", fam)
    svc, peer_addr = fam.addr(SVC_HOST), fam.addr(P_HOST)
    if role == "server":
        lsock = net.socket("A", fam.af)
        lsock.bind((svc, SVC_PORT))
        lsock.listen(1)
        psock = net.socket("P", fam.af)
        subscribe(psock, *NOTIFY_TYPES)
        psock.connect((svc, SVC_PORT))
        esock, _ = lsock.accept()
        lsock.close()
    else:
        lsock = net.socket("P", fam.af)
        lsock.bind((peer_addr, PEER_PORT))
        lsock.listen(1)
        esock = net.socket("A", fam.af)
        esock.bind((svc, 0))
        # The listener's subscriptions are inherited by the accepted socket.
        subscribe(lsock, *NOTIFY_TYPES)
        esock.connect((peer_addr, PEER_PORT))
        psock, _ = lsock.accept()
        lsock.close()
    subscribe(esock, *NOTIFY_TYPES)
    return Endpoint(esock), Peer(psock).start()


def finish(ep: Endpoint, peer: Peer, join: bool = True) -> None:
    """Stop both senders and wait until each side has all the other sent."""
    peer.pause()  # a message sent after the count would arrive after close(): an ABORT
    wait_until(lambda: ep.c.received == peer.c.sent and peer.c.received == ep.c.sent,
               60, "both sides to receive everything", poll=ep.drain)
    if join:
        peer.join()


@pytest.mark.parametrize("fam", [V4, V6], ids=lambda f: f.name)
@pytest.mark.parametrize("role", ["server", "client"])
def test_moved_association_carries_on(net, fam, role):
    ep, peer = establish(net, fam, role)
    try:
        ep.run(1.5)
        before_peer = list(peer.c.received)
        before_ep = list(ep.c.received)
        assert sum(before_peer) > 0 and sum(before_ep) > 0, "no traffic before the move"

        moved = move(net, ep, fam)

        st = status(ep.sock)
        assert st.sstat_state == abi.State.ESTABLISHED
        assert (st.sstat_outstrms, st.sstat_instrms) == (len(moved.state.out_streams),
                                                         len(moved.state.in_streams))
        ep.run(3)
        finish(ep, peer)
    finally:
        peer.stop.set()
        ep.sock.close()

    assert not peer.fatal, peer.fatal
    assert peer.c.errors == [] and ep.c.errors == []
    # The peer saw its association come up once, and nothing else.
    assert peer.c.notifications == [(abi.SCTP_ASSOC_CHANGE, abi.AssocChange.COMM_UP)]
    # The restored socket queued no COMM_UP (the one before the move was read on A).
    assert ep.c.notifications.count((abi.SCTP_ASSOC_CHANGE, abi.AssocChange.COMM_UP)) <= 1
    assert all(t != abi.SCTP_ASSOC_CHANGE or s == abi.AssocChange.COMM_UP
               for t, s in ep.c.notifications), ep.c.notifications
    # Traffic went on, both ways, on every stream, after the move.
    assert all(a > b for a, b in zip(peer.c.received, before_peer)), (before_peer,
                                                                      peer.c.received)
    assert all(a > b for a, b in zip(ep.c.received, before_ep)), (before_ep, ep.c.received)
    assert len(moved.state.out_streams) >= NSTREAMS
    print(f"{role}/{fam.name}: moved in {moved.seconds:.2f} s; "
          f"peer got {sum(peer.c.received)}, endpoint got {sum(ep.c.received)} messages")


def test_restored_socket_has_no_comm_up(net):
    """After the move, the first thing the restored socket reads is data."""
    ep, peer = establish(net, V4, "server")
    try:
        ep.run(0.5)
        ep.drain()
        ep.c.notifications.clear()
        move(net, ep, V4)
        ep.run(1)
        finish(ep, peer)
    finally:
        peer.stop.set()
        ep.sock.close()
    assert ep.c.notifications == []
    assert peer.c.errors == [] and ep.c.errors == []


def test_state_round_trips_through_a_second_move(net):
    """A -> B -> A: the state saved on B is the state restored there, advanced."""
    ep, peer = establish(net, V4, "client")
    try:
        ep.run(0.5)
        first = move(net, ep, V4, "A", "B").state
        ep.run(0.5)
        second = move(net, ep, V4, "B", "A").state
        ep.run(0.5)
        finish(ep, peer)
    finally:
        peer.stop.set()
        ep.sock.close()
    assert (second.my_vtag, second.peer_vtag) == (first.my_vtag, first.peer_vtag)
    assert (second.local_addr, second.local_port) == (first.local_addr, first.local_port)
    assert second.next_tsn - first.next_tsn == sum(o.mid for o in second.out_streams) - \
        sum(o.mid for o in first.out_streams)
    assert second.peer_ctsn > first.peer_ctsn
    assert peer.c.notifications == [(abi.SCTP_ASSOC_CHANGE, abi.AssocChange.COMM_UP)]
    assert peer.c.errors == [] and ep.c.errors == []
    assert not peer.fatal, peer.fatal


def test_plain_close_still_shuts_down(net):
    """Without repair mode, close() still ends the association at the peer."""
    ep, peer = establish(net, V4, "server")
    ep.run(0.3)
    # Read everything first: closing with unread data would send an ABORT.
    finish(ep, peer, join=False)
    ep.sock.close()
    shutdown_comp = (abi.SCTP_ASSOC_CHANGE, abi.AssocChange.SHUTDOWN_COMP)
    try:
        wait_until(lambda: shutdown_comp in peer.c.notifications, 20,
                   "the peer to see the shutdown complete")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the peer saw {peer.c.notifications}, fatal {peer.fatal}, "
                             f"SCTP MIB A {net.snmp('A')}, P {net.snmp('P')}") from None
    peer.join()
    assert peer.c.notifications == [(abi.SCTP_ASSOC_CHANGE, abi.AssocChange.COMM_UP),
                                     (abi.SCTP_SHUTDOWN_EVENT, -1), shutdown_comp]


def test_ipv6_socket_family_is_kept(net):
    ep, peer = establish(net, V6, "server")
    try:
        ep.run(0.3)
        moved = move(net, ep, V6)
        assert ep.sock.family == socket.AF_INET6
        assert moved.state.local_addr == V6.addr(SVC_HOST)
        ep.run(0.5)
        finish(ep, peer)
    finally:
        peer.stop.set()
        ep.sock.close()
    assert peer.c.errors == [] and ep.c.errors == []
