"""The gateway task: owns UDP 2152 in its netns and a gtp device bound to that socket.

Run as ``python -m lab.gateway --ues N [--dev gtp0] [--addr 0.0.0.0]`` inside
the gateway namespace (``nsenter --net=...``, fds >= 3 closed). It binds the GTP-U
socket, creates the device on it with gtp_util (plus N PDP contexts and the UE-pool
route), prints ``READY <pid> <fd>`` and sleeps until SIGTERM. Like a ZDTM test it
checks its own state on SIGUSR1: it prints ``PASS`` if its socket still has GTP
encapsulation (the device is bound to it), ``FAIL ...`` otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

UE_BASE = 0x0A800001  # 10.128.0.1
ENB_ADDR = 0x0A000002  # 10.0.0.2
I_TEI_BASE = 1000
O_TEI_BASE = 50000


def contexts(n: int, *, ue_base: int = UE_BASE, peer: int = ENB_ADDR,
             i_tei_base: int = I_TEI_BASE, o_tei_base: int = O_TEI_BASE):
    from gtp_util.model import PdpTable
    t = PdpTable()
    for i in range(n):
        t.append_v1(peer, ue_base + i, i_tei_base + i, o_tei_base + i)
    return t


def build_snapshot(dev: str, fd: int, addr: str, n: int, pool: str = '10.128.0.0/16'):
    from gtp_util.model import Device, Route, Snapshot, SocketRef
    net, plen = pool.split('/')
    ref = SocketRef(kind='task', pid=os.getpid(), fd=fd, family=socket.AF_INET, addr=addr,
                    port=2152)
    return Snapshot(devices=[Device(dev, 0, up=True, sock1=ref, contexts=contexts(n))],
                    routes=[Route(socket.AF_INET, net, int(plen), dev)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--ues', type=int, default=4)
    ap.add_argument('--dev', default='gtp0')
    ap.add_argument('--addr', default='0.0.0.0')
    args = ap.parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args.addr, 2152))
    import gtp_util
    gtp_util.restore(build_snapshot(args.dev, s.fileno(), args.addr, args.ues), None,
                     bind_pid=os.getpid())

    def check(*_):
        encap = s.getsockopt(17, 100)  # SOL_UDP, UDP_ENCAP
        print('PASS' if encap == 5 else f'FAIL encap={encap}', flush=True)

    signal.signal(signal.SIGUSR1, check)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f'READY {os.getpid()} {s.fileno()}', flush=True)
    while True:
        signal.pause()


if __name__ == '__main__':
    main()
