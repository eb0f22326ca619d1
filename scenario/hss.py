"""An HSS-like TCP server and the MME-side client that keeps querying it.

The server (``python -m scenario.hss --port P --subscribers N``) holds a
subscriber database in memory and answers each request line
``AIR <seq> <imsi>`` with ``AIA <seq> <served> <sqn>``: ``served`` counts the
answers it has given since it started, ``sqn`` is that subscriber's sequence
number, bumped per request. Both live only in the server's memory, so a client
that sees ``served`` go up by exactly one per answer and every ``sqn`` go up by
one per request for that subscriber knows the server kept its state across a
migration, and lost or repeated nothing (ZDTM style: continuity proven by the
function's own counters, not only by an outside probe).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import threading
import time

PORT = 3868  # Diameter's port, which S6a uses


def serve(port: int, subscribers: int) -> None:
    rng = random.Random(7)
    # ~100 bytes of keys per subscriber: K, OPc and an SQN, as an HSS keeps them.
    db = {f"00101{i:010d}": [rng.randbytes(16), rng.randbytes(16), 0]
          for i in range(subscribers)}
    imsis = list(db)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(8)
    served = 0
    print(f"READY {os.getpid()} {len(imsis)}", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile("rwb", buffering=0) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 3 or parts[0] != b"AIR":
                    break
                entry = db.get(parts[2].decode())
                if entry is None:
                    f.write(b"ERR " + parts[1] + b"\n")
                    continue
                entry[2] += 1
                served += 1
                f.write(b"AIA %s %d %d\n" % (parts[1], served, entry[2]))


class Client(threading.Thread):
    """Queries the HSS every ``interval`` seconds over one TCP connection.

    Records when each answer arrived and checks the server's counters; the
    socket is made in the caller's netns (create the Client inside
    ``procns.netns.in_netns``).
    """

    def __init__(self, addr: str, port: int = PORT, interval: float = 0.05,
                 subscribers: int = 100):
        super().__init__(daemon=True)
        self.sock = socket.create_connection((addr, port), timeout=5)
        self.sock.settimeout(None)
        self.interval = interval
        self.imsis = [f"00101{i:010d}" for i in range(subscribers)]
        self.replies: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        f = self.sock.makefile("rwb", buffering=0)
        last_served = None
        sqn: dict[str, int] = {}
        seq = 0
        try:
            while not self.stop.is_set():
                imsi = self.imsis[seq % len(self.imsis)]
                f.write(b"AIR %d %s\n" % (seq, imsi.encode()))
                parts = f.readline().split()
                now = time.monotonic()
                if len(parts) != 4 or parts[0] != b"AIA" or int(parts[1]) != seq:
                    self.errors.append(f"bad answer to {seq}: {parts!r}")
                    return
                served, got = int(parts[2]), int(parts[3])
                if last_served is not None and served != last_served + 1:
                    self.errors.append(f"served jumped {last_served} -> {served}")
                if imsi in sqn and got != sqn[imsi] + 1:
                    self.errors.append(f"sqn of {imsi} jumped {sqn[imsi]} -> {got}")
                last_served, sqn[imsi] = served, got
                self.replies.append(now)
                seq += 1
                self.stop.wait(self.interval)
        except OSError as e:
            self.errors.append(f"connection failed after {seq} answers: {e}")
        finally:
            f.close()

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=10)
        self.sock.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--subscribers", type=int, default=100_000)
    a = p.parse_args()
    serve(a.port, a.subscribers)


if __name__ == "__main__":
    main()
