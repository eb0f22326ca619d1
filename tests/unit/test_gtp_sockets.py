"""Socket discovery: /proc/net/udp parsing and the socket-to-device matching (pure), and
finding a task's socket by descriptor or port (this process's own sockets)."""

import socket

from gtp_util.sockets import UdpSocket, assign, parse_proc_udp

UDP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100000A:0868 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0
  124: 00000000:0D3A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0
"""
UDP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
    1: 00000000000000000000000001000000:0868 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0
"""


def test_parse_proc_net_udp():
    a, b = parse_proc_udp(UDP, socket.AF_INET)
    assert (a.addr, a.port, a.inode) == ('10.0.0.1', 2152, 4242)
    assert (b.addr, b.port) == ('0.0.0.0', 3386)
    (c,) = parse_proc_udp(UDP6, socket.AF_INET6)
    assert (c.addr, c.port, c.inode) == ('::1', 2152, 777)


def test_one_device_one_task_socket():
    s = UdpSocket(2, '0.0.0.0', 2152, 10, holders=[(55, 3)], encap=5)
    plain = UdpSocket(2, '0.0.0.0', 2152, 11, holders=[(56, 3)], encap=0)
    (s0, s1) = assign([7], [s, plain])[7]
    assert (s1.kind, s1.pid, s1.fd, s1.guessed) == ('task', 55, 3, False)
    assert s0.kind == 'none'


def test_kernel_created_sockets_are_the_unheld_ones():
    socks = [UdpSocket(2, '0.0.0.0', 3386, 20), UdpSocket(2, '0.0.0.0', 2152, 21)]
    s0, s1 = assign([4], socks)[4]
    assert (s0.kind, s1.kind) == ('kernel', 'kernel')


def test_several_devices_match_by_creation_order_and_say_so():
    socks = [UdpSocket(2, '10.0.2.1', 2152, 31, holders=[(9, 4)], encap=5),
             UdpSocket(2, '10.0.1.1', 2152, 30, holders=[(9, 3)], encap=5)]
    out = assign([12, 11], socks)
    assert out[11][1].addr == '10.0.1.1' and out[12][1].addr == '10.0.2.1'
    assert out[11][1].guessed


def test_no_candidate_socket_is_unknown():
    assert assign([3], [])[3][1].kind == 'none'
    held_twice = [UdpSocket(2, '0.0.0.0', 2152, 1, holders=[(1, 3)], encap=5),
                  UdpSocket(2, '0.0.0.0', 2152, 2, holders=[(1, 4)], encap=5)]
    assert assign([3], held_twice)[3][1].kind == 'unknown'


def test_a_recorded_fd_that_is_no_socket_falls_back_to_the_port():
    """The task's descriptor at the recorded number is a pipe now (a restored task's
    numbers may differ): the socket bound to the port is found, no ENOTSOCK."""
    import os
    import socket

    from gtp_util.model import SocketRef
    from gtp_util.sockets import find_in_task

    r, w = os.pipe()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        ref = SocketRef(kind="task", pid=os.getpid(), fd=r, family=socket.AF_INET,
                        addr="127.0.0.1", port=s.getsockname()[1])
        fd = find_in_task(os.getpid(), ref)
        try:
            assert os.stat(fd).st_ino == os.fstat(s.fileno()).st_ino
        finally:
            os.close(fd)
    finally:
        s.close()
        os.close(r)
        os.close(w)
