"""The run directory of the action-script hook: one session directory per CRIU process.

$CRIU_EXT_RUN_DIR (default /run/criu-ext) holds ``<CRIU's PID>/`` per dump or
restore in progress: the plan (``phases``), the saved session
(``session.json``), the session process's PID (``server``) and its two FIFOs
(``req``, ``resp``). What is read there decides which plugin code runs as
root, so: directories are made 0700 and, before use, must be real directories
(not links) owned by us and not writable by group or others; files are
written through a temporary made with O_EXCL|O_NOFOLLOW and renamed into
place, and read with O_NOFOLLOW, as regular files, with a bounded size.
Standard library and procns only (the hook imports it in every phase it starts Python for);
the reads and writes are procns.files', with RunDirError for what they refuse.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

from procns.files import UnsafeFile, check_own_dir, read_bytes, write_atomic

RUN_DIR_DEFAULT = "/run/criu-ext"
PLAN = "phases"
SESSION = "session.json"
SERVER = "server"
REQ = "req"
RESP = "resp"
READ_MAX = 1 << 20


class RunDirError(Exception):
    """The run directory cannot be trusted or used; the message says why."""


def base() -> str:
    return os.environ.get("CRIU_EXT_RUN_DIR") or RUN_DIR_DEFAULT


def check_dir(path: str) -> None:
    """A directory we may trust: not a link, ours, not group/other writable."""
    try:
        check_own_dir(path, forbid=0o022)
    except UnsafeFile as exc:
        hint = "; remove it or set CRIU_EXT_RUN_DIR" if exc.errno == errno.EPERM else ""
        raise RunDirError(f"run directory {exc.strerror}{hint}") from None
    except OSError as exc:
        raise RunDirError(f"run directory {path}: {exc.strerror}") from None


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o700)  # whatever the umask


def ensure_base(path: str | None = None) -> str:
    path = os.path.abspath(path or base())
    try:
        if not os.path.lexists(path):
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                os.makedirs(parent, 0o755, exist_ok=True)
            _mkdir(path)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {path}: {exc.strerror}") from None
    check_dir(path)
    return path


def session_dir(base_dir: str, criu_pid: int) -> str:
    return os.path.join(base_dir, str(criu_pid))


def fresh_session(base_dir: str, criu_pid: int) -> str:
    """An empty session directory for ``criu_pid`` (an earlier one of that PID is removed)."""
    path = session_dir(base_dir, criu_pid)
    if os.path.lexists(path):
        check_dir(path)
        shutil.rmtree(path)
    try:
        _mkdir(path)
    except OSError as exc:
        raise RunDirError(f"cannot create session directory {path}: {exc.strerror}") from None
    check_dir(path)
    return path


def existing_session(base_dir: str, criu_pid: int) -> str | None:
    path = session_dir(base_dir, criu_pid)
    if not os.path.lexists(path):
        return None
    check_dir(path)
    return path


def write_file(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: a fresh temporary (never through a link), renamed."""
    write_atomic(path, data)


def read_file(path: str, limit: int = READ_MAX) -> bytes:
    """A regular file's bytes (not through a link, at most ``limit``); RunDirError otherwise.
    FileNotFoundError passes through."""
    try:
        return read_bytes(path, limit)
    except UnsafeFile as exc:
        raise RunDirError(str(exc)) from None


def open_fifo(path: str, flags: int) -> int:
    """Open a FIFO of the session directory (not through a link, a FIFO indeed)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{path} is not a FIFO")
    return fd


def make_fifos(sdir: str) -> None:
    for name in (REQ, RESP):
        path = os.path.join(sdir, name)
        if os.path.lexists(path):
            os.unlink(path)
        os.mkfifo(path, 0o600)


def proc_start(pid: int, running: bool = False) -> int | None:
    """A process's start time (clock ticks since boot): with the PID, who it is.
    None when there is no such process (or, with ``running``, only its zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if running and fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def prune(base_dir: str) -> None:
    """Remove the session directories of CRIU processes that are gone."""
    try:
        names = os.listdir(base_dir)
    except FileNotFoundError:
        return
    for name in names:
        if name.isdigit() and not os.path.exists(f"/proc/{name}"):
            shutil.rmtree(os.path.join(base_dir, name), ignore_errors=True)
