"""The action-script entry in Python: ``criu dump|restore --action-script criu-ext-hook``.

CRIU runs the script once per phase (execvp of one path, no arguments, stdin
closed, stdout and stderr into CRIU's log) with CRTOOLS_SCRIPT_ACTION,
CRTOOLS_IMAGE_DIR and CRTOOLS_INIT_PID (not at pre-restore) in the environment.

The installed ``criu-ext-hook`` is a /bin/sh script (criu_ext/criu-ext-hook)
that answers most phases without Python: it ends those in which no plugin
acts, and hands the others to the session process (criu_ext.hook_server)
through its FIFOs. It starts Python, i.e. this module, only at pre-dump /
pre-restore (outside the freeze window), for input it rejects, and when no
session process is there. Here: check the input, start the session process
(a fresh one at pre-*, or one that takes over a saved session), then answer
the phase through it, as the shell client does, relaying its messages to our
stdout (CRIU's log) and exiting with its status.

Plugins are selected with $CRIU_EXT_PLUGINS (see plugin.select) and the log
level with $CRIU_EXT_LOG_LEVEL (1 errors ... 4 debug, default 3). Lines are
prefixed ``criu-ext: `` so they can be grepped out of CRIU's log.
Standard library only until the session process loads the plugins.
"""

from __future__ import annotations

import json
import os
import sys

from criu_ext import hook_proto as proto
from criu_ext import phases as ph
from criu_ext import rundir

PREFIX = proto.MESSAGE_PREFIX
STARTUP_TIMEOUT_MS = 60_000


class HookError(Exception):
    """Why this phase cannot be answered; one line for CRIU's log."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _stdio_open() -> None:
    """CRIU runs the script with stdin closed: hold fds 0-2 with /dev/null first, or the
    pidfd and pipes opened below would take them (and the session process, which puts
    /dev/null on 0-2, would lose them)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def main() -> int:
    _stdio_open()
    try:
        rc = _main()
    except HookError as exc:
        sys.stdout.write(f"{PREFIX}error: {exc}\n")
        rc = exc.status
    except (OSError, rundir.RunDirError) as exc:
        sys.stdout.write(f"{PREFIX}error: {exc}\n")
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _main() -> int:
    raw = os.environ.get("CRTOOLS_SCRIPT_ACTION")
    if not raw:
        sys.stderr.write(f"{PREFIX}this is a CRIU action script: give it to criu with "
                         "--action-script (it reads CRTOOLS_SCRIPT_ACTION)\n")
        return 2
    try:
        phase = proto.parse_phase(raw)
        if phase in proto.OTHER_CRIU_ACTIONS:
            return 0
        init_pid = proto.parse_pid(os.environ.get("CRTOOLS_INIT_PID"))
    except proto.ProtocolError as exc:
        raise HookError(str(exc), 2) from None
    criu_pid = os.getppid()
    base = rundir.ensure_base()
    sdir = rundir.existing_session(base, criu_pid)
    if phase in ph.FIRST:
        rundir.prune(base)
        if sdir:
            from criu_ext import hook_server

            hook_server.stop(sdir)  # only a harness runs two first phases with one parent
        sdir = rundir.fresh_session(base, criu_pid)
        _start(sdir, criu_pid, ph.FIRST[phase], None)
    elif sdir is not None and phase not in _plan(sdir):
        return 0  # no plugin acts in this phase
    elif sdir is None or _server(sdir) is None:
        resume = _saved(sdir, criu_pid) if sdir else None
        if sdir is None or resume is None:
            sdir = rundir.fresh_session(base, criu_pid)
        action = resume["action"] if resume else (ph.action_of(phase) or _action_from_criu(criu_pid))
        _start(sdir, criu_pid, action, resume)
        if resume is None:
            _say(f"warning: {phase}: no session for CRIU {criu_pid} in {os.path.dirname(sdir)} "
                 f"(was pre-{action} run through this hook?); loading the plugins now")
        else:
            _say(f"warning: {phase}: the session process of CRIU {criu_pid} is gone; a new one "
                 "takes over the saved session")
    return ask(sdir, proto.Request(os.getpid(), phase, init_pid), sys.stdout)


def _plan(sdir: str) -> list[str] | tuple[str, ...]:
    """The phases the session's plan lists (every phase when there is no plan yet)."""
    path = os.path.join(sdir, rundir.PLAN)
    try:
        return proto.parse_plan(rundir.read_file(path, 4096).decode("ascii"))
    except FileNotFoundError:
        return ph.ALL_PHASES
    except (UnicodeDecodeError, proto.ProtocolError) as exc:
        raise HookError(f"plan {path} is corrupt ({exc}); remove it") from None


def _say(text: str) -> None:
    sys.stdout.write(f"{PREFIX}{text}\n")
    sys.stdout.flush()


def _server(sdir: str) -> int | None:
    from criu_ext.hook_server import server_pid

    return server_pid(sdir)


def _saved(sdir: str, criu_pid: int) -> dict | None:
    """The session a session process saved before it died, if it is this CRIU's."""
    path = os.path.join(sdir, rundir.SESSION)
    try:
        data = json.loads(rundir.read_file(path))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HookError(f"session file {path} is corrupt ({exc}); remove it") from None
    if (not isinstance(data, dict) or data.get("criu_pid") != criu_pid
            or not isinstance(data.get("session"), dict)):
        raise HookError(f"session file {path} is corrupt (not a session of CRIU {criu_pid}); "
                        "remove it")
    if data.get("criu_start") != rundir.proc_start(criu_pid):
        return None  # an earlier CRIU that had the same PID
    from criu_ext.session import check_json  # here: the hook's start stays stdlib-only

    try:
        check_json(data["session"])
    except ValueError as exc:
        raise HookError(f"session file {path} is corrupt ({exc}); remove it") from None
    return data["session"]


def _images_dir() -> str | None:
    # CRTOOLS_IMAGE_DIR is /proc/<criu>/fd/<n>; CRIU closes that fd before post-resume,
    # so the session works with the directory it points to.
    d = os.path.realpath(os.environ.get("CRTOOLS_IMAGE_DIR", "."))
    return d if os.path.isdir(d) else None


def _start(sdir: str, criu_pid: int, action: str, resume: dict | None) -> None:
    """Fork the session process off (not a child of CRIU: a grandchild in its own session)
    and wait until its FIFOs are open."""
    from criu_ext import hook_server

    try:
        pidfd = os.pidfd_open(criu_pid)
    except OSError as exc:
        raise HookError(f"cannot watch CRIU (PID {criu_pid}): {exc.strerror}") from None
    if os.getppid() != criu_pid:
        raise HookError("CRIU is gone")
    rundir.make_fifos(sdir)
    images_dir = _images_dir()
    r, w = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                hook_server.run_detached(sdir, criu_pid, pidfd, w, action, images_dir, resume)
        finally:
            os._exit(0)
    os.close(w)
    os.close(pidfd)
    os.waitpid(pid, 0)
    answer = b""
    while chunk := os.read(r, 4096):
        answer += chunk
    os.close(r)
    if not answer.startswith(b"ok"):
        why = answer.decode("utf-8", "replace").strip() or "it ended at once"
        raise HookError(f"cannot start the session process: {why}")


def ask(sdir: str, req: proto.Request, out) -> int:
    """Send ``req`` to the session process and relay its answer to ``out``; its status."""
    resp = rundir.open_fifo(os.path.join(sdir, rundir.RESP), os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.set_blocking(resp, True)  # EOF now means: the session process is gone
        try:
            fd = rundir.open_fifo(os.path.join(sdir, rundir.REQ), os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise HookError(f"{req.phase}: the session process is gone ({exc.strerror})") from None
        try:
            os.write(fd, proto.encode_request(req))
        finally:
            os.close(fd)
        buf = proto.LineBuffer(limit=1 << 16)
        while True:
            data = os.read(resp, 65536)
            if not data:
                raise HookError(f"{req.phase}: the session process ended without answering")
            for line in buf.feed(data):
                got = proto.parse_response(line, req.client)
                if got is None:
                    continue
                kind, value = got
                if kind == "status":
                    return int(value)
                out.write(f"{value}\n")
                out.flush()
    finally:
        os.close(resp)


def _action_from_criu(criu_pid: int) -> str:
    """dump or restore, from CRIU's command line (when no session was kept)."""
    try:
        with open(f"/proc/{criu_pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        args = []
    return "restore" if b"restore" in args else "dump"


if __name__ == "__main__":
    sys.exit(main())
