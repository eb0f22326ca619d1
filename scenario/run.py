"""The scenario run: R times per function, start it with its peers on host A, migrate it to
host B (``moves`` > 1: and back, ...), collect what the peers saw; write results.json and
timeline.json (the first repetition's replies).

Runs inside the VM (it needs gtp, CRIU, namespaces). Prints one progress line per
step; tears every namespace and process down on the way out, failure or Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from scenario.engines import make_engine
from scenario.fabric import Fabric
from scenario.functions import Hss, Mme, Spgw

MME_NOTE = ("not migrated: this kernel has no SCTP repair mode, which carrying established "
            "SCTP associations needs; scripts/migrate boots the kernel built from "
            "kernel-patches/ unless told --stock-kernel")


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


def migrate_once(fn, engine, moves: int = 1) -> dict:
    """Start ``fn`` on host A, migrate it ``moves`` times (A -> B, B -> A, ...) with
    ``engine`` (scenario.engines), stop it."""
    engine.adopt(fn)
    pid = fn.start()
    recover(fn, time.monotonic())
    time.sleep(1.0)  # a steady state before the first freeze
    t_start = time.monotonic()
    done = []
    src, dst = "a", "b"
    for _ in range(moves):
        m = engine.move(fn, pid, src, dst)
        pid = m.ns_pid
        fn.pid = m.pid
        back = recover(fn, m.t_restored)
        say(f"{key(fn.name, engine.name)}:   host {src.upper()} -> {dst.upper()}: "
            f"{m.pre_copy_rounds} pre-copy round(s), frozen {m.frozen_s:.2f} s, checkpoint "
            f"{m.checkpoint_s:.2f} s, transfer {m.transfer_s:.2f} s, restore {m.restore_s:.2f} s, "
            f"image {m.image_bytes / 1e6:.1f} MB, peers served again {back:.2f} s after it")
        done.append(m)
        time.sleep(1.5)
        src, dst = dst, src
    peers = fn.stop()
    runs = []
    for m in done:
        run = {"from": m.src, "to": m.dst, "checkpoint_s": m.checkpoint_s,
               "transfer_s": m.transfer_s, "restore_s": m.restore_s, "total_s": m.total_s,
               "image_bytes": m.image_bytes, "plugin_frozen_s": m.plugin_frozen_s,
               "pre_copy_rounds": m.pre_copy_rounds, "frozen_s": m.frozen_s,
               "t_dump_start": round(m.t_dump_start - t_start, 3),
               "t_restored": round(m.t_restored - t_start, 3)}
        run.update(fn.figures(m))
        runs.append(run)
    return {"runs": runs, "peers": peers, "timeline": fn.timeline_data(t_start)}


def migrate_function(name: str, make, workdir: Path, repeat: int, moves: int = 1,
                     engine: str = "criu-ext") -> dict:
    """``repeat`` independent repetitions: a fresh fabric and function each time."""
    runs, peers, timeline, note = [], [], None, ""
    for r in range(repeat):
        rep = workdir / f"rep{r + 1}"
        rep.mkdir(parents=True)
        fabric = Fabric(name).start()
        mover = None
        try:
            mover = make_engine(engine, fabric, rep)
            fn = make(fabric, rep)
            note = fn.note
            say(f"{key(name, engine)}: repetition {r + 1}/{repeat} ({note})")
            res = migrate_once(fn, mover, moves)
        finally:
            if mover is not None:
                mover.close()
            fabric.cleanup()
        runs += [dict(run, rep=r + 1) for run in res["runs"]]
        peers.append(res["peers"])
        timeline = timeline or res["timeline"]
    say(f"{key(name, engine)}: done; peers: {json.dumps(peers)}")
    return {"runs": runs, "note": note, "peers": peers, "timeline": timeline}


def key(function: str, engine: str) -> str:
    """A result's name: the function, and the engine unless it is criu-ext migrate's."""
    return function if engine == "criu-ext" else f"{function}@{engine}"


def run(out: Path, ues: int, repeat: int, subscribers: int, functions: list[str],
        moves: int = 1, engines: tuple[str, ...] = ("criu-ext",)) -> dict:
    """Every function of ``functions`` moved by every engine of ``engines``."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/criu-ext-scenario")
    shutil.rmtree(work, ignore_errors=True)
    results: dict = {}
    for engine, name in ((e, f) for e in engines for f in functions):
        if name == "mme":
            from sctp_repair import probe
            if not probe().repair:
                say(f"{key(name, engine)}: {MME_NOTE}")
                results[key(name, engine)] = {"runs": [], "note": MME_NOTE}
                continue
            make = lambda fabric, wd: Mme(fabric, wd)  # noqa: E731
        elif name == "spgw":
            # a download through the masquerade: its conntrack entry comes with CRIU's
            # netns (Podman's restores into a netns made afresh, without it)
            make = lambda fabric, wd, dl=engine == "criu-ext": Spgw(  # noqa: E731
                fabric, wd, ues, download=dl)
        else:
            make = lambda fabric, wd: Hss(fabric, wd, subscribers)  # noqa: E731
        k = key(name, engine)
        results[k] = migrate_function(name, make, work / k.replace("@", "-"), repeat, moves,
                                      engine)
    timelines = {k: v.pop("timeline") for k, v in results.items() if "timeline" in v}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "timeline.json").write_text(json.dumps(timelines))
    return results
