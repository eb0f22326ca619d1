"""What the action-script client and the session process say to each other, and the plan.

Pure logic, standard library only: the hook (criu_ext.hook), the session
process (criu_ext.hook_server) and the /bin/sh client (criu_ext/criu-ext-hook)
share these formats; the shell client speaks them with ``read`` and ``printf``.

Channel: two FIFOs in the session directory. ``req``: one line per phase,
``<client pid> <phase> <init pid or ->``. ``resp``: lines tagged with the
client's PID, ``<client pid> criu-ext: ...`` (a message for CRIU's log) and a
last ``<client pid> =rc <N>`` (the exit status). Lines tagged with another PID
are stale (a client that went away) and are skipped. A line is at most
MAX_LINE bytes, so each is one write() below PIPE_BUF and never interleaves.

Plan: the file ``phases``, one phase per line, the phases of this dump or
restore in which a plugin acts; the others end in the shell without a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from criu_ext import phases as ph

MAX_LINE = 2048
PID_MAX = 1 << 22  # the kernel's limit (PID_MAX_LIMIT on 64-bit)
STATUS = "=rc"
MESSAGE_PREFIX = "criu-ext: "

# CRIU 3.17+ runs the action script for these too, in modes criu-ext has nothing to do
# with (page server, lazy pages, RPC-only actions): they end at once with status 0.
OTHER_CRIU_ACTIONS = frozenset({"status-ready", "orphan-pts-master", "query-ext-files",
                                "pre-stream"})


class ProtocolError(ValueError):
    """Input that does not follow the formats above; the message says which part."""


@dataclass(frozen=True)
class Request:
    client: int  # the action script's PID: tags the answer, and its age is reported
    phase: str
    init_pid: int | None


def _show(text: str, limit: int = 40) -> str:
    """Hostile text shown in a message: quoted, cut, no control characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def parse_phase(text: str | None) -> str:
    """A phase CRIU may announce, checked against the ones criu-ext knows."""
    if text in ph.ALL_PHASES or text in OTHER_CRIU_ACTIONS:
        return text
    raise ProtocolError(f"unknown CRTOOLS_SCRIPT_ACTION {_show(text or '')}: not a CRIU "
                        "action-script phase")


def parse_pid(text: str | None, what: str = "CRTOOLS_INIT_PID") -> int | None:
    """A PID as CRIU writes it (decimal, no sign); empty or ``-``: None."""
    if text in (None, "", "-"):
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 7:
        raise ProtocolError(f"{what} is not a PID: {_show(text)}")
    pid = int(text)
    if not 0 < pid < PID_MAX:
        raise ProtocolError(f"{what} is out of range: {pid}")
    return pid


def encode_request(req: Request) -> bytes:
    return f"{req.client} {req.phase} {req.init_pid or '-'}\n".encode("ascii")


def parse_request(line: bytes) -> Request:
    """One request line (without or with its newline)."""
    try:
        text = line.rstrip(b"\n").decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("request is not ASCII") from None
    parts = text.split(" ")
    if len(parts) != 3:
        raise ProtocolError(f"request has {len(parts)} fields, not 3: {_show(text)}")
    client = parse_pid(parts[0], "the client PID")
    if client is None:
        raise ProtocolError("request without a client PID")
    phase = parse_phase(parts[1])
    if phase in OTHER_CRIU_ACTIONS:
        raise ProtocolError(f"phase {phase} is not for the session process")
    return Request(client, phase, parse_pid(parts[2]))


def _clean(text: str) -> str:
    # The shell client prints what it reads: no control characters, bounded length.
    out = "".join(c if c.isprintable() or c == "\t" else "?" for c in text)
    return out


def encode_message(client: int, text: str) -> bytes:
    """One line for CRIU's log, tagged for ``client``; prefixed ``criu-ext: `` if not yet."""
    text = _clean(text)
    if not text.startswith(MESSAGE_PREFIX):
        text = MESSAGE_PREFIX + text
    data = f"{client} {text}".encode("utf-8", "replace")
    if len(data) > MAX_LINE - 1:
        data = data[:MAX_LINE - 4].decode("utf-8", "ignore").encode("utf-8") + b"..."
    return data + b"\n"


def encode_status(client: int, rc: int) -> bytes:
    if not 0 <= rc <= 255:
        raise ValueError(f"exit status {rc} out of range")
    return f"{client} {STATUS} {rc}\n".encode("ascii")


def parse_response(line: bytes, client: int) -> tuple[str, str | int] | None:
    """("message", text) or ("status", rc) for ``client``; None for another client's line."""
    text = line.rstrip(b"\n").decode("utf-8", "replace")
    tag, sep, rest = text.partition(" ")
    if not sep or tag != str(client):
        return None
    if rest.startswith(STATUS + " "):
        rc = rest[len(STATUS) + 1:]
        if not rc.isdigit() or int(rc) > 255:
            raise ProtocolError(f"bad exit status in answer: {_show(rc)}")
        return "status", int(rc)
    return "message", rest


class LineBuffer:
    """Bytes from a pipe cut into complete lines; an overlong line is dropped whole."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = b""
        self._skipping = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.limit:
                    self._buf, self._skipping = b"", True
                return lines
            line, self._buf = self._buf[:nl], self._buf[nl + 1:]
            if self._skipping or len(line) > self.limit:
                self._skipping = False
                self.dropped += 1
                continue
            lines.append(line)


# -- the plan -------------------------------------------------------------------------------

def format_plan(phases: list[str]) -> str:
    for p in phases:
        if p not in ph.ALL_PHASES:
            raise ValueError(f"not a phase: {p!r}")
    return "".join(p + "\n" for p in phases)


def parse_plan(text: str) -> list[str]:
    """The phases of a plan file; anything else in it means the file is corrupt."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line not in ph.ALL_PHASES:
            raise ProtocolError(f"line {n} is not a phase: {_show(line)}")
        out.append(line)
    return out
