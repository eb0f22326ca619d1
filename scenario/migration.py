"""One migration of one function from one host of the fabric to the other, timed.

:func:`migrate_cli` runs ``criu-ext receive`` on the destination host and
``criu-ext migrate`` on the source host, separate processes talking over the
fabric (mutual TLS, pre-copy through CRIU's page server; scenario.hosts starts
them). Its figures come from migrate's JSON report. Every function moves this
way: the SPGW (gtp; make-before-break, ``--stage``), the HSS (TCP) and, on the
repair-mode kernel, the MME (SCTP).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

from lab.netns import NetnsSet, sh
from scenario.fabric import BRIDGE, outer_name
from scenario.hosts import Hosts


@dataclasses.dataclass
class Migration:
    """What one migration took; times in seconds, ``t_*`` on CLOCK_MONOTONIC."""

    src: str
    dst: str
    pid: int
    checkpoint_s: float
    transfer_s: float
    restore_s: float
    image_bytes: int
    plugin_frozen_s: float
    t_dump_start: float  # the final dump's start (after pre-copy)
    t_restored: float
    total_s: float
    pre_copy_rounds: int
    frozen_s: float  # the tasks stopped: CRIU's frozen time here plus the resume there
    ns_pid: int  # the task's PID in the destination host's PID namespace


def image_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def migrate_cli(hosts: Hosts, fn_ns: str, role: str, pid: int, links: list[str], src: str,
                dst: str, *, tcp_established: bool = False,
                stage: dict[str, str] | None = None) -> Migration:
    """Move ``pid`` (its PID in host ``src``'s PID namespace) with ``criu-ext migrate``
    on host ``src`` and ``criu-ext receive`` on host ``dst``.

    ``stage`` ({link: address}): make-before-break (``--stage``): host ``dst``'s
    set-up makes the function's netns first (Fabric.stage), the user plane is staged
    in it and the links are switched at the end; otherwise CRIU carries the netns.
    Either way the function's netns name then refers to the task's netns on ``dst``.

    checkpoint: pre-copy and the final dump, the images' transfer and the restore
    on the destination taken out (they run inside the final dump's post-dump);
    transfer: the non-page images after the dump; image size: every byte sent.
    """
    outer = [outer_name(role, ifname) for ifname in links]
    extra = ["--tcp-established"] if tcp_established else []
    staged = None
    if stage is not None:
        staged = hosts.fabric.stage(fn_ns, stage, dst)
        rx = hosts.receiver(dst, [], extra=["--stage-netns", NetnsSet.path(staged),
                                            *[x for o in outer for x in ("--switch-link",
                                                                         f"{o}@{BRIDGE}")]])
        extra += ["--stage", *[x for o in outer for x in ("--switch-link", o)]]
    else:
        rx = hosts.receiver(dst, [f"veth[{ifname}]:{o}@{BRIDGE}"
                                  for ifname, o in zip(links, outer)])
    t0 = time.monotonic()
    rc, rep, err = hosts.migrate(src, pid, rx, extra=extra)
    t1 = time.monotonic()
    try:
        out, _ = rx.communicate(timeout=120 if rc == 0 else 5)
    except subprocess.TimeoutExpired:  # a failed source: the receiver may wait on
        rx.kill()
        out, _ = rx.communicate()
    if rc != 0 or rx.returncode != 0:
        if staged is not None:  # the host's set-up takes its netns back
            sh("ip", "netns", "del", staged, check=False)
        last = [ln for ln in err.splitlines() if ln.strip()][-1:] or [f"exit status {rc}"]
        raise RuntimeError(f"criu-ext migrate from host {src} to host {dst}: {last[0]}\n"
                           f"receiver: {hosts.log(rx)[-2000:]}")
    ns_pid = int(json.loads(out)["pid"])
    new_pid = hosts.global_pid(dst, ns_pid)
    fabric = hosts.fabric
    fabric.retire(fn_ns)
    fabric.adopt(fn_ns, new_pid)
    if staged is not None:  # the function's name now; the staged one's goes
        sh("ip", "netns", "del", staged)
    t = rep["times"]
    checkpoint = t["pre_copy"] + t["final_dump"] - t["transfer"] - t["restore_until_ready"]
    return Migration(src, dst, new_pid, checkpoint, t["transfer"], t["dest_restore"],
                     rep["bytes_sent"], t["plugins_source"],
                     t0 + t["connect"] + t["pre_copy"],  # the final dump's start
                     t1, t["total"],
                     pre_copy_rounds=rep["pre_copy_rounds"], frozen_s=t["frozen"],
                     ns_pid=ns_pid)
