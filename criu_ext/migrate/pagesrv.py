"""CRIU's page server (destination) and pre-dump rounds through RPC (source).

Each round has a directory on both ends (``1``, ``2``, ... ``N``), each with a
``parent`` link to the previous round (``../N-1``): CRIU's pre-dump and dump
look for the parent's inventory on the source (PID reuse check) and the page
server looks for the parent's pagemap on the destination (pages not dirtied
since are recorded as "in parent"). The restore reads the chain.

The page server speaks TLS with the migration certificates. It checks the
dumper's certificate against the CA but not its name (``--tls-no-cn-verify``):
CRIU 3.17 checks a client's name against the server's own listening address.
The dumper does check the page server's name (the address it dials).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import pycriu.rpc_pb2 as rpc

from criu_ext.migrate.tls import TlsFiles
from criu_ext.rpc import CriuError, Options, Swrk, build_opts, no_answer, refused
from procns.files import MiB, read_bytes

PR_SET_PDEATHSIG = 1
LOG_LIMIT = 256 * MiB  # a CRIU log larger than this is not searched for its last error


def round_dir(work: str, n: int) -> str:
    """Directory of round ``n`` under ``work``, made with its ``parent`` link."""
    path = os.path.join(work, str(n))
    os.mkdir(path, 0o700)
    if n > 1:
        os.symlink(f"../{n - 1}", os.path.join(path, "parent"))
    return path


def last_error(log: str) -> str:
    """CRIU's last ``Error`` line in ``log`` (the log goes with a failed session)."""
    try:
        text = read_bytes(log, LOG_LIMIT).decode("utf-8", errors="replace")
    except OSError:  # gone, a link, or larger than any log of ours
        return ""
    lines = [ln.strip() for ln in text.splitlines() if "Error" in ln]
    return lines[-1][:300] if lines else ""


def _die_with(parent: int):
    """A preexec_fn: a receiver killed with SIGKILL must not leave a page server
    listening, even one killed while it forked (before the child asked for the signal)."""
    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


def _free_port(addr: str) -> int:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def exit_status(proc: subprocess.Popen, timeout: float) -> int:
    """``proc``'s exit status, woken by its exit (a pidfd) rather than by
    ``Popen.wait``'s polling, whose sleeps grow to 50 ms: the final round's page server
    ends in the freeze. subprocess.TimeoutExpired after ``timeout`` seconds."""
    status = proc.poll()  # it has mostly ended by then: one system call
    if status is not None:
        return status
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # reaped already
        return proc.wait(timeout)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


class PageServer:
    """One ``criu page-server`` serving one dumper connection into ``images_dir``."""

    def __init__(self, images_dir: str, addr: str, tls: TlsFiles, criu: str = "criu",
                 timeout: float = 60.0) -> None:
        self.images_dir = images_dir
        self.port = _free_port(addr)
        self.log = os.path.join(images_dir, "page-server.log")
        # CRIU writes one byte to --status-fd once it listens (status_ready): the
        # source is told the port then, not at the next look at /proc
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        argv = [criu, "page-server", "-D", images_dir, "--address", addr, "--port",
                str(self.port), "-o", self.log, "-v2", *tls.criu_args(), "--tls-no-cn-verify",
                "--status-fd", str(wfd)]
        try:
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, close_fds=True,
                                             pass_fds=(wfd,), preexec_fn=_die_with(os.getpid()))
            finally:
                os.close(wfd)
            said = os.read(rfd, 1) if select.select([rfd], [], [], timeout)[0] else None
        finally:
            os.close(rfd)
        if said == b"\0":
            return
        if said is None:
            self.kill()
            raise CriuError(f"criu page-server not listening after {timeout:.0f} s", 0, self.log)
        try:  # it closed the pipe without a word: it is exiting
            status: int | None = exit_status(self.proc, 5.0)
        except subprocess.TimeoutExpired:
            self.kill()
            status = None
        raise CriuError(f"criu page-server exited ({status}) before listening: "
                        f"{last_error(self.log)}", 0, self.log)

    def wait(self, timeout: float = 60.0) -> None:
        """The dumper has disconnected: the page server must end with status 0."""
        try:
            status = exit_status(self.proc, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CriuError(f"criu page-server did not finish within {timeout:.0f} s; "
                            f"see {self.log}", 0, self.log) from None
        if status:
            raise CriuError(f"criu page-server failed (status {status}): "
                            f"{last_error(self.log)}", 0, self.log)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def page_server_opts(o: Options, addr: str, port: int, tls: TlsFiles, parent: int | None) -> None:
    """Point a dump or pre-dump at the destination's page server, memory tracked."""
    o.extra.update(tls.criu_opts())
    o.extra["track_mem"] = True
    if parent:
        o.extra["parent_img"] = f"../{parent}"
    o.page_server = (addr, port)


def _wait(swrk: Swrk, meanwhile: tuple[int, Callable[[], object]] | None,
          every: float = 0.05) -> BaseException | None:
    """Until CRIU answers: ``meanwhile`` = (fd, call), call whenever fd is readable, at
    most once per ``every`` seconds. Returns the call's failure, if any (the caller
    raises it once CRIU answered: a round is never left half done)."""
    if meanwhile is None:
        return None
    fd, call = meanwhile
    criu = swrk.sk.fileno()
    failure: BaseException | None = None
    next_at = 0.0
    while True:
        wait = time.monotonic() - next_at
        watch = [criu, fd] if failure is None and wait >= 0 else [criu]
        timeout = None if failure is not None or wait >= 0 else -wait
        if criu in select.select(watch, [], [], timeout)[0]:
            break
        if failure is None and time.monotonic() >= next_at:
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - raised below
                failure = exc
            next_at = time.monotonic() + every
    return failure


def pre_dump(o: Options, criu: str = "criu",
             meanwhile: tuple[int, Callable[[], object]] | None = None,
             swrk: Swrk | None = None) -> float:
    """One ``criu pre-dump`` round (task running; memory to the page server); seconds.
    ``meanwhile``: (fd, call), run whenever fd is readable while CRIU works (the staged
    user plane's changes go over as they happen). ``swrk``: one started ahead (quiet:
    it complains when we hang up after one request), used and closed here."""
    images_fd = None
    try:
        images_fd = os.open(o.images_dir, os.O_DIRECTORY | os.O_RDONLY)
        opts = build_opts(o, images_fd, None, o.log_file or "pre-dump.log")
        opts.notify_scripts = False  # pre-dump runs no scripts; nothing to answer
        req = rpc.criu_req(type=rpc.PRE_DUMP)
        req.opts.CopyFrom(opts)
        if swrk is None:
            swrk = Swrk(criu, quiet=True)
        t0 = time.perf_counter()
        failure = None
        try:
            swrk.send(req)
            failure = _wait(swrk, meanwhile)
            resp = swrk.recv()
        except OSError as exc:
            resp = None
            err = str(exc)
        else:
            err = ""
        seconds = time.perf_counter() - t0
        status = swrk.close()
    finally:
        if swrk is not None and not swrk.asked:  # started ahead; we failed before using it
            swrk.close()
        if images_fd is not None:
            os.close(images_fd)
    if failure is not None:
        raise failure
    log = os.path.join(o.images_dir, o.log_file or "pre-dump.log")
    if resp is None:
        raise CriuError(f"pre-dump failed: {err or no_answer(status)}; see {log}", 0, log)
    if not resp.success:  # swrk answers for its pre-dump child, whose error it never saw
        raise CriuError(f"pre-dump failed: {refused(resp)}; see {log}", resp.cr_errno, log)
    return seconds
