"""The command lines the migration tests run: CRIU with the action script, or criu-ext (RPC).

Both interfaces take the same images directory and write CRIU's log there
(dump.log, restore.log); the restored root's PID goes to ``tmp/pid``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"


def hook_script(tmp: Path) -> str:
    from criu_ext import launcher

    return launcher.install(str(tmp / "criu-ext-hook.sh"))


def env_for(tmp: Path, plugins: str = "", **extra) -> dict:
    """The environment of one run: its own session directory, debug messages, the plugin
    selection (all defaults when empty), no failure injected unless ``extra`` says so."""
    env = dict(os.environ, CRIU_EXT_RUN_DIR=str(tmp / "run"), CRIU_EXT_LOG_LEVEL="4")
    env.pop("CRIU_EXT_TRACE_FAIL", None)
    env.pop("CRIU_EXT_PLUGINS", None)
    if plugins:
        env["CRIU_EXT_PLUGINS"] = plugins
    env.update(extra)
    return env


def dump_cmd(mode: str, pid: int, images: Path, tmp: Path, extra=()) -> list[str]:
    if mode == "script":
        return ["criu", "dump", "-t", str(pid), "-D", str(images), "-o", "dump.log", "-v4",
                "--action-script", hook_script(tmp), *extra]
    return [str(VENV_BIN / "criu-ext"), "dump", "-t", str(pid), "-D", str(images), "-v", "4",
            "--json", *extra]


def restore_cmd(mode: str, images: Path, tmp: Path, external: list[str]) -> list[str]:
    ext = [a for e in external for a in ("--external", e)]
    if mode == "script":
        return ["criu", "restore", "-D", str(images), "-o", "restore.log", "-v4",
                "--restore-detached", "--pidfile", str(tmp / "pid"),
                "--action-script", hook_script(tmp), *ext]
    return [str(VENV_BIN / "criu-ext"), "restore", "-D", str(images), "-v", "4", "--json",
            "--pidfile", str(tmp / "pid"), *ext]


def log_of(images: Path, name: str, tail: int = 12000) -> str:
    p = images / name
    return p.read_text()[-tail:] if p.exists() else ""


def recover_cmd() -> list[str]:
    return [str(VENV_BIN / "criu-ext"), "recover", "-v"]


def kill_when_stalled(argv: list[str], env: dict, log: Path, phase: str,
                      timeout: float = 180) -> None:
    """Run ``argv`` (a criu-ext dump whose trace plugin has CRIU_EXT_TRACE_STALL=``phase``),
    SIGKILL it once it says it stalled there, and wait until the CRIU it started ended
    (CRIU fails at its next word with the dead criu-ext and lets the tree run again)."""
    kill_when(argv, env, log, f"stalled at {phase}",
              lambda: f"stalled at {phase}" in log.read_text(), timeout)


def kill_when(argv: list[str], env: dict, log: Path, what: str, ready: Callable[[], bool],
              timeout: float = 180) -> None:
    """Run ``argv`` (a criu-ext dump, stderr to ``log``), SIGKILL it once ``ready()`` (which
    ``what`` describes), then wait until every process it started ended."""
    from criu_ext import tasks
    from lab.procs import gone

    with open(log, "w") as f:
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=f)
    end = time.monotonic() + timeout
    while not ready():
        assert p.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < end, f"never {what}: {log.read_text()[-3000:]}"
        time.sleep(0.1)
    children = tasks.tree(p.pid)[1:]  # nsenter execs: p is criu-ext itself, CRIU below it
    p.kill()
    p.wait()
    for pid in children:
        assert gone(pid, 120), f"CRIU (PID {pid}) still runs after criu-ext was killed"
