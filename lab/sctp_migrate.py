"""Migrating the SCTP lab's node with CRIU and the sctp plugin, and judging the result.

Shared by the stock-kernel tests (tests/vm) and the repair-mode ones
(tests/repair): the commands for both interfaces (action script, RPC), the
checks of the programs' own verdicts, the figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lab import criu_cmds
from lab.criu_cmds import log_of
from lab.sctp_lab import SctpLab

# a peer's associations: a restart or a new association moves the first two, an ended
# one the last two
MIB_KEYS = ("SctpActiveEstabs", "SctpPassiveEstabs", "SctpCurrEstab", "SctpShutdowns")


def env_for(tmp: Path, **extra) -> dict:
    return criu_cmds.env_for(tmp, "sctp,announce,trace", **extra)


def dump_cmd(mode: str, lab: SctpLab, images: Path, tmp: Path, extra=()) -> list[str]:
    return criu_cmds.dump_cmd(mode, lab.pid, images, tmp, extra)


def restore_cmd(mode: str, images: Path, tmp: Path) -> list[str]:
    return criu_cmds.restore_cmd(mode, images, tmp, ["veth[eth0]:nodeb@br0"])


def verdicts(lab: SctpLab) -> dict:
    names = ["node"] + [n for n in lab.peer_names if n != "darn"]
    return {n: lab.status(n) for n in names}


# What a peer may see of a move: its path to the node pausing and coming back (the
# kernel marks a path "potentially failed" after one retransmission timeout), nothing
# about the association itself.
PATH_PAUSE = ("PEER_ADDR_CHANGE:POTENTIALLY_FAILED", "PEER_ADDR_CHANGE:AVAILABLE")


def assert_clean(lab: SctpLab, before_notes: dict) -> list[str]:
    """No sequence error anywhere, no association notification or error since
    ``before_notes``; returns the path notifications seen meanwhile."""
    seen = []
    for name, st in verdicts(lab).items():
        for flow, f in st.get("flows", {}).items():
            assert not f["errors"], f"{name} {flow}: {f['errors']}"
        assert st.get("errors") == [], f"{name}: {st.get('errors')}{lab.diagnose()}"
        notes = st.get("notifications", [])
        assert notes[:len(before_notes[name])] == before_notes[name], notes
        new = notes[len(before_notes[name]):]
        assert all(n.endswith(PATH_PAUSE) for n in new), f"{name} got notifications: {new}"
        seen += [f"{name}: {n}" for n in new]
    return seen


def peer_gap(lab: SctpLab, since: float) -> float:
    """Longest pause between two ACKs at a Python peer since ``since`` (monotonic clock)."""
    gaps = []
    for name in lab.peer_names:
        times = lab.status(name).get("ack_times", {})
        for ts in times.values():
            ts = [t for t in ts if t >= since]
            gaps += [b - a for a, b in zip(ts, ts[1:])]
    return round(max(gaps, default=0.0), 3)


def migrate(mode: str, lab: SctpLab, tmp: Path, after_dump=None, env=None) -> dict:
    """Dump the node on host A, restore it on host B; ``after_dump()`` runs between;
    ``env``: more variables for the dump (the sctp plugin's options)."""
    images = tmp / "img"
    images.mkdir()
    t0 = time.monotonic()
    d = lab.in_host(lab.a, dump_cmd(mode, lab, images, tmp), env=env_for(tmp, **(env or {})))
    t1 = time.monotonic()
    assert d.returncode == 0, d.stdout + d.stderr + log_of(images, "dump.log") + lab.diagnose()
    lab.node.wait(timeout=10)
    assert (images / "criu-ext-sctp.json").exists()
    if after_dump is not None:
        after_dump()
    # the source host lets go of the node (as it would once it is gone)
    lab.in_host(lab.a, ["ip", "link", "del", "nodea"])
    r = lab.in_host(lab.b, restore_cmd(mode, images, tmp), env=env_for(tmp))
    t2 = time.monotonic()
    assert r.returncode == 0, r.stdout + r.stderr + log_of(images, "restore.log")
    lab.restored_pid = int((tmp / "pid").read_text())
    assert lab.restored_pid == lab.node.pid
    m = json.loads((images / "criu-ext.json").read_text())
    plugin_s = {a: round(sum(t["seconds"] for t in m[a]["timings"] if t["plugin"] == "sctp"), 3)
                for a in ("dump", "restore")}
    rec = {"checkpoint_s": round(t1 - t0, 3), "restore_s": round(t2 - t1, 3),
            "t0": t0, "plugin_s": plugin_s,
            "sockets": len(json.loads((images / "criu-ext-sctp.json").read_text())["sockets"])}
    print("migration:", rec)
    return rec


