"""The rtnetlink requests a restore sends, encoded and decoded again (no kernel: what the
kernel does with them is tests/vm/test_gtp_restore.py's)."""

from __future__ import annotations

import socket

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from gtp_util import rtnl
from gtp_util.model import Address, Device, Route, SocketRef


def roundtrip(msg, cls):
    msg.encode()
    out = cls(msg.data)
    out.decode()
    return out


def test_gtp_link_carries_sockets_role_hash_mtu_and_up():
    dev = Device('gtp0', 0, role=1, hashsize=4096, restart_count=3, up=True,
                 sock1=SocketRef(kind='task'))
    m = roundtrip(rtnl.gtp_link_msg(dev, 5, 7, 1400), ifinfmsg)
    assert m['flags'] & rtnl.IFF_UP and m['change'] & rtnl.IFF_UP
    assert m.get_attr('IFLA_IFNAME') == 'gtp0' and m.get_attr('IFLA_MTU') == 1400
    info = m.get_attr('IFLA_LINKINFO')
    assert info.get_attr('IFLA_INFO_KIND') == 'gtp'
    data = dict(info.get_attr('IFLA_INFO_DATA')['attrs'])
    assert data == {'IFLA_GTP_PDP_HASHSIZE': 4096, 'IFLA_GTP_ROLE': 1,
                    'IFLA_GTP_RESTART_COUNT': 3, 'IFLA_GTP_FD0': 5, 'IFLA_GTP_FD1': 7}


def test_kernel_socket_link_asks_for_sockets_and_stays_down():
    dev = Device('gtpk', 0, sock0=SocketRef(kind='kernel'), sock1=SocketRef(kind='kernel'))
    m = roundtrip(rtnl.gtp_link_msg(dev, None, None, None), ifinfmsg)
    assert not m['flags'] & rtnl.IFF_UP and m.get_attr('IFLA_MTU') is None
    data = dict(m.get_attr('IFLA_LINKINFO').get_attr('IFLA_INFO_DATA')['attrs'])
    assert data['IFLA_GTP_CREATE_SOCKETS'] == 1 and 'IFLA_GTP_FD1' not in data


def test_route_and_address():
    r = roundtrip(rtnl.route_msg(9, Route(socket.AF_INET, '10.128.0.0', 16, 'gtp0', table=1000,
                                          priority=5)), rtmsg)
    assert (r['dst_len'], r['table'], r.get_attr('RTA_TABLE')) == (16, 252, 1000)
    assert (r.get_attr('RTA_DST'), r.get_attr('RTA_OIF'), r.get_attr('RTA_PRIORITY')) == \
        ('10.128.0.0', 9, 5)
    a = roundtrip(rtnl.address_msg(9, Address(socket.AF_INET, '10.0.0.1', 24)), ifaddrmsg)
    assert (a['index'], a['prefixlen'], a.get_attr('IFA_LOCAL')) == (9, 24, '10.0.0.1')
