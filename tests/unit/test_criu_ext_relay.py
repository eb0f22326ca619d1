"""criu_ext.relay on the host: message framing, fd passing, NOTIFY ordering.

The engine and CRIU are fakes (scripted peers on socket pairs in threads); the
session is a real Session with a fake plugin.
"""

from __future__ import annotations

import array
import os
import socket
import threading

import pycriu.rpc_pb2 as rpc
import pytest

from criu_ext import relay
from criu_ext.plugin import PluginError
from criu_ext.session import Session


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def req(kind: int, **opts) -> bytes:
    r = rpc.criu_req()
    r.type = kind
    if kind in (rpc.DUMP, rpc.RESTORE):
        r.opts.images_dir_fd = opts.pop("images_dir_fd")
        for k, v in opts.items():
            setattr(r.opts, k, v)
    return r.SerializeToString()


def resp(kind: int, success: bool = True, script: str | None = None, pid: int | None = None) -> bytes:
    r = rpc.criu_resp()
    r.type = kind
    r.success = success
    if script is not None:
        r.notify.script = script
        if pid is not None:
            r.notify.pid = pid
    return r.SerializeToString()


def parse_req(data: bytes):
    r = rpc.criu_req()
    r.ParseFromString(data)
    return r


def parse_resp(data: bytes):
    r = rpc.criu_resp()
    r.ParseFromString(data)
    return r


class FakeCriu(threading.Thread):
    """Plays ``criu swrk``: takes one request, sends the given NOTIFYs (each with optional
    fds), records the answers, then the final response."""

    def __init__(self, sock: socket.socket, notifies, final_ok: bool = True) -> None:
        super().__init__(daemon=True)
        self.ch = relay.Channel(sock, "fake relay peer")
        self.notifies = notifies
        self.final_ok = final_ok
        self.request = None
        self.answers: list[bool] = []

    def run(self) -> None:
        msg = self.ch.recv()
        self.request = parse_req(msg.data)
        for phase, fds in self.notifies:
            self.ch.send(relay.Message(resp(rpc.NOTIFY, script=phase, pid=4242), fds))
            self.answers.append(parse_req(self.ch.recv().data).notify_success)
        self.ch.send(relay.Message(resp(self.request.type, self.final_ok), []))


class FakeEngine(threading.Thread):
    """Plays runc: sends one request, answers every NOTIFY with ``answer(phase)``, keeps
    the fds it was sent, and records what it saw."""

    def __init__(self, sock: socket.socket, request: bytes, answer=lambda phase: True) -> None:
        super().__init__(daemon=True)
        self.ch = relay.Channel(sock, "fake engine peer")
        self.request = request
        self.answer = answer
        self.seen: list[str] = []
        self.fds: dict[str, list[int]] = {}
        self.final = None

    def run(self) -> None:
        self.ch.send(relay.Message(self.request, []))
        while True:
            msg = self.ch.recv()
            r = parse_resp(msg.data)
            if r.type != rpc.NOTIFY:
                self.final = r
                break
            self.seen.append(r.notify.script)
            self.fds[r.notify.script] = msg.fds
            self.ch.send(relay.Message(relay.notify_answer(self.answer(r.notify.script)), []))
        self.ch.sock.shutdown(socket.SHUT_WR)


class FakeLockPlugin:
    """Records its phases; fails at network-lock when told to."""

    name = "fakelock"
    order = 100

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, int | None]] = []

    def network_lock(self, ctx) -> None:
        self.calls.append(("network-lock", ctx.init_pid))
        if self.fail:
            raise PluginError("refused by the fake")

    def post_dump(self, ctx) -> None:
        self.calls.append(("post-dump", ctx.init_pid))


def run_relay(tmp_path, request: bytes, notifies, plugin=None, engine_answer=lambda p: True,
              final_ok: bool = True):
    eng_a, eng_b = pair()
    cr_a, cr_b = pair()
    engine = FakeEngine(eng_a, request, engine_answer)
    criu = FakeCriu(cr_b, notifies, final_ok)
    sessions = []

    def make_session(action, opts):
        if plugin is None:
            return None
        s = Session(action, relay.images_path(opts), [plugin], "rpc")
        s.init_pid = opts.pid if opts.HasField("pid") else None
        sessions.append(s)
        return s

    taken = []

    def fake_take(fd):  # stands in for pidfd_getfd on the engine
        new = os.dup(fd)
        taken.append((fd, new))
        return new

    r = relay.Relay(relay.Channel(eng_b, "engine"), relay.Channel(cr_a, "criu"), make_session,
                    fake_take)
    engine.start()
    criu.start()
    r.serve()
    engine.join(5)
    criu.join(5)
    assert not engine.is_alive() and not criu.is_alive()
    return r, engine, criu, taken, sessions


def test_version_request_passes_through_untouched(tmp_path):
    r, engine, criu, taken, sessions = run_relay(tmp_path, req(rpc.VERSION), [])
    assert criu.request.type == rpc.VERSION
    assert engine.final.type == rpc.VERSION and engine.final.success
    assert taken == [] and sessions == []


def test_dump_plugins_answer_first_then_engine(tmp_path):
    dfd = os.open(tmp_path, os.O_DIRECTORY)
    plugin = FakeLockPlugin()
    try:
        r, engine, criu, taken, sessions = run_relay(
            tmp_path, req(rpc.DUMP, images_dir_fd=dfd, pid=77),
            [("network-lock", []), ("post-dump", [])], plugin)
    finally:
        os.close(dfd)
    # CRIU got our copy of the images directory, not the engine's number
    assert taken[0][0] == dfd and criu.request.opts.images_dir_fd == taken[0][1]
    assert criu.request.opts.pid == 77
    assert plugin.calls == [("network-lock", 4242), ("post-dump", 4242)]  # NOTIFY's pid
    assert engine.seen == ["network-lock", "post-dump"]
    assert criu.answers == [True, True]
    assert engine.final.type == rpc.DUMP and engine.final.success
    assert os.path.exists(tmp_path / "criu-ext.json")  # conclude wrote the manifest


def test_fatal_plugin_failure_skips_engine_and_fails_criu(tmp_path):
    dfd = os.open(tmp_path, os.O_DIRECTORY)
    try:
        r, engine, criu, *_ = run_relay(tmp_path, req(rpc.DUMP, images_dir_fd=dfd, pid=5),
                                        [("network-lock", [])], FakeLockPlugin(fail=True),
                                        final_ok=False)
    finally:
        os.close(dfd)
    assert criu.answers == [False]
    assert engine.seen == []  # CRIU aborts: the engine is not asked
    assert engine.final.success is False


def test_engine_refusal_reaches_criu(tmp_path):
    dfd = os.open(tmp_path, os.O_DIRECTORY)
    try:
        r, engine, criu, *_ = run_relay(
            tmp_path, req(rpc.RESTORE, images_dir_fd=dfd),
            [("setup-namespaces", []), ("post-restore", [])], FakeLockPlugin(),
            engine_answer=lambda phase: phase != "post-restore", final_ok=False)
    finally:
        os.close(dfd)
    assert engine.seen == ["setup-namespaces", "post-restore"]
    assert criu.answers == [True, False]


def test_notify_fd_reaches_engine(tmp_path):
    """orphan-pts-master: CRIU passes a terminal master with SCM_RIGHTS."""
    rd, wr = os.pipe()
    dfd = os.open(tmp_path, os.O_DIRECTORY)
    try:
        r, engine, criu, *_ = run_relay(tmp_path, req(rpc.RESTORE, images_dir_fd=dfd),
                                        [("orphan-pts-master", [wr])], FakeLockPlugin())
        os.close(wr)
        got = engine.fds["orphan-pts-master"]
        assert len(got) == 1
        os.write(got[0], b"pts")
        os.close(got[0])
        assert os.read(rd, 3) == b"pts"
    finally:
        os.close(rd)
        os.close(dfd)
    assert r.notified == [("orphan-pts-master", True)]


def test_plugin_selection_error_answers_engine_without_criu(tmp_path):
    eng_a, eng_b = pair()
    cr_a, cr_b = pair()
    dfd = os.open(tmp_path, os.O_DIRECTORY)

    def bad_session(action, opts):
        raise PluginError("no plugin named 'nope'")

    try:
        engine = FakeEngine(eng_a, req(rpc.DUMP, images_dir_fd=dfd, pid=1, log_file="dump.log"))
        engine.start()
        relay.Relay(relay.Channel(eng_b, "engine"), relay.Channel(cr_a, "criu"), bad_session,
                    os.dup).serve()
        engine.join(5)
    finally:
        os.close(dfd)
    assert engine.final.success is False and "nope" in engine.final.cr_errmsg
    # the log an engine points at ("log file: .../dump.log") says why
    assert (tmp_path / "dump.log").read_text() == \
        "criu-ext: dump not started: no plugin named 'nope'\n"
    cr_b.setblocking(False)
    with pytest.raises(BlockingIOError):
        cr_b.recv(10)  # CRIU was never asked


def test_the_note_in_criu_log_never_follows_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("kept\n")
    (tmp_path / "restore.log").symlink_to(victim)
    dfd = os.open(tmp_path, os.O_DIRECTORY)
    try:
        opts = rpc.criu_req().opts
        opts.images_dir_fd, opts.log_file = dfd, "../restore.log"
        relay.note_in_criu_log(opts, "criu-ext: restore not started: bad image")
    finally:
        os.close(dfd)
    assert victim.read_text() == "kept\n"


def test_truncated_control_data_is_refused():
    a, b = pair()
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(relay.MAX_FDS + 4)]
    try:
        a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
        with pytest.raises(relay.RelayError, match="truncated"):
            relay.Channel(b, "peer").recv()
    finally:
        for fd in fds:
            os.close(fd)


def test_adopt_peer_fds_rewrites_only_set_fields():
    opts = rpc.criu_opts()
    opts.images_dir_fd = 10
    opts.work_dir_fd = 11
    got = relay.adopt_peer_fds(opts, lambda n: n + 100)
    assert (opts.images_dir_fd, opts.work_dir_fd) == (110, 111)
    assert not opts.HasField("status_fd") and got == [110, 111]


def test_standin_relays_a_version_request_to_the_real_criu():
    """The whole front (console script, fd numbers, exec of the real criu) with a request
    that needs no kernel support: VERSION."""
    import subprocess
    import sys

    standin = os.path.join(os.path.dirname(sys.executable), "criu-ext-criu")  # our venv's
    if not os.path.exists(standin) or not os.path.exists(relay.real_criu()):
        pytest.skip("criu-ext-criu or the real criu is not installed")
    ours, theirs = pair()
    p = subprocess.Popen([standin, "swrk", str(theirs.fileno())], pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        ours.send(req(rpc.VERSION))
        answer = parse_resp(ours.recv(relay.RECV_MAX))
        ours.shutdown(socket.SHUT_WR)
        assert p.wait(60) == 0
    finally:
        ours.close()
        if p.poll() is None:
            p.kill()
    assert answer.type == rpc.VERSION and answer.success
    assert answer.version.major_number == 3
