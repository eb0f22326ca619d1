"""A paced TCP stream whose every byte can be checked: the PDN host sends it, a UE
reads it (a download through the SGi masquerade and a GTP tunnel).

    python -m lab.bulk serve --port P --rate BYTES_PER_S --out FILE
    python -m lab.bulk fetch --src UE --dst PDN --port P --out FILE [--stall S]

Byte N of the stream is ``PATTERN[N % len(PATTERN)]`` (a prime length, so a
segment delivered at the wrong offset shows). The server sends ``rate / 10`` bytes
every 100 ms until SIGTERM, then closes its side (FIN) and waits for the reader to
close; the reader checks every byte, notes the longest pause between two reads,
and reads to the end (or gives up after S seconds without data). Both write what
they saw as JSON (the reader once a second too): bytes, the first error (a reset
is ``ECONNRESET``), whether it ended with a clean close.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import time

PATTERN = random.Random(2152).randbytes(65521)


def expected(offset: int, n: int) -> bytes:
    start = offset % len(PATTERN)
    out = PATTERN[start:start + n]
    while len(out) < n:
        out += PATTERN[:n - len(out)]
    return out


def _write(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def serve(port: int, rate: int, out: str) -> None:
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    ls = socket.create_server(("0.0.0.0", port))
    print("LISTENING", flush=True)
    conn, peer = ls.accept()
    sent, error, clean = 0, None, False
    step = max(rate // 10, 1)
    try:
        while not stop:
            conn.sendall(expected(sent, step))
            sent += step
            time.sleep(0.1)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(120)
        clean = conn.recv(1) == b""  # the reader closes once it has read everything
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    _write(out, {"peer": list(peer), "sent": sent, "error": error, "clean_close": clean})


def fetch(src: str, dst: str, port: int, out: str, stall: float = 300.0) -> None:
    s = socket.create_connection((dst, port), timeout=stall, source_address=(src, 0))
    print("CONNECTED", flush=True)
    got, error, bad_at, max_gap = 0, None, None, 0.0
    last = reported = time.monotonic()
    eof = False
    while True:
        try:
            data = s.recv(65536)
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
            break
        now = time.monotonic()
        if got:
            max_gap = max(max_gap, now - last)
        last = now
        if not data:
            eof = True
            break
        if bad_at is None and data != expected(got, len(data)):
            bad_at = got
        got += len(data)
        if now - reported >= 1.0:
            reported = now
            _write(out, {"received": got, "intact": bad_at is None, "error": None,
                         "eof": False, "max_gap_s": round(max_gap, 3)})
    s.close()
    _write(out, {"received": got, "intact": bad_at is None, "first_bad_offset": bad_at,
                 "error": error, "eof": eof, "max_gap_s": round(max_gap, 3)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--port", type=int, required=True)
    sv.add_argument("--rate", type=int, default=80_000, help="bytes per second")
    sv.add_argument("--out", required=True)
    fe = sub.add_parser("fetch")
    fe.add_argument("--src", required=True)
    fe.add_argument("--dst", required=True)
    fe.add_argument("--port", type=int, required=True)
    fe.add_argument("--out", required=True)
    fe.add_argument("--stall", type=float, default=300.0,
                    help="give up after this many seconds without data")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args.port, args.rate, args.out)
    else:
        fetch(args.src, args.dst, args.port, args.out, args.stall)


if __name__ == "__main__":
    main()
