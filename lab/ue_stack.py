"""A UE with a kernel TCP/IP stack behind a GTP tunnel: the eNB end of one bearer.

The lab's other UEs are packets built by hand (lab.enb). This one is a real
stack, for flows that need one (a TCP download through the SGi masquerade): in
its own netns on the S1-U segment, a gtp device in SGSN role bound to a UDP 2152
socket this process holds, one PDP context (the UE's address, the gateway as
peer), the UE's address on the device and a route to the PDN through it. Run as

    python -m lab.ue_stack --ue ADDR --gateway ADDR --pdn ADDR --i-tei N --o-tei N \
        --port P --out FILE [--port P2 --out FILE2 ...] [--stall S]

inside that netns: it sets the bearer up, then reads ``lab.bulk``'s streams from
the PDN's ports one after the other, as the UE. :func:`attach` adds the gateway's side of the bearer.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket


def _ip(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


def attach(gw_netns: str, dev: str, ue: str, enb: str, i_tei: int, o_tei: int) -> None:
    """The gateway's side of the bearer: a PDP context on its gtp device ``dev``."""
    from gtp_util.model import PdpTable
    from gtp_util.netlink import PdpChannel
    from procns.netns import in_netns

    with in_netns(gw_netns):
        link = socket.if_nametoindex(dev)
    t = PdpTable()
    t.append_v1(_ip(enb), _ip(ue), i_tei, o_tei)
    with PdpChannel(gw_netns) as chan:
        chan.add(link, t)


def bring_up(ue: str, gateway: str, pdn: str, i_tei: int, o_tei: int) -> socket.socket:
    """The UE's end of the bearer in this netns; the returned socket keeps it."""
    import gtp_util
    from gtp_util.model import Address, Device, PdpTable, Route, Snapshot, SocketRef

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 2152))
    t = PdpTable()
    t.append_v1(_ip(gateway), _ip(ue), i_tei, o_tei)
    ref = SocketRef(kind="task", pid=os.getpid(), fd=s.fileno(), family=socket.AF_INET,
                    addr="0.0.0.0", port=2152)
    dev = Device("gtpu0", 0, role=1, up=True, sock1=ref, contexts=t,
                 addresses=[Address(socket.AF_INET, ue, 32)])
    gtp_util.restore(Snapshot(devices=[dev], routes=[Route(socket.AF_INET, pdn, 32, "gtpu0")]),
                     None, bind_pid=os.getpid())
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ue", required=True)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--pdn", required=True)
    ap.add_argument("--i-tei", type=int, required=True)
    ap.add_argument("--o-tei", type=int, required=True)
    ap.add_argument("--port", type=int, action="append", required=True)
    ap.add_argument("--out", action="append", required=True, help="one per --port")
    ap.add_argument("--stall", type=float, default=300.0,
                    help="give a stream up after this many seconds without data")
    args = ap.parse_args()
    if len(args.port) != len(args.out):
        ap.error("give one --out per --port")
    from lab.bulk import fetch

    keep = bring_up(args.ue, args.gateway, args.pdn, args.i_tei, args.o_tei)
    print("BEARER UP", flush=True)
    for port, out in zip(args.port, args.out):
        fetch(args.ue, args.pdn, port, out, args.stall)
    keep.close()


if __name__ == "__main__":
    main()
