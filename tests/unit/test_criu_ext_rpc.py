"""The RPC driver against a stand-in for `criu swrk` that speaks CRIU's protocol:
notify callbacks answered in-process, failures, rollback, option mapping."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pycriu.rpc_pb2 as rpc
import pytest

from criu_ext import rpc as driver
from criu_ext.plugin import Log, Plugin, PluginError
from criu_ext.session import Session

FAKE = textwrap.dedent('''\
    #!{python}
    """Stand-in for `criu swrk FD`, driven by $FAKE_SCRIPT:
    comma-separated phases; "crash" exits without an answer; "fail" answers failure;
    "child-fail" answers failure with no message (swrk for a failed pre-dump child)."""
    import os, sys, socket, json
    import pycriu.rpc_pb2 as rpc
    from google.protobuf.json_format import MessageToDict
    assert sys.argv[1] == "swrk"
    sk = socket.socket(fileno=int(sys.argv[2]))
    req = rpc.criu_req()
    req.ParseFromString(sk.recv(1 << 20))
    with open(os.environ["FAKE_REQ"], "w") as f:
        json.dump(MessageToDict(req, preserving_proto_field_name=True), f)
    # CRIU checks the images dir fd of its peer
    os.stat("/proc/%d/fd/%d" % (os.getppid(), req.opts.images_dir_fd))
    dump = req.type == rpc.DUMP
    locked = False
    def final(ok):
        r = rpc.criu_resp(type=req.type, success=ok)
        if not dump and ok:
            r.restore.pid = 4242
        if not ok:
            r.cr_errno = 5
            r.cr_errmsg = "fake failure"
        sk.send(r.SerializeToString())
        sys.exit(0)
    for step in os.environ["FAKE_SCRIPT"].split(","):
        if step == "crash":
            os._exit(1)
        if step == "child-fail":
            sk.send(rpc.criu_resp(type=req.type, success=False).SerializeToString())
            sys.exit(0)
        if step == "fail":
            if dump and locked:
                step = "network-unlock"
                n = rpc.criu_resp(type=rpc.NOTIFY, success=True)
                n.notify.script = step
                sk.send(n.SerializeToString())
                sk.recv(1 << 20)
            final(False)
        n = rpc.criu_resp(type=rpc.NOTIFY, success=True)
        n.notify.script = step
        if step in ("setup-namespaces", "post-restore"):
            n.notify.pid = 4242
        sk.send(n.SerializeToString())
        ans = rpc.criu_req()
        ans.ParseFromString(sk.recv(1 << 20))
        assert ans.type == rpc.NOTIFY
        locked = locked or step == "network-lock"
        if not ans.notify_success and step in ("pre-dump", "network-lock", "post-dump",
                                               "pre-restore", "setup-namespaces",
                                               "post-setup-namespaces", "post-restore"):
            if dump and locked:
                n = rpc.criu_resp(type=rpc.NOTIFY, success=True)
                n.notify.script = "network-unlock"
                sk.send(n.SerializeToString())
                sk.recv(1 << 20)
            final(False)
    final(True)
''')


class Rec(Plugin):
    name = "rec"

    def __init__(self, fail=()):
        self.calls = []
        self.fail = set(fail)

    def _do(self, ctx):
        self.calls.append((ctx.phase, ctx.init_pid, ctx.mode))
        if ctx.phase in self.fail:
            raise PluginError(f"no {ctx.phase}")

    pre_dump = network_lock = post_dump = post_restore = network_unlock = _do

    def rollback(self, ctx):
        self.calls.append(("rollback", ctx.init_pid, ctx.mode))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    path = tmp_path / "criu"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_REQ", str(tmp_path / "req.json"))
    monkeypatch.setenv("CRIU_EXT_RUN_DIR", str(tmp_path / "run"))  # the dumps' journals
    (tmp_path / "img").mkdir()
    return str(path)


def go(fake, tmp_path, monkeypatch, action, script, plugin, **kw):
    monkeypatch.setenv("FAKE_SCRIPT", script)
    s = Session(action, str(tmp_path / "img"), [plugin], "rpc", Log(level=0))
    o = driver.Options(images_dir=str(tmp_path / "img"), pid=1234 if action == "dump" else None,
                       **kw)
    return s, driver.run(action, o, s, criu=fake)


def test_dump_answers_each_notify_in_process(fake, tmp_path, monkeypatch):
    p = Rec()
    s, res = go(fake, tmp_path, monkeypatch, "dump", "pre-dump,network-lock,post-dump", p,
                tcp_established=True, external=["veth[eth0]:x@br"], extra={"ext_unix_sk": "true"})
    assert res.ok
    assert p.calls == [("pre-dump", 1234, "rpc"), ("network-lock", 1234, "rpc"),
                       ("post-dump", 1234, "rpc")]
    assert [n["phase"] for n in res.notify] == ["pre-dump", "network-lock", "post-dump"]
    req = json.load(open(tmp_path / "req.json"))
    o = req["opts"]
    assert req["type"] == "DUMP" and o["pid"] == 1234 and o["notify_scripts"] is True
    assert o["tcp_established"] is True and o["ext_unix_sk"] is True
    assert o["external"] == ["veth[eth0]:x@br"] and o["log_file"] == "dump.log"
    assert o["log_level"] == 2
    m = json.load(open(tmp_path / "img" / "criu-ext.json"))
    assert m["dump"]["mode"] == "rpc"


def test_plugin_failure_fails_the_dump_and_rolls_back(fake, tmp_path, monkeypatch):
    p = Rec(fail={"post-dump"})
    with pytest.raises(driver.CriuError, match="plugin rec failed at post-dump: no post-dump"):
        go(fake, tmp_path, monkeypatch, "dump", "pre-dump,network-lock,post-dump", p)
    assert [c[0] for c in p.calls] == ["pre-dump", "network-lock", "post-dump", "network-unlock",
                                       "rollback"]


def test_criu_error_after_lock_rolls_back_through_network_unlock(fake, tmp_path, monkeypatch):
    p = Rec()
    with pytest.raises(driver.CriuError, match="fake failure"):
        go(fake, tmp_path, monkeypatch, "dump", "pre-dump,network-lock,fail", p)
    assert [c[0] for c in p.calls][-2:] == ["network-unlock", "rollback"]


def test_criu_crash_rolls_back_here(fake, tmp_path, monkeypatch):
    p = Rec()
    with pytest.raises(driver.CriuError, match="without an answer"):
        go(fake, tmp_path, monkeypatch, "dump", "pre-dump,network-lock,crash", p)
    assert [c[0] for c in p.calls] == ["pre-dump", "network-lock", "rollback"]


def test_no_answer_tells_a_signal_from_an_exit():
    assert driver.no_answer(-9).endswith("(killed by SIGKILL)")
    assert driver.no_answer(-11).endswith("(killed by SIGSEGV)")
    assert driver.no_answer(1).endswith("(exit status 1)")


@pytest.mark.parametrize("script, said", [
    ("child-fail", "pre-dump failed: CRIU reported an error; see "),
    ("crash", "pre-dump failed: criu swrk ended without an answer (exit status 1); see "),
])
def test_pre_dump_failure_says_whether_criu_answered(fake, tmp_path, monkeypatch, script, said):
    """swrk answers a failed pre-dump without a message (the error is its child's, in the
    log): that is not told as CRIU gone silent."""
    from criu_ext.migrate.pagesrv import pre_dump

    monkeypatch.setenv("FAKE_SCRIPT", script)
    o = driver.Options(images_dir=str(tmp_path / "img"), pid=1234, log_file="pre-dump.log")
    with pytest.raises(driver.CriuError) as got:
        pre_dump(o, criu=fake)
    assert str(got.value).startswith(said)
    assert str(got.value).endswith("pre-dump.log")


def test_restore_gets_the_pid_and_a_failure_aborts(fake, tmp_path, monkeypatch):
    p = Rec()
    s, res = go(fake, tmp_path, monkeypatch, "restore",
                "pre-restore,setup-namespaces,post-restore,network-unlock,post-resume", p)
    assert res.ok and res.resp.restore.pid == 4242
    assert p.calls == [("post-restore", 4242, "rpc"), ("network-unlock", 4242, "rpc")]
    p2 = Rec(fail={"post-restore"})
    with pytest.raises(driver.CriuError, match="plugin rec failed at post-restore"):
        go(fake, tmp_path, monkeypatch, "restore", "pre-restore,post-restore,post-resume", p2)
    assert "rollback" not in [c[0] for c in p2.calls]


class Prep(Rec):
    name = "prep"

    def prepare(self, ctx):
        self.calls.append(("prepare", ctx.init_pid, ctx.mode))
        if "prepare" in self.fail:
            raise PluginError("image unreadable")


def test_prepare_runs_before_criu_and_its_failure_starts_nothing(fake, tmp_path, monkeypatch):
    p = Prep()
    s, res = go(fake, tmp_path, monkeypatch, "restore", "pre-restore,post-restore", p)
    assert res.ok and [c[0] for c in p.calls] == ["prepare", "post-restore"]
    assert [t["phase"] for t in s.timings] == ["prepare", "post-restore"]
    os.unlink(tmp_path / "req.json")
    p2 = Prep(fail={"prepare"})
    with pytest.raises(driver.CriuError, match="restore not started: plugin prep: image unread"):
        go(fake, tmp_path, monkeypatch, "restore", "pre-restore,post-restore", p2)
    assert [c[0] for c in p2.calls] == ["prepare"]
    assert not (tmp_path / "req.json").exists()  # CRIU was never asked


def test_log_file_path_becomes_work_dir(fake, tmp_path, monkeypatch):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    s, res = go(fake, tmp_path, monkeypatch, "dump", "pre-dump", Rec(),
                log_file=str(logdir / "d.log"))
    o = json.load(open(tmp_path / "req.json"))["opts"]
    assert o["log_file"] == "d.log" and "work_dir_fd" in o
    assert res.log_path == str(logdir / "d.log")


def test_set_opt_checks_names_and_types():
    o = rpc.criu_opts()
    driver.set_opt(o, "ext_unix_sk", "yes")
    driver.set_opt(o, "ghost_limit", "1048576")
    driver.set_opt(o, "skip_mnt", ["/a", "/b"])
    driver.set_opt(o, "network_lock", "nftables")
    assert o.ext_unix_sk and o.ghost_limit == 1 << 20 and list(o.skip_mnt) == ["/a", "/b"]
    assert o.network_lock == rpc.NFTABLES
    with pytest.raises(ValueError, match="no option"):
        driver.set_opt(o, "no_such_thing", "1")
    with pytest.raises(ValueError, match="not a boolean"):
        driver.set_opt(o, "shell_job", "maybe")
    with pytest.raises(ValueError, match="structured"):
        driver.set_opt(o, "veths", "a:b")
    with pytest.raises(ValueError, match="not one of"):
        driver.set_opt(o, "network_lock", "pf")


def test_dump_needs_a_pid(tmp_path):
    with pytest.raises(ValueError, match="PID"):
        driver.run("dump", driver.Options(images_dir=str(tmp_path)), None)


def test_images_fd_is_closed_afterwards(fake, tmp_path, monkeypatch):
    before = set(os.listdir("/proc/self/fd"))
    go(fake, tmp_path, monkeypatch, "dump", "pre-dump", Rec())
    assert set(os.listdir("/proc/self/fd")) == before


def test_begin_warms_the_plugins_once_per_session(tmp_path):
    class Warms(Plugin):
        name = "warms"

        def __init__(self):
            self.warmed = []

        def warm(self, action):
            self.warmed.append(action)

    p = Warms()
    s = Session("restore", str(tmp_path), [p], "rpc", Log(level=0))
    driver.begin(s)
    driver.begin(s)
    assert p.warmed == ["restore"] and s.warmed
    s2 = Session("restore", str(tmp_path), [p], "rpc", Log(level=0))
    s2.warmed = True  # a migration's Warmup did it beside pre-copy
    driver.begin(s2)
    assert p.warmed == ["restore"]


def test_a_swrk_started_ahead_is_the_one_asked(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SCRIPT", "pre-restore,post-restore,post-resume")
    ahead = driver.Swrk(fake)
    p = Rec()
    s = Session("restore", str(tmp_path / "img"), [p], "rpc", Log(level=0))
    o = driver.Options(images_dir=str(tmp_path / "img"))
    # no criu at this path: only the swrk started ahead can answer
    res = driver.run("restore", o, s, criu=str(tmp_path / "absent"), swrk=ahead)
    assert res.ok and res.resp.restore.pid == 4242
    assert ahead.proc.returncode == 0 and ahead.sk.fileno() == -1  # asked, then closed
    assert p.calls == [("post-restore", 4242, "rpc")]


@pytest.mark.parametrize("why", ["descriptors", "prepare"])
def test_a_swrk_started_ahead_and_not_asked_is_killed(fake, tmp_path, monkeypatch, why):
    """Started without a descriptor the restore hands over, or a plugin's prepare failed:
    CRIU is asked nothing and its swrk does not outlive the call."""
    monkeypatch.setenv("FAKE_SCRIPT", "pre-restore,post-restore")
    ahead = driver.Swrk(fake)
    p = Prep(fail={"prepare"} if why == "prepare" else ())
    s = Session("restore", str(tmp_path / "img"), [p], "rpc", Log(level=0))
    r, w = os.pipe()
    try:
        o = driver.Options(images_dir=str(tmp_path / "img"),
                           inherit_fd={r: "pipe:[1]"} if why == "descriptors" else {})
        err = ValueError if why == "descriptors" else driver.CriuError
        with pytest.raises(err, match=f"without descriptors \\[{r}\\]|plugin prep"):
            driver.run("restore", o, s, criu=fake, swrk=ahead)
    finally:
        os.close(r)
        os.close(w)
    assert ahead.proc.returncode is not None and ahead.proc.returncode < 0  # killed
    assert not (tmp_path / "req.json").exists()


def test_pre_dump_asks_a_swrk_started_ahead_or_kills_it(fake, tmp_path, monkeypatch):
    """The round's swrk, started while the page server starts, is the one asked; when the
    round cannot even open its directory, it is killed, never left waiting."""
    from criu_ext.migrate.pagesrv import pre_dump

    monkeypatch.setenv("FAKE_SCRIPT", "child-fail")
    ahead = driver.Swrk(fake, quiet=True)
    o = driver.Options(images_dir=str(tmp_path / "img"), pid=1234, log_file="pre-dump.log")
    with pytest.raises(driver.CriuError, match="CRIU reported an error"):
        pre_dump(o, criu=str(tmp_path / "absent"), swrk=ahead)  # only `ahead` can answer
    assert ahead.proc.returncode == 0
    unused = driver.Swrk(fake, quiet=True)
    gone = driver.Options(images_dir=str(tmp_path / "no-such-dir"), pid=1234)
    with pytest.raises(FileNotFoundError):
        pre_dump(gone, criu=fake, swrk=unused)
    assert unused.proc.returncode is not None and unused.proc.returncode < 0
