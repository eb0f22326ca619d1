"""The session process of action-script mode: one warm criu-ext per CRIU dump or restore.

The first phase CRIU runs the hook for (pre-dump, pre-restore: before the
tasks are frozen) starts it; it imports and loads the plugins once, pays their
first-use costs (``warm``, ``prepare``, as RPC mode does before CRIU starts),
and then answers every phase that needs a plugin through the FIFOs of its
session directory (criu_ext.hook_proto), so the hook run inside CRIU's freeze
window is a shell, not a Python start. Plugins see ``ctx.resident``: their
objects live from phase to phase, as in RPC mode.

It is no child of CRIU (CRIU reaps its children and takes an unexpected exit
as a failure): the hook forks it off in a session of its own. It watches CRIU
through a pidfd and exits after the last phase of the dump or restore, or as
soon as CRIU is gone, whichever comes first; so it never outlives CRIU. When
CRIU dies in the middle of a dump (before a successful post-dump) the plugins
that acted roll back first, as RPC mode does.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import sys
from typing import TYPE_CHECKING

from criu_ext import hook_proto as proto
from criu_ext import phases as ph
from criu_ext import rundir

if TYPE_CHECKING:  # imported when the plugins load, not at start-up
    from criu_ext.session import Session

COMM = b"criu-ext-sess"  # its name in /proc/<pid>/comm (15 bytes at most)
LAST = {ph.DUMP: "network-unlock", ph.RESTORE: "post-resume"}
WRITE_WAIT_MS = 1000


class _ClientStream:
    """What the plugins' Log writes: lines to the client being answered (or to
    CRIU's log file when there is none, e.g. a rollback after CRIU died)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._part = ""

    def write(self, text: str) -> int:
        self._part += text
        *lines, self._part = self._part.split("\n")
        for line in lines:
            self.server.say(line)
        return len(text)

    def flush(self) -> None:
        pass


class Server:
    def __init__(self, sdir: str, criu_pid: int, pidfd: int, action: str, images_dir: str | None,
                 resume: dict | None, late_log: int | None) -> None:
        self.sdir = sdir
        self.criu_pid = criu_pid
        self.pidfd = pidfd
        self.action = action
        self.images_dir = images_dir
        self.resume = resume
        self.late_log = late_log
        self.client: int | None = None
        self.session: Session | None = None
        self.load_error: str | None = None
        self.post_dump_ok = False
        self.fresh = resume is None  # a new session (not one saved by a process that died)
        self.plan_due = True  # the plan is written after the first phase this process answers
        self.req = rundir.open_fifo(os.path.join(sdir, rundir.REQ), os.O_RDWR | os.O_NONBLOCK)
        self.resp = rundir.open_fifo(os.path.join(sdir, rundir.RESP), os.O_RDWR | os.O_NONBLOCK)

    # -- output ------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        if self.client is not None:
            self._send(proto.encode_message(self.client, line))
        elif self.late_log is not None:
            try:
                os.write(self.late_log, proto.encode_message(0, line)[2:])
            except OSError:
                pass

    def _send(self, data: bytes) -> None:
        """One line to the response FIFO; gives up when CRIU is gone and nobody reads."""
        while True:
            try:
                os.write(self.resp, data)
                return
            except BlockingIOError:
                p = select.poll()
                p.register(self.resp, select.POLLOUT)
                p.register(self.pidfd, select.POLLIN)
                ready = dict(p.poll(WRITE_WAIT_MS))
                if self.pidfd in ready or (not ready and not _alive(self.client)):
                    self.client = None  # CRIU or the client gone: stop talking
                    return

    def _drain(self) -> None:
        """Drop what earlier answers left unread (a client that died before its status)."""
        try:
            while os.read(self.resp, 65536):
                pass
        except BlockingIOError:
            pass

    # -- the session ---------------------------------------------------------------------------

    def _log(self):
        from criu_ext.plugin import Log

        try:
            level = int(os.environ.get("CRIU_EXT_LOG_LEVEL", "3"))
        except ValueError:
            level = 3
        return Log(_ClientStream(self), level)

    def load(self, log) -> None:
        """Import and load the plugins once; their first-use costs paid now (outside the
        freeze window: this runs at pre-dump / pre-restore)."""
        from criu_ext.plugin import PluginError, warm_all
        from criu_ext.plugin import select as select_plugins
        from criu_ext.session import Session

        try:
            if self.resume is not None:
                self.session = Session.from_json(self.resume, log, self.images_dir)
            else:
                self.session = Session(self.action, self.images_dir or ".",
                                       select_plugins(os.environ.get("CRIU_EXT_PLUGINS"), log),
                                       "script", log)
                warm_all(self.session.plugins, self.action)
        except PluginError as exc:
            self.load_error = str(exc)
            return
        self.session.resident = True
        self.session.on_change = self._keep_session  # a takeover then knows what was done

    def handle(self, req: proto.Request) -> int:
        from criu_ext.plugin import PluginError
        from criu_ext.session import PhaseFailed

        s = self.session
        if self.load_error or s is None:
            self.say(f"error: {req.phase}: {self.load_error or 'the plugins are not loaded'}")
            return 1
        log = s.log
        before = len(s.timings)
        rc = 0
        try:
            if self.fresh and not s.phases_seen:
                s.prepare()  # RPC mode does this before CRIU starts; here, before the tasks
            s.run(req.phase, req.init_pid)
        except PhaseFailed as exc:
            log.error(str(exc))
            rc = 1
        except PluginError as exc:
            log.error(f"{req.phase}: {exc}")
            rc = 1
        if req.phase == "post-dump" and rc == 0:
            self.post_dump_ok = True
        self._save(log, req.phase)
        age = _age_ms(req.client)
        spent = sum(t["seconds"] for t in s.timings[before:])
        log.debug(f"{req.phase}: {spent * 1000:.1f} ms in plugins"
                  + (f", {age:.0f} ms since exec" if age is not None else ""))
        return rc

    def _keep_session(self) -> None:
        """The session file, for a session process that takes over should this one die."""
        s = self.session
        assert s is not None
        rundir.write_file(os.path.join(self.sdir, rundir.SESSION),
                          json.dumps({"criu_pid": self.criu_pid,
                                      "criu_start": rundir.proc_start(self.criu_pid),
                                      "session": s.to_json()}).encode("utf-8"))

    def _save(self, log, phase: str) -> None:
        s = self.session
        assert s is not None  # handle() answers only with a loaded session
        try:
            if self.plan_due:
                rundir.write_file(os.path.join(self.sdir, rundir.PLAN),
                                  proto.format_plan(s.phases()).encode("ascii"))
                self.plan_due = False
            self._keep_session()
        except (OSError, rundir.RunDirError) as exc:
            log.warning(f"cannot keep the session in {self.sdir}: {exc}")
        if phase not in ph.FIRST:
            s.write_manifest()

    def criu_gone(self) -> None:
        """CRIU ended. In the middle of a dump the source goes on running: roll back."""
        s = self.session
        if (s is None or s.action != ph.DUMP or self.post_dump_ok or s.rolled_back
                or not s.acted):
            return
        s.log.warning(f"CRIU {self.criu_pid} ended during the dump, before a successful "
                      "post-dump: rolling back on the source")
        for err in s.rollback():
            s.log.error(str(err))
        s.write_manifest()

    # -- the loop ------------------------------------------------------------------------------

    def serve(self) -> None:
        log = self._log()
        self.load(log)
        buf = proto.LineBuffer()
        p = select.poll()
        p.register(self.req, select.POLLIN)
        p.register(self.pidfd, select.POLLIN)
        while True:
            ready = dict(p.poll())
            if self.pidfd in ready:
                self.criu_gone()
                return
            try:
                data = os.read(self.req, 4096)
            except BlockingIOError:
                continue
            for line in buf.feed(data):
                try:
                    req = proto.parse_request(line)
                except proto.ProtocolError:
                    continue  # nobody to answer: the FIFO is ours alone (0700 directory)
                self._drain()
                self.client = req.client
                try:
                    rc = self.handle(req)
                except Exception as exc:  # noqa: BLE001 - answer, never leave CRIU waiting
                    self.say(f"error: {req.phase}: {type(exc).__name__}: {exc}")
                    rc = 1
                if self.client is not None:
                    self._send(proto.encode_status(self.client, rc))
                self.client = None
                if self.load_error:
                    _wait_readable(self.pidfd)  # CRIU gives up: wait for it, then go
                    return
                if self.session is not None and req.phase == LAST[self.session.action]:
                    return


def _alive(pid: int | None) -> bool:
    return pid is not None and os.path.exists(f"/proc/{pid}")


def _wait_readable(fd: int) -> None:
    p = select.poll()
    p.register(fd, select.POLLIN)
    p.poll()


def _age_ms(pid: int) -> float | None:
    """Milliseconds since ``pid`` was started (clock-tick resolution)."""
    start = rundir.proc_start(pid)
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            up = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if start is None:
        return None
    return (up - start / os.sysconf("SC_CLK_TCK")) * 1000


def _detach_stdio(keep: set[int]) -> int | None:
    """Stdio to /dev/null, every other inherited fd closed (CRIU's pipes must not be held
    open by us). Returns a descriptor on CRIU's log when that is a regular file."""
    import stat

    late = None
    try:
        if stat.S_ISREG(os.fstat(1).st_mode):
            late = os.dup(1)
    except OSError:
        pass
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    keep = keep | ({late} if late is not None else set())
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    return late


def run_detached(sdir: str, criu_pid: int, pidfd: int, ready_fd: int, action: str,
                 images_dir: str | None, resume: dict | None) -> None:
    """Body of the session process (called in the forked grandchild; never returns)."""
    code = 1
    late = None
    try:
        late = _detach_stdio({pidfd, ready_fd})
        try:
            with open("/proc/self/comm", "wb") as f:
                f.write(COMM)
        except OSError:
            pass
        server = Server(sdir, criu_pid, pidfd, action, images_dir, resume, late)
        rundir.write_file(os.path.join(sdir, rundir.SERVER),
                          f"{os.getpid()} {rundir.proc_start(os.getpid())}\n".encode("ascii"))
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)
        ready_fd = -1
        if sys.flags.no_site and "site" not in sys.modules:  # the launcher starts Python -S
            import site

            site.main()
        server.serve()
        code = 0
    except BaseException as exc:  # noqa: BLE001 - the process must end here
        why = f"{type(exc).__name__}: {exc}"
        try:
            if ready_fd >= 0:
                os.write(ready_fd, f"error {why}\n".encode())
            elif late is not None:  # the client sees only an end of file: say why in CRIU's log
                import traceback

                where = traceback.extract_tb(exc.__traceback__)[-1]
                os.write(late, proto.encode_message(0, f"error: the session process failed: {why} "
                                                       f"({where.filename}:{where.lineno})")[2:])
        except OSError:
            pass
    finally:
        shutil.rmtree(sdir, ignore_errors=True)
        os._exit(code)


def server_pid(sdir: str) -> int | None:
    """The live session process of ``sdir``, if any (PID and start time must match)."""
    try:
        text = rundir.read_file(os.path.join(sdir, rundir.SERVER), 64).decode("ascii")
        pid_s, start_s = text.split()
        pid = int(pid_s)
    except (OSError, ValueError, UnicodeDecodeError, rundir.RunDirError):
        return None
    return pid if str(rundir.proc_start(pid, running=True)) == start_s else None


def stop(sdir: str, timeout: float = 5.0) -> None:
    """End the session process of ``sdir`` (a harness that runs a first phase twice with one
    parent; CRIU itself never does)."""
    pid = server_pid(sdir)
    if pid is None:
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return
        raise
    try:
        os.kill(pid, 9)
        p = select.poll()
        p.register(fd, select.POLLIN)
        p.poll(int(timeout * 1000))
    finally:
        os.close(fd)
