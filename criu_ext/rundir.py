"""The run directory of the action-script hook: one session directory per CRIU process.

$CRIU_EXT_RUN_DIR (default /run/criu-ext) holds ``<CRIU's PID>/`` per dump or
restore in progress: the plan (``phases``), the saved session
(``session.json``), the session process's PID (``server``) and its two FIFOs
(``req``, ``resp``). What is read there decides which plugin code runs as
root, so: directories are made 0700 and, before use, must be real directories
(not links) owned by us and not writable by group or others; files are
written through a temporary made with O_EXCL|O_NOFOLLOW and renamed into
place, and read with O_NOFOLLOW, as regular files, with a bounded size.
Standard library only (the hook imports it in every phase it starts Python for).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

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
        st = os.lstat(path)
    except OSError as exc:
        raise RunDirError(f"run directory {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"run directory {path} is not a directory (a link?)")
    if st.st_uid != os.geteuid():
        raise RunDirError(f"run directory {path} belongs to uid {st.st_uid}, not to us "
                          f"({os.geteuid()}): remove it or set CRIU_EXT_RUN_DIR")
    if st.st_mode & 0o022:
        raise RunDirError(f"run directory {path} is writable by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):o}): chmod go-w it")


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
    tmp = path + ".tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:  # left by a process that died while writing
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_file(path: str, limit: int = READ_MAX) -> bytes:
    """A regular file's bytes (not through a link, at most ``limit``); RunDirError otherwise.
    FileNotFoundError passes through."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RunDirError(f"{path} is not a regular file")
        if st.st_size > limit:
            raise RunDirError(f"{path} is {st.st_size} bytes, more than the {limit} allowed")
        chunks, left = [], limit + 1
        while left > 0:
            b = os.read(fd, min(left, 65536))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise RunDirError(f"{path} grew beyond the {limit} bytes allowed")
    return data


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
