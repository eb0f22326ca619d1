"""Waiting for a test program's output file (written whole, by rename)."""

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
