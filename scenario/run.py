"""The scenario run: start each function with its peers, migrate it back and forth between
hosts A and B R times, collect what the peers saw, write results.json and timeline.json.

Runs inside the VM (it needs gtp, CRIU, namespaces). Prints one progress line per
step; tears every namespace and process down on the way out, failure or Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from scenario.fabric import Fabric
from scenario.functions import Hss, Spgw
from scenario.migration import migrate

MME_NOTE = ("not migrated: carrying SCTP associations through stock CRIU needs the SCTP "
            "work (repair mode and the SCTP plugin), which is not in the toolkit yet")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def recover(fn, since: float, timeout: float = 60.0) -> float:
    """Seconds from ``since`` until the function's peers see it serving again."""
    while time.monotonic() - since < timeout:
        if fn.serving(since):
            return time.monotonic() - since
        time.sleep(0.2)
    raise RuntimeError(f"{fn.name}: its peers were not served again within {timeout:.0f} s\n"
                       f"{fn.diagnose()}\n{fn.fabric.diagnose()}")


def migrate_function(fn, fabric: Fabric, workdir: Path, repeat: int) -> dict:
    say(f"{fn.name}: starting ({fn.note})")
    pid = fn.start()
    recover(fn, time.monotonic())
    time.sleep(1.0)  # a steady state before the first freeze
    t_start = time.monotonic()
    moves = []
    src, dst = "a", "b"
    for r in range(repeat):
        say(f"{fn.name}: migration {r + 1}/{repeat}, host {src.upper()} -> {dst.upper()}")
        m = migrate(fabric, fn.ns, fn.name, pid, fn.links, src, dst,
                    workdir / f"run{r + 1}", tcp_established=fn.tcp_established)
        pid = m.pid
        fn.pid = pid
        back = recover(fn, m.t_restored)
        say(f"{fn.name}:   checkpoint {m.checkpoint_s:.2f} s, transfer {m.transfer_s:.2f} s, "
            f"restore {m.restore_s:.2f} s, image {m.image_bytes / 1e6:.1f} MB, "
            f"peers served again {back:.2f} s after the restore")
        moves.append(m)
        time.sleep(1.5)
        src, dst = dst, src
    peers = fn.stop()
    runs = []
    for m in moves:
        run = {"from": m.src, "to": m.dst, "checkpoint_s": m.checkpoint_s,
               "transfer_s": m.transfer_s, "restore_s": m.restore_s, "total_s": m.total_s,
               "image_bytes": m.image_bytes, "plugin_frozen_s": m.plugin_frozen_s,
               "t_dump_start": round(m.t_dump_start - t_start, 3),
               "t_restored": round(m.t_restored - t_start, 3)}
        run.update(fn.figures(m))
        runs.append(run)
    say(f"{fn.name}: done; peers: {json.dumps(peers)}")
    return {"runs": runs, "note": fn.note, "peers": peers,
            "timeline": fn.timeline_data(t_start)}


def run(out: Path, ues: int, repeat: int, subscribers: int, functions: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/criu-ext-scenario")
    shutil.rmtree(work, ignore_errors=True)
    results: dict = {}
    for name in functions:
        if name == "mme":
            say(f"mme: {MME_NOTE}")
            results["mme"] = {"runs": [], "note": MME_NOTE}
            continue
        fabric = Fabric(name).start()
        fwork = work / name
        fwork.mkdir(parents=True)
        fn = Spgw(fabric, fwork, ues) if name == "spgw" else Hss(fabric, fwork, subscribers)
        try:
            results[name] = migrate_function(fn, fabric, fwork, repeat)
        finally:
            fabric.cleanup()
    timelines = {k: v.pop("timeline") for k, v in results.items() if "timeline" in v}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "timeline.json").write_text(json.dumps(timelines))
    return results
