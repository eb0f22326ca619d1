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

Why not compel (CRIU's parasite library)? It needs C built against CRIU's
headers and a parasite blob; four system calls per socket do not.
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

PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
EPOLL_CTL_ADD, EPOLL_CTL_DEL = 1, 2
O_CLOEXEC = 0o2000000
MSG_CMSG_CLOEXEC = 0x40000000
# struct msghdr (x86_64): name, namelen, iov, iovlen, control, controllen, flags
MSGHDR = struct.Struct("=QI4xQQQQi4x")
IOVEC = struct.Struct("=QQ")
CMSG_FD = struct.Struct("=Qiii")  # cmsghdr (len, level, type) and one int of data
CMSG_SPACE_FD = 24
PAGE = 4096
SYSCALL_INT3 = 0xCC050F  # bytes 0f 05 cc: syscall; int3
EPOLL_EVENT = struct.Struct("=IQ")  # struct epoll_event is packed on x86_64
FAULTS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)



class InjectError(Exception):
    """A system call could not be run in the task, or returned an error."""


def seccomp_mode(pid: int, tid: int) -> int:
    """The ``Seccomp:`` field of a thread's status (0 none, 1 strict, 2 filter)."""
    return tasks.status_number(f"/proc/{pid}/task/{tid}/status", "Seccomp")


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
        self.mem = -1
        self.dead = False
        self.pending: list[ptrace.SigInfo] = []  # held back, sent again after the detach

    # -- setup and teardown -------------------------------------------------------

    def __enter__(self) -> Remote:
        try:
            for tid in tasks.threads(self.pid):
                mode = seccomp_mode(self.pid, tid)
                if mode:
                    raise InjectError(
                        f"task {self.pid} runs under seccomp (Seccomp: {mode} for thread "
                        f"{tid} in /proc/{self.pid}/task/{tid}/status): a system call run in "
                        "it could be refused or kill it; not injecting")
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
            self.scratch = self.syscall(NR_MMAP, 0, PAGE, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        except OSError as exc:
            self._teardown()
            raise InjectError(f"cannot borrow task {self.pid}: {exc.strerror or exc}") from exc
        except InjectError:
            self._teardown()
            raise
        return self

    def _seize_all(self) -> None:
        """Seize and stop every live thread, until no new one shows up."""
        while True:
            new = [t for t in tasks.threads(self.pid) if t not in self.threads
                   and tasks.thread_state(self.pid, t) not in ("Z", "X", "")]
            if not new:
                if not self.threads and not os.path.exists(f"/proc/{self.pid}"):
                    raise OSError(errno.ESRCH, "No such process")
                return
            for tid in new:
                state = tasks.thread_state(self.pid, tid)
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
        if self.dead:
            raise InjectError(f"task {self.pid} died during the injection")
        regs = self.saved.copy()
        regs.rax = nr
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF  # not in a system call: no restart logic
        regs.rip = self.code_addr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, name, value & 0xFFFFFFFFFFFFFFFF)
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
                        and rip == self.code_addr + 3:
                    break  # our int3, just after our syscall
                if sig in FAULTS and self.code_addr <= rip <= self.code_addr + 3:
                    raise InjectError(f"system call {nr} in task {self.pid}: the injected "
                                      f"code faulted ({signal.Signals(sig).name})")
                self.pending.append(info)  # someone else's: held back, sent again later
                ptrace.cont(self.tid)
            ret = ptrace.get_regs(self.tid).rax
        except OSError as exc:
            if exc.errno == errno.ESRCH or not os.path.exists(f"/proc/{self.pid}/task/{self.tid}"):
                self.dead = True
                raise InjectError(f"task {self.pid} died during the injection") from None
            raise
        if ret >= 0xFFFFFFFFFFFFF001:  # -4095..-1
            err = 0x10000000000000000 - ret
            raise InjectError(f"system call {nr} in task {self.pid}: {os.strerror(err)}",
                              err)
        return ret

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
        self.syscall(NR_DUP3, fd, target, O_CLOEXEC if cloexec else 0)
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

    def receive(self, fd: int) -> int:
        """A copy of our descriptor ``fd`` in the task (close-on-exec), sent over a
        socket pair made in the task (SCM_RIGHTS). Unlike pidfd_open + pidfd_getfd run
        in the task, this needs neither us visible in the task's PID namespace (a
        container's has its own) nor the task's ptrace rights over us."""
        self.syscall(NR_SOCKETPAIR, socket.AF_UNIX, socket.SOCK_DGRAM | O_CLOEXEC, 0,
                     self.write(bytes(8)))
        ends = struct.unpack("=ii", self.read(8))
        try:
            with socket.socket(fileno=steal_fd(self.pid, ends[0])) as ours:
                socket.send_fds(ours, [b"\0"], [fd])
            iov, control, byte = 64, 96, 128  # offsets in the scratch page
            self.write(IOVEC.pack(self.scratch + byte, 1), iov)
            self.write(bytes(CMSG_SPACE_FD), control)
            msg = self.write(MSGHDR.pack(0, 0, self.scratch + iov, 1, self.scratch + control,
                                         CMSG_SPACE_FD, 0))
            self.syscall(NR_RECVMSG, ends[1], msg, MSG_CMSG_CLOEXEC)
            length, level, kind, got = CMSG_FD.unpack(self.read(CMSG_FD.size, control))
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
