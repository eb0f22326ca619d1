"""The action-script entry and its shell launcher, run the way CRIU runs them:
one process per phase, no arguments, stdin closed, CRTOOLS_* in the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from criu_ext import launcher

HOOK = [sys.executable, "-c", "import sys; from criu_ext.hook import main; sys.exit(main())"]


def run_phases(cmd, phases, env, parent_script=None):
    """Run ``cmd`` once per phase from one shell, so every run has the same parent PID
    (the hook keys the session by its parent: CRIU)."""
    script = "".join(f'CRTOOLS_SCRIPT_ACTION={p} "$@" </dev/null; echo "rc {p} $?"\n'
                     for p in phases)
    out = subprocess.run(["sh", "-c", script, "sh"] + cmd, env=env, capture_output=True,
                         text=True, timeout=60)
    rcs = {ln.split()[1]: int(ln.split()[2]) for ln in out.stdout.splitlines()
           if ln.startswith("rc ")}
    return rcs, out.stdout + out.stderr


@pytest.fixture
def env(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    e = dict(os.environ, CRIU_EXT_RUN_DIR=str(tmp_path / "run"), CRIU_EXT_PLUGINS="trace",
             CRIU_EXT_LOG_LEVEL="4", CRTOOLS_IMAGE_DIR=str(img), CRTOOLS_INIT_PID=str(os.getpid()))
    e.pop("CRIU_EXT_TRACE_FAIL", None)
    return e


def trace(env):
    with open(os.path.join(env["CRTOOLS_IMAGE_DIR"], "criu-ext-trace.json")) as f:
        return json.load(f)


def test_without_criu_environment_it_explains_itself():
    p = subprocess.run(HOOK, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if not k.startswith("CRTOOLS")})
    assert p.returncode == 2 and "action script" in p.stderr


def test_dump_phases_through_the_python_entry(env):
    rcs, out = run_phases(HOOK, ["pre-dump", "network-lock", "post-dump"], env)
    assert rcs == {"pre-dump": 0, "network-lock": 0, "post-dump": 0}, out
    assert [e["phase"] for e in trace(env)["dump"]] == ["pre-dump", "network-lock", "post-dump"]
    assert all(line.startswith("criu-ext: ") for line in out.splitlines()
               if not line.startswith("rc "))
    m = json.load(open(os.path.join(env["CRTOOLS_IMAGE_DIR"], "criu-ext.json")))
    assert m["dump"]["mode"] == "script" and not m["dump"]["rolled_back"]


def test_failure_at_post_dump_then_unlock_rolls_back(env):
    env["CRIU_EXT_TRACE_FAIL"] = "post-dump"
    rcs, out = run_phases(HOOK, ["pre-dump", "network-lock", "post-dump", "network-unlock"], env)
    assert rcs["post-dump"] == 1 and rcs["network-unlock"] == 0, out
    assert "failing at post-dump" in out
    assert [e["phase"] for e in trace(env)["dump"]][-2:] == ["network-unlock", "rollback"]


def test_restore_phases_keep_the_init_pid(env):
    env.pop("CRTOOLS_INIT_PID")
    rcs, out = run_phases(HOOK, ["pre-restore"], env)
    assert rcs == {"pre-restore": 0}, out
    env["CRTOOLS_INIT_PID"] = "4321"
    rcs, out = run_phases(HOOK, ["post-restore", "network-unlock", "post-resume"], env)
    # a new parent: no session; the hook loads the plugins again and says so
    assert set(rcs.values()) == {0}, out
    assert "no session" in out
    events = trace(env)["restore"]
    assert [e["phase"] for e in events] == ["pre-restore", "post-restore", "network-unlock",
                                            "post-resume"]
    assert events[1]["init_pid"] == 4321


def test_launcher_ends_idle_phases_in_the_shell(tmp_path, env):
    path = launcher.install(str(tmp_path / "hook"))
    assert os.access(path, os.X_OK)
    env["CRIU_EXT_PLUGINS"] = "-gtp,-netfilter"  # nothing acts anywhere
    rcs, out = run_phases([path], ["pre-dump", "network-lock", "post-dump"], env)
    assert set(rcs.values()) == {0}, out
    # pre-dump ran Python (a session exists), the others ended in the shell: no Python output
    said = "".join(ln for ln in out.splitlines() if not ln.startswith("rc "))
    assert "network-lock" not in said and "post-dump" not in said
    plans = os.listdir(env["CRIU_EXT_RUN_DIR"])
    assert len(plans) == 1
    assert open(os.path.join(env["CRIU_EXT_RUN_DIR"], plans[0], "phases")).read().strip() == ""


def test_launcher_runs_python_where_a_plugin_acts(tmp_path, env):
    path = launcher.install(str(tmp_path / "hook"))
    rcs, out = run_phases([path], ["pre-dump", "network-lock"], env)
    assert set(rcs.values()) == {0}, out
    assert [e["phase"] for e in trace(env)["dump"]] == ["pre-dump", "network-lock"]
    assert "ms since exec" in out


def test_launcher_text_names_interpreter_and_root():
    text = launcher.render("/opt/py/bin/python", "/src/x")
    assert text.startswith("#!/bin/sh\n")
    assert "exec /opt/py/bin/python -I -S -c" in text and "/src/x" in text
    subprocess.run(["sh", "-n", "-c", text], check=True)
