"""The calling process's effective capabilities, read from /proc/self/status."""

from __future__ import annotations

CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19


def effective_caps() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_cap(cap: int) -> bool:
    return bool(effective_caps() >> cap & 1)
