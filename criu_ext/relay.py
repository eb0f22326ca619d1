"""A CRIU stand-in for container engines: relay ``criu swrk`` RPC and answer NOTIFY in-process.

runc (1.1.5's global ``--criu PATH``) starts ``PATH swrk 3`` with its end of a
SOCK_SEQPACKET socket pair at fd 3 and, at restore, the namespaces it wants
inherited at fds 4 and up. The stand-in starts the real ``criu swrk`` on a
socket pair of its own, passing every inherited fd on at the same number, and
relays the messages both ways, file descriptors passed with SCM_RIGHTS
included (CRIU sends the orphan-pts master that way).

Three things are not a plain copy:
* DUMP and RESTORE requests name the image and work directories by fd number,
  and CRIU opens them as ``/proc/<peer>/fd/<n>`` of the process at the other
  end of its socket: that is now us, so we take copies of the engine's fds
  (pidfd_getfd) and put our numbers in the request.
* For DUMP and RESTORE a Session runs the plugins (rpc.begin before CRIU sees the
  request, rpc.answer on each NOTIFY, rpc.conclude after the final answer).
* Each NOTIFY goes to the plugins first, then to the engine (runc has its own
  work in setup-namespaces, post-restore, ...); CRIU gets success only if both
  succeeded. When a plugin fails where CRIU aborts, the engine is not asked.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable

import pycriu.rpc_pb2 as rpc

from criu_ext.plugin import PluginError
from criu_ext.session import Session

RECV_MAX = 1 << 20  # CRIU's CR_MAX_MSG_SIZE is far smaller
MAX_FDS = 16  # per message; CRIU passes one at most
REAL_CRIU_ENV = "CRIU_EXT_REAL_CRIU"
DEFAULT_REAL_CRIU = "/usr/sbin/criu"
LOG_NAME = "criu-ext.log"


class RelayError(Exception):
    """The relay cannot go on (a peer broke the protocol or went away)."""


@dataclass
class Message:
    data: bytes
    fds: list[int]

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class Channel:
    """One end of a SOCK_SEQPACKET socket: whole messages, with their fds."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name

    def recv(self) -> Message | None:
        """The next message, or None at end of stream (the peer closed or shut down)."""
        fds = array.array("i")
        data, anc, flags, _ = self.sock.recvmsg(RECV_MAX, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        msg = Message(data, list(fds))
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            msg.close_fds()
            raise RelayError(f"a message from {self.name} was truncated")
        if not data and not msg.fds:
            return None
        return msg

    def send(self, msg: Message) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", msg.fds))] if msg.fds else []
        self.sock.sendmsg([msg.data], anc)

    def peer_pid(self) -> int:
        creds = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]


# Fields of criu_opts that CRIU resolves through /proc/<peer>/fd/<n>.
PEER_FD_FIELDS = ("images_dir_fd", "work_dir_fd", "status_fd")


def adopt_peer_fds(opts: Any, take: Callable[[int], int]) -> list[int]:
    """Replace the engine's fd numbers in ``opts`` by copies of ours (``take(n)``).

    Returns the copies (to close when the request is done)."""
    ours = []
    for name in PEER_FD_FIELDS:
        if opts.HasField(name):
            fd = take(getattr(opts, name))
            ours.append(fd)
            setattr(opts, name, fd)
    return ours


def images_path(opts: Any) -> str:
    return os.readlink(f"/proc/self/fd/{opts.images_dir_fd}")


def work_path(opts: Any) -> str:
    fd = opts.work_dir_fd if opts.HasField("work_dir_fd") else opts.images_dir_fd
    return os.readlink(f"/proc/self/fd/{fd}")


def notify_answer(ok: bool) -> bytes:
    ans = rpc.criu_req()
    ans.type = rpc.NOTIFY
    ans.notify_success = ok
    return ans.SerializeToString()


def note_in_criu_log(opts: Any, line: str) -> None:
    """Write ``line`` to the CRIU log an engine names in its error ("log file: ..."),
    which CRIU never wrote when criu-ext refused before starting it. Never through a
    link; best effort: the RPC answer carries the reason too."""
    if not opts.log_file:
        return
    path = os.path.join(work_path(opts), os.path.basename(opts.log_file))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o600)
    except OSError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(line.replace("\n", " ") + "\n")


def failure_response(req_type: rpc.criu_req_type, message: str) -> bytes:
    resp = rpc.criu_resp()
    resp.type = req_type
    resp.success = False
    resp.cr_errno = errno.EINVAL
    resp.cr_errmsg = message
    return resp.SerializeToString()


SessionFactory = Callable[[str, Any], Session | None]


class Relay:
    """Relays one engine <-> criu swrk conversation; plugins run for DUMP and RESTORE.

    ``make_session(action, opts)`` gives the Session of a DUMP or RESTORE request
    (opts already carry our fd numbers), or None to run no plugins.
    """

    def __init__(self, engine: Channel, criu: Channel, make_session: SessionFactory,
                 take_fd: Callable[[int], int]) -> None:
        self.engine = engine
        self.criu = criu
        self.make_session = make_session
        self.take_fd = take_fd
        self.session: Session | None = None
        self.held: list[int] = []
        self.notified: list[tuple[str, bool]] = []  # (phase, answer given to CRIU)

    def serve(self) -> None:
        """Until the engine has no more requests or CRIU has gone."""
        try:
            while True:
                req = self.engine.recv()
                if req is None:
                    self.criu.sock.shutdown(socket.SHUT_WR)
                    return
                if not self._request(req):
                    return
        finally:
            self._release()

    def _request(self, msg: Message) -> bool:
        """Pass one engine request to CRIU and relay until CRIU's final answer."""
        req = rpc.criu_req()
        req.ParseFromString(msg.data)
        if req.type in (rpc.DUMP, rpc.RESTORE):
            from criu_ext import rpc as driver

            self.held = adopt_peer_fds(req.opts, self.take_fd)
            msg = Message(req.SerializeToString(), msg.fds)
            action = "dump" if req.type == rpc.DUMP else "restore"
            try:
                self.session = self.make_session(action, req.opts)
                if self.session is not None:
                    driver.begin(self.session)
            except (driver.PhaseFailed, PluginError) as exc:  # CRIU not asked: nothing touched
                msg.close_fds()
                self.session = None
                reason = f"criu-ext: {action} not started: {exc}"
                note_in_criu_log(req.opts, reason)
                self.engine.send(Message(failure_response(req.type, reason), []))
                return False
        try:
            self.criu.send(msg)
        finally:
            msg.close_fds()
        while True:
            out = self.criu.recv()
            if out is None:
                self._end(False)
                return False
            resp = rpc.criu_resp()
            resp.ParseFromString(out.data)
            if resp.type != rpc.NOTIFY:
                self._end(bool(resp.success))
                try:
                    self.engine.send(out)
                finally:
                    out.close_fds()
                return True
            self._notify(resp, out)

    def _notify(self, resp: Any, out: Message) -> None:
        from criu_ext import rpc as driver

        phase = resp.notify.script
        pid = resp.notify.pid if resp.notify.HasField("pid") else None
        ok = True
        try:
            if self.session is not None:
                failure = driver.answer(self.session, phase, pid)
                ok = failure is None
            if ok:  # the engine's turn; skipped when CRIU is going to abort anyway
                self.engine.send(out)
                ans = self.engine.recv()
                if ans is None:
                    raise RelayError(f"the engine went away during {phase}")
                ans_req = rpc.criu_req()
                ans_req.ParseFromString(ans.data)
                ans.close_fds()
                ok = ans_req.type == rpc.NOTIFY and ans_req.notify_success
        finally:
            out.close_fds()
        self.notified.append((phase, ok))
        self.criu.send(Message(notify_answer(ok), []))

    def _end(self, ok: bool) -> None:
        if self.session is not None:
            from criu_ext import rpc as driver

            driver.conclude(self.session, ok)
            self.session = None
        self._release()

    def _release(self) -> None:
        for fd in self.held:
            os.close(fd)
        self.held = []


def inherited_fds(skip: int) -> list[int]:
    """Our open fds above stdio other than ``skip``: passed on to CRIU at the same numbers."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != skip:
            try:
                os.fstat(fd)
            except OSError:  # the listing's own directory fd, gone by now
                continue
            out.append(fd)
    return sorted(out)


def real_criu() -> str:
    return os.environ.get(REAL_CRIU_ENV, DEFAULT_REAL_CRIU)


def plugin_session(action: str, opts: Any) -> Session | None:
    """The Session for a container engine's dump or restore: every default plugin, or
    ``$CRIU_EXT_PLUGINS``; messages to criu-ext.log in CRIU's work directory."""
    from criu_ext.plugin import Log, select

    log_file = open(os.path.join(work_path(opts), LOG_NAME), "a", encoding="utf-8")
    log = Log(log_file, 4 if opts.log_level >= 4 else 3)
    plugins = select(os.environ.get("CRIU_EXT_PLUGINS"), log)
    session = Session(action, images_path(opts), plugins, "rpc", log,
                      {"leave_running": opts.leave_running,
                       "tcp_established": opts.tcp_established,
                       "external": list(opts.external), "engine": True})
    if action == "dump" and opts.HasField("pid"):
        session.init_pid = opts.pid
    return session


def swrk(engine_fd: int, criu: str | None = None) -> int:
    """``criu swrk ENGINE_FD`` as the engine asked, with criu-ext in between. Exit status."""
    criu = criu or real_criu()
    passed = inherited_fds(engine_fd)
    engine_sock = socket.socket(fileno=engine_fd)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen([criu, "swrk", str(theirs.fileno())],
                                pass_fds=passed + [theirs.fileno()])
    except OSError as exc:
        print(f"criu-ext: cannot start {criu} swrk: {exc}", file=sys.stderr)
        return 1
    finally:
        theirs.close()
    for fd in passed:  # CRIU holds them now; a copy here would keep namespaces alive
        os.close(fd)
    engine = Channel(engine_sock, "the container engine")
    peer = engine.peer_pid()

    def take(fd: int) -> int:
        from procns.fds import steal_fd

        return steal_fd(peer, fd)

    relay = Relay(engine, Channel(ours, "criu swrk"), plugin_session, take)
    try:
        relay.serve()
    except (RelayError, OSError) as exc:
        print(f"criu-ext: relay stopped: {exc}", file=sys.stderr)
        ours.close()
        proc.wait()
        return 1
    ours.close()
    engine_sock.close()
    return proc.wait()
