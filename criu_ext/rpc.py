"""Drive CRIU through its RPC (``criu swrk``) and answer its notify callbacks in-process.

pycriu's ``criu`` class sends one request and reads one answer; with
``notify_scripts`` CRIU sends NOTIFY messages first (one per action-script
phase) and waits for a NOTIFY request back. This module runs that loop: the
plugins of each phase run in this process, so nothing is started inside the
freeze window.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pycriu.rpc_pb2 as rpc

from criu_ext import phases as ph
from criu_ext.plugin import warm_all
from criu_ext.rundir import RunDirError
from criu_ext.session import PhaseFailed, Session

RECV_MAX = 1 << 20


class CriuError(Exception):
    """CRIU said no (or died); the message names the log to read."""

    def __init__(self, message: str, cr_errno: int = 0, log_path: str | None = None,
                 plugin_failure: PhaseFailed | None = None) -> None:
        super().__init__(message)
        self.cr_errno = cr_errno
        self.log_path = log_path
        self.plugin_failure = plugin_failure


@dataclass
class Options:
    """The CRIU options ``criu-ext dump|restore`` knows by name; ``extra`` passes others.

    ``extra`` maps criu_opts field names (images/rpc.proto) to values: a list
    for repeated fields, "true"/"false" or bool for booleans, a number, a name
    for enums. ``log_file`` may be a path: its directory becomes CRIU's work
    directory (RPC takes a bare file name).
    """

    images_dir: str
    pid: int | None = None
    tcp_established: bool = False
    leave_running: bool = False
    shell_job: bool = False
    log_file: str | None = None
    log_level: int = 2
    external: list[str] = field(default_factory=list)
    config_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    page_server: tuple[str, int] | None = None  # (address, port): memory goes there
    # restore: {fd: key}, descriptors of ours CRIU takes for what the dump called ``key``
    # (``--inherit-fd fd[N]:KEY``; swrk only, so they are passed to criu at the same number)
    inherit_fd: dict[int, str] = field(default_factory=dict)


@dataclass
class Result:
    ok: bool
    resp: Any  # rpc.criu_resp
    seconds: float  # request sent -> final answer
    notify: list[dict]  # {"phase", "at", "seconds", "ok"} per NOTIFY, "at" since request sent
    log_path: str | None
    swrk_status: int | None = None
    begin_seconds: float = 0.0  # the plugins' imports and prepare, before CRIU was asked

    def phase_seconds(self, phases=None) -> float:
        return sum(n["seconds"] for n in self.notify if phases is None or n["phase"] in phases)


def set_opt(opts: Any, name: str, value: Any) -> None:
    """Set criu_opts field ``name`` from a Python or string value, checked against rpc.proto."""
    fd = opts.DESCRIPTOR.fields_by_name.get(name)
    if fd is None:
        raise ValueError(f"CRIU RPC has no option {name!r} (see criu_opts in images/rpc.proto)")
    values = value if isinstance(value, (list, tuple)) else [value]
    conv: list[bool | int | str] = []
    for v in values:
        if fd.type == fd.TYPE_BOOL:
            if isinstance(v, str):
                if v.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(f"option {name}: {v!r} is not a boolean")
                v = v.lower() in ("1", "true", "yes", "on")
            conv.append(bool(v))
        elif fd.type == fd.TYPE_STRING:
            conv.append(str(v))
        elif fd.type == fd.TYPE_ENUM:
            if isinstance(v, str) and not v.isdigit():
                ev = fd.enum_type.values_by_name.get(v.upper())
                if ev is None:
                    raise ValueError(f"option {name}: {v!r} is not one of "
                                     f"{', '.join(fd.enum_type.values_by_name)}")
                v = ev.number
            conv.append(int(v))
        elif fd.type == fd.TYPE_MESSAGE:
            raise ValueError(f"option {name} is structured; criu-ext does not pass it through "
                             "(use a CRIU configuration file)")
        else:
            conv.append(int(v))
    if fd.label == fd.LABEL_REPEATED:
        getattr(opts, name).extend(conv)
    else:
        if len(conv) != 1:
            raise ValueError(f"option {name} takes one value")
        setattr(opts, name, conv[0])


def build_opts(o: Options, images_fd: int, work_fd: int | None, log_name: str) -> Any:
    opts = rpc.criu_opts()
    opts.images_dir_fd = images_fd
    if o.pid is not None:
        opts.pid = o.pid
    if work_fd is not None:
        opts.work_dir_fd = work_fd
    opts.tcp_established = o.tcp_established
    opts.leave_running = o.leave_running
    opts.shell_job = o.shell_job
    opts.log_level = o.log_level
    opts.log_file = log_name
    opts.notify_scripts = True
    opts.external.extend(o.external)
    if o.config_file:
        opts.config_file = o.config_file
    for k, v in o.extra.items():
        set_opt(opts, k, v)
    if o.page_server is not None:
        opts.ps.address, opts.ps.port = o.page_server
    for fd, key in o.inherit_fd.items():
        inh = opts.inherit_fd.add()
        inh.fd, inh.key = fd, key
    return opts


class Swrk:
    """One ``criu swrk`` child talking SOCK_SEQPACKET with us."""

    def __init__(self, criu: str = "criu", quiet: bool = False, pass_fds=()) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sk = ours
        self.fds = frozenset(pass_fds)  # ours, at the same numbers in criu (inherit_fd)
        self.asked = False  # a request sent (close kills a swrk never asked anything)
        try:
            self.proc = subprocess.Popen([criu, "swrk", str(theirs.fileno())],
                                         pass_fds=[theirs.fileno(), *pass_fds],
                                         stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, close_fds=True,
                                         stderr=subprocess.DEVNULL if quiet else None)
        except OSError as exc:
            ours.close()
            raise CriuError(f"cannot start {criu} swrk: {exc}") from exc
        finally:
            theirs.close()

    def send(self, req: Any) -> None:
        self.send_encoded(req.SerializeToString())

    def send_encoded(self, data: bytes) -> None:
        self.asked = True
        self.sk.send(data)

    def recv(self) -> Any | None:
        data = self.sk.recv(RECV_MAX)
        if not data:
            return None
        resp = rpc.criu_resp()
        resp.ParseFromString(data)
        return resp

    def close(self) -> int | None:
        """Its exit status. One never asked anything (started ahead, then not needed)
        is killed, so that it does not log the request it never got."""
        if not self.asked:
            self.proc.kill()
        self.sk.close()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


_ANSWERS: dict[bool, bytes] = {}


def _notify_answer(ok: bool) -> bytes:
    """The NOTIFY answer, encoded once: several are sent in a freeze."""
    data = _ANSWERS.get(ok)
    if data is None:
        ans = rpc.criu_req()
        ans.type = rpc.NOTIFY
        ans.notify_success = ok
        data = _ANSWERS[ok] = ans.SerializeToString()
    return data


def no_answer(status: int | None) -> str:
    """Why CRIU gave no answer, from its exit status: a signal (a crash, an OOM kill)
    is told apart from an exit."""
    if status is not None and status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"criu swrk ended without an answer (killed by {name})"
    return f"criu swrk ended without an answer (exit status {status})"


def refused(resp: Any) -> str:
    """What CRIU said with an answer of failure: its message, else its errno's, else that
    it failed (swrk answers for a failed pre-dump child with neither)."""
    return (resp.cr_errmsg.strip() or (os.strerror(resp.cr_errno) if resp.cr_errno else "")
            or "CRIU reported an error")


def _open_dir(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CriuError(f"{what} {path}: {exc.strerror}") from None


def _open_dirs(o: Options) -> tuple[int, int | None, str, str]:
    images_fd = _open_dir(o.images_dir, "image directory")
    work_fd = None
    log_name = o.log_file or ""
    if "/" in log_name:
        work = os.path.dirname(os.path.abspath(log_name))
        try:
            work_fd = _open_dir(work, "log directory (-o)")
        except CriuError:
            os.close(images_fd)
            raise
        log_name = os.path.basename(log_name)
        log_path = os.path.join(work, log_name)
    else:
        log_path = os.path.join(o.images_dir, log_name)
    return images_fd, work_fd, log_name, log_path


class Request:
    """One dump or restore request, encoded with its image and log directories opened.
    Made ahead of its use (``run(request=)``), its cost (a few milliseconds under
    emulation, the first use of each message class) stays out of a freeze window.
    ``close`` (idempotent; ``run`` calls it) closes the directories."""

    def __init__(self, action: str, o: Options) -> None:
        if action not in (ph.DUMP, ph.RESTORE):
            raise ValueError(action)
        if not o.log_file:
            o.log_file = f"{action}.log"
        self.action = action
        self.inherit = frozenset(o.inherit_fd)
        self.images_fd: int | None
        self.work_fd: int | None
        self.images_fd, self.work_fd, log_name, self.log_path = _open_dirs(o)
        try:
            req = rpc.criu_req()
            req.type = rpc.DUMP if action == ph.DUMP else rpc.RESTORE
            req.opts.CopyFrom(build_opts(o, self.images_fd, self.work_fd, log_name))
            self.data = req.SerializeToString()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self.images_fd, self.work_fd):
            if fd is not None:
                os.close(fd)
        self.images_fd = self.work_fd = None


def open_journal(session: Session, root: int):
    """The dump's journal (criu_ext.journal), refusing to start over an interrupted dump
    of the same tree; None (with a warning) when the run directory is unusable."""
    from criu_ext import journal as jr

    left = jr.pending_for(root)
    if left is not None:
        raise CriuError(f"dump not started: an interrupted dump of PID {root} left "
                        f"{left.path}; run `criu-ext recover` first", errno.EBUSY)
    try:
        j = jr.Journal(session, root)
    except RunDirError as exc:
        session.log.warning(f"no journal for this dump ({exc}): a crash of criu-ext now "
                            "cannot be recovered with criu-ext recover")
        return None
    session.on_change = j.write
    session.on_mark = j.mark
    j.write()
    return j


def begin(session: Session) -> None:
    """Before CRIU starts: the plugins' imports and ``prepare`` (PhaseFailed: nothing touched)."""
    if not session.warmed:  # imports now, not in the freeze window
        warm_all(session.plugins, session.action)
        session.warmed = True
    session.prepare()


def answer(session: Session, phase: str, pid: int | None) -> PhaseFailed | None:
    """One NOTIFY from CRIU: run the phase's plugins; the failure CRIU must act on, if any.

    CRIU also notifies things that are not action-script phases (orphan-pts-master,
    status-ready): the plugins have nothing to do there.
    """
    if phase not in ph.ALL_PHASES:
        return None
    try:
        session.run(phase, pid)
    except PhaseFailed as exc:
        return exc
    return None


def conclude(session: Session, ok: bool) -> list[PhaseFailed]:
    """After CRIU's final answer: rollback of a failed dump CRIU did not unlock, the
    plugins' ``finish``, the manifest. Returns the failures of ``finish``."""
    if not ok and session.action == ph.DUMP and not session.rolled_back:
        # CRIU failed without a network-unlock: the source goes on running, make it whole
        for err in session.rollback():
            session.log.error(str(err))
    late = session.finish()
    for err in late:
        session.log.error(str(err))
    if session.mode == "rpc":
        session.write_manifest()
    return late


def run(action: str, o: Options, session: Session | None, criu: str = "criu",
        on_notify: Callable[[str, int | None], None] | None = None,
        swrk: Swrk | None = None, request: Request | None = None,
        sent: Callable[[], None] | None = None) -> Result:
    """Run one CRIU dump or restore, answering NOTIFY with ``session``'s plugins.

    ``swrk``: a ``criu swrk`` started ahead (its start, over 0.1 s under emulation, is
    then not in the way; it was given every descriptor of ``o.inherit_fd``), used and
    closed here; else one is started now. ``request``: ``o`` encoded ahead (Request),
    used and closed here. ``sent``: called once the request is on its way, while
    CRIU starts (it must not raise).

    Raises CriuError when CRIU fails; at dump, the plugins' rollback has run by
    then (CRIU's network-unlock, or here if CRIU ended without it).
    """
    if action not in (ph.DUMP, ph.RESTORE):
        raise ValueError(action)
    if action == ph.DUMP and o.pid is None:
        raise ValueError("a dump needs the PID of the tree's root (--tree)")
    if request is not None and request.action != action:
        raise ValueError(f"a {request.action} request given to run a {action}")
    t_begin = time.perf_counter()
    journal = None
    try:
        inherit = request.inherit if request is not None else frozenset(o.inherit_fd)
        if swrk is not None and not inherit <= swrk.fds:
            raise ValueError("criu swrk was started without descriptors "
                             f"{sorted(inherit - swrk.fds)} of inherit_fd")
        if session is not None:
            try:
                begin(session)
            except PhaseFailed as exc:  # CRIU not started: nothing to undo
                raise CriuError(f"{action} not started: plugin {exc.plugin}: {exc.message}",
                                errno.EINVAL, None, exc) from None
        if request is None:
            request = Request(action, o)
        log_path = request.log_path
        if session is not None:
            session.options.setdefault("leave_running", o.leave_running)
            session.options.setdefault("tcp_established", o.tcp_established)
            session.options.setdefault("external", list(o.external))
            if action == ph.DUMP:
                session.init_pid = o.pid
        begin_seconds = time.perf_counter() - t_begin
        if session is not None and action == ph.DUMP and o.pid is not None:
            journal = open_journal(session, o.pid)
        try:
            if swrk is None:
                swrk = Swrk(criu, pass_fds=tuple(o.inherit_fd))
        except CriuError:
            if journal is not None:
                journal.close()  # nothing started, nothing to recover
            raise
        if journal is not None:
            journal.started_criu(swrk.proc.pid)
        notify: list[dict] = []
        failure: PhaseFailed | None = None
        t0 = time.perf_counter()
        resp = None
        try:
            swrk.send_encoded(request.data)
            if sent is not None:
                sent()
            while True:
                resp = swrk.recv()
                if resp is None or resp.type != rpc.NOTIFY:
                    break
                phase = resp.notify.script
                pid = resp.notify.pid if resp.notify.HasField("pid") else None
                t1 = time.perf_counter()
                ok = True
                if on_notify:
                    on_notify(phase, pid)
                if session is not None:
                    err = answer(session, phase, pid)
                    if err is not None:
                        ok = False
                        failure = failure or err
                t2 = time.perf_counter()
                notify.append({"phase": phase, "at": round(t1 - t0, 6),
                               "seconds": round(t2 - t1, 6), "ok": ok})
                swrk.send_encoded(_notify_answer(ok))
        except (ConnectionError, OSError) as exc:
            resp = None
            failure_msg: str | None = f"lost the connection to criu swrk: {exc}"
        else:
            failure_msg = None
        seconds = time.perf_counter() - t0
        status = swrk.close()
    finally:
        if swrk is not None and not swrk.asked:  # one started ahead; we failed before using it
            swrk.close()
        if request is not None:
            request.close()
    result = Result(ok=bool(resp is not None and resp.success), resp=resp, seconds=seconds,
                    notify=notify, log_path=log_path, swrk_status=status,
                    begin_seconds=begin_seconds)
    if session is not None:
        late = conclude(session, result.ok)
        if late and result.ok and action == ph.DUMP:
            result.ok = False
            failure = failure or late[0]
        if journal is not None:
            journal.close()  # done or rolled back: nothing for criu-ext recover
    if result.ok:
        return result
    if resp is None:
        what = failure_msg or no_answer(status)
        raise CriuError(f"{action} failed: {what}; see {log_path}", errno.ECONNRESET, log_path,
                        failure)
    msg = refused(resp)
    if failure is not None:
        msg = f"plugin {failure.plugin} failed at {failure.phase}: {failure.message}"
    raise CriuError(f"{action} failed: {msg}; see {log_path}",
                    resp.cr_errno, log_path, failure)
