"""The SCTP programs that get migrated: an MME-like server and a client-side variant.

``mme``: one-to-one listening socket and every accepted association in one
epoll loop; answers ``REQ n`` with ``ACK n`` and checks each peer's numbers.

``client``: three associations to a peer server, each driven differently:
a thread blocked in ``recvmsg`` on pushed ``PUSH n`` messages, a ``select``
loop and a ``poll`` loop each sending ``REQ n`` every 100 ms and expecting
``ACK n``.

Both write their own verdict (sequence errors, notifications after start-up,
interrupted calls) to ``--status`` as JSON. Started with stdin/stdout on
/dev/null so CRIU can dump them.
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


class Node(Recorder):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.eintr = 0
        self.last_write = 0.0

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_write >= STATUS_EVERY:
            self.last_write = now
            self.write(eintr=self.eintr)


def run_mme(node: Node, listen: tuple[str, int]) -> None:
    ls = listener(listen)
    ep = select.epoll()
    ep.register(ls.fileno(), select.EPOLLIN)
    conns: dict[int, tuple[socket.socket, str]] = {}
    # Answers the socket could not take yet (its send buffer full, as after a
    # move when the peers' held-back requests arrive at once): sent, in order,
    # when epoll says there is room again.
    unsent: dict[int, list[bytes]] = {}
    node.report(force=True)
    while True:
        try:
            events = ep.poll(STATUS_EVERY)
        except InterruptedError:  # Python retries; kept for clarity
            node.eintr += 1
            continue
        for fd, ev in events:
            if fd == ls.fileno():
                conn, peer = ls.accept()
                conn.setblocking(False)
                conns[conn.fileno()] = (conn, f"{peer[0]}:{peer[1]}")
                unsent[conn.fileno()] = []
                ep.register(conn.fileno(), select.EPOLLIN)
                continue
            conn, who = conns[fd]
            if ev & select.EPOLLIN:
                lines = node.receive(conn, who)
                if lines is None:
                    ep.unregister(fd)
                    del conns[fd], unsent[fd]
                    conn.close()
                    continue
                for line in lines:
                    kind, n = parse(line)
                    if kind == "REQ":
                        node.got(who, n)
                        unsent[fd].append(f"ACK {n}\n".encode())
            while unsent[fd]:
                try:
                    conn.send(unsent[fd][0])
                except BlockingIOError:
                    break
                unsent[fd].pop(0)
            ep.modify(fd, select.EPOLLIN | (select.EPOLLOUT if unsent[fd] else 0))
        node.report()


def _blocked_receiver(node: Node, sock: socket.socket) -> None:
    sock.send(b"HELLO push\n")
    while node.take(sock, "push", "PUSH", "push"):  # blocks: the thread CRIU finds in recvmsg
        pass


def _requester(node: Node, sock: socket.socket, name: str, use_poll: bool) -> None:
    sock.setblocking(False)
    poller = select.poll() if use_poll else None
    if poller:
        poller.register(sock.fileno(), select.POLLIN)
    n, next_send, alive = 0, time.monotonic(), True
    while alive:
        next_send, n, alive = node.tick(sock, "REQ", name, next_send, n)
        timeout = max(0.0, next_send - time.monotonic())
        if poller:
            ready = poller.poll(timeout * 1000)
        else:
            ready, _, _ = select.select([sock], [], [], timeout)
        if ready and not node.take(sock, name, "ACK", name):
            return


def run_client(node: Node, peer: tuple[str, int]) -> None:
    socks = []
    for _ in range(3):
        s = new_socket()
        subscribe(s)
        s.connect(peer)
        socks.append(s)
    threads = [threading.Thread(target=_blocked_receiver, args=(node, socks[0]), daemon=True),
               threading.Thread(target=_requester, args=(node, socks[1], "select", False),
                                daemon=True),
               threading.Thread(target=_requester, args=(node, socks[2], "poll", True),
                                daemon=True)]
    for t in threads:
        t.start()
    while True:
        time.sleep(STATUS_EVERY)
        node.report(force=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["mme", "client"])
    ap.add_argument("--listen", type=addr, help="mme: ADDR:PORT to listen on")
    ap.add_argument("--peer", type=addr, help="client: ADDR:PORT of the peer server")
    ap.add_argument("--status", required=True, help="JSON status file")
    args = ap.parse_args()
    node = Node(args.status)
    signal.signal(signal.SIGTERM, lambda *_: (node.report(force=True), os._exit(0)))
    if args.mode == "mme":
        run_mme(node, args.listen)
    else:
        run_client(node, args.peer)


if __name__ == "__main__":
    main()
