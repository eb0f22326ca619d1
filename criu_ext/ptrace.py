"""ptrace(2) through ctypes: seize a stopped task, read and write its registers and memory.

Only what syscall injection needs (see inject.py), on x86_64. Every call
raises ``OSError`` with the kernel's errno; nothing here decides policy.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

PTRACE_PEEKTEXT = 1
PTRACE_POKETEXT = 4
PTRACE_CONT = 7
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_GETSIGINFO = 0x4202
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for threads too

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class Regs(ctypes.Structure):
    """struct user_regs_struct (x86_64), in the kernel's order."""

    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")]

    def copy(self) -> Regs:
        return Regs.from_buffer_copy(self)


def supported() -> str | None:
    """None when this machine can inject, else why not."""
    if platform.machine() != "x86_64":
        return f"syscall injection is implemented for x86_64 only (this is {platform.machine()})"
    return None


def _call(req: int, tid: int, addr: int = 0, data: int | ctypes.c_void_p = 0) -> int:
    ctypes.set_errno(0)
    ret = _ptrace(req, tid, ctypes.c_void_p(addr), data if isinstance(data, ctypes.c_void_p)
                  else ctypes.c_void_p(data))
    if ret == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, f"ptrace({req}, {tid}): {os.strerror(err)}")
    return ret


def seize(tid: int) -> None:
    _call(PTRACE_SEIZE, tid)


def interrupt(tid: int) -> None:
    _call(PTRACE_INTERRUPT, tid)


def detach(tid: int, sig: int = 0) -> None:
    _call(PTRACE_DETACH, tid, 0, sig)


def cont(tid: int, sig: int = 0) -> None:
    _call(PTRACE_CONT, tid, 0, sig)


def wait_stop(tid: int) -> tuple[int, int]:
    """Wait for the tracee's next stop: (signal, ptrace event). Raises if it died."""
    while True:
        try:
            _, status = os.waitpid(tid, WALL)
        except InterruptedError:
            continue
        if os.WIFSTOPPED(status):
            return os.WSTOPSIG(status), (status >> 16) & 0xFF
        raise OSError(errno.ESRCH, f"task {tid} ended while traced (wait status {status:#x})")


class SigInfo(ctypes.Structure):
    """The head of siginfo_t (128 bytes in all); pid/uid for SI_USER and SI_TKILL."""

    _fields_ = [("si_signo", ctypes.c_int), ("si_errno", ctypes.c_int), ("si_code", ctypes.c_int),
                ("_pad0", ctypes.c_int), ("si_pid", ctypes.c_int), ("si_uid", ctypes.c_uint),
                ("_rest", ctypes.c_byte * 104)]


SI_USER = 0
SI_KERNEL = 0x80  # what an int3 trap reports
SI_TKILL = -6


def siginfo(tid: int) -> SigInfo:
    """The signal of the tracee's current signal-delivery-stop."""
    info = SigInfo()
    _call(PTRACE_GETSIGINFO, tid, 0, ctypes.c_void_p(ctypes.addressof(info)))
    return info


def tgkill(pid: int, tid: int, sig: int) -> None:
    if _libc.syscall(234, pid, tid, sig) == -1:  # SYS_tgkill
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def get_regs(tid: int) -> Regs:
    regs = Regs()
    _call(PTRACE_GETREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(regs)))
    return regs


def set_regs(tid: int, regs: Regs) -> None:
    _call(PTRACE_SETREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(regs)))


def peek(tid: int, addr: int) -> int:
    """One word of the tracee's memory (PEEKTEXT returns data, -1 may be a value)."""
    return _call(PTRACE_PEEKTEXT, tid, addr) & 0xFFFFFFFFFFFFFFFF


def poke(tid: int, addr: int, word: int) -> None:
    _call(PTRACE_POKETEXT, tid, addr, word)
