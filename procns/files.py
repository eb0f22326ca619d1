"""Reading and writing files in directories that others may have filled or prepared.

Image directories travel between hosts and arrive as archives, and the programs
reading them run as root, so a file there is opened as untrusted:

* :func:`read_bytes` / :func:`read_text` / :func:`read_json` open with
  ``O_NOFOLLOW | O_NONBLOCK`` (a symbolic link is refused, a FIFO does not block
  the open), then refuse anything but a regular file (FIFO, device, socket,
  directory), and refuse a file larger than the caller's cap before reading it.
* :func:`write_atomic` / :func:`atomic_file` write a new temporary file opened
  with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a link or file planted at that name
  makes the write fail instead of redirecting it) and rename it over the target
  (a link at the target is replaced, never followed).
* :func:`private_dir` makes a directory mode 0700 and checks that it is ours.

Here, below every other package, so that gtp_util, sctp_repair and criu_ext share
one implementation; the standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
from typing import IO, Any, Iterator

MiB = 1 << 20
JSON_DEPTH = 64  # deeper JSON nesting is refused (none of our formats needs 10 levels)


class UnsafeFile(OSError):
    """A file that must not be read or written as asked; the message is one line."""

    def __str__(self) -> str:
        return str(self.strerror)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def read_bytes(path: str, limit: int) -> bytes:
    """The content of regular file ``path``, at most ``limit`` bytes.

    Raises FileNotFoundError when it does not exist, :class:`UnsafeFile` when it is
    a link, not a regular file, or larger than ``limit``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, f"{path}: is a symbolic link (refused)") from None
        if exc.errno == errno.ENXIO:  # a UNIX socket
            raise UnsafeFile(errno.ENXIO, f"{path}: is a socket, not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(errno.EINVAL, f"{path}: is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise UnsafeFile(errno.EFBIG, f"{path}: {st.st_size} bytes, more than the "
                                          f"{limit} this reader accepts")
        chunks = []
        left = limit + 1  # the file may grow after fstat: never read more than the cap
        while left > 0:
            b = os.read(fd, min(left, MiB))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        if len(data) > limit:
            raise UnsafeFile(errno.EFBIG, f"{path}: grew beyond {limit} bytes while read")
        return data
    finally:
        os.close(fd)


def read_text(path: str, limit: int) -> str:
    """As :func:`read_bytes`, decoded as UTF-8 (:class:`UnsafeFile` if it is not)."""
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeFile(errno.EILSEQ, f"{path}: not UTF-8 text (byte {exc.start})") from None


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"?')  # one left open runs to the end
_BRACKETS = re.compile(r"[\[\]{}]")


def _depth_ok(text: str, limit: int) -> bool:
    """False when brackets nest deeper than ``limit`` (strings skipped); linear, no
    recursion. The strings and the brackets are found by regular expressions (C
    speed): only the brackets are walked in Python, not every character (a 0.5 MB
    message of PDP changes took 19 ms natively, 0.2-0.4 s in the emulated VM)."""
    depth = 0
    for b in _BRACKETS.findall(_STRINGS.sub("", text)):
        if b in "[{":
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def loads_json(text: str, what: str, depth: int = JSON_DEPTH) -> Any:
    """``json.loads`` that refuses deep nesting (RecursionError otherwise) and says
    ``what`` failed in one line (ValueError)."""
    if not _depth_ok(text, depth):
        raise ValueError(f"{what}: JSON nested deeper than {depth} levels")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{what}: JSON nested too deep") from None


def read_json(path: str, limit: int) -> Any:
    """A JSON file read through :func:`read_text`; ValueError (one line) if it does not parse."""
    return loads_json(read_text(path, limit), path)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", perm: int = 0o600) -> Iterator[IO]:
    """A new file that replaces ``path`` when the block ends without an exception.

    The temporary file next to ``path`` is created with ``O_EXCL | O_NOFOLLOW``
    under an unpredictable name: nothing planted there can redirect the write.
    """
    tmp = f"{path}.tmp{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, perm)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str, data: bytes | str, perm: int = 0o600) -> None:
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w", perm) as f:
        f.write(data)


def check_own_dir(path: str, forbid: int = 0o077) -> None:
    """Raise :class:`UnsafeFile` unless ``path`` is a directory (not a link) owned by
    us whose mode has none of the ``forbid`` bits (by default: closed to others)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFile(errno.ENOTDIR, f"{path}: is {_kind(st.st_mode)}, not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeFile(errno.EPERM, f"{path}: owned by uid {st.st_uid}, not by us "
                                      f"({os.geteuid()})")
    if st.st_mode & forbid:
        raise UnsafeFile(errno.EPERM, f"{path}: mode {stat.S_IMODE(st.st_mode):04o}, "
                                      "writable by group or others")


def private_dir(path: str) -> str:
    """Make ``path`` (parents too) a directory of mode 0700 owned by us; raise
    :class:`UnsafeFile` if it exists as something else: a link, another owner's,
    or open to others (someone could plant files in it)."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=0o700)
    check_own_dir(path)
    return path


__all__ = ['JSON_DEPTH', 'MiB', 'UnsafeFile', 'atomic_file', 'check_own_dir', 'loads_json',
           'private_dir',
           'read_bytes', 'read_json', 'read_text', 'write_atomic']
