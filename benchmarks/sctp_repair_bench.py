"""Save and restore time of SCTP associations in repair mode, one and many.

Runs inside a VM booted from the patched kernel (needs root, network
namespaces, SCTP repair mode):

    python benchmarks/sctp_repair_bench.py --count 1 --count 1000 [--json out.json]

For each count: N associations between a peer P and host A (one-to-one
sockets), all locked by netfilter, saved and closed silently on A, the service
address moved, and restored on B. Timed separately: save (repair on + both
state options), silent close, restore (new socket + bind + options + connect).
Afterwards every restored association carries one message to the peer, and
the peer must have seen no association change.

Baseline, measured in the same run: setting the same associations up with a
handshake (socket, bind, connect, accept); the ratios compare save and
restore with it.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.sctpnet import NOTIFY_TYPES, P_HOST, SVC_HOST, V4, Net, subscribe  # noqa: E402
from procns.netns import in_netns  # noqa: E402
from sctp_repair import abi, new_socket, release, restore, save  # noqa: E402


def bench(count: int) -> dict:
    net = Net().up()
    try:
        net.add_svc("A", V4)
        listener = net.socket("P", V4.af)
        listener.bind((V4.addr(P_HOST), 5000))
        listener.listen(count)
        subscribe(listener, *NOTIFY_TYPES)
        clients, peers = [], []
        t0 = time.perf_counter()
        for _ in range(count):
            c = net.socket("A", V4.af)
            c.bind((V4.addr(SVC_HOST), 0))
            c.connect((V4.addr(P_HOST), 5000))
            clients.append(c)
            peers.append(listener.accept()[0])
        setup = time.perf_counter() - t0

        net.lock("A")
        t0 = time.perf_counter()
        states = [save(c, wait=5) for c in clients]
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        for c in clients:
            release(c)
        t_close = time.perf_counter() - t0

        net.del_svc("A", V4)
        net.lock("B")
        net.add_svc("B", V4)
        with in_netns(net.path("B")):
            socks = [new_socket(st) for st in states]
        t0 = time.perf_counter()
        for s, st in zip(socks, states):
            restore(s, st)
        t_restore = time.perf_counter() - t0
        net.forget_neighbours("P")
        net.unlock("B")
        net.unlock("A")

        # Every restored association carries a message to its peer socket.
        by_port = {p.getpeername()[1]: p for p in peers}
        for s in socks:
            s.send(b"after %d" % s.getsockname()[1])
        pending = set(by_port.values())
        notifications = 0
        deadline = time.monotonic() + 60
        with selectors.EpollSelector() as sel:
            for p in pending:
                sel.register(p, selectors.EVENT_READ)
            while pending and time.monotonic() < deadline:
                for key, _ in sel.select(1):
                    p = key.fileobj
                    data, _, flags, _ = p.recvmsg(1024)
                    if flags & abi.MSG_NOTIFICATION:
                        # The COMM_UP of the original handshake is expected;
                        # anything else (a restart, a loss) is not.
                        sn_type, = struct.unpack_from("=H", data, 0)
                        sac_state, = struct.unpack_from("=H", data, 8)
                        if (sn_type, sac_state) != (abi.SCTP_ASSOC_CHANGE,
                                                    abi.AssocChange.COMM_UP):
                            notifications += 1
                        continue
                    assert data == b"after %d" % p.getpeername()[1], data
                    pending.discard(p)
                    sel.unregister(p)
        for s in socks + peers + [listener]:
            s.close()
        return {
            "associations": count,
            "setup_s": round(setup, 3),
            "save_total_s": round(t_save, 4),
            "save_per_assoc_ms": round(t_save / count * 1e3, 3),
            "silent_close_total_s": round(t_close, 4),
            "restore_total_s": round(t_restore, 4),
            "restore_per_assoc_ms": round(t_restore / count * 1e3, 3),
            "save_vs_handshake": round(t_save / setup, 3),
            "restore_vs_handshake": round(t_restore / setup, 3),
            "delivered_after_restore": count - len(pending),
            "peer_notifications_besides_comm_up": notifications,
        }
    finally:
        net.down()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, action="append", help="associations (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 65536), max(hard, 65536)))
    results = []
    for n in args.count or [1, 1000]:
        results.append(bench(n))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    ok = all(r["delivered_after_restore"] == r["associations"]
             and r["peer_notifications_besides_comm_up"] == 0
             for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
