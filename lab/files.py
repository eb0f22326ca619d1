"""Waiting in tests: for a program's output file (written whole, by rename), for a condition."""

from __future__ import annotations

import time
from pathlib import Path


def wait_for(path: Path, timeout: float = 30.0) -> str:
    """The text of ``path`` once it exists; AssertionError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {timeout} s")


def wait_until(cond, timeout: float, what: str, poll=None) -> None:
    """Return once ``cond()`` holds (``poll()`` runs first each round); else AssertionError."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if poll:
            poll()
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def record_json(path: Path, key: str, value) -> None:
    """Merge ``key: value`` into the JSON file ``path`` (measurements kept for reports)."""
    import json

    path.parent.mkdir(exist_ok=True)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
