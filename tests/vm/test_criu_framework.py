"""criu_ext's plugin framework against real CRIU 3.17: a small process in its own netns is
dumped and restored with the `trace` plugin, through the action script (shell launcher,
console script, CRIU config file) and through RPC (`criu-ext dump|restore`). Failures are
injected to see CRIU roll the dump back and abort the restore.

Per-phase costs (from CRIU's -v4 log) are written to out/criu-framework.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from criu_ext import criulog, launcher
from criu_ext import phases as ph
from lab.files import record_json, wait_for
from lab.procs import alive, criu_ext_processes, gone, state, wait_no_criu_ext

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
PROGRAMS = Path(__file__).parent / "programs"
RESULTS = ROOT / "out" / "criu-framework.json"
# where the failed dumps fail: a plugin failing at post-dump, in both modes, is
# test_criu_gtp's (the gateway's state compared, its forwarding checked after the rollback)
FAILED_AT = "network-lock"


# -- helpers (also used by test_criu_gtp.py and benchmarks/criu_plugins.py) ----------------

def start_in_netns(ns: str, argv: list[str], cwd: Path) -> subprocess.Popen:
    """Start a task in netns ``ns`` the way CRIU can dump it: nsenter (no new mount
    namespace), a session of its own, no inherited fds beyond 0-2 (all /dev/null)."""
    return subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "--"] + argv,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=cwd,
                            close_fds=True)


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def hook_env(tmp: Path, plugins: str, **extra) -> dict:
    env = dict(os.environ, CRIU_EXT_PLUGINS=plugins, CRIU_EXT_RUN_DIR=str(tmp / "run"),
               CRIU_EXT_LOG_LEVEL="4")
    env.pop("CRIU_EXT_TRACE_FAIL", None)
    env.update(extra)
    return env


def record(key: str, value) -> None:
    """Merge a measurement into out/criu-framework.json (kept for the report)."""
    record_json(RESULTS, key, value)


def trace_of(images: Path) -> dict:
    return json.loads((images / "criu-ext-trace.json").read_text())


def netns_inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture
def task(tmp_path, netns):
    """A memstate.py task in a fresh netns: (popen, netns name, out prefix, expected)."""
    ns = netns("cx")
    out = tmp_path / "memstate"
    proc = start_in_netns(ns, [sys.executable, str(PROGRAMS / "memstate.py"), str(out)], tmp_path)
    expect = wait_for(Path(f"{out}.expect")).split()
    time.sleep(0.2)
    pids = [proc.pid]
    yield proc, ns, out, expect, pids
    for pid in pids:
        kill(pid)
    proc.poll()


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    return d


def check_memstate(pid: int, out: Path, expect: list[str]) -> None:
    os.kill(pid, signal.SIGUSR1)
    verdict, token, digest, _ticks = wait_for(Path(f"{out}.result")).split()
    assert verdict == "PASS" and [token, digest] == expect


# -- action-script mode --------------------------------------------------------------------

def test_action_script_dump_and_restore_run_every_phase(task, images, tmp_path):
    """Through the installed ``criu-ext-hook`` (the launcher's template, which finds its
    interpreter itself); the launcher rendered with them (``launcher.install``) is what the
    failure cases below run."""
    proc, ns, out, expect, pids = task
    script = str(VENV_BIN / "criu-ext-hook")
    env = hook_env(tmp_path, "trace")
    ino = netns_inode(ns)
    t0 = time.monotonic()
    d = subprocess.run(["criu", "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log",
                        "-v4", "--action-script", script], env=env, capture_output=True, text=True)
    dump_s = time.monotonic() - t0
    log = (images / "dump.log").read_text()
    assert d.returncode == 0, log[-3000:]
    assert proc.wait(timeout=10) == -signal.SIGKILL
    tr = trace_of(images)
    assert [e["phase"] for e in tr["dump"]] == ["pre-dump", "network-lock", "post-dump"]
    lock = tr["dump"][1]
    assert lock["init_pid"] == proc.pid and lock["netns"] == ino
    assert lock["task_state"] in ("t", "T")  # seized and frozen by CRIU
    assert "criu-ext: trace: dump network-lock" in log

    t0 = time.monotonic()
    r = subprocess.run(["criu", "restore", "-D", str(images), "-o", "restore.log", "-v4",
                        "--restore-detached", "--pidfile", str(tmp_path / "pid"),
                        "--action-script", script], env=env, capture_output=True, text=True)
    restore_s = time.monotonic() - t0
    rlog = (images / "restore.log").read_text()
    assert r.returncode == 0, rlog[-3000:]
    pid = int((tmp_path / "pid").read_text())
    pids.append(pid)
    tr = trace_of(images)
    assert [e["phase"] for e in tr["restore"]] == list(ph.RESTORE_PHASES)
    post = tr["restore"][3]
    assert post["phase"] == "post-restore" and post["init_pid"] == pid
    assert post["netns"] not in (None, ino)  # a new namespace, made by CRIU
    check_memstate(pid, out, expect)
    record("script-console", {
        "dump_seconds": round(dump_s, 3), "restore_seconds": round(restore_s, 3),
        "dump_phase_costs": criulog.phase_costs(log),
        "restore_phase_costs": criulog.phase_costs(rlog),
    })
    shown = json.loads(subprocess.run([str(VENV_BIN / "criu-ext"), "show", str(images), "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    assert shown["plugins"]["trace"]["dump"][0]["phase"] == "pre-dump"
    assert shown["criu"]["tasks"][0]["pid"] == proc.pid
    assert shown["manifest"]["restore"]["mode"] == "script"


def test_action_script_from_a_criu_config_file(task, images, tmp_path):
    proc, ns, out, expect, pids = task
    script = launcher.install(str(tmp_path / "hook.sh"))
    conf = tmp_path / "criu.conf"
    conf.write_text(f"action-script {script}\n")
    env = hook_env(tmp_path, "trace")
    d = subprocess.run(["criu", "--config", str(conf), "dump", "-t", str(proc.pid), "-D",
                        str(images), "-o", "dump.log", "-v4"], env=env, capture_output=True,
                       text=True)
    assert d.returncode == 0, (images / "dump.log").read_text()[-3000:]
    proc.wait(timeout=10)  # reap it: CRIU restores the same PID
    r = subprocess.run(["criu", "--config", str(conf), "restore", "-D", str(images), "-o",
                        "restore.log", "-v4", "--restore-detached", "--pidfile",
                        str(tmp_path / "pid")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, (images / "restore.log").read_text()[-3000:]
    pid = int((tmp_path / "pid").read_text())
    pids.append(pid)
    assert [e["phase"] for e in trace_of(images)["restore"]] == list(ph.RESTORE_PHASES)
    check_memstate(pid, out, expect)


def test_action_script_failed_dump_leaves_the_task_running(task, images, tmp_path):
    phase = FAILED_AT
    proc, ns, out, expect, pids = task
    script = launcher.install(str(tmp_path / "hook.sh"))
    env = hook_env(tmp_path, "trace", CRIU_EXT_TRACE_FAIL=phase)
    d = subprocess.run(["criu", "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log",
                        "-v4", "--action-script", script], env=env, capture_output=True, text=True)
    log = (images / "dump.log").read_text()
    assert d.returncode != 0
    assert f"failing at {phase}" in log
    seen = [e["phase"] for e in trace_of(images)["dump"]]
    assert seen[-2:] == ["network-unlock", "rollback"], seen
    assert proc.poll() is None and alive(proc.pid)
    check_memstate(proc.pid, out, expect)


def test_action_script_failed_post_restore_aborts_the_restore(task, images, tmp_path):
    proc, ns, out, expect, pids = task
    script = launcher.install(str(tmp_path / "hook.sh"))
    env = hook_env(tmp_path, "trace")
    d = subprocess.run(["criu", "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log",
                        "-v4", "--action-script", script], env=env, capture_output=True, text=True)
    assert d.returncode == 0, (images / "dump.log").read_text()[-3000:]
    proc.wait(timeout=10)  # reap it: CRIU restores the same PID
    env["CRIU_EXT_TRACE_FAIL"] = "post-restore"
    r = subprocess.run(["criu", "restore", "-D", str(images), "-o", "restore2.log", "-v4",
                        "--restore-detached", "--pidfile", str(tmp_path / "pid2"),
                        "--action-script", script], env=env, capture_output=True, text=True)
    log = (images / "restore2.log").read_text()
    assert r.returncode != 0
    assert "failing at post-restore" in log
    assert gone(proc.pid), state(proc.pid)


def _kill_criu_in(phase: str, argv: list[str], env: dict, images: Path) -> None:
    """Start CRIU, SIGKILL it while ``phase`` runs (the slow plugin holds it there)."""
    criu = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def started():
            try:
                tr = trace_of(images)
            except (OSError, ValueError):  # not written yet, or being written
                return False
            return any(e["phase"] == phase for e in tr.get(ph.action_of(phase) or "dump", []))
        end = time.monotonic() + 120
        while not started():
            assert criu.poll() is None, f"CRIU ended before {phase}"
            assert time.monotonic() < end, f"no {phase} within 120 s"
            time.sleep(0.05)
    finally:
        criu.kill()
        criu.wait()


def test_action_script_criu_killed_leaves_no_criu_ext_process(task, images, tmp_path):
    """CRIU SIGKILLed in the middle of a dump, then of a restore: the session process
    (and the hook CRIU was waiting for) end; the dump's plugins roll back first."""
    proc, ns, out, expect, pids = task
    hook = str(VENV_BIN / "criu-ext-hook")
    run = str(tmp_path / "run")
    slow = f"trace,{PROGRAMS / 'slow_plugin.py'}:SlowPlugin"
    env = hook_env(tmp_path, slow)
    dump = ["criu", "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log", "-v4",
            "--action-script", hook]
    _kill_criu_in("network-lock", dump, env, images)
    assert criu_ext_processes(run, hook), "the hook should still be running the phase"
    assert wait_no_criu_ext(run, hook) == []
    assert [e["phase"] for e in trace_of(images)["dump"]][-1] == "rollback"
    assert json.loads((images / "criu-ext.json").read_text())["dump"]["rolled_back"]
    # seized but not yet dumped when CRIU died: released, it runs on (not traced, not stopped)
    assert alive(proc.pid) and "TracerPid:\t0" in state(proc.pid), state(proc.pid)
    assert "(stopped)" not in state(proc.pid) and "(tracing stop)" not in state(proc.pid)

    d = subprocess.run(dump, env=hook_env(tmp_path, "trace"), capture_output=True, text=True)
    log = (images / "dump.log").read_text()
    assert d.returncode == 0, "\n".join(ln for ln in log.splitlines()
                                        if "criu-ext" in ln or "Error" in ln or "scripts" in ln)
    proc.wait(timeout=10)  # reap it: CRIU restores the same PID
    _kill_criu_in("post-restore", ["criu", "restore", "-D", str(images), "-o", "restore.log",
                                   "-v4", "--restore-detached", "--action-script", hook],
                  env, images)
    assert wait_no_criu_ext(run, hook) == []
    assert [e["phase"] for e in trace_of(images)["restore"]][-1] == "post-restore"


# -- RPC mode ------------------------------------------------------------------------------

def criu_ext(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "criu-ext"), *args], capture_output=True, text=True,
                          env=env)


def test_rpc_dump_and_restore_answer_notify_in_process(task, images, tmp_path):
    proc, ns, out, expect, pids = task
    env = hook_env(tmp_path, "trace")
    ino = netns_inode(ns)
    d = criu_ext("dump", "-t", str(proc.pid), "-D", str(images), "-v", "4", "--json", env=env)
    assert d.returncode == 0, d.stderr + (images / "dump.log").read_text()[-3000:]
    res = json.loads(d.stdout)
    assert [n["phase"] for n in res["notify"]] == ["pre-dump", "network-lock", "post-dump"]
    assert proc.wait(timeout=10) == -signal.SIGKILL
    tr = trace_of(images)
    assert [e["mode"] for e in tr["dump"]] == ["rpc"] * 3
    assert tr["dump"][1]["netns"] == ino and tr["dump"][1]["task_state"] in ("t", "T")
    log = (images / "dump.log").read_text()

    r = criu_ext("restore", "-D", str(images), "-v", "4", "--json", "--pidfile",
                 str(tmp_path / "pid"), env=env)
    assert r.returncode == 0, r.stderr + (images / "restore.log").read_text()[-3000:]
    rres = json.loads(r.stdout)
    pid = int((tmp_path / "pid").read_text())
    pids.append(pid)
    assert rres["pid"] == pid
    assert [n["phase"] for n in rres["notify"]] == list(ph.RESTORE_PHASES)
    post = trace_of(images)["restore"][3]
    assert post["phase"] == "post-restore" and post["init_pid"] == pid
    check_memstate(pid, out, expect)
    rlog = (images / "restore.log").read_text()
    record("rpc", {
        "dump_seconds": res["seconds"], "restore_seconds": rres["seconds"],
        "dump_notify": res["notify"], "restore_notify": rres["notify"],
        "dump_phase_costs": criulog.phase_costs(log),
        "restore_phase_costs": criulog.phase_costs(rlog),
        "criu_dump_stats": res["criu_stats"], "criu_restore_stats": rres["criu_stats"],
    })


def test_rpc_failed_dump_rolls_back_and_leaves_the_task_running(task, images, tmp_path):
    phase = FAILED_AT
    proc, ns, out, expect, pids = task
    env = hook_env(tmp_path, "trace", CRIU_EXT_TRACE_FAIL=phase)
    d = criu_ext("dump", "-t", str(proc.pid), "-D", str(images), "-v", "4", env=env)
    assert d.returncode != 0
    assert f"plugin trace failed at {phase}" in d.stderr
    seen = [e["phase"] for e in trace_of(images)["dump"]]
    assert seen[-2:] == ["network-unlock", "rollback"], seen
    assert alive(proc.pid)
    check_memstate(proc.pid, out, expect)


def test_rpc_leave_running_rolls_back_after_a_good_dump(task, images, tmp_path):
    proc, ns, out, expect, pids = task
    env = hook_env(tmp_path, "trace")
    d = criu_ext("dump", "-t", str(proc.pid), "-D", str(images), "-R", env=env)
    assert d.returncode == 0, d.stderr
    seen = [e["phase"] for e in trace_of(images)["dump"]]
    assert seen == ["pre-dump", "network-lock", "post-dump", "network-unlock", "rollback"]
    assert alive(proc.pid)
    check_memstate(proc.pid, out, expect)


def test_rpc_failed_post_restore_aborts_with_a_clear_message(task, images, tmp_path):
    proc, ns, out, expect, pids = task
    env = hook_env(tmp_path, "trace")
    d = criu_ext("dump", "-t", str(proc.pid), "-D", str(images), env=env)
    assert d.returncode == 0, d.stderr
    proc.wait(timeout=10)  # reap it: CRIU restores the same PID
    env["CRIU_EXT_TRACE_FAIL"] = "post-restore"
    r = criu_ext("restore", "-D", str(images), "--pidfile", str(tmp_path / "pid"), env=env)
    assert r.returncode != 0
    assert "plugin trace failed at post-restore" in r.stderr
    assert not (tmp_path / "pid").exists()
    assert gone(proc.pid), state(proc.pid)
