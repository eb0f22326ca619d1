"""What a user sees of a migration: progress on a terminal, the JSON report, one error line."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TextIO

PAGE = 4096


@dataclass
class Round:
    round: int
    kind: str  # "pre-dump" or "dump"
    pages: int  # pages CRIU wrote to the page server in this round
    seconds: float  # wall time of the round (CRIU's request to its answer)
    frozen_s: float  # CRIU's frozen_time for this round (pre-dump: the short freeze)

    @property
    def bytes(self) -> int:
        return self.pages * PAGE


@dataclass
class Report:
    ok: bool = False
    failed_phase: str | None = None
    error: str | None = None
    source_pid: int = 0
    dest_pid: int | None = None
    pre_copy: bool = True
    stop_reason: str = ""
    rounds: list[Round] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)  # per phase, seconds
    control_bytes: int = 0  # bytes sent on the control channel (images, messages)
    # when each of CRIU's notifications came ("at": seconds since the request) and how
    # long it was answered, for the final dump here and the restore there: where the
    # time before the freeze and inside it goes
    timeline: dict[str, list[dict]] = field(default_factory=dict)
    # --stage: what the staged user plane carried (base contexts, changes, NAT flows)
    stage: dict[str, int] = field(default_factory=dict)
    # CLOCK_MONOTONIC when the peers' view changed ("network_lock": CRIU froze the tasks
    # and locked the network; "switch": our links began to go): what runs on this host
    # (a test's pingers, a probe) lines its own readings up with these
    moments: dict[str, float] = field(default_factory=dict)

    @property
    def page_bytes(self) -> int:
        return sum(r.bytes for r in self.rounds)

    def to_json(self) -> dict:
        d = asdict(self)
        d["rounds"] = [dict(asdict(r), bytes=r.bytes) for r in self.rounds]
        d["pre_copy_rounds"] = sum(1 for r in self.rounds if r.kind == "pre-dump")
        d["pages_per_round"] = [r.pages for r in self.rounds]
        d["bytes_sent"] = self.page_bytes + self.control_bytes
        d["times"] = {k: round(v, 6) for k, v in self.times.items()}
        return d


def notify_timeline(items: object, limit: int = 32) -> list[dict]:
    """``rpc.Result.notify`` entries as typed values (the destination's arrive over the
    wire): phase name, "at" and "seconds"; anything else is dropped."""
    out: list[dict] = []
    if not isinstance(items, list):
        return out
    for it in items[:limit]:
        if not isinstance(it, dict) or not isinstance(it.get("phase"), str):
            continue
        try:
            at, sec = float(it.get("at", 0.0)), float(it.get("seconds", 0.0))
        except (TypeError, ValueError):
            continue
        if not (0.0 <= at < 1e6 and 0.0 <= sec < 1e6):
            continue
        out.append({"phase": it["phase"][:32], "at": round(at, 6), "seconds": round(sec, 6),
                    "ok": bool(it.get("ok", True))})
    return out


class Progress:
    """Phase, round, pages, bytes and rate on one refreshed line; silent unless a terminal."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()

    def phase(self, text: str) -> None:
        self._line(text)

    def round(self, r: Round) -> None:
        rate = r.bytes / r.seconds / 1e6 if r.seconds else 0.0
        self._line(f"{r.kind} round {r.round}: {r.pages} pages, {r.bytes / 1e6:.1f} MB "
                   f"in {r.seconds:.2f} s ({rate:.1f} MB/s)", keep=True)

    def _line(self, text: str, keep: bool = False) -> None:
        if not self.enabled:
            return
        t = time.monotonic() - self.t0
        self.stream.write(f"\r\x1b[K[{t:6.1f} s] {text}" + ("\n" if keep else ""))
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def summary(rep: Report) -> str:
    """One line for a successful migration."""
    pre = sum(1 for r in rep.rounds if r.kind == "pre-dump")
    frozen = rep.times.get("frozen", 0.0)
    return (f"migrated: PID {rep.source_pid} runs on the destination as PID {rep.dest_pid}; "
            f"{pre} pre-copy round(s), frozen {frozen:.2f} s, "
            f"{(rep.page_bytes + rep.control_bytes) / 1e6:.1f} MB sent, "
            f"total {rep.times.get('total', 0.0):.2f} s")
