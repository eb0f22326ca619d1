"""Read phase timings out of a CRIU log (level 4: debug lines with timestamps).

CRIU writes ``(SS.uuuuuu) Running <phase> scripts`` before it runs the action
scripts (or sends the RPC notify) of a phase, then its own next line once they
are done. The gap is what the phase cost CRIU: process start, plugin work and,
in RPC mode, the round trip. Our own lines (``criu-ext: ...``) carry no
timestamp and are skipped, as are CRIU's ``\\t[script]`` / ``\\tRPC`` lines.
"""

from __future__ import annotations

import re

_TS = re.compile(r"^\(\s*(\d+)\.(\d+)\)\s?(.*)$")
_RUNNING = re.compile(r"^Running (\S+) scripts$")


def timestamped(text: str):
    """(seconds, message) for each timestamped line."""
    for line in text.splitlines():
        m = _TS.match(line)
        if m:
            yield int(m.group(1)) + int(m.group(2)) / 10 ** len(m.group(2)), m.group(3)


def phase_costs(text: str) -> list[dict]:
    """[{"phase", "at", "seconds"}] for each ``Running <phase> scripts`` of the log."""
    out = []
    pending = None
    for t, msg in timestamped(text):
        stripped = msg.strip()
        if pending is not None:
            if stripped == "RPC" or (stripped.startswith("[") and stripped.endswith("]")):
                continue
            out.append({"phase": pending[0], "at": pending[1], "seconds": round(t - pending[1], 6)})
            pending = None
        m = _RUNNING.match(stripped)
        if m:
            pending = (m.group(1), t)
    return out


def first(text: str, needle: str) -> float | None:
    """Timestamp of the first line containing ``needle``."""
    for t, msg in timestamped(text):
        if needle in msg:
            return t
    return None


def last_timestamp(text: str) -> float | None:
    t_last = None
    for t, _msg in timestamped(text):
        t_last = t
    return t_last
