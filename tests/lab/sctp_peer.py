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

from tests.lab.sctp_wire import (INTERVAL, MSG_NOTIFICATION, STATUS_EVERY, Sequence, addr,
                                 new_socket, notification, parse, subscribe, write_status)


class Peer:
    def __init__(self, status: str) -> None:
        self.status = status
        self.lock = threading.Lock()
        self.flows: dict[str, Sequence] = {}
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.sent = 0

    def report(self) -> None:
        with self.lock:
            write_status(self.status, {
                "flows": {k: v.to_dict() for k, v in self.flows.items()},
                "ack_times": {k: v.times[-2000:] for k, v in self.flows.items()},
                "notifications": self.notes, "errors": self.errors, "sent": self.sent})

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
    seq = peer.flows.setdefault("ack", Sequence())
    n, next_send = 0, time.monotonic()
    while True:
        if time.monotonic() >= next_send:
            try:
                s.send(f"REQ {n + 1}\n".encode())
                n += 1
                peer.sent = n
            except BlockingIOError:
                pass
            except OSError as exc:
                peer.errors.append(f"send: {exc}")
                return
            next_send += INTERVAL
        ready, _, _ = select.select([s], [], [], max(0.0, next_send - time.monotonic()))
        if not ready:
            continue
        try:
            data, _, flags, _ = s.recvmsg(4096)
        except BlockingIOError:
            continue
        except OSError as exc:
            peer.errors.append(f"recv: {exc}")
            return
        if not data:
            peer.errors.append("association closed")
            return
        if flags & MSG_NOTIFICATION:
            with peer.lock:
                peer.notes.append(notification(data))
            continue
        for line in data.splitlines():
            kind, k = parse(line)
            if kind == "ACK":
                with peer.lock:
                    seq.got(k)


def _serve(peer: Peer, conn: socket.socket, who: str) -> None:
    pushing = False
    n = 0
    next_push = time.monotonic()
    conn.setblocking(False)
    while True:
        if pushing and time.monotonic() >= next_push:
            try:
                conn.send(f"PUSH {n + 1}\n".encode())
                n += 1
            except BlockingIOError:
                pass
            except OSError as exc:
                peer.errors.append(f"{who}: push: {exc}")
                return
            next_push += INTERVAL
        ready, _, _ = select.select([conn], [], [], 0.05)
        if not ready:
            continue
        try:
            data, _, flags, _ = conn.recvmsg(4096)
        except BlockingIOError:
            continue
        except OSError as exc:
            peer.errors.append(f"{who}: recv: {exc}")
            return
        if not data:
            peer.errors.append(f"{who}: association closed")
            return
        if flags & MSG_NOTIFICATION:
            with peer.lock:
                peer.notes.append(f"{who}: {notification(data)}")
            continue
        for line in data.splitlines():
            kind, k = parse(line)
            if kind == "HELLO":
                pushing, next_push = True, time.monotonic()
            elif kind == "REQ":
                with peer.lock:
                    peer.flows.setdefault(who, Sequence()).got(k)
                conn.send(f"ACK {k}\n".encode())


def run_server(peer: Peer, listen: tuple[str, int]) -> None:
    ls = new_socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    subscribe(ls)
    ls.bind(listen)
    ls.listen(16)
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
