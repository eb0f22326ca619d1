"""What the action-script entry costs CRIU per phase (JSON out).

Run inside the test VM (CRIU's environment, a netns), as root:

    python -m benchmarks.criu_hook_cost [--runs 5] [--out FILE]
    python -m tests.vm.runner --exec -- .venv/bin/python -m benchmarks.criu_hook_cost

CRIU forks and execs the script once per phase and waits for it. Here this
process plays CRIU (the hook keys its session by its parent's PID): a pre-dump
run makes the session, then each phase is run several times and timed from fork
to exit. Compared: the launcher (the installed shell script) and the console
script, in phases where no plugin acts ("idle") and where one does. Baselines,
measured in the same run: a shell's start and Python's start with and without
site-packages. Target: an idle phase through the launcher costs less than a bare
``python -I -S`` start (it must end in the shell). The functional side (idle
phases never start Python) is a host test: tests/unit/test_criu_ext_hook.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
IDLE_KEY = "launcher post-dump [gtp+netfilter, no gtp device] (idle)"
BASELINE_KEY = "python -I -S -c pass"


def timed(argv: list[str], env: dict, n: int) -> dict:
    """Fork-to-exit times of ``argv``, ``n`` runs: median and minimum in ms."""
    runs = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        runs.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {(p.stderr or p.stdout).strip()[-400:]}")
    return {"median_ms": round(statistics.median(runs) * 1000, 1),
            "min_ms": round(min(runs) * 1000, 1), "runs": len(runs)}


def import_times() -> list[tuple[int, str]]:
    """The 15 costliest imports (cumulative us) of the hook's session and the gtp plugin."""
    py = str(VENV_BIN / "python")
    imp = subprocess.run([py, "-I", "-S", "-X", "importtime", "-c",
                          f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                          "import criu_ext.hook, criu_ext.session, criu_ext.plugins.gtp"],
                         capture_output=True, text=True)
    rows = []
    for line in imp.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    return sorted(rows, reverse=True)[:15]


def measure(work: Path, ns: str, n: int) -> dict:
    from criu_ext import launcher

    # a task in the netns plays the dumped root (pre-dump snapshots NAT rules there)
    task = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "--", "sleep", "infinity"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        images = work / "img"
        images.mkdir()
        script = launcher.install(str(work / "hook.sh"))
        base = dict(os.environ, CRIU_EXT_RUN_DIR=str(work / "run"), CRTOOLS_IMAGE_DIR=str(images),
                    CRTOOLS_INIT_PID=str(task.pid), CRIU_EXT_LOG_LEVEL="3")
        base.pop("CRIU_EXT_TRACE_FAIL", None)
        py = str(VENV_BIN / "python")
        out = {
            "sh -c true": timed(["sh", "-c", "true"], base, n),
            BASELINE_KEY: timed([py, "-I", "-S", "-c", "pass"], base, n),
            "python -c pass": timed([py, "-c", "pass"], base, n),
        }
        for plugins, label in (("trace", "trace"), ("", "gtp+netfilter, no gtp device")):
            env = dict(base, CRIU_EXT_PLUGINS=plugins)
            for kind, argv in (("launcher", [script]),
                               ("console", [str(VENV_BIN / "criu-ext-hook")])):
                timed(argv, dict(env, CRTOOLS_SCRIPT_ACTION="pre-dump"), 1)
                plan = (work / "run" / str(os.getpid()) / "phases").read_text().split()
                for phase in ("network-lock", "post-dump"):
                    key = f"{kind} {phase} [{label}]" + ("" if phase in plan else " (idle)")
                    out[key] = timed(argv, dict(env, CRTOOLS_SCRIPT_ACTION=phase), n)
                out[f"{kind} pre-dump [{label}]"] = timed(
                    argv, dict(env, CRTOOLS_SCRIPT_ACTION="pre-dump"), max(1, n // 2))
        return out
    finally:
        task.kill()
        task.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs per case (median kept)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "criu-hook-cost.json")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(args.out.parent, os.W_OK):
        ap.error(f"cannot write {args.out}")
    sys.path.insert(0, str(ROOT))
    from lab.netns import NetnsSet

    nets = NetnsSet("hc")
    try:
        ns = nets.add("hook")
        with tempfile.TemporaryDirectory(prefix="criu-hook-cost-") as tmp:
            out = measure(Path(tmp), ns, args.runs)
    finally:
        nets.cleanup()
    out["import_cumulative_us_top"] = import_times()
    idle, floor = out[IDLE_KEY]["median_ms"], out[BASELINE_KEY]["median_ms"]
    out["idle_launcher_over_python_start"] = round(idle / floor, 3)
    out["within_target"] = idle < floor
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for k, v in out.items():
        print(k, v)
    print(f"written {args.out}")
    return 0 if out["within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
