"""The dump's journal and ``criu-ext recover``, against the stand-in for `criu swrk`
(tests/unit/test_criu_ext_rpc.py's FAKE) and real processes: a criu-ext killed with
SIGKILL mid-dump leaves a journal from which recover runs the plugins' rollback.
The plugins here are test plugins (no kernel state); the VM tests do it with gtp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from criu_ext import journal as jr
from criu_ext import rpc as driver
from criu_ext.plugin import Log, Plugin
from criu_ext.recover_cmd import recover
from criu_ext.session import Session
from tests.unit.test_criu_ext_rpc import FAKE

PLUGIN = textwrap.dedent('''\
    import json, os, signal
    class Mark:
        """Marks its rollback state, journals it, then (if asked) dies where it stands."""
        name = "mark"
        order = 100
        def network_lock(self, ctx):
            ctx.state["removed"] = True
            ctx.persist()
            if os.environ.get("DIE_AT") == "network-lock":
                os.kill(os.getpid(), signal.SIGKILL)
        def post_dump(self, ctx):
            if os.environ.get("DIE_AT") == "post-dump":
                os.kill(os.getpid(), signal.SIGKILL)
        def rollback(self, ctx):
            with open(os.environ["MARK_OUT"], "a") as f:
                f.write(json.dumps({"state": ctx.state, "pid": ctx.init_pid}) + "\\n")
''')

DUMPER = textwrap.dedent('''\
    import os, sys
    from criu_ext import rpc
    from criu_ext.plugin import Log, load
    from criu_ext.session import Session
    images, root, criu = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    s = Session("dump", images, [load(os.environ["CRIU_EXT_PLUGINS"])], "rpc", Log(level=0))
    rpc.run("dump", rpc.Options(images_dir=images, pid=root), s, criu=criu)
''')


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A fake CRIU, the test plugin selected, a run directory, a live root task."""
    criu = tmp_path / "criu"
    criu.write_text(FAKE.format(python=sys.executable))
    criu.chmod(0o755)
    plugin = tmp_path / "mark.py"
    plugin.write_text(PLUGIN)
    (tmp_path / "img").mkdir()
    env = {"FAKE_REQ": str(tmp_path / "req.json"), "FAKE_SCRIPT": "pre-dump,network-lock,post-dump",
           "CRIU_EXT_RUN_DIR": str(tmp_path / "run"), "CRIU_EXT_PLUGINS": f"{plugin}:Mark",
           "MARK_OUT": str(tmp_path / "rollback.jsonl")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    root = subprocess.Popen(["sleep", "300"])
    yield {"tmp": tmp_path, "criu": str(criu), "root": root}
    root.kill()
    root.wait()


def killed_dump(lab, die_at: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DIE_AT=die_at)
    return subprocess.run([sys.executable, "-c", DUMPER, str(lab["tmp"] / "img"),
                           str(lab["root"].pid), lab["criu"]], env=env, capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)


def journals(lab) -> list[Path]:
    return sorted((lab["tmp"] / "run" / "journal").glob("*.json"))


def rollbacks(lab) -> list[dict]:
    out = lab["tmp"] / "rollback.jsonl"
    return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []


class Peek(Plugin):
    """In-process: what the journal holds while the dump runs."""

    name = "peek"

    def __init__(self):
        self.seen = []

    def network_lock(self, ctx):
        (e,) = jr.entries()
        self.seen.append((e.owner.pid, e.owner.running(), e.session["acted"], e.phases))

    def rollback(self, ctx):
        pass


def test_a_dump_keeps_a_journal_while_it_runs_and_removes_it_after(lab):
    p = Peek()
    s = Session("dump", str(lab["tmp"] / "img"), [p], "rpc", Log(level=0))
    res = driver.run("dump", driver.Options(images_dir=str(lab["tmp"] / "img"),
                                            pid=lab["root"].pid), s, criu=lab["criu"])
    assert res.ok
    assert p.seen == [(os.getpid(), True, ["peek"], ["pre-dump", "network-lock"])]
    assert journals(lab) == []
    assert (lab["tmp"] / "run" / "journal").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("die_at", ["network-lock", "post-dump"])
def test_recover_rolls_back_what_a_killed_dump_left(lab, die_at):
    r = killed_dump(lab, die_at)
    assert r.returncode == -signal.SIGKILL, r.stderr
    (left,) = journals(lab)
    # a new dump of that tree does not start over it
    s = Session("dump", str(lab["tmp"] / "img"), [Peek()], "rpc", Log(level=0))
    with pytest.raises(driver.CriuError, match="run `criu-ext recover` first"):
        driver.run("dump", driver.Options(images_dir=str(lab["tmp"] / "img"),
                                          pid=lab["root"].pid), s, criu=lab["criu"])
    dry = CliRunner().invoke(recover, ["--dry-run"])
    assert dry.exit_code == 0 and "would roll back mark" in dry.output, dry.output
    assert rollbacks(lab) == [] and left.exists()

    out = CliRunner().invoke(recover, [])
    assert out.exit_code == 0, out.output
    assert f"dump of PID {lab['root'].pid}" in out.output and "rolled back mark" in out.output
    assert f"reached {die_at}" in out.output
    assert rollbacks(lab) == [{"state": {"removed": True}, "pid": lab["root"].pid}]
    assert journals(lab) == []
    again = CliRunner().invoke(recover, [])
    assert again.exit_code == 0 and "nothing to recover" in again.output


def _journal(lab, owner_alive: bool, root_pid: int, **state) -> Path:
    s = Session("dump", str(lab["tmp"] / "img"), [Peek()], "rpc", Log(level=0))
    s.init_pid = root_pid
    s.acted = ["peek"]
    s.phases_seen = ["pre-dump", "network-lock"]
    s.state.update(state)
    j = jr.Journal(s, root_pid)
    j.write()
    if not owner_alive:  # as if written by a process that is gone
        gone = subprocess.Popen(["true"])
        gone.wait()
        data = json.loads(Path(j.path).read_text())
        data["owner"] = {"pid": gone.pid, "start": 1}
        Path(j.path).write_text(json.dumps(data))
    return Path(j.path)


def test_recover_leaves_a_running_dump_alone_and_drops_a_gone_trees(lab):
    live = _journal(lab, True, lab["root"].pid)
    out = CliRunner().invoke(recover, [])
    assert out.exit_code == 0 and "still in progress, left alone" in out.output
    assert live.exists()
    live.unlink()

    ended = subprocess.Popen(["true"])
    ended.wait()
    gone = _journal(lab, False, ended.pid)
    out = CliRunner().invoke(recover, [])
    assert out.exit_code == 0 and "the tree is gone" in out.output, out.output
    assert not gone.exists() and rollbacks(lab) == []


def test_a_committed_migration_is_not_rolled_back_its_source_is_ended(lab):
    """After ``commit`` the tree belongs to the destination: the source CRIU let run again
    when criu-ext died is killed, never rolled back (never both running)."""
    path = _journal(lab, False, lab["root"].pid, **{"migrate-handoff": {"committing": True}})
    dry = CliRunner().invoke(recover, ["-n"])
    assert dry.exit_code == 0 and "would kill the source tree" in dry.output
    assert lab["root"].poll() is None
    out = CliRunner().invoke(recover, [])
    assert out.exit_code == 0, out.output
    assert "committed to the destination" in out.output and "was killed" in out.output
    assert lab["root"].wait(timeout=10) == -signal.SIGKILL
    assert not path.exists() and rollbacks(lab) == []


def test_a_commit_kept_as_a_mark_is_read_back_and_goes_with_its_journal(lab):
    """The handoff keeps ``committing`` as a mark (one file made, in the freeze): recover
    reads it as it reads the state's, and removes it with the journal."""
    path = _journal(lab, False, lab["root"].pid)
    mark = path.with_suffix(".committing")
    mark.touch(mode=0o600)
    (e,) = jr.entries()
    assert e.marks == {"committing"}
    out = CliRunner().invoke(recover, [])
    assert out.exit_code == 0, out.output
    assert "committed to the destination" in out.output and "was killed" in out.output
    assert lab["root"].wait(timeout=10) == -signal.SIGKILL
    assert not path.exists() and not mark.exists() and rollbacks(lab) == []


def test_a_mark_is_a_file_made_once_and_a_new_journal_drops_a_stale_one(lab):
    s = Session("dump", str(lab["tmp"] / "img"), [Peek()], "rpc", Log(level=0))
    j = jr.Journal(s, lab["root"].pid)
    j.write()
    j.mark("committing")
    j.mark("committing")  # kept as it is
    assert jr.read(j.path).marks == {"committing"}
    with pytest.raises(ValueError, match="unknown journal mark"):
        j.mark("../x")
    again = jr.Journal(s, lab["root"].pid)  # our PID's journal again: the old mark goes
    assert jr.read(again.path).marks == frozenset()
    j.mark("committing")
    Path(j.path[:-5] + ".committing").unlink()
    Path(j.path[:-5] + ".committing").symlink_to(j.path)  # not a regular file: no mark
    assert jr.read(j.path).marks == frozenset()
    j.close()
    assert not Path(j.path).exists() and not os.path.lexists(j.path[:-5] + ".committing")


class Quiet(Plugin):
    """A plugin with nothing to undo, acting in the freeze (as the migration's handoff)."""

    name = "quiet"

    def network_lock(self, ctx):
        pass

    def post_dump(self, ctx):
        ctx.state["committing"] = True
        ctx.mark("committing")


class Undoable(Quiet):
    name = "undoable"

    def rollback(self, ctx):
        pass


def test_in_the_freeze_the_journal_is_written_only_for_what_recover_could_undo(tmp_path):
    """Fakes for the journal: which writes a dump's phases ask for."""
    writes, marks = [], []
    s = Session("dump", str(tmp_path), [Quiet()], "rpc", Log(level=0))
    s.on_change = lambda: writes.append(list(s.phases_seen))
    s.on_mark = marks.append
    for phase in ("pre-dump", "network-lock", "post-dump"):
        s.run(phase, init_pid=1)
    assert writes == [["pre-dump"]]  # the end of pre-dump only
    assert marks == ["committing"]
    writes.clear()
    s = Session("dump", str(tmp_path), [Quiet(), Undoable()], "rpc", Log(level=0))
    s.on_change = lambda: writes.append(list(s.phases_seen))
    s.run("network-lock", init_pid=1)  # something to undo: at the edges and before it acts
    assert writes == [["network-lock"]] * 3
    writes.clear()
    idle = Undoable()
    idle.idle = lambda ctx: True  # nothing taken at pre-dump (the sctp plugin, no SCTP)
    s = Session("dump", str(tmp_path), [Quiet(), idle], "rpc", Log(level=0))
    s.phases_seen = ["pre-dump"]
    s.on_change = lambda: writes.append(list(s.phases_seen))
    s.run("network-lock", init_pid=1)
    assert writes == []
    s = Session("dump", str(tmp_path), [Quiet()], "rpc", Log(level=0))
    s.on_change = lambda: writes.append(list(s.phases_seen))
    s.run("post-dump", init_pid=1)  # no journal marks (action scripts): the whole state
    assert writes == [["post-dump"]]


@pytest.mark.parametrize("content", [b"{", b'{"format": 1}', b"\xff" * 10,
                                     b'{"format": 1, "owner": {"pid": -1, "start": 1}}'])
def test_a_corrupt_journal_is_one_line_and_status_1(lab, content):
    d = Path(jr.directory())
    (d / "77.json").write_bytes(content)
    out = CliRunner().invoke(recover, [])
    assert out.exit_code == 1
    lines = [ln for ln in out.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "77.json" in lines[0], out.output


def test_a_journal_that_is_a_link_is_refused(lab):
    d = Path(jr.directory())
    target = lab["tmp"] / "elsewhere.json"
    target.write_text("{}")
    (d / "78.json").symlink_to(target)
    out = CliRunner().invoke(recover, [])
    assert out.exit_code == 1 and "78.json" in out.output


def test_a_staged_handoff_s_journal_is_checked_before_any_link_moves():
    """``criu-ext recover`` of a killed ``migrate --stage``: the journaled links are
    names and bridges, or nothing is touched (no rtnetlink request is made for these:
    each fails the type check first)."""
    from criu_ext.recover import _unswitch

    assert _unswitch({}, 1, False) is None  # not staged, no links, no handoff: nothing
    for bad in (["spgw-s1u0"], {"spgw-s1u0": 3}, {7: "br0"}, "br0"):
        assert "malformed journal" in _unswitch({"links": bad}, 1, True)


def test_links_put_back_are_announced_from_the_source_s_netns(monkeypatch):
    """With fakes for the switch (pure order logic): the journaled links go back on their
    bridges, then the source's addresses are announced from the root's netns (the
    destination may have announced them first); a carried migration killed once its
    images could be there is announced too; an announcement that fails is said."""
    from criu_ext.migrate import switch
    from criu_ext.recover import _unswitch

    calls = []
    monkeypatch.setattr(switch, "restore", lambda links: calls.append(("restore", links)))
    monkeypatch.setattr(switch, "close_pass", lambda ns: calls.append(("close_pass", ns)))
    monkeypatch.setattr(switch, "reclaim", lambda pid: calls.append(("reclaim", pid)) or 1)
    links = {"spgw-s1u0": "br0", "spgw-sgi0": None}
    assert _unswitch({"links": links, "staged": True}, 42, False) is None
    assert calls == [("restore", links), ("close_pass", "/proc/42/ns/net"), ("reclaim", 42)]
    calls.clear()
    assert _unswitch({}, 42, True) is None
    assert calls == [("reclaim", 42)]

    def refuse(pid):
        raise OSError(19, "No such device")
    monkeypatch.setattr(switch, "reclaim", refuse)
    assert "not announced: [Errno 19] No such device" in _unswitch({"links": links}, 42, False)


def test_nothing_is_reclaimed_for_a_task_in_the_host_s_own_netns():
    """switch.reclaim announces only a namespace of the task's own: a task sharing ours
    had no links restored elsewhere (and ours are not its to announce)."""
    from criu_ext.migrate import switch

    assert switch.reclaim(os.getpid()) is None
