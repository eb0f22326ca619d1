"""The peers of the migrated SCTP programs (they stay put; what they see is the verdict).

``client``: a base station of the MME: one association, ``REQ n`` every
100 ms, expects ``ACK n``; the longest pause between two ACKs is the
downtime as this peer sees it.

``server``: the far end of the client-side variant: answers ``REQ n`` with
``ACK n``; on an association that says ``HELLO push`` it sends ``PUSH n``
every 100 ms.

Both record notifications after their association came up (a restart or a
lost association shows there) and write JSON status to ``--status``.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import threading
import time

from lab.sctp_wire import STATUS_EVERY, Recorder, addr, listener, new_socket, parse, subscribe


class Peer(Recorder):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.sent = 0

    def report(self) -> None:
        with self.lock:
            ack_times = {k: v.times[-2000:] for k, v in self.flows.items()}
        self.write(ack_times=ack_times, sent=self.sent)

    def reporter(self) -> None:
        while True:
            time.sleep(STATUS_EVERY)
            self.report()


def run_client(peer: Peer, server: tuple[str, int], bind: str | None) -> None:
    s = new_socket()
    subscribe(s)
    if bind:
        s.bind((bind, 0))
    s.connect(server)
    s.setblocking(False)
    next_send, alive = time.monotonic(), True
    while alive:
        next_send, peer.sent, alive = peer.tick(s, "REQ", "", next_send, peer.sent)
        ready, _, _ = select.select([s], [], [], max(0.0, next_send - time.monotonic()))
        if ready and not peer.take(s, "", "ACK", "ack"):
            return


def _serve(peer: Peer, conn: socket.socket, who: str) -> None:
    pushing, n, next_push, alive = False, 0, time.monotonic(), True
    conn.setblocking(False)
    while alive:
        if pushing:
            next_push, n, alive = peer.tick(conn, "PUSH", who, next_push, n)
        ready, _, _ = select.select([conn], [], [], 0.05)
        lines = peer.receive(conn, who) if ready else []
        if lines is None:
            return
        for line in lines:
            kind, k = parse(line)
            if kind == "HELLO":
                pushing, next_push = True, time.monotonic()
            elif kind == "REQ":
                peer.got(who, k)
                conn.send(f"ACK {k}\n".encode())


def run_server(peer: Peer, listen: tuple[str, int]) -> None:
    ls = listener(listen)
    while True:
        conn, who = ls.accept()
        threading.Thread(target=_serve, args=(peer, conn, f"{who[0]}:{who[1]}"),
                         daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["client", "server"])
    ap.add_argument("--server", type=addr, help="client: ADDR:PORT to connect to")
    ap.add_argument("--bind", help="client: local address")
    ap.add_argument("--listen", type=addr, help="server: ADDR:PORT")
    ap.add_argument("--status", required=True)
    args = ap.parse_args()
    peer = Peer(args.status)
    signal.signal(signal.SIGTERM, lambda *_: (peer.report(), os._exit(0)))
    threading.Thread(target=peer.reporter, daemon=True).start()
    if args.mode == "client":
        run_client(peer, args.server, args.bind)
    else:
        run_server(peer, args.listen)
    peer.report()
    while True:  # keep the verdict readable after a failure
        time.sleep(3600)


if __name__ == "__main__":
    main()
