"""CRIU's action-script phases, in the order CRIU 3.17 runs them.

Import-light on purpose: the action-script entry imports this module in every
phase, inside CRIU's freeze window.
"""

from __future__ import annotations

DUMP = "dump"
RESTORE = "restore"

# The order CRIU 3.17 runs them (criu/action-scripts.c, cr-dump.c, cr-restore.c).
# network-unlock belongs to both: at dump it runs only when the tasks go on
# running on the source (the dump failed, post-dump failed, or --leave-running).
DUMP_PHASES = ("pre-dump", "network-lock", "post-dump", "network-unlock")
RESTORE_PHASES = (
    "pre-restore",
    "setup-namespaces",
    "post-setup-namespaces",
    "post-restore",
    "network-unlock",
    "pre-resume",
    "post-resume",
)
ALL_PHASES = tuple(dict.fromkeys(DUMP_PHASES + RESTORE_PHASES))

# Phases inside the windows CRIU itself measures as downtime: stats-dump's frozen_time
# (from the freeze to the end of the dump) and stats-restore's restore_time (from the
# start of the restore to the network unlock; pre-resume and post-resume come after).
FROZEN = frozenset({"network-lock", "post-dump", "network-unlock", "pre-restore",
                    "setup-namespaces", "post-setup-namespaces", "post-restore"})

# Phases that start a session: the plan (which plugin acts in which phase) is
# made there, outside the freeze window.
FIRST = {"pre-dump": DUMP, "pre-restore": RESTORE}

# Failures CRIU acts upon; in the other phases a failing script is only logged.
FATAL = {
    DUMP: frozenset({"pre-dump", "network-lock", "post-dump"}),
    RESTORE: frozenset({"pre-restore", "setup-namespaces", "post-setup-namespaces",
                        "post-restore"}),
}


def method_name(phase: str) -> str:
    """Name of the plugin method for ``phase``: ``network-lock`` -> ``network_lock``."""
    return phase.replace("-", "_")


def action_of(phase: str) -> str | None:
    """``dump`` or ``restore`` for a phase that tells, None for ``network-unlock``."""
    if phase == "network-unlock":
        return None
    if phase in DUMP_PHASES:
        return DUMP
    if phase in RESTORE_PHASES:
        return RESTORE
    raise ValueError(f"unknown CRIU action-script phase {phase!r}")
