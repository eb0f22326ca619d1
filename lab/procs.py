"""Is a test's task still running? (A killed task nobody reaped yet is a zombie: not running.)
And which criu-ext action-script processes are still there."""

from __future__ import annotations

import os
import time


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between it and the read
        return False


def kill_all(procs) -> None:
    """Kill and reap each Popen of ``procs`` still running (a test's programs, at its end)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


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
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def criu_ext_processes(run_dir: str, hook: str | None = None) -> list[int]:
    """Live criu-ext action-script processes of the runs using ``run_dir``: session
    processes (comm ``criu-ext-sess``, $CRIU_EXT_RUN_DIR in their environment) and, when
    ``hook`` is given, hook processes running that script."""
    want_env = f"CRIU_EXT_RUN_DIR={run_dir}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or not alive(int(name)):
            continue
        try:
            with open(f"/proc/{name}/comm", "rb") as f:
                comm = f.read().strip()
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if want_env not in env:
            continue
        if comm == b"criu-ext-sess" or (hook is not None and hook.encode() in argv):
            found.append(int(name))
    return found


def wait_no_criu_ext(run_dir: str, hook: str | None = None, timeout: float = 30.0) -> list[int]:
    """The criu-ext processes still there after waiting up to ``timeout`` for them to end."""
    end = time.monotonic() + timeout
    while (left := criu_ext_processes(run_dir, hook)) and time.monotonic() < end:
        time.sleep(0.1)
    return left
