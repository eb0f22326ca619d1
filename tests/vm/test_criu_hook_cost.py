"""What the action-script entry costs CRIU per phase, measured in the VM.

CRIU forks and execs the script once per phase and waits for it. Here this test
process plays CRIU (the hook keys its session by its parent's PID): a pre-dump
run makes the session, then each phase is run several times and timed from
fork to exit. Compared: a shell's start, Python's start with and without
site-packages, the shell launcher and the console script, in phases where no
plugin acts and where one does. Results: out/criu-hook-cost.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from criu_ext import launcher

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
RESULTS = ROOT / "out" / "criu-hook-cost.json"
N = 5


def timed(argv, env, n=N) -> dict:
    runs = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        runs.append(time.perf_counter() - t0)
        assert p.returncode == 0, p.stdout + p.stderr
    return {"median_ms": round(statistics.median(runs) * 1000, 1),
            "min_ms": round(min(runs) * 1000, 1), "runs": len(runs)}


def test_hook_cost_per_phase(tmp_path, netns):
    ns = netns("hc")
    # a task in the netns to play the dumped root (pre-dump snapshots NAT rules there)
    task = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "--", "sleep", "infinity"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        images = tmp_path / "img"
        images.mkdir()
        script = launcher.install(str(tmp_path / "hook.sh"))
        base = dict(os.environ, CRIU_EXT_RUN_DIR=str(tmp_path / "run"), CRTOOLS_IMAGE_DIR=str(images),
                    CRTOOLS_INIT_PID=str(task.pid), CRIU_EXT_LOG_LEVEL="3")
        base.pop("CRIU_EXT_TRACE_FAIL", None)
        py = str(VENV_BIN / "python")
        out = {
            "sh -c true": timed(["sh", "-c", "true"], base),
            "python -I -S -c pass": timed([py, "-I", "-S", "-c", "pass"], base),
            "python -c pass": timed([py, "-c", "pass"], base),
        }
        for plugins, label in (("trace", "trace"), ("", "gtp+netfilter, no gtp device")):
            env = dict(base, CRIU_EXT_PLUGINS=plugins)
            for kind, argv in (("launcher", [script]), ("console", [str(VENV_BIN / "criu-ext-hook")])):
                timed(argv, dict(env, CRTOOLS_SCRIPT_ACTION="pre-dump"), n=1)
                plan = (tmp_path / "run" / str(os.getpid()) / "phases").read_text().split()
                for phase in ("network-lock", "post-dump"):
                    key = f"{kind} {phase} [{label}]" + ("" if phase in plan else " (idle)")
                    out[key] = timed(argv, dict(env, CRTOOLS_SCRIPT_ACTION=phase))
                out[f"{kind} pre-dump [{label}]"] = timed(
                    argv, dict(env, CRTOOLS_SCRIPT_ACTION="pre-dump"), n=3)
        imp = subprocess.run([py, "-I", "-S", "-X", "importtime", "-c",
                              f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                              "import criu_ext.hook, criu_ext.session, criu_ext.plugins.gtp"],
                             capture_output=True, text=True)
        rows = []
        for line in imp.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                rows.append((int(parts[1]), parts[2].rstrip()))
        out["import_cumulative_us_top"] = sorted(rows, reverse=True)[:15]
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")
        for k, v in out.items():
            print(k, v)
        # an idle phase through the launcher costs a shell start, not a Python start
        idle = out["launcher post-dump [gtp+netfilter, no gtp device] (idle)"]
        assert idle["median_ms"] < out["python -I -S -c pass"]["median_ms"]
    finally:
        task.kill()
        task.wait()

