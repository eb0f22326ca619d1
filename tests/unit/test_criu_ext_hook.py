"""The action-script entry (Python, and the shell script that answers later phases through
the session process), run the way CRIU runs them: one process per phase, no arguments,
stdin closed, CRTOOLS_* in the environment; a shell plays CRIU (the session is keyed by the
hook's parent). The session process is real: these tests check it ends with its "CRIU".
The VM twin with real CRIU: tests/vm/test_criu_framework.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from criu_ext import launcher
from lab.procs import wait_no_criu_ext

HOOK = [sys.executable, "-c", "import sys; from criu_ext.hook import main; sys.exit(main())"]


def run_phases(cmd, phases, env, after="", between=""):
    """Run ``cmd`` once per phase from one shell, so every run has the same parent PID
    (the hook keys the session by its parent: CRIU), then ``after``; ``between`` runs
    after the first phase."""
    script = "".join(f'CRTOOLS_SCRIPT_ACTION={p} "$@" <&-; echo "rc {p} $?"\n'
                     + (between + "\n" if i == 0 and between else "")
                     for i, p in enumerate(phases)) + after + "\n"
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
    # the plan is read while "CRIU" (the shell running the phases) is still there
    rcs, out = run_phases([path], ["pre-dump", "network-lock", "post-dump"], env,
                          after='cat "$CRIU_EXT_RUN_DIR/$$/phases" | wc -c | sed "s/^/plan /"')
    assert set(rcs.values()) == {0}, out
    # pre-dump ran Python (a session exists), the others ended in the shell: no output
    said = "".join(ln for ln in out.splitlines() if not ln.startswith(("rc ", "plan ")))
    assert "network-lock" not in said and "post-dump" not in said
    assert "plan 0" in out


def test_launcher_runs_python_where_a_plugin_acts(tmp_path, env):
    path = launcher.install(str(tmp_path / "hook"))
    rcs, out = run_phases([path], ["pre-dump", "network-lock"], env)
    assert set(rcs.values()) == {0}, out
    assert "ms since exec" in out
    # "CRIU" ended before post-dump: the session process rolls back, then ends
    assert wait_no_sessions(env["CRIU_EXT_RUN_DIR"]) == []
    assert [e["phase"] for e in trace(env)["dump"]] == ["pre-dump", "network-lock", "rollback"]


def test_launcher_text_names_interpreter_and_root():
    text = launcher.render("/opt/py/bin/python", "/src/x")
    assert text.startswith("#!/bin/sh\n")
    assert "\nPY=/opt/py/bin/python\n" in text and "\nROOT=/src/x\n" in text
    subprocess.run(["sh", "-n", "-c", text], check=True)
    # the shipped script finds both at run time
    assert "\nPY=''" in launcher.template() and "\nROOT=''" in launcher.template()


def test_installed_hook_is_the_shell_script():
    installed = os.path.join(os.path.dirname(sys.executable), "criu-ext-hook")
    if not os.path.exists(installed):
        pytest.skip("criu-ext-hook is not installed next to this interpreter")
    with open(installed, encoding="utf-8") as f:
        assert f.read() == launcher.template(), f"{installed} is stale: run scripts/setup"


# -- one warm session process per dump or restore ---------------------------------------

def wait_no_sessions(run_dir, timeout=20.0) -> list[int]:
    return wait_no_criu_ext(run_dir, timeout=timeout)


@pytest.mark.parametrize("kind", ["python", "shell"])
def test_one_session_process_answers_every_phase_and_ends_with_criu(kind, tmp_path, env):
    cmd = HOOK if kind == "python" else [launcher.install(str(tmp_path / "hook"))]
    rcs, out = run_phases(cmd, ["pre-dump", "network-lock", "post-dump"], env,
                          after='echo "server $(cut -d" " -f1 "$CRIU_EXT_RUN_DIR/$$/server")"')
    assert set(rcs.values()) == {0}, out
    servers = [ln.split()[1] for ln in out.splitlines() if ln.startswith("server ")]
    assert len(servers) == 1 and servers[0].isdigit(), out
    assert [e["phase"] for e in trace(env)["dump"]] == ["pre-dump", "network-lock", "post-dump"]
    # "CRIU" (the shell) is gone: so is its session process, and its directory
    assert wait_no_sessions(env["CRIU_EXT_RUN_DIR"]) == []
    assert os.listdir(env["CRIU_EXT_RUN_DIR"]) == []


def test_a_plugin_failure_fails_the_phase_through_the_shell(tmp_path, env):
    env["CRIU_EXT_TRACE_FAIL"] = "network-lock"
    path = launcher.install(str(tmp_path / "hook"))
    rcs, out = run_phases([path], ["pre-dump", "network-lock", "network-unlock"], env)
    assert rcs == {"pre-dump": 0, "network-lock": 1, "network-unlock": 0}, out
    assert "criu-ext: error: network-lock: plugin trace: failing at network-lock" in out
    assert [e["phase"] for e in trace(env)["dump"]][-2:] == ["network-unlock", "rollback"]


def test_a_dead_session_process_is_taken_over_from_the_saved_session(tmp_path, env):
    path = launcher.install(str(tmp_path / "hook"))
    kill = 'kill -9 "$(cut -d" " -f1 "$CRIU_EXT_RUN_DIR/$$/server")"; sleep 0.2'
    rcs, out = run_phases([path], ["pre-dump", "network-lock", "post-dump"], env, between=kill)
    assert set(rcs.values()) == {0}, out
    assert "takes over the saved session" in out
    assert [e["phase"] for e in trace(env)["dump"]] == ["pre-dump", "network-lock", "post-dump"]


def test_criu_gone_during_a_dump_rolls_back(tmp_path, env):
    rcs, out = run_phases(HOOK, ["pre-dump", "network-lock"], env)
    assert set(rcs.values()) == {0}, out
    assert wait_no_sessions(env["CRIU_EXT_RUN_DIR"]) == []
    assert [e["phase"] for e in trace(env)["dump"]] == ["pre-dump", "network-lock", "rollback"]
    m = json.load(open(os.path.join(env["CRTOOLS_IMAGE_DIR"], "criu-ext.json")))
    assert m["dump"]["rolled_back"]


# -- hostile input: one line, a non-zero status, no traceback ------------------------------

@pytest.mark.parametrize("kind", ["python", "shell"])
@pytest.mark.parametrize("var,value,rc,says", [
    ("CRTOOLS_SCRIPT_ACTION", "pre-dumpp", 2, "unknown CRTOOLS_SCRIPT_ACTION 'pre-dumpp'"),
    ("CRTOOLS_SCRIPT_ACTION", "post-dump\nx", 2, "unknown CRTOOLS_SCRIPT_ACTION"),
    ("CRTOOLS_INIT_PID", "12x", 2, "CRTOOLS_INIT_PID is not a PID: '12x'"),
    ("CRTOOLS_INIT_PID", "99999999999", 2, "CRTOOLS_INIT_PID is not a PID"),
    ("CRTOOLS_SCRIPT_ACTION", "status-ready", 0, ""),
])
def test_bad_environment_gets_one_line(kind, var, value, rc, says, tmp_path, env):
    cmd = HOOK if kind == "python" else [launcher.install(str(tmp_path / "hook"))]
    env.setdefault("CRTOOLS_SCRIPT_ACTION", "network-lock")
    env[var] = value
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=60)
    lines = (p.stdout + p.stderr).splitlines()
    assert p.returncode == rc, lines
    if says:
        assert len(lines) == 1 and lines[0].startswith("criu-ext: error: ") and says in lines[0]
    else:
        assert lines == []


def _session_dir(env) -> str:
    d = os.path.join(env["CRIU_EXT_RUN_DIR"], str(os.getpid()))
    os.makedirs(d, mode=0o700)
    os.chmod(env["CRIU_EXT_RUN_DIR"], 0o700)
    return d


@pytest.mark.parametrize("content", [b"{not json", b'{"criu_pid": 1}', b"\xff\xfe"])
def test_a_corrupt_session_file_gets_one_line(content, env):
    d = _session_dir(env)
    with open(os.path.join(d, "session.json"), "wb") as f:
        f.write(content.replace(b'"criu_pid": 1', f'"criu_pid": {os.getpid()}'.encode()))
    env["CRTOOLS_SCRIPT_ACTION"] = "network-lock"
    p = subprocess.run(HOOK, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    lines = (p.stdout + p.stderr).splitlines()
    assert p.returncode == 1 and len(lines) == 1, lines
    assert "session file" in lines[0] and "is corrupt" in lines[0]


@pytest.mark.parametrize("make,says", [
    (lambda run: os.chmod(run, 0o777), "writable by group or others"),
    (lambda run: (os.rename(run, run + ".real"), os.symlink(run + ".real", run)),
     "is a symbolic link, not a directory"),
])
def test_an_unsafe_run_directory_is_refused(make, says, env):
    run = env["CRIU_EXT_RUN_DIR"]
    os.makedirs(run, mode=0o700)
    make(run)
    env["CRTOOLS_SCRIPT_ACTION"] = "pre-dump"
    p = subprocess.run(HOOK, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    lines = (p.stdout + p.stderr).splitlines()
    assert p.returncode == 1 and len(lines) == 1, lines
    assert says in lines[0]


def test_a_corrupt_plan_gets_one_line(env):
    d = _session_dir(env)
    with open(os.path.join(d, "phases"), "w") as f:
        f.write("network-lock\n$(reboot)\n")
    env["CRTOOLS_SCRIPT_ACTION"] = "post-dump"
    p = subprocess.run(HOOK, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    lines = (p.stdout + p.stderr).splitlines()
    assert p.returncode == 1 and len(lines) == 1, lines
    assert "is corrupt (line 2 is not a phase" in lines[0]
