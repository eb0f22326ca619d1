"""Plugin registry and phase dispatch (criu_ext.plugin, criu_ext.session): pure logic."""

from __future__ import annotations

import json
import textwrap

import pytest

from criu_ext import phases as ph
from criu_ext.plugin import (
    Log,
    Plugin,
    PluginError,
    PluginRef,
    Warmup,
    handles,
    load,
    parse_selection,
    plugin_phases,
    select,
    warm_all,
)
from criu_ext.session import MANIFEST, PhaseFailed, Session, read_manifest


class Recorder(Plugin):
    """Records calls in a shared list; fails where told."""

    def __init__(self, name, order, calls, fail=(), phases_=("network-lock", "post-dump")):
        self.name = name
        self.order = order
        self.calls = calls
        self.fail = set(fail)
        for p in phases_:
            setattr(self, ph.method_name(p), self._make(p))

    def _make(self, phase):
        def fn(ctx):
            self.calls.append((self.name, phase, ctx.action, ctx.init_pid))
            ctx.state.setdefault("seen", []).append(phase)
            if phase in self.fail:
                raise PluginError(f"{self.name} told to fail at {phase}")
        return fn

    def rollback(self, ctx):
        self.calls.append((self.name, "rollback", ctx.action, ctx.init_pid))
        if "rollback" in self.fail:
            raise RuntimeError("rollback bug")


class Quiet(Log):
    def __init__(self):
        super().__init__(level=0)


def test_phase_tables_follow_criu_order():
    assert ph.DUMP_PHASES == ("pre-dump", "network-lock", "post-dump", "network-unlock")
    assert ph.RESTORE_PHASES[0] == "pre-restore" and ph.RESTORE_PHASES[-1] == "post-resume"
    assert ph.RESTORE_PHASES.index("post-restore") < ph.RESTORE_PHASES.index("network-unlock")
    assert ph.method_name("post-setup-namespaces") == "post_setup_namespaces"
    assert ph.action_of("network-lock") == "dump" and ph.action_of("post-restore") == "restore"
    assert ph.action_of("network-unlock") is None
    with pytest.raises(ValueError):
        ph.action_of("orphan-pts-master-ish")


def test_plugin_phases_and_rollback_count_as_network_unlock():
    calls = []
    p = Recorder("a", 1, calls)
    assert handles(p, "network-lock") and not handles(p, "pre-dump")
    assert plugin_phases(p) == ["network-lock", "post-dump", "network-unlock"]


def test_plugins_run_in_order_then_name_and_state_persists(tmp_path):
    calls = []
    plugins = [Recorder("zeta", 10, calls), Recorder("beta", 20, calls), Recorder("alpha", 10, calls)]
    s = Session("dump", str(tmp_path), sorted(plugins, key=lambda p: (p.order, p.name)), "rpc", Quiet())
    s.run("network-lock", 77)
    s.run("post-dump")
    assert [c[0] for c in calls] == ["alpha", "zeta", "beta"] * 2
    assert all(c[3] == 77 for c in calls)  # init_pid carried over
    assert s.state["alpha"]["seen"] == ["network-lock", "post-dump"]
    assert s.phases() == ["network-lock", "post-dump", "network-unlock"]
    assert [t["plugin"] for t in s.timings] == ["alpha", "zeta", "beta"] * 2


def test_fatal_phase_stops_at_first_failure_then_unlock_rolls_back_in_reverse(tmp_path):
    calls = []
    a, b, c = Recorder("a", 1, calls), Recorder("b", 2, calls, fail={"network-lock"}), \
        Recorder("c", 3, calls)
    s = Session("dump", str(tmp_path), [a, b, c], "rpc", Quiet())
    with pytest.raises(PhaseFailed) as exc:
        s.run("network-lock", 5)
    assert exc.value.plugin == "b" and exc.value.phase == "network-lock"
    assert [x[0] for x in calls] == ["a", "b"]  # c never ran
    calls.clear()
    s.run("network-unlock")  # CRIU's answer to the failure: the source goes on running
    assert calls == [("b", "rollback", "dump", 5), ("a", "rollback", "dump", 5)]
    calls.clear()
    assert s.rollback() == []  # once only
    s.run("network-unlock")
    assert calls == []


def test_rollback_failures_are_logged_not_fatal(tmp_path):
    calls = []
    a = Recorder("a", 1, calls)
    b = Recorder("b", 2, calls, fail={"rollback"})
    s = Session("dump", str(tmp_path), [a, b], "rpc", Quiet())
    s.run("network-lock", 1)
    s.run("network-unlock")  # must not raise: network-unlock failures are only logged by CRIU
    assert ("a", "rollback", "dump", 1) in calls
    assert [t["ok"] for t in s.timings if t["phase"] == "rollback"] == [False, True]


def test_rollback_makes_network_unlock_a_phase_only_at_dump(tmp_path):
    p = Recorder("a", 1, [], phases_=("network-lock", "post-restore"))
    assert Session("dump", str(tmp_path), [p], "rpc").phases() == ["network-lock", "network-unlock"]
    assert Session("restore", str(tmp_path), [p], "rpc").phases() == ["post-restore"]


def test_restore_network_unlock_does_not_roll_back(tmp_path):
    calls = []
    a = Recorder("a", 1, calls, phases_=("post-restore", "network-unlock"))
    s = Session("restore", str(tmp_path), [a], "rpc", Quiet())
    s.run("post-restore", 9)
    s.run("network-unlock")
    assert calls == [("a", "post-restore", "restore", 9), ("a", "network-unlock", "restore", 9)]


def test_non_fatal_phase_runs_every_plugin(tmp_path):
    calls = []
    a = Recorder("a", 1, calls, fail={"post-resume"}, phases_=("post-resume",))
    b = Recorder("b", 2, calls, phases_=("post-resume",))
    s = Session("restore", str(tmp_path), [a, b], "rpc", Quiet())
    s.run("post-resume", 3)
    assert [c[0] for c in calls] == ["a", "b"]


def test_plugin_bug_becomes_phase_failure(tmp_path):
    class Buggy(Plugin):
        name = "buggy"

        def post_restore(self, ctx):
            raise KeyError("oops")

    s = Session("restore", str(tmp_path), [Buggy()], "rpc", Quiet())
    with pytest.raises(PhaseFailed, match="KeyError"):
        s.run("post-restore", 1)


def test_session_round_trips_through_json(tmp_path):
    s = Session("dump", str(tmp_path), select("trace", Quiet()), "script", Quiet())
    s.run("pre-dump", 4)
    data = json.loads(json.dumps(s.to_json()))
    s2 = Session.from_json(data, Quiet())
    assert s2.action == "dump" and s2.init_pid == 4 and s2.acted == ["trace"]
    assert [p.name for p in s2.plugins] == ["trace"]
    assert s2.timings == s.timings


def test_manifest_lists_images_and_timings(tmp_path):
    s = Session("dump", str(tmp_path), select("trace", Quiet()), "rpc", Quiet())
    s.run("pre-dump", 4)
    s.write_manifest()
    m = read_manifest(str(tmp_path))
    assert m["format"] == 1
    (p,) = m["dump"]["plugins"]
    assert p["name"] == "trace" and p["images"][0]["name"] == "criu-ext-trace.json"
    assert (tmp_path / MANIFEST).exists()


def test_restore_refuses_when_a_dumped_plugin_is_missing(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 1, "dump": {"plugins": [
        {"name": "gtp", "images": [{"name": "criu-ext-gtp.img", "size": 10}]}]}}))
    s = Session("restore", str(tmp_path), [], "rpc", Quiet())
    with pytest.raises(PhaseFailed, match="gtp"):
        s.run("pre-restore")


def test_selection_syntax():
    assert parse_selection("gtp,-netfilter, x.y:Z") == (["gtp"], ["netfilter"], ["x.y:Z"])
    assert parse_selection(None) == ([], [], [])


def test_select_defaults_skip_trace_and_names_select():
    names = [p.name for p in select(None, Quiet())]
    assert names[:3] == ["sctp", "gtp", "netfilter"] and "trace" not in names
    assert [p.name for p in select("trace")] == ["trace"]
    assert [p.name for p in select("-netfilter")] == ["sctp", "gtp", "announce"]
    with pytest.raises(PluginError, match="no plugin named"):
        select("nosuch")


def test_file_plugins_load_and_check_names(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(textwrap.dedent("""
        class Mine:
            name = "mine"
            order = 5
            images = ("criu-ext-mine.bin",)
            def post_restore(self, ctx):
                pass
        class Bad:
            name = "Bad Name"
        class BadImage:
            name = "badimg"
            images = ("mine.bin",)
    """))
    plugins = select(f"-sctp,-gtp,-netfilter,-announce,{f}:Mine")
    assert [p.name for p in plugins] == ["mine"]
    with pytest.raises(PluginError, match="valid name"):
        load(f"{f}:Bad")
    with pytest.raises(PluginError, match="must start with"):
        load(f"{f}:BadImage")
    with pytest.raises(PluginError, match="cannot load"):
        load("criu_ext.nosuchmodule:X")
    with pytest.raises(PluginError, match="registered as"):
        load(PluginRef("other", f"{f}:Mine", "test"))


def test_context_paths(tmp_path):
    s = Session("restore", str(tmp_path), select("trace"), "rpc", Quiet())
    s.init_pid = 123
    ctx = s.context(s.plugins[0], "post-restore")
    assert ctx.netns_path == "/proc/123/ns/net"
    assert ctx.image_path("criu-ext-x.img") == str(tmp_path / "criu-ext-x.img")
    with pytest.raises(ValueError):
        ctx.image_path("core-1.img")


# -- warming the plugins ---------------------------------------------------------------


class _Warms:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def warm(self, action: str) -> None:
        self.calls.append(action)
        if self.fail:
            raise ImportError("no module named 'pyroute2'")


def test_warm_all_asks_every_plugin_that_can_warm():
    a, b = _Warms(), _Warms()
    warm_all([a, object(), b], "restore")  # one without warm is left alone
    assert a.calls == b.calls == ["restore"]


def test_warmup_runs_beside_the_caller_and_join_raises_its_failure():
    ok = _Warms()
    w = Warmup([ok], "dump")
    w.join()
    assert ok.calls == ["dump"]
    bad = Warmup([_Warms(fail=True), ok], "dump")
    with pytest.raises(ImportError, match="pyroute2"):
        bad.join()
    bad.join()  # raised once; a second join has nothing more to say
    assert ok.calls == ["dump"]  # the plugins after the failing one were not warmed
