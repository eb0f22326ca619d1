"""Run system calls inside a stopped task, and move file descriptors in and out of it.

The task should be stopped (SIGSTOP, see tasks.py). ``Remote`` seizes every
thread (held in a ptrace stop, which a SIGCONT does not end), borrows one, keeps its
registers and the code word at its instruction pointer, writes ``syscall;
int3`` there, and runs one system call at a time with the arguments in
registers; a scratch page mapped in the task carries what needs memory. On
exit the code, the registers and the page are put back and the thread is
detached: it goes back to its group stop, and a system call it was blocked in
is restarted by the kernel when the task is continued, on whatever file the
descriptor number then holds.

``put_all`` moves several descriptors in one go: the task's side of it (receive,
install, close) runs as a few dozen bytes of code written to the scratch page,
one stop of the task instead of six per descriptor, which counts when the task is
frozen for a migration.

Why not compel (CRIU's parasite library)? It needs C built against CRIU's
headers and a parasite blob; a straight run of system calls does not.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import time

from criu_ext import ptrace, tasks
from procns.fds import steal_fd

NR_CLOSE = 3
NR_MMAP = 9
NR_MUNMAP = 11
NR_RECVMSG = 47
NR_SOCKETPAIR = 53
NR_EPOLL_CTL = 233
NR_DUP3 = 292
NR_PIPE2 = 293

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
EPOLL_CTL_ADD, EPOLL_CTL_DEL = 1, 2
O_CLOEXEC = 0o2000000
MSG_CMSG_CLOEXEC = 0x40000000
# struct msghdr (x86_64): name, namelen, iov, iovlen, control, controllen, flags
MSGHDR = struct.Struct("=QI4xQQQQi4x")
IOVEC = struct.Struct("=QQ")
CMSG_FD = struct.Struct("=Qiii")  # cmsghdr (len, level, type) and one int of data
PAGE = 4096
SYSCALL_INT3 = 0xCC050F  # bytes 0f 05 cc: syscall; int3
EPOLL_EVENT = struct.Struct("=IQ")  # struct epoll_event is packed on x86_64
FAULTS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)
BATCH = 16  # descriptors per put_all run: its code and buffers fit the scratch page

# put_all's layout of the scratch page: the socket pair's ends, the msghdr, the iovec
# and its byte, the control buffer, the results (8 bytes per system call), the code
_MSG, _IOV, _BYTE, _CONTROL, _RESULTS, _CODE = 16, 80, 96, 128, 512, 1024
_ARG_REGS = (b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba")  # movabs rdi/rsi/rdx/r10


def _cmsg_space(n: int) -> int:
    return 16 + (4 * n + 7) // 8 * 8


def _install_code(scratch: int, ends: tuple[int, int],
                  targets: list[tuple[int, bool]]) -> tuple[bytes, int]:
    """x86_64 code for put_all, run from the scratch page: recvmsg on the socket pair's
    second end, then for each received descriptor (read from the control buffer, -1
    if it did not come: dup3 fails harmlessly) dup3 onto its target and close, then
    both ends closed; each system call's rax stored at _RESULTS, then int3. Returns the
    code and how many results it stores."""
    code = bytearray()
    n = 0

    def call(nr: int, *args: int | tuple[str, int]) -> None:
        nonlocal n
        for reg, arg in zip(_ARG_REGS, args):
            if isinstance(arg, tuple):  # ("fd at", address): a 32-bit int, sign-extended
                assert reg[0] == 0x48, "loads only into rdi, rsi, rdx"
                code.extend(reg + struct.pack("<Q", arg[1]))
                code.extend(b"\x48\x63" + bytes([{0xBF: 0x3F, 0xBE: 0x36, 0xBA: 0x12}[reg[1]]]))
            else:
                code.extend(reg + struct.pack("<Q", arg & 0xFFFFFFFFFFFFFFFF))
        code.extend(b"\x48\xb8" + struct.pack("<Q", nr))  # movabs rax, nr
        code.extend(b"\x0f\x05")  # syscall
        code.extend(b"\x48\xa3" + struct.pack("<Q", scratch + _RESULTS + 8 * n))  # movabs [], rax
        n += 1

    call(NR_RECVMSG, ends[1], scratch + _MSG, MSG_CMSG_CLOEXEC)
    for i, (target, cloexec) in enumerate(targets):
        got = ("fd at", scratch + _CONTROL + 16 + 4 * i)
        call(NR_DUP3, got, target, O_CLOEXEC if cloexec else 0)
        call(NR_CLOSE, got)
    call(NR_CLOSE, ends[0])
    call(NR_CLOSE, ends[1])
    code.append(0xCC)  # int3
    return bytes(code), n


class InjectError(Exception):
    """A system call could not be run in the task, or returned an error."""


class Remote:
    """One stopped process, borrowed through one of its live threads.

    Every thread of the process is seized and held in a ptrace stop for the whole
    borrow: none can run into the patched instruction, not even after a SIGCONT.
    Any live thread can be the borrowed one (the main thread may have exited).
    Signals that arrive meanwhile are held back and sent again after the detach;
    only a SIGTRAP from our own int3 (si_code SI_KERNEL, at our address) ends a
    system call. A task under seccomp is refused: an injected system call could be
    denied, or kill it.
    """

    def __init__(self, pid: int) -> None:
        why = ptrace.supported()
        if why:
            raise InjectError(why)
        self.pid = pid
        self.tid = pid
        self.threads: list[int] = []  # seized
        self.stopped: set[int] = set()  # of them, those in a group stop when seized
        self.saved: ptrace.Regs | None = None
        self.code_addr = 0
        self.code_word = 0
        self.scratch = 0
        self.runnable = False  # the scratch page can hold code (put_all's)
        self.mem = -1
        self.dead = False
        self.pending: list[ptrace.SigInfo] = []  # held back, sent again after the detach

    # -- setup and teardown -------------------------------------------------------

    def __enter__(self) -> Remote:
        try:
            self._seize_all()
            if not self.threads:
                raise OSError(errno.ESRCH, "no live thread")
            self.tid = self.threads[0]
            self.saved = ptrace.get_regs(self.tid)
            self.code_addr = self.saved.rip
            self.code_word = ptrace.peek(self.tid, self.code_addr)
            ptrace.poke(self.tid, self.code_addr,
                        (self.code_word & ~0xFFFFFF) | SYSCALL_INT3)
            self.mem = os.open(f"/proc/{self.pid}/task/{self.tid}/mem", os.O_RDWR | os.O_CLOEXEC)
            self._map_scratch()
        except OSError as exc:
            self._teardown()
            raise InjectError(f"cannot borrow task {self.pid}: {exc.strerror or exc}") from exc
        except InjectError:
            self._teardown()
            raise
        return self

    def _map_scratch(self) -> None:
        """The scratch page: executable too if the task's policy allows (a system with
        W^X rules may refuse), so that put_all runs as one piece of code."""
        anon = MAP_PRIVATE | MAP_ANONYMOUS
        try:
            self.scratch = self.syscall(NR_MMAP, 0, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
                                        anon, -1, 0)
            self.runnable = True
        except InjectError as exc:
            if exc.args[1:] not in ((errno.EACCES,), (errno.EPERM,)):
                raise
            self.scratch = self.syscall(NR_MMAP, 0, PAGE, PROT_READ | PROT_WRITE, anon, -1, 0)

    def _seize_all(self) -> None:
        """Seize and stop every live thread, until no new one shows up; none if one of
        them runs under seccomp."""
        while True:
            new = []
            for tid in tasks.threads(self.pid):
                if tid in self.threads:
                    continue
                state, mode = tasks.thread_status(self.pid, tid)
                if mode:
                    raise InjectError(
                        f"task {self.pid} runs under seccomp (Seccomp: {mode} for thread "
                        f"{tid} in /proc/{self.pid}/task/{tid}/status): a system call run in "
                        "it could be refused or kill it; not injecting")
                if state not in ("Z", "X", ""):
                    new.append((tid, state))
            if not new:
                if not self.threads and not os.path.exists(f"/proc/{self.pid}"):
                    raise OSError(errno.ESRCH, "No such process")
                return
            for tid, state in new:
                try:
                    ptrace.seize(tid)
                except OSError as exc:
                    if exc.errno == errno.ESRCH or tasks.thread_state(self.pid, tid) in ("Z", "X", ""):
                        continue  # exited meanwhile
                    raise
                self.threads.append(tid)
                if state == "T":
                    self.stopped.add(tid)
                ptrace.interrupt(tid)
                self._wait(tid)
            self.threads.sort()

    def __exit__(self, *exc) -> None:
        self._teardown()

    def _teardown(self) -> None:
        try:
            if self.scratch and not self.dead:
                self.syscall(NR_MUNMAP, self.scratch, PAGE)
            self.scratch = 0
        except (InjectError, OSError):
            pass
        finally:
            if self.mem >= 0:
                os.close(self.mem)
                self.mem = -1
            if self.threads and not self.dead:
                try:
                    if self.saved is not None:
                        ptrace.poke(self.tid, self.code_addr, self.code_word)
                        ptrace.set_regs(self.tid, self.saved)
                except OSError:
                    pass  # gone: nothing to put back
            for tid in self.threads:
                try:
                    ptrace.detach(tid)
                except OSError:
                    pass  # that thread is gone
            detached, self.threads = self.threads, []
            if not self.dead:
                self._redeliver()
                self._wait_restopped([t for t in detached if t in self.stopped])

    def _redeliver(self) -> None:
        """Send the signals held back during the borrow again, as they were sent."""
        for info in self.pending:
            try:
                if info.si_code == ptrace.SI_TKILL:
                    ptrace.tgkill(self.pid, self.tid, info.si_signo)
                else:
                    os.kill(self.pid, info.si_signo)
            except OSError:
                pass
        self.pending = []

    def _wait_restopped(self, tids: list[int], timeout: float = 5.0) -> None:
        # Detached from a group stop, a thread stops again on its way out of the
        # kernel: wait for them, so callers see the whole task stopped. Only those
        # that were stopped: one that was not (a task CRIU restored, waiting for its
        # resume) would be waited for in vain, the whole timeout.
        deadline = time.monotonic() + timeout
        while any(tasks.thread_state(self.pid, t) not in ("T", "t", "Z", "X", "") for t in tids) \
                and time.monotonic() < deadline:
            time.sleep(0.001)

    def _wait(self, tid: int) -> tuple[int, int]:
        try:
            return ptrace.wait_stop(tid)
        except OSError as exc:
            self.dead = True
            raise InjectError(f"task {self.pid} died during the injection "
                              f"({exc.strerror or exc})") from None

    # -- system calls -------------------------------------------------------------

    def syscall(self, nr: int, *args: int) -> int:
        """Run system call ``nr`` in the task; its return value, or InjectError."""
        if len(args) > 6:
            raise ValueError("at most six arguments")
        if self.saved is None:
            raise InjectError(f"pid {self.pid}: not attached (use Remote as a context manager)")
        regs = self.saved.copy()
        regs.rax = nr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, name, value & 0xFFFFFFFFFFFFFFFF)
        ret = self._run(regs, self.code_addr, 3, f"system call {nr}")
        if ret >= 0xFFFFFFFFFFFFF001:  # -4095..-1
            err = 0x10000000000000000 - ret
            raise InjectError(f"system call {nr} in task {self.pid}: {os.strerror(err)}",
                              err)
        return ret

    def _run(self, regs: ptrace.Regs, start: int, size: int, what: str) -> int:
        """Run the task's borrowed thread from ``start`` with ``regs`` until the int3 that
        ends the ``size`` bytes of code there; its rax then."""
        if self.dead:
            raise InjectError(f"task {self.pid} died during the injection")
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF  # not in a system call: no restart logic
        regs.rip = start
        try:
            ptrace.set_regs(self.tid, regs)
            ptrace.cont(self.tid)
            while True:
                sig, event = self._wait(self.tid)
                if event:  # a group-stop or interrupt report: not a signal to deliver
                    ptrace.cont(self.tid)
                    continue
                info = ptrace.siginfo(self.tid)
                rip = ptrace.get_regs(self.tid).rip
                if sig == signal.SIGTRAP and info.si_code == ptrace.SI_KERNEL \
                        and rip == start + size:
                    break  # our int3, the code's last byte
                if sig in FAULTS and start <= rip <= start + size:
                    raise InjectError(f"{what} in task {self.pid}: the injected "
                                      f"code faulted ({signal.Signals(sig).name})")
                self.pending.append(info)  # someone else's: held back, sent again later
                ptrace.cont(self.tid)
            return ptrace.get_regs(self.tid).rax
        except OSError as exc:
            if exc.errno == errno.ESRCH or not os.path.exists(f"/proc/{self.pid}/task/{self.tid}"):
                self.dead = True
                raise InjectError(f"task {self.pid} died during the injection") from None
            raise

    def write(self, data: bytes, offset: int = 0) -> int:
        """Copy ``data`` to the scratch page; its address in the task."""
        if offset + len(data) > PAGE:
            raise ValueError("scratch page overflow")
        os.pwrite(self.mem, data, self.scratch + offset)
        return self.scratch + offset

    def read(self, size: int, offset: int = 0) -> bytes:
        return os.pread(self.mem, size, self.scratch + offset)

    # -- descriptor moves -----------------------------------------------------------

    def close(self, fd: int) -> None:
        self.syscall(NR_CLOSE, fd)

    def pipe(self) -> tuple[int, int]:
        """A new pipe in the task: (read end, write end), close-on-exec."""
        self.syscall(NR_PIPE2, self.write(b"\0" * 8), O_CLOEXEC)
        rfd, wfd = struct.unpack("=ii", self.read(8))
        return rfd, wfd

    def install(self, fd: int, target: int, cloexec: bool) -> None:
        """Make descriptor ``target`` of the task refer to what its ``fd`` does; close ``fd``."""
        try:
            self.syscall(NR_DUP3, fd, target, O_CLOEXEC if cloexec else 0)
        finally:
            self.close(fd)

    def plug(self, target: int, cloexec: bool) -> None:
        """Put at ``target`` the read end of a new pipe whose write end is closed: a
        descriptor that stays valid (reads give EOF) in place of one taken away."""
        rfd, wfd = self.pipe()
        self.close(wfd)
        self.install(rfd, target, cloexec)

    def put(self, fd: int, target: int, cloexec: bool) -> None:
        """Make the task's descriptor ``target`` a copy of our ``fd``."""
        self.install(self.receive(fd), target, cloexec)

    def put_all(self, moves: list[tuple[int, int, bool]]) -> None:
        """Each ``(fd, target, cloexec)``: the task's descriptor ``target`` made a copy of
        our ``fd``, as :meth:`put` does, but all sent over one socket pair and, where
        the scratch page is executable, installed by one run of code
        (:func:`_install_code`): four stops of the task in all instead of six per
        descriptor. A failure names the first descriptor not installed; those before it
        are."""
        for i in range(0, len(moves), BATCH):
            part = moves[i:i + BATCH]
            if not self.runnable:
                for fd, target, cloexec in part:
                    self.put(fd, target, cloexec)
                continue
            ends = self._socketpair_with([fd for fd, _, _ in part])
            code, results = _install_code(self.scratch, ends, [(t, c) for _, t, c in part])
            self._msghdr(len(part))
            self.write(code, _CODE)
            assert self.saved is not None
            self._run(self.saved.copy(), self.scratch + _CODE, len(code), "put_all")
            rets = struct.unpack(f"={results}q", self.read(8 * results, _RESULTS))
            length, level, kind = struct.unpack("=Qii", self.read(16, _CONTROL))
            if rets[0] < 0 or (length, level, kind) != (16 + 4 * len(part), socket.SOL_SOCKET,
                                                        socket.SCM_RIGHTS):
                why = os.strerror(-rets[0]) if rets[0] < 0 else "no SCM_RIGHTS"
                raise InjectError(f"task {self.pid}: the descriptors did not arrive over its "
                                  f"socket pair ({why})")
            for n, (_, target, _) in enumerate(part):
                if rets[1 + 2 * n] != target:
                    err = -rets[1 + 2 * n]
                    raise InjectError(f"task {self.pid}: descriptor {target} not installed: "
                                      f"{os.strerror(err) if err > 0 else 'dup3 gave another'}")

    def _socketpair_with(self, fds: list[int]) -> tuple[int, int]:
        """A socket pair made in the task, ``fds`` sent into it (SCM_RIGHTS) from our
        copy of its first end (then closed: the task's end stays open)."""
        self.syscall(NR_SOCKETPAIR, socket.AF_UNIX, socket.SOCK_DGRAM | O_CLOEXEC, 0,
                     self.write(bytes(8)))
        a, b = struct.unpack("=ii", self.read(8))
        try:
            with socket.socket(fileno=steal_fd(self.pid, a)) as ours:
                socket.send_fds(ours, [b"\0"], fds)
        except BaseException:
            for end in (a, b):
                self.close(end)
            raise
        return a, b

    def _msghdr(self, n: int) -> int:
        """recvmsg's arguments for ``n`` descriptors in the scratch page (the descriptors'
        slots -1 until some arrive); the msghdr's address in the task."""
        self.write(IOVEC.pack(self.scratch + _BYTE, 1), _IOV)
        self.write(bytes(16) + b"\xff" * (4 * n), _CONTROL)
        return self.write(MSGHDR.pack(0, 0, self.scratch + _IOV, 1, self.scratch + _CONTROL,
                                      _cmsg_space(n), 0), _MSG)

    def receive(self, fd: int) -> int:
        """A copy of our descriptor ``fd`` in the task (close-on-exec), sent over a
        socket pair made in the task (SCM_RIGHTS). Unlike pidfd_open + pidfd_getfd run
        in the task, this needs neither us visible in the task's PID namespace (a
        container's has its own) nor the task's ptrace rights over us."""
        ends = self._socketpair_with([fd])
        try:
            self.syscall(NR_RECVMSG, ends[1], self._msghdr(1), MSG_CMSG_CLOEXEC)
            length, level, kind, got = CMSG_FD.unpack(self.read(CMSG_FD.size, _CONTROL))
            if (length, level, kind) != (CMSG_FD.size, socket.SOL_SOCKET, socket.SCM_RIGHTS):
                raise InjectError(f"task {self.pid}: no descriptor arrived over its socket pair")
            return got
        finally:
            for end in ends:
                self.close(end)

    def epoll_del(self, epfd: int, fd: int) -> bool:
        """Remove ``fd`` from epoll ``epfd``; False if it was not registered."""
        try:
            self.syscall(NR_EPOLL_CTL, epfd, EPOLL_CTL_DEL, fd, self.write(bytes(12)))
        except InjectError as exc:
            if exc.args[1:] == (errno.ENOENT,):
                return False
            raise
        return True

    def epoll_add(self, epfd: int, fd: int, events: int, data: int) -> None:
        self.syscall(NR_EPOLL_CTL, epfd, EPOLL_CTL_ADD, fd,
                     self.write(EPOLL_EVENT.pack(events, data)))
