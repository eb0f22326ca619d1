"""What the SCTP lab programs share: sockets, notifications, numbered messages, status files.

Messages are ASCII lines ``KIND N`` (``REQ 17``, ``ACK 17``, ``PUSH 3``); every
program checks its own sequence numbers (no gap, no duplicate, no reordering)
and counts the notifications it gets after the association came up, the way
CRIU's ZDTM tests check their own state. Status is a JSON file written whole
(by rename) every ``STATUS_EVERY`` seconds and on exit.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time

IPPROTO_SCTP = SOL_SCTP = 132
SCTP_EVENT = 127
ASSOC_CHANGE, PEER_ADDR_CHANGE, SHUTDOWN_EVENT = 0x8001, 0x8002, 0x8005
MSG_NOTIFICATION = 0x8000
ASSOC_STATES = {0: "COMM_UP", 1: "COMM_LOST", 2: "RESTART", 3: "SHUTDOWN_COMP",
                4: "CANT_STR_ASSOC"}
ADDR_STATES = {0: "AVAILABLE", 1: "UNREACHABLE", 2: "REMOVED", 3: "ADDED", 4: "MADE_PRIM",
               5: "CONFIRMED", 6: "POTENTIALLY_FAILED"}
STATUS_EVERY = 0.5
INTERVAL = 0.1


def new_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP)


def listener(where: tuple[str, int], backlog: int = 16) -> socket.socket:
    """A one-to-one listening socket on ``where``, subscribed to notifications."""
    ls = new_socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    subscribe(ls)
    ls.bind(where)
    ls.listen(backlog)
    return ls


def subscribe(sock: socket.socket) -> None:
    for etype in (ASSOC_CHANGE, PEER_ADDR_CHANGE, SHUTDOWN_EVENT):
        sock.setsockopt(SOL_SCTP, SCTP_EVENT, struct.pack("=iHBx", 0, etype, 1))


def addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def notification(data: bytes) -> str:
    """A notification as text: ``ASSOC_CHANGE:RESTART``, ``SHUTDOWN_EVENT``..."""
    etype, = struct.unpack_from("=H", data)
    if etype == ASSOC_CHANGE:
        state, = struct.unpack_from("=H", data, 8)
        return f"ASSOC_CHANGE:{ASSOC_STATES.get(state, state)}"
    if etype == PEER_ADDR_CHANGE:  # struct sctp_paddr_change: state after the address
        state, = struct.unpack_from("=i", data, 8 + 128)
        return f"PEER_ADDR_CHANGE:{ADDR_STATES.get(state, state)}"
    return {SHUTDOWN_EVENT: "SHUTDOWN_EVENT"}.get(etype, f"0x{etype:x}")


class Sequence:
    """One numbered flow as its receiver sees it."""

    def __init__(self) -> None:
        self.last = 0
        self.errors: list[str] = []
        self.times: list[float] = []

    def got(self, n: int) -> None:
        if n != self.last + 1:
            self.errors.append(f"expected {self.last + 1}, got {n}")
        self.last = max(self.last, n)
        self.times.append(time.monotonic())

    def max_gap(self, since: float = 0.0) -> float:
        ts = [t for t in self.times if t >= since]
        return max((b - a for a, b in zip(ts, ts[1:])), default=0.0)

    def to_dict(self) -> dict:
        return {"last": self.last, "errors": self.errors[:10],
                "max_gap_s": round(self.max_gap(), 3)}


def parse(line: bytes) -> tuple[str, int]:
    kind, _, n = line.decode("ascii", "replace").strip().partition(" ")
    return kind, int(n) if n.isdigit() else 0


def write_status(path: str, data: dict) -> None:
    data = dict(data, pid=os.getpid(), at=time.time())
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


class Recorder:
    """What one program saw: its numbered flows, notifications and errors, as status JSON."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.lock = threading.Lock()
        self.flows: dict[str, Sequence] = {}
        self.notes: list[str] = []
        self.errors: list[str] = []

    def got(self, flow: str, n: int) -> None:
        with self.lock:
            self.flows.setdefault(flow, Sequence()).got(n)

    def note(self, who: str, data: bytes) -> None:
        with self.lock:
            self.notes.append(f"{who}: {notification(data)}" if who else notification(data))

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)

    def write(self, **extra) -> None:
        with self.lock:
            write_status(self.status, {
                "flows": {k: v.to_dict() for k, v in self.flows.items()},
                "notifications": self.notes, "errors": self.errors, **extra})

    def take(self, sock: socket.socket, who: str, kind: str, flow: str) -> bool:
        """Receive what waits on ``sock`` and record its ``KIND n`` lines as ``flow``;
        False once the association is gone."""
        lines = self.receive(sock, who)
        if lines is None:
            return False
        for line in lines:
            k, n = parse(line)
            if k == kind:
                self.got(flow, n)
        return True

    def tick(self, sock: socket.socket, kind: str, who: str, next_at: float,
             n: int) -> tuple[float, int, bool]:
        """Send ``KIND n+1`` if it is time; (next time, last number sent, still alive)."""
        if time.monotonic() < next_at:
            return next_at, n, True
        try:
            sock.send(f"{kind} {n + 1}\n".encode())
            n += 1
        except BlockingIOError:
            pass
        except OSError as exc:
            self.error(f"{who}: send: {exc}" if who else f"send: {exc}")
            return next_at, n, False
        return next_at + INTERVAL, n, True

    def receive(self, sock: socket.socket, who: str) -> list[bytes] | None:
        """The message lines waiting on ``sock`` ([] if none or a notification),
        None once the association is gone (recorded as an error)."""
        try:
            data, _, flags, _ = sock.recvmsg(4096)
        except BlockingIOError:
            return []
        except OSError as exc:
            self.error(f"{who}: recv: {exc}" if who else f"recv: {exc}")
            return None
        if not data:
            self.error(f"{who}: association closed" if who else "association closed")
            return None
        if flags & MSG_NOTIFICATION:
            self.note(who, data)
            return []
        return data.splitlines()
