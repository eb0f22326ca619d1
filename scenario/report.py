"""Figures of a migration run: statistics over repetitions, the paper's figures beside ours.

Pure functions over plain dicts, so the same code formats a live run and a
unit test's made-up one. A run of one function is a dict with the keys of
METRICS (seconds, bytes); ``None`` where a metric does not apply.
"""

from __future__ import annotations

import json
import statistics

# (key, label, unit scale, unit name)
METRICS = (
    ("checkpoint_s", "checkpoint", 1.0, "s"),
    ("transfer_s", "transfer", 1.0, "s"),
    ("restore_s", "restore", 1.0, "s"),
    ("total_s", "total migration", 1.0, "s"),
    ("pre_copy_rounds", "pre-copy rounds", 1.0, ""),
    ("frozen_s", "frozen (source)", 1.0, "s"),
    ("downtime_s", "downtime (peers)", 1.0, "s"),
    ("image_bytes", "image size", 1e-6, "MB"),
    ("srt_s", "UE service recovery", 1.0, "s"),
)

# Container figures of the paper (seed 003) as summarised in DESIGN.md: (low, high).
PAPER = {
    "spgw": {"checkpoint_s": (4, 7), "transfer_s": (1, 2), "restore_s": (4, 6),
             "total_s": (9, 15), "image_bytes": (100e6, 100e6), "srt_s": (1.4, 2.3)},
    "mme": {"checkpoint_s": (2.19, 4.47), "transfer_s": (1.01, 1.43),
            "restore_s": (2.39, 3.42), "total_s": (5.7, 9.2), "image_bytes": (42e6, 42e6)},
    "hss": {"total_s": (15, 33), "image_bytes": (173e6, 173e6)},
}
TITLES = {"spgw": "SPGW (GTP user plane)", "hss": "HSS (TCP, --tcp-established)",
          "mme": "MME (SCTP)"}
ENGINE_TITLES = {"podman": "in a Podman container, checkpoint --export / restore --import"}


def title(key: str) -> str:
    """A result's heading: ``spgw`` (criu-ext migrate) or ``spgw@podman``."""
    fn, _, engine = key.partition("@")
    head = TITLES.get(fn, fn)
    return f"{head} {ENGINE_TITLES.get(engine, engine)}" if engine else head


def paper(key: str) -> dict:
    """The paper's container figures for the function of result ``key``."""
    return PAPER.get(key.partition("@")[0], {})


def stats(values: list[float]) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals),
            "n": len(vals)}


def summarize(runs: list[dict]) -> dict:
    """{metric: {min, median, max, n}} over the repetitions of one function."""
    out = {}
    for key, *_ in METRICS:
        s = stats([r.get(key) for r in runs])
        if s is not None:
            out[key] = s
    return out


def _num(value: float, scale: float, unit: str = "s") -> str:
    v = value * scale
    if not unit:  # a count
        return f"{v:g}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _paper(fn: str, key: str, scale: float) -> str:
    rng = paper(fn).get(key)
    if rng is None:
        return "-"
    lo, hi = (x * scale for x in rng)
    fmt = "{:g}".format
    return fmt(lo) if lo == hi else f"{fmt(lo)} - {fmt(hi)}"


def table(fn: str, summary: dict, note: str = "") -> str:
    """One function's table: a row per metric, min/median/max, and the paper's range."""
    n = max((s["n"] for s in summary.values()), default=0)
    head = f"{title(fn)}, {n} run{'s' if n != 1 else ''}"
    if note:
        head += f", {note}"
    rows = [head, f"  {'':<26}{'min':>10}{'median':>10}{'max':>10}   paper (container)"]
    for key, label, scale, unit in METRICS:
        s = summary.get(key)
        if s is None:
            continue
        name = f"{label} ({unit})" if unit else label
        rows.append(f"  {name:<26}"
                    + "".join(f"{_num(s[k], scale, unit):>10}" for k in ("min", "median", "max"))
                    + f"   {_paper(fn, key, scale)}")
    return "\n".join(rows)


def report_json(results: dict) -> str:
    """``results``: {function: {"runs": [...], "note": str, ...}} -> JSON with summaries."""
    doc = {}
    for fn, res in results.items():
        doc[fn] = dict(res, summary=summarize(res.get("runs", [])),
                       paper={k: list(v) for k, v in paper(fn).items()})
    return json.dumps(doc, indent=2, sort_keys=True)


def gaps(times: list[float], start: float, end: float) -> float | None:
    """Longest interval between consecutive replies that overlaps [start, end].

    ``times`` are reply arrival times (sorted). This is what a pinging peer
    experiences across a migration: from the last reply before the outage to
    the first after it. None when there is no reply on one side of the window.
    """
    found = longest_gap(times, start, end)
    return None if found is None else found[0]


def longest_gap(times: list[float], start: float, end: float) -> tuple[float, float] | None:
    """:func:`gaps`, with when it began: (length, time of the reply before it)."""
    before = [t for t in times if t <= start]
    after = [t for t in times if t >= end]
    if not before or not after:
        return None
    inside = [t for t in times if start < t < end]
    seq = [before[-1]] + inside + [after[0]]
    return max((b - a, a) for a, b in zip(seq, seq[1:]))
