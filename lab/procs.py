"""Is a test's task still running? (A killed task nobody reaped yet is a zombie: not running.)"""

from __future__ import annotations

import time


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` is dead (or a zombie); False if it still lives after ``timeout``."""
    end = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return " ".join(ln.strip() for ln in f if ln.startswith(("State", "PPid", "TracerPid")))
    except FileNotFoundError:
        return "gone"
