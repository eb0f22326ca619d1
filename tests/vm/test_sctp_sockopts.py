"""sctp_repair.sockopts on a stock kernel: every bound address, read through libc.

CPython's socket.getsockopt refuses buffers over 1024 bytes (36 IPv6
addresses); SCTP_GET_LOCAL_ADDRS used to ask for more and so always fell back
to getsockname, and extra addresses vanished without notice.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

from procns.netns import in_netns
from sctp_repair import abi
from sctp_repair.sockopts import SCTP_SOCKOPT_BINDX_ADD, local_addrs, read_setup

pytestmark = pytest.mark.vm


def test_every_bound_address_is_read_the_wildcard_kept(netns):
    ns = netns("addrs")
    # Addresses need not be configured to be bound (freebind for the whole netns).
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1",
                    "net.ipv6.ip_nonlocal_bind=1"], check=True)
    with in_netns(f"/run/netns/{ns}"):
        six = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, abi.IPPROTO_SCTP)
        four = socket.socket(socket.AF_INET, socket.SOCK_STREAM, abi.IPPROTO_SCTP)
        wild = socket.socket(socket.AF_INET, socket.SOCK_STREAM, abi.IPPROTO_SCTP)
        unbound = socket.socket(socket.AF_INET, socket.SOCK_STREAM, abi.IPPROTO_SCTP)
    with six, four, wild, unbound:
        # 40 IPv6 addresses: 8 + 28 * 40 bytes, over CPython's limit.
        want6 = [(f"fd00::{i:x}", 36412) for i in range(1, 41)]
        six.bind(want6[0])
        for addr, port in want6[1:]:
            six.setsockopt(abi.SOL_SCTP, SCTP_SOCKOPT_BINDX_ADD,
                           bytes(abi.tuple_to_sockaddr(addr, port))[:28])
        assert sorted(local_addrs(six)) == sorted(want6)

        want4 = [("10.9.0.1", 2905), ("10.9.0.2", 2905)]
        four.bind(want4[0])
        four.setsockopt(abi.SOL_SCTP, SCTP_SOCKOPT_BINDX_ADD,
                        bytes(abi.tuple_to_sockaddr(*want4[1]))[:16])
        assert sorted(read_setup(four).local_addrs) == want4

        wild.bind(("0.0.0.0", 3868))
        assert local_addrs(wild) == [("0.0.0.0", 3868)]
        assert local_addrs(unbound) == []
