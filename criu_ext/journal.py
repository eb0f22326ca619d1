"""What a dump in progress has changed on the source, kept where a SIGKILL cannot take it.

``criu-ext dump`` and ``criu-ext migrate`` (RPC mode: the plugins live in our
process) write one journal per dump: ``$CRIU_EXT_RUN_DIR/journal/<our PID>.json``
holds the session (plugins, their state, the phases seen), who we are (PID and
start time), the CRIU we started and the dumped tree's root. It is rewritten when a
plugin becomes a rollback candidate, when a plugin asks (Context.persist: between
setting a rollback mark and changing the source) and at the edges of the dump
phases outside the freeze, and removed once the dump ended one way or the other. A
fact that must be kept inside the freeze is a mark (Context.mark): an empty file
``<our PID>.<word>`` beside the journal, made in one system call where rewriting
the journal costs milliseconds. A journal whose writer is gone is what ``criu-ext
recover`` works from (criu_ext.recover), its marks with it.

The directory is the run directory's rules: 0700, ours, files written through
O_EXCL|O_NOFOLLOW temporaries and read as bounded regular files (rundir).
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass

from criu_ext import rundir
from criu_ext.hook_proto import PID_MAX
from criu_ext.session import Session, check_json

SUBDIR = "journal"
FORMAT = 1
READ_MAX = 4 << 20


class JournalError(Exception):
    """A journal cannot be read back; one line says why."""


def directory(base: str | None = None) -> str:
    """The journal directory under the run directory, made and checked like it
    (RunDirError when it cannot be trusted or made)."""
    return rundir.ensure_base(os.path.join(rundir.ensure_base(base), SUBDIR))


MARKS = ("committing",)  # the words a mark can be: recover reads no other file


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _mark_path(path: str, word: str) -> str:
    return f"{path[:-len('.json')]}.{word}"


def _remove_marks(path: str) -> None:
    for word in MARKS:
        _remove(_mark_path(path, word))


def _remove_all(path: str) -> None:
    """A journal and its marks; the marks first, so none outlives its journal."""
    _remove_marks(path)
    _remove(path)


def _marks(path: str) -> frozenset[str]:
    """The marks beside a journal: regular files only (a link or a FIFO there is no mark)."""
    found = set()
    for word in MARKS:
        try:
            if stat.S_ISREG(os.lstat(_mark_path(path, word)).st_mode):
                found.add(word)
        except FileNotFoundError:
            pass
    return frozenset(found)


@dataclass(frozen=True)
class Proc:
    """A process known by its PID and start time (a reused PID is another process)."""

    pid: int
    start: int | None

    @classmethod
    def of(cls, pid: int) -> Proc:
        return cls(pid, rundir.proc_start(pid))

    def running(self) -> bool:
        return self.start is not None and rundir.proc_start(self.pid, running=True) == self.start

    def to_json(self) -> dict:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, data: object, what: str) -> Proc:
        if not isinstance(data, dict):
            raise ValueError(f"{what}: not an object")
        pid, start = data.get("pid"), data.get("start")
        if type(pid) is not int or not 0 < pid < PID_MAX:
            raise ValueError(f"{what}: bad pid")
        if start is not None and (type(start) is not int or start < 0):
            raise ValueError(f"{what}: bad start time")
        return cls(pid, start)


class Journal:
    """The journal of one dump, written by the process running its plugins."""

    def __init__(self, session: Session, root_pid: int, base: str | None = None) -> None:
        self.session = session
        self.path = os.path.join(directory(base), f"{os.getpid()}.json")
        self.owner = Proc.of(os.getpid())
        self.root = Proc.of(root_pid)
        self.criu: Proc | None = None
        self.began = time.time()
        self.error: str | None = None  # the first write that failed, said once
        self.written = b""  # what the file holds
        _remove_marks(self.path)  # an earlier process of our PID's, killed between removals

    def started_criu(self, pid: int) -> None:
        self.criu = Proc.of(pid)
        self.write()

    def write(self) -> None:
        data = {"format": FORMAT, "owner": self.owner.to_json(), "root": self.root.to_json(),
                "criu": self.criu.to_json() if self.criu else None, "began": self.began,
                "session": self.session.to_json()}
        text = json.dumps(data).encode("utf-8")
        if text == self.written:  # as on disk already: a file written in the freeze saved
            return
        try:
            rundir.write_file(self.path, text)
            self.written = text
        except (OSError, rundir.RunDirError) as exc:
            if self.error is None:  # the dump goes on; only a crash would need the journal
                self.error = str(exc)
                self.session.log.warning(f"cannot keep the journal {self.path}: {exc}")

    def mark(self, word: str) -> None:
        """Keep ``word`` (one of MARKS): an empty file made beside the journal, never
        through a link (O_EXCL: an existing one, ours from before, is kept as it is)."""
        if word not in MARKS:
            raise ValueError(f"unknown journal mark {word!r}")
        try:
            fd = os.open(_mark_path(self.path, word), os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return
        os.close(fd)

    def close(self) -> None:
        """The dump ended (done, or rolled back): nothing left to recover."""
        _remove_all(self.path)


@dataclass
class Entry:
    """A journal read back: its file, its writer, CRIU, the dumped root, the session."""

    path: str
    owner: Proc
    root: Proc
    criu: Proc | None
    began: float
    session: dict
    marks: frozenset[str] = frozenset()

    @property
    def phases(self) -> list[str]:
        return [p for p in self.session.get("phases_seen", []) if isinstance(p, str)]

    def remove(self) -> None:
        _remove_all(self.path)


def read(path: str) -> Entry:
    """One journal, its shape checked (JournalError, one line, when it is not usable)."""
    try:
        data = json.loads(rundir.read_file(path, READ_MAX))
    except FileNotFoundError:
        raise JournalError(f"{path}: gone") from None
    except (rundir.RunDirError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JournalError(f"{path}: unreadable ({str(exc)[:160]})") from None
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a journal of format {FORMAT}")
        owner = Proc.from_json(data.get("owner"), "owner")
        root = Proc.from_json(data.get("root"), "root")
        criu = Proc.from_json(data["criu"], "criu") if data.get("criu") is not None else None
        began = data.get("began")
        if not isinstance(began, (int, float)) or isinstance(began, bool):
            raise ValueError("bad start time")
        check_json(data.get("session"))
        if data["session"]["action"] != "dump":
            raise ValueError("not a dump's")
    except (ValueError, KeyError) as exc:
        raise JournalError(f"{path}: corrupt ({exc})") from None
    return Entry(path, owner, root, criu, float(began), data["session"], _marks(path))


def entries(base: str | None = None) -> list[Entry | JournalError]:
    """Every journal of the run directory (oldest first); unusable ones as their error."""
    d = directory(base)
    names = sorted((n for n in os.listdir(d) if n.endswith(".json") and n[:-5].isdigit()),
                   key=lambda n: int(n[:-5]))
    out: list[Entry | JournalError] = []
    for name in names:
        try:
            out.append(read(os.path.join(d, name)))
        except JournalError as exc:
            out.append(exc)
    return sorted(out, key=lambda e: e.began if isinstance(e, Entry) else 0.0)


def pending_for(root_pid: int, base: str | None = None) -> Entry | None:
    """An interrupted dump of the tree rooted at ``root_pid`` (its writer gone), if any:
    a new dump must not start over what that one left on the source."""
    try:
        found = entries(base)
    except rundir.RunDirError:
        return None
    root = Proc.of(root_pid)
    if not root.running():
        return None
    for e in found:
        if isinstance(e, Entry) and e.root == root and not e.owner.running():
            return e
    return None
