"""The control channel's framing: JSON messages and files over one TLS stream.

A message is a 4-byte big-endian length then a JSON object with an ``op``;
a file is a ``file`` message (name, size) followed by exactly ``size`` bytes.
Everything read is bounded and checked: a message over MAX_MESSAGE, a file name
that is not a plain image name, or a transfer over the receiver's budget is
refused. Files are written with O_EXCL | O_NOFOLLOW: never through a link,
never over an existing file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import struct
from typing import Any

from procns.files import loads_json

MAX_MESSAGE = 1 << 20
CHUNK = 1 << 16
VERSION = 3  # 2: a pdp message's changes go column by column; 3: the switch in one message
# CRIU's --network-lock methods (rpc.proto's criu_network_lock_method), both ends
NETWORK_LOCKS = ("iptables", "nftables")
# --stage: the key of the task's netns, in the source's --external and the destination's
# --inherit-fd (its staged netns)
STAGE_KEY = "criu-ext-stage"
# CRIU image names and our own: letters, digits, dot, dash, underscore; no path.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PhaseError(Exception):
    """A migration step failed: ``phase`` names the step, ``reason`` says why."""

    template = "failed at {phase}: {reason}"

    def __init__(self, phase: str, reason: str) -> None:
        super().__init__(self.template.format(phase=phase, reason=reason))
        self.phase = phase
        self.reason = reason


class ProtocolError(Exception):
    """The peer broke the protocol, closed the channel or said it failed."""


class PeerFailed(ProtocolError, PhaseError):
    """The peer reported an error: ``phase`` and ``reason`` are its words."""

    template = "{phase}: {reason}"


class Channel:
    """Messages and files over a connected (TLS) socket; counts the bytes sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self.received = 0

    def send(self, op: str, **fields: Any) -> None:
        data = json.dumps({"op": op, **fields}, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ProtocolError(f"message {op} too large ({len(data)} bytes)")
        self._sendall(struct.pack("!I", len(data)) + data)

    def _sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ProtocolError(f"connection lost: {exc}") from None
        self.sent += len(data)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), CHUNK))
            except OSError as exc:
                raise ProtocolError(f"connection lost: {exc}") from None
            if not chunk:
                raise ProtocolError("connection closed by the peer")
            buf += chunk
        self.received += n
        return bytes(buf)

    def recv(self, *expect: str) -> dict:
        """The next message; a peer's ``error`` raises PeerFailed; an ``op`` not in
        ``expect`` (when given) raises ProtocolError."""
        (size,) = struct.unpack("!I", self._recv_exact(4))
        if size > MAX_MESSAGE:
            raise ProtocolError(f"message of {size} bytes refused (limit {MAX_MESSAGE})")
        try:
            msg = loads_json(self._recv_exact(size).decode("utf-8"), "message", depth=16)
        except ValueError as exc:  # UnicodeDecodeError too
            raise ProtocolError(f"malformed message: {exc}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise ProtocolError("malformed message: no op")
        if msg["op"] == "error":
            raise PeerFailed(str(msg.get("phase", "?"))[:64], str(msg.get("reason", "?"))[:2000])
        if expect and msg["op"] not in expect:
            raise ProtocolError(f"expected {' or '.join(expect)}, got {msg['op'][:32]!r}")
        return msg

    def send_file(self, path: str, name: str) -> int:
        """Send the regular file ``path`` as ``name``; returns its size."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ProtocolError(f"{path}: not a regular file, not sent")
            self.send("file", name=name, size=st.st_size)
            left = st.st_size
            while left:
                chunk = os.read(fd, min(CHUNK, left))
                if not chunk:
                    raise ProtocolError(f"{path} shrank while being sent")
                self._sendall(chunk)
                left -= len(chunk)
            return st.st_size
        finally:
            os.close(fd)

    def recv_file(self, msg: dict, directory: str, budget: int) -> int:
        """Write the file announced by ``msg`` into ``directory``; returns its size."""
        name, size = msg.get("name"), msg.get("size")
        if not isinstance(name, str) or not NAME_RE.match(name) or name == "parent":
            raise ProtocolError(f"file name {str(name)[:80]!r} refused")
        if not isinstance(size, int) or size < 0 or size > budget:
            raise ProtocolError(f"file {name}: size {size!r} over the budget ({budget} bytes)")
        fd = os.open(os.path.join(directory, name),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            left = size
            while left:
                chunk = self._recv_exact(min(CHUNK, left))
                os.write(fd, chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        return size

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def shutdown(self) -> None:
        """Both directions shut (a reader blocked in another thread returns at once)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
