"""What the second version of the series checks: restored values, quiescence, what
cannot be restored, and the corners of closing and re-binding.

Each test walks several cases on one network (module-scoped) to share the VM's
time; ports differ per test so that no association of one test meets another.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time

import pytest

from lab.netns import sctp_mib
from lab.sctpnet import A_HOST, P_HOST, SVC_HOST, V4, Net, check_errno, send_on, wait_until
from procns.netns import in_netns
from sctp_repair import abi, release, restore, save, status
from sctp_repair.repair import QueuesNotEmpty, RepairError, family_of, in_repair, new_socket, resume

pytestmark = pytest.mark.repair

ON, OFF = abi.SCTP_REPAIR_ON, abi.SCTP_REPAIR_OFF
SCTP_INITMSG = struct.Struct("=HHHH")
SCTP_PARTIAL_DELIVERY_POINT = 19
SCTP_DEFAULT_PRINFO = 114
SCTP_PR_SCTP_TTL = 0x10


@pytest.fixture(scope="module")
def net():
    n = Net().up()
    n.add_svc("A", V4)
    yield n
    n.down()


def pair(net: Net, port: int, *, family: int = socket.AF_INET, streams: int = 0,
         before_connect=None) -> tuple[socket.socket, socket.socket]:
    """(A's socket, P's socket) of a new association; A accepts on the service address."""
    lsock = net.socket("A", family)
    if streams:
        lsock.setsockopt(abi.SOL_SCTP, abi.SCTP_INITMSG, SCTP_INITMSG.pack(streams, streams, 0, 0))
    lsock.bind(("::ffff:" + V4.addr(SVC_HOST) if family == socket.AF_INET6
                else V4.addr(SVC_HOST), port))
    lsock.listen(1)
    if before_connect:
        before_connect(lsock)
    c = net.socket("P", socket.AF_INET)
    if streams:
        c.setsockopt(abi.SOL_SCTP, abi.SCTP_INITMSG, SCTP_INITMSG.pack(streams, streams, 0, 0))
    c.connect((V4.addr(SVC_HOST), port))
    s, _ = lsock.accept()
    lsock.close()
    return s, c


def write_state(net: Net, sra: abi.SctpRepairAssoc) -> int:
    """Write ``sra`` on a fresh socket in repair mode: the errno, 0 when taken."""
    with net.socket("A", socket.AF_INET) as n:
        n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON)
        try:
            n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, bytes(sra))
        except OSError as e:
            return e.errno
    return 0


def connect_state(net: Net, sra: abi.SctpRepairAssoc, streams: bytes | None,
                  peer: tuple[str, int]) -> int:
    """Both options (the streams if given), then connect(): the errno, 0 when connected."""
    with net.socket("A", socket.AF_INET) as n:
        n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON)
        n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, bytes(sra))
        try:
            if streams is not None:
                n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_STREAMS, streams)
            n.connect(peer)
        except OSError as e:
            return e.errno
    return 0


def roundtrip(a: socket.socket, p: socket.socket, sid: int = 0) -> None:
    send_on(a, sid, b"ping")
    assert p.recv(100) == b"ping"
    send_on(p, sid, b"pong")
    assert a.recv(100) == b"pong"


def move_in_place(net: Net, s: socket.socket, state) -> socket.socket:
    """Release ``s`` and restore ``state`` on a new socket of host A, under the lock."""
    net.lock("A")
    release(s)
    with in_netns(net.path("A")):
        n = new_socket(state)
    restore(n, state)
    net.unlock("A")
    return n


def test_restored_values_are_checked_like_the_stock_options(net):
    """Findings 1, 3, 5: path MTU, SACK delay, RTO bounds, TSN relations, SSN width."""
    s, c = pair(net, 40001)
    with c:
        state = save(s)
        sra, streams = state.to_kernel()
        assert write_state(net, sra) == 0
        cases = {
            # A path MTU of 48 reached the WARN in __sctp_mtu_payload (frag_point 0).
            ("sra_pathmtu", 48): errno.EINVAL, ("sra_pathmtu", 511): errno.EINVAL,
            ("sra_pathmtu", 512): 0,
            ("sra_sackdelay", 501): errno.EINVAL, ("sra_sackdelay", 500): 0,
            ("sra_rto_min", state.rto_max + 1): errno.EINVAL,
            ("sra_rto_max", state.rto_min - 1): errno.EINVAL,
            ("sra_ctsn_ack_point", state.next_tsn - 2): errno.EINVAL,
            ("sra_next_tsn", state.next_tsn + 1): errno.EINVAL,
            ("sra_adv_peer_ack_point", state.ctsn_ack_point + 1): errno.EINVAL,
        }
        assert state.caps & abi.Cap.PRSCTP   # so that the advanced ack point counts
        for (field, value), want in cases.items():
            bad, _ = state.to_kernel()
            setattr(bad, field, value)
            assert write_state(net, bad) == want, (field, value)
        # A zero bound is the socket's own: the lab's rto_max sysctl is 1000 ms.
        bad, _ = state.to_kernel()
        bad.sra_rto_min, bad.sra_rto_max = 1001, 0
        assert write_state(net, bad) == errno.EINVAL

        peer = (state.peer_addr, state.peer_port)
        # Finding 3: no streams, no association (every SSN would restart at 0).
        assert connect_state(net, sra, None, peer) == errno.EINVAL
        wide = bytearray(streams)
        struct.pack_into("=I", wide, abi.REPAIR_STREAMS_HDR.size, 0x10000)
        assert connect_state(net, sra, bytes(wide), peer) == errno.EINVAL
        unordered = bytearray(streams)
        struct.pack_into("=I", unordered, abi.REPAIR_STREAMS_HDR.size + 4, 1)
        assert connect_state(net, sra, bytes(unordered), peer) == errno.EINVAL
        assert connect_state(net, sra, streams, (peer[0], peer[1] + 1)) == errno.EINVAL

        # An RTO beyond the bounds is clamped, as a measured one would be.
        state.rto = state.rto_max * 10
        s = move_in_place(net, s, state)
        with s:
            again = save(s)
            assert again.rto == again.rto_max == state.rto_max
            resume(s)
            roundtrip(s, c)


def test_partial_delivery_is_not_quiescent(net):
    """Finding 2: a message half read, its rest dropped in repair mode, is EBUSY."""
    def small_window(lsock: socket.socket) -> None:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lsock.setsockopt(abi.SOL_SCTP, SCTP_PARTIAL_DELIVERY_POINT, 1024)

    s, c = pair(net, 40002, before_connect=small_window)
    with s, c:
        big = 128 * 1024
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * big)   # a message goes whole
        c.send(b"m" * big)   # queued at once; the 4 KiB window lets a few chunks through
        assert select.select([s], [], [], 10)[0], "the start of the message never arrived"
        s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON)
        s.setblocking(False)
        got = 0
        for _ in range(3):
            while True:
                try:
                    got += len(s.recv(65536))
                except BlockingIOError:
                    break
            time.sleep(0.2)
        assert 0 < got < big
        with pytest.raises(QueuesNotEmpty):
            save(s, wait=1)
        s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, OFF)


def test_what_cannot_be_restored_is_refused_before_anything_is_closed(net):
    """Finding 4 and the Python side: the read fails on what the write would refuse;
    ``save`` turns repair mode off again and the association goes on."""
    # More streams than one SCTP_REPAIR_STREAMS can carry back.
    s, c = pair(net, 40003, streams=5000)
    with s, c:
        with pytest.raises(RepairError, match="not supported"):
            save(s)
        assert not in_repair(s)
        roundtrip(s, c, sid=4999)

    # SCTP-AUTH: its shared keys are not part of the state.
    for host in "AP":
        net.nsexec(host, "sysctl", "-qw", "net.sctp.auth_enable=1")
    try:
        s, c = pair(net, 40004)
    finally:
        for host in "AP":
            net.nsexec(host, "sysctl", "-qw", "net.sctp.auth_enable=0")
    with s, c:
        with pytest.raises(RepairError, match="not supported"):
            save(s)
        assert not in_repair(s)
        roundtrip(s, c)

    # Over 127 streams is fine: the options are read through libc, not
    # CPython's getsockopt (1024 bytes at most), and carried back whole.
    s, c = pair(net, 40005, streams=1000)
    with c:
        send_on(s, 999, b"before")
        assert c.recv(100) == b"before"
        state = save(s, wait=5)
        assert len(state.out_streams) == len(state.in_streams) == 1000
        assert state.out_streams[999].mid == 1
        s = move_in_place(net, s, state)
        with s:
            roundtrip(s, c, sid=999)


def test_abandoned_chunks_are_not_quiescent(net):
    """Finding 6: a PR-SCTP chunk abandoned but not yet forwarded past is EBUSY."""
    s, c = pair(net, 40006)
    with s, c:
        assert save(s).caps & abi.Cap.PRSCTP
        resume(s)
        # struct sctp_default_prinfo: assoc id, value (ms), policy.
        s.setsockopt(abi.SOL_SCTP, SCTP_DEFAULT_PRINFO,
                     struct.pack("=iIH2x", 0, 300, SCTP_PR_SCTP_TTL))
        net.lock("P")
        s.send(b"expires")
        time.sleep(2)   # retransmitted at 100, 300, 700 ms (RTO 100 ms doubling), abandoned
        with pytest.raises(QueuesNotEmpty):
            save(s)
        resume(s)
        net.unlock("P")
        # Data after the abandoned message gets a SACK with a gap, whose processing
        # sends the FORWARD TSN: the message after it is then delivered.
        s.setsockopt(abi.SOL_SCTP, SCTP_DEFAULT_PRINFO, struct.pack("=iIH2x", 0, 0, 0))
        s.send(b"after")
        c.settimeout(20)
        assert c.recv(100) == b"after"
        wait_until(lambda: _quiescent(s), 20, "the FORWARD TSN to be acked")
        resume(s)


def _quiescent(s: socket.socket) -> bool:
    try:
        save(s)
        return True
    except QueuesNotEmpty:
        return False


def test_silent_close_after_shutdown_leaves_curr_estab(net):
    """Finding 7: closed in repair mode in SHUTDOWN-SENT, the association leaves CurrEstab."""
    base = sctp_mib(net.ns["A"])["SctpCurrEstab"]
    s, c = pair(net, 40007)
    with c:
        assert sctp_mib(net.ns["A"])["SctpCurrEstab"] == base + 1
        # Repair mode first: a socket shutting down (CLOSING) cannot enter it.
        s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON)
        net.lock("P")
        s.shutdown(socket.SHUT_WR)
        wait_until(lambda: status(s).sstat_state == abi.State.SHUTDOWN_SENT, 10,
                   "SHUTDOWN-SENT")
        s.close()
        assert sctp_mib(net.ns["A"])["SctpCurrEstab"] == base
        net.unlock("P")


def test_restore_beside_the_listener_and_what_repair_mode_refuses(net):
    """Finding 8: an accepted association comes back while its listener holds the port;
    listen() and an implicit INIT are refused in repair mode; an IPv6 socket with an
    IPv4 peer stays IPv6, with v4-mapped addresses in the state."""
    port = 40008
    lsock = net.socket("A", socket.AF_INET6)
    lsock.bind(("::ffff:" + V4.addr(SVC_HOST), port))
    lsock.listen(1)
    c = net.socket("P", socket.AF_INET)
    c.connect((V4.addr(SVC_HOST), port))
    s, _ = lsock.accept()
    with lsock, c:
        roundtrip(s, c)
        state = save(s)
        assert state.family == socket.AF_INET6
        assert state.local_addr == "::ffff:" + V4.addr(SVC_HOST)
        assert state.peer_addr == "::ffff:" + V4.addr(P_HOST)
        assert family_of(state) == socket.AF_INET6
        s = move_in_place(net, s, state)   # bind beside the listener: no EADDRINUSE
        with s:
            assert s.family == socket.AF_INET6
            roundtrip(s, c, sid=1)

    with net.socket("A", socket.AF_INET) as n:
        n.bind((V4.addr(A_HOST), port + 1))
        n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON)
        check_errno(lambda: n.listen(1), errno.EINVAL)
        check_errno(lambda: n.sendto(b"x", (V4.addr(P_HOST), 5000)), errno.ENOTCONN)
