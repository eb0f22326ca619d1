"""What repair mode refuses, and with which errno."""

from __future__ import annotations

import ctypes
import errno
import socket
import subprocess
import sys
import time

import pytest

from lab.sctpnet import (
    NOTIFY_TYPES,
    P_HOST,
    SVC_HOST,
    V4,
    Net,
    check_errno,
    send_on,
    subscribe,
    wait_until,
)
from sctp_repair import abi, save, status
from sctp_repair.repair import QueuesNotEmpty

pytestmark = pytest.mark.repair

ON = abi.SCTP_REPAIR_ON


@pytest.fixture
def net():
    n = Net().up()
    n.add_svc("A", V4)
    yield n
    n.down()


def pair(net: Net) -> tuple[socket.socket, socket.socket]:
    lsock = net.socket("A", socket.AF_INET)
    lsock.bind((V4.addr(SVC_HOST), 36412))
    lsock.listen(1)
    c = net.socket("P", socket.AF_INET)
    c.connect((V4.addr(SVC_HOST), 36412))
    s, _ = lsock.accept()
    lsock.close()
    return s, c


def sctp(type_: int = socket.SOCK_STREAM) -> socket.socket:
    return socket.socket(socket.AF_INET, type_, abi.IPPROTO_SCTP)


def test_repair_is_readable_without_privilege_and_off_by_default():
    with sctp() as s:
        assert s.getsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR) == 0


NO_CAP_CHILD = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)
try:
    s.setsockopt(132, 134, 1)
except OSError as e:
    print(errno.errorcode[e.errno]); sys.exit(0)
print("OK")
"""


def test_without_cap_net_admin_in_the_sockets_netns_it_is_refused():
    # A new user namespace gives the child every capability, but only there:
    # the socket lives in the initial network namespace, owned by the initial
    # user namespace, where the child has none.
    out = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c",
                          NO_CAP_CHILD], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "EPERM", out
    # With its own network namespace, owned by its user namespace, it may.
    out = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable,
                          "-c", NO_CAP_CHILD], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "OK", out


def test_root_without_cap_net_admin_is_refused():
    out = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin", "--",
                          sys.executable, "-c", NO_CAP_CHILD],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "EPERM", out


def test_one_to_many_socket_is_refused():
    with sctp(socket.SOCK_SEQPACKET) as s:
        check_errno(lambda: s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON), errno.EOPNOTSUPP)


def test_listening_socket_is_refused():
    with sctp() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        check_errno(lambda: s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON), errno.EINVAL)


def test_bad_values_are_refused():
    with sctp() as s:
        check_errno(lambda: s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, 4), errno.EINVAL)
        check_errno(lambda: s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, b"\1\0"), errno.EINVAL)


def test_state_options_need_repair_mode(net):
    s, c = pair(net)
    with s, c:
        size = ctypes.sizeof(abi.SctpRepairAssoc)
        check_errno(lambda: s.getsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, size), errno.EPERM)
        check_errno(lambda: s.getsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_STREAMS, 1024),
                    errno.EPERM)


def test_wrong_struct_size_is_refused(net):
    s, c = pair(net)
    with s, c:
        state = save(s)
        size = ctypes.sizeof(abi.SctpRepairAssoc)
        # Read: a buffer shorter than the first published structure.
        check_errno(lambda: s.getsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, size - 1),
                    errno.EINVAL)
        # Read: a longer one gets the kernel's structure and its size.
        raw = s.getsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, size + 64)
        assert len(raw) == size
        assert abi.SctpRepairAssoc.from_buffer_copy(raw).sra_size == size
        # Streams: a buffer too short for the streams.
        check_errno(lambda: s.getsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_STREAMS, 8),
                    errno.EINVAL)

    with sctp() as n:
        n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON)
        sra, streams = state.to_kernel()
        good = bytes(sra)
        check_errno(lambda: n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, good[:-4]),
                    errno.EINVAL)
        sra.sra_size = size + 8
        check_errno(lambda: n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, bytes(sra)),
                    errno.EINVAL)
        # Longer than the kernel's: the unknown tail must be zero.
        check_errno(lambda: n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC,
                                         bytes(sra) + b"\0" * 7 + b"\1"), errno.E2BIG)
        n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, bytes(sra) + b"\0" * 8)
        check_errno(lambda: n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_STREAMS, streams[:-1]),
                    errno.EINVAL)
        n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_STREAMS, streams)


def test_unsupported_state_is_refused(net):
    s, c = pair(net)
    with s, c:
        state = save(s)
    with sctp() as n:
        n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON)
        sra, _ = state.to_kernel()
        sra.sra_peer_caps |= abi.Cap.AUTH
        check_errno(lambda: n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, bytes(sra)),
                    errno.EOPNOTSUPP)
        sra, _ = state.to_kernel()
        sra.sra_flags = 1
        check_errno(lambda: n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, bytes(sra)),
                    errno.EINVAL)
        sra, _ = state.to_kernel()
        sra.sra_peer_caps |= abi.Cap.RECONF   # RE-CONFIG is off on this socket
        check_errno(lambda: n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, bytes(sra)),
                    errno.EINVAL)


def test_connect_in_repair_mode_needs_a_state(net):
    with net.socket("A", socket.AF_INET) as n:
        n.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON)
        check_errno(lambda: n.connect((V4.addr(P_HOST), 5000)), errno.EINVAL)


def test_no_association_is_enotconn():
    with sctp() as s:
        s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON)
        check_errno(lambda: s.getsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC,
                                         ctypes.sizeof(abi.SctpRepairAssoc)), errno.ENOTCONN)


def test_state_on_a_connected_socket_is_eisconn(net):
    s, c = pair(net)
    with s, c:
        state = save(s)
        sra, _ = state.to_kernel()
        check_errno(lambda: s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, bytes(sra)),
                    errno.EISCONN)
        s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, abi.SCTP_REPAIR_OFF)


def test_unread_data_is_ebusy(net):
    s, c = pair(net)
    with s, c:
        send_on(c, 0, b"0:0:unread")
        time.sleep(0.5)
        with pytest.raises(QueuesNotEmpty):
            save(s)
        assert s.recv(100) == b"0:0:unread"
        save(s)   # now quiescent
        s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, abi.SCTP_REPAIR_OFF)


def test_unread_data_is_carried_in_rcvq_mode(net):
    """With SCTP_REPAIR_ON_RCVQ the messages nobody read are saved with the state and
    put back on the new socket's receive queue: the owner reads them in order, from
    the peer, before what the peer sends next."""
    from sctp_repair import repair

    assert repair.probe().rcvq
    s, c = pair(net)
    big = bytes(range(256)) * 80  # 20 KiB: several chunks on the wire, one message
    with c:
        with s:
            send_on(c, 0, b"first")
            send_on(c, 2, big)
            send_on(c, 1, b"third")
            time.sleep(0.3)  # a look in repair mode drops DATA: the peer would resend
            wait_until(lambda: _unread(s) >= 3, 10, "three messages unread")
            # as a move does: while no socket holds the association here, the peer's
            # packets (a retransmission whose SACK was still delayed) must not reach
            # the host, which would answer them with an ABORT
            net.lock("A")
            state = save(s, rcvq=True)
            # in the order they were delivered (a look in repair mode may have made the
            # peer send one again, later), each the first of its stream
            assert sorted((m.stream, m.data) for m in state.unread) == [
                (0, b"first"), (1, b"third"), (2, big)]
            assert max(m.tsn for m in state.unread) == state.peer_ctsn
            assert [m.mid for m in state.unread] == [0, 0, 0]
            state = type(state).from_bytes(state.to_bytes())  # through the image format
            repair.release(s)
        n = net.socket("A", socket.AF_INET)
        with n:
            repair.restore(n, state)
            net.unlock("A")
            got = [n.recvfrom(65536) for _ in range(3)]
            assert [d for d, _ in got] == [m.data for m in state.unread]
            assert {a for _, a in got} == {(V4.addr(P_HOST), c.getsockname()[1])}
            n.send(b"after")
            assert c.recv(100) == b"after"
            c.send(b"next")
            assert n.recv(100) == b"next"


def _unread(s: socket.socket) -> int:
    """Messages in the receive queue, counted in SCTP_REPAIR_ON_RCVQ mode for a moment."""
    from sctp_repair import repair
    from sctp_repair.sockopts import getsockopt_sized

    repair.set_repair(s, True, rcvq=True)
    try:
        raw = getsockopt_sized(s, abi.SOL_SCTP, abi.SCTP_REPAIR_RCVQ, 1024)
    except OSError:
        return 0
    finally:
        repair.set_repair(s, False)
    return abi.REPAIR_QUEUE_HDR.unpack_from(raw, 0)[1]


def test_unacked_and_unsent_data_is_carried_in_queues_mode(net):
    """With SCTP_REPAIR_ON_QUEUES what the peer has not acknowledged goes with the state:
    the chunks in flight keep their TSNs and SSNs (the restored socket retransmits
    them), the messages the congestion window held back go again as new ones. The
    peer gets every message once, in order on its stream, and the association goes
    on."""
    from sctp_repair import repair

    assert repair.probe().sndq
    s, c = pair(net)
    msgs = [b"%02d:" % i + bytes([i]) * 1400 for i in range(12)]
    with c:
        with s:
            net.lock("P")  # the peer neither receives nor acks
            for i, m in enumerate(msgs):
                send_on(s, i % 3, m)
            state = save(s, sndq=True, wait=5)
            assert state.in_flight and state.unsent, (len(state.in_flight), len(state.unsent))
            assert len(state.in_flight) == (state.next_tsn - 1 - state.ctsn_ack_point) % 2**32
            sent = [m.data for m in state.in_flight] + [m.data for m in state.unsent]
            assert sent == msgs  # 1,404 bytes each: one chunk per message
            state = type(state).from_bytes(state.to_bytes())
            repair.release(s)
        n = net.socket("A", socket.AF_INET)
        with n:
            repair.restore(n, state)
            net.unlock("P")
            c.settimeout(30)
            got = [c.recv(4096) for _ in msgs]
            assert sorted(got) == msgs  # each once
            for sid in range(3):  # and in order on its stream (streams are ordered apart)
                assert [m for m in got if int(m[:2]) % 3 == sid] == msgs[sid::3]
            n.send(b"after")
            assert c.recv(100) == b"after"
            c.send(b"next")
            assert n.recv(100) == b"next"


def test_unacked_data_is_ebusy(net):
    s, c = pair(net)
    with s, c:
        net.lock("P")   # the peer neither receives nor acks
        s.send(b"0:0:in flight")
        with pytest.raises(QueuesNotEmpty):
            save(s)
        net.unlock("P")
        wait_until(lambda: _quiet(s), 20, "the data to be acked")
        s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, abi.SCTP_REPAIR_OFF)


def _quiet(s: socket.socket) -> bool:
    try:
        save(s)
        return True
    except QueuesNotEmpty:
        return False


def test_silent_close_sends_nothing(net):
    """Repair mode on, close: the peer's association stays up (no SHUTDOWN, no ABORT)."""
    s, c = pair(net)
    subscribe(c, *NOTIFY_TYPES)
    with c:
        s.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, ON)
        s.close()
        time.sleep(1)
        c.setblocking(False)
        with pytest.raises(BlockingIOError):
            c.recvmsg(1024)
        assert status(c).sstat_state == abi.State.ESTABLISHED
        # The address is gone from A's side now: lock A so that the peer's
        # next packets are not answered with an out-of-the-blue ABORT.
        net.lock("A")
