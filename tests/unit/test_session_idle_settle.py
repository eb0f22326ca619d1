"""Session.settle and the idle plugins (pure logic: plugins made up here, no CRIU)."""

from __future__ import annotations

from criu_ext import phases as ph
from criu_ext.plugin import Log
from criu_ext.session import Session


class Counting:
    """A plugin that counts its calls; ``idle`` after ``pre-dump`` when told so."""

    order = 10
    images = ()
    default = False

    def __init__(self, name: str, idle_after: bool) -> None:
        self.name, self.idle_after, self.calls, self.asked = name, idle_after, [], 0

    def idle(self, ctx) -> bool:
        self.asked += 1
        return self.idle_after

    def pre_dump(self, ctx) -> None:
        self.calls.append(ctx.phase)

    def network_lock(self, ctx) -> None:
        self.calls.append(ctx.phase)

    def post_dump(self, ctx) -> None:
        self.calls.append(ctx.phase)

    def post_restore(self, ctx) -> None:
        self.calls.append(ctx.phase)

    def rollback(self, ctx) -> None:
        self.calls.append("rollback")


def test_a_dump_plugin_idle_after_pre_dump_is_asked_once_and_not_called_again(tmp_path):
    done, busy = Counting("done", True), Counting("busy", False)
    s = Session(ph.DUMP, str(tmp_path), [done, busy], "rpc", Log())
    for phase in ("pre-dump", "network-lock", "post-dump"):
        s.run(phase)
    assert done.calls == ["pre-dump"] and done.asked == 1
    assert busy.calls == ["pre-dump", "network-lock", "post-dump"]
    s.run("network-unlock")  # the rollback of what pre-dump did still runs
    assert done.calls[-1] == "rollback" and busy.calls[-1] == "rollback"


def test_a_receiver_settles_a_restore_before_its_first_notification(tmp_path):
    done, busy = Counting("done", True), Counting("busy", False)
    s = Session(ph.RESTORE, str(tmp_path), [done, busy], "rpc", Log())
    s.settle()
    s.run("pre-restore")
    s.run("post-restore")
    assert done.calls == [] and done.asked == 1
    assert busy.calls == ["post-restore"]
