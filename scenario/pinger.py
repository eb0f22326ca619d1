"""UEs pinging a PDN host through their GTP tunnels, every ``interval`` seconds each.

    python -m scenario.pinger --netns PATH --ues N --out FILE [--interval 0.1]

Runs in its own process (so the orchestrator's work, and CRIU's, do not share
its interpreter lock) inside the eNB's network namespace. Every UE's echo
request is built once: UE i sends ICMP id i, encapsulated with its uplink TEID.
A reply counts only if it comes back encapsulated with that UE's downlink TEID;
one with a wrong TEID is counted as such. Twice a second it writes
FILE.status: ``<now> <UEs answered within the last second>``, so the
orchestrator can tell when service is back. On SIGTERM it writes
``{"replies": [[t, ...] per UE], "sent": n, "wrong_teid": n}`` to FILE, times
from CLOCK_MONOTONIC (the orchestrator's clock too), and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import time

from lab.enb import GTPU_PORT, gtpu, icmp_echo, parse_reply
from lab.gateway import I_TEI_BASE, O_TEI_BASE
from lab.topology import ENB_IP, GW_S1U_IP, PDN_IP, ue_addr
from procns.netns import in_netns

READY = "PINGER READY"


def run(netns: str, n_ues: int, interval: float, out: str) -> None:
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ENB_IP, GTPU_PORT))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    packets = [gtpu(I_TEI_BASE + i, icmp_echo(ue_addr(i), PDN_IP, i, 1))
               for i in range(n_ues)]
    replies: list[list[float]] = [[] for _ in range(n_ues)]
    last = [0.0] * n_ues
    next_status = time.monotonic()
    counts = {"sent": 0, "wrong_teid": 0}
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    dest = (GW_S1U_IP, GTPU_PORT)
    print(READY, os.getpid(), flush=True)
    next_tick = time.monotonic()
    while not stopping:
        now = time.monotonic()
        if now >= next_status:
            write_status(out, now, sum(1 for t in last if t >= now - 1.0))
            next_status = now + 0.5
        if now >= next_tick:
            for pkt in packets:
                sock.sendto(pkt, dest)
            counts["sent"] += n_ues
            next_tick += interval
            if next_tick < now:  # we fell behind: skip, do not burst
                next_tick = now + interval
        try:
            ready = select.select([sock], [], [], max(0.0, next_tick - time.monotonic()))[0]
        except InterruptedError:
            continue
        while ready:
            try:
                data = sock.recv(2048, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            t = time.monotonic()
            r = parse_reply(data)
            if r is None or r[3] != 0 or not 0 <= r[4] < n_ues:
                continue
            ue = r[4]
            if r[0] != O_TEI_BASE + ue or r[2] != ue_addr(ue):
                counts["wrong_teid"] += 1
                continue
            replies[ue].append(t)
            last[ue] = t
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"replies": replies, **counts}, f)
    os.rename(tmp, out)


def write_status(out: str, now: float, answered: int) -> None:
    with open(out + ".status.tmp", "w") as f:
        f.write(f"{now} {answered}\n")
    os.rename(out + ".status.tmp", out + ".status")


def read_status(out: str) -> tuple[float, int]:
    """(time of the status, UEs answered within the second before it); (0, 0) if none yet."""
    try:
        with open(out + ".status") as f:
            t, n = f.read().split()
        return float(t), int(n)
    except (OSError, ValueError):
        return 0.0, 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--netns", required=True)
    p.add_argument("--ues", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    run(a.netns, a.ues, a.interval, a.out)


if __name__ == "__main__":
    main()
