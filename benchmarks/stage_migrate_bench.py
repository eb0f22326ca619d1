"""The UEs' gap during an SPGW move, with and without ``--stage`` (JSON out).

Run inside the test VM, as root:

    python -m tests.vm.runner --exec --timeout 3600 -- \\
        .venv/bin/python -m benchmarks.stage_migrate_bench [--ues 200] [--contexts 10000] \\
        [--mode stage] [--repeat 3] [--out out/stage-migrate-bench.json]

In the same run, each on a fresh fabric (scenario.fabric, scenario.hosts): the
SPGW holding ``--contexts`` PDP contexts, the first ``--ues`` pinged through their
tunnels every 100 ms, moved from host A to host B with ``criu-ext migrate`` (the
baseline: the tunnel list carried in the frozen window, the path the main job
takes) and with ``criu-ext migrate --stage`` (the user plane staged during
pre-copy in a netns host B's set-up made, the switch at the end). Figures per
mode: the largest and the median gap any UE saw, the total migration time,
CRIU's frozen window, and criu-ext's own work inside that window: the plugins'
at every notification of the freeze but the handoff (the source's and the
destination's), the destination's work from the source's ``restore`` to CRIU's
request (with ``--stage`` mostly the final images made to give the task the staged
GTP sockets, migrate/inherit.py), plus, with ``--stage``, what the restore waited
for the stage's last step, and the switch. Targets (issue
#14): the staged gap at most 0.5 s and at most 10 % of the total migration time;
criu-ext's work at most 1 % of the frozen window.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lab.netns import NetnsSet
from scenario.fabric import BRIDGE, outer_name
from scenario.functions import Spgw
from scenario.hosts import two_hosts
from scenario.report import longest_gap
from scenario.run import recover


def in_freeze(rep: dict) -> dict:
    """criu-ext's work in CRIU's frozen window, from the report: the source's plugins at
    every notification after pre-dump (post-dump's less the handoff: the transfer, the
    restore there and the switch, counted apart), the destination's notifications up to
    post-restore (its plugins besides the handoff there), its work
    from the source's ``restore`` to CRIU's request (with ``--stage``, the answer of
    the process that rewrote the images for the task's GTP sockets beside the
    transfer; what it does while CRIU starts, before CRIU's first notification is
    answered, is reported aside), and with ``--stage`` the wait
    for the user plane's last step (it runs beside CRIU's restore: only what is left
    once CRIU is done counts) and the switch."""
    t = rep["times"]
    handoff = sum(t.get(k, 0.0) for k in ("transfer", "restore_until_ready", "switch"))
    source = 0.0
    for n in rep["timeline"]["final_dump"]:
        if n["phase"] == "pre-dump":
            continue
        source += n["seconds"] - (handoff if n["phase"] == "post-dump" else 0.0)
    if "handoff" in t:  # where the source's share goes: the handoff's own steps (the
        # manifest, the commit's journal), the rest of post-dump (the other plugins,
        # the journal, after the commit), the other notifications
        post = sum(n["seconds"] for n in rep["timeline"]["final_dump"]
                   if n["phase"] == "post-dump")
        detail = {"handoff_own": t["handoff"] - handoff, "commit": t.get("commit", 0.0),
                  "post_dump_besides_handoff": post - t["handoff"],
                  "other_notifications": source - (post - handoff)}
        t["source_detail"] = {k: round(v, 4) for k, v in detail.items()}
    if "dest_prepare" in t:  # where the destination's share goes before CRIU's request
        t["dest_detail"] = {
            "inherit": round(t.get("dest_inherit", 0.0), 4),
            "other_prepare": round(t["dest_prepare"] - t.get("dest_inherit", 0.0), 4),
            "begin": round(t.get("dest_begin", 0.0), 4),
            # while CRIU starts, before its pre-restore is answered: not in the count
            "page_server_end_aside": round(t.get("dest_page_server_end", 0.0), 4),
            "descriptors_aside": round(t.get("dest_descriptors", 0.0), 4)}
    # the destination's: each notification CRIU waits on before the task is ready, whole
    # (the session's own work with the plugins'), and the plugins besides the handoff
    # at post-restore, where the handoff's waits are counted apart
    before = sum(n["seconds"] for n in rep["timeline"].get("dest_restore", [])
                 if n["phase"] in ("pre-restore", "setup-namespaces", "post-setup-namespaces"))
    dest = before + t.get("plugins_dest_post_restore", 0.0) if "plugins_dest_post_restore" in t \
        else t["plugins_dest"]
    parts = {"source_plugins": max(source, 0.0), "dest_notifications": dest,
             "dest_prepare": t.get("dest_prepare", 0.0) + t.get("dest_begin", 0.0),
             "stage_tail_wait": t.get("dest_tail_wait", 0.0),
             # the destination's links made active before its ``ready``, ours off after it
             "switch": t.get("switch", 0.0) + t.get("dest_attach", 0.0)}
    return {k: round(v, 3) for k, v in parts.items()} | {"total": round(sum(parts.values()), 3)}


def one(mode: str, ues: int, contexts: int, tmp: Path) -> dict:
    with two_hosts("sb", tmp) as hosts:
        fabric = hosts.fabric
        fn = Spgw(fabric, tmp, ues, contexts=contexts)
        pid = fn.start()
        recover(fn, time.monotonic(), timeout=600)
        time.sleep(2.0)
        outer = [outer_name("spgw", i) for i in fn.links]
        if mode == "stage":
            staged = fabric.stage(fn.ns, fn.addrs, "b")
            rx = hosts.receiver("b", [], extra=[
                "--stage-netns", NetnsSet.path(staged),
                *[x for o in outer for x in ("--switch-link", f"{o}@{BRIDGE}")]])
            extra = ["--stage", *[x for o in outer for x in ("--switch-link", o)]]
        else:
            rx = hosts.receiver("b", [f"veth[{i}]:{o}@{BRIDGE}" for i, o in zip(fn.links, outer)])
            extra = []
        t0 = time.monotonic()
        rc, rep, err = hosts.migrate("a", pid, rx, extra=extra)
        t1 = time.monotonic()
        out, _ = rx.communicate(timeout=120)
        if rc:
            raise RuntimeError(f"{mode}: {err.strip()}")
        if mode == "stage":
            fabric.retire(fn.ns)
            fn.ns = staged
        else:
            fabric.retire(fn.ns)
            fabric.adopt(fn.ns, hosts.global_pid("b", json.loads(out)["pid"]))
        fn.pid = hosts.global_pid("b", json.loads(out)["pid"])
        back = recover(fn, t1, timeout=300)
        time.sleep(1.0)
        peers = fn.stop()
        if peers["wrong_teid"] or peers["ues_answered"] != ues:
            raise RuntimeError(f"{mode}: the UEs saw {peers}")
        # each UE's longest gap and when it began; the worst one's start, from the
        # migration's, says whether it came at the switch or elsewhere
        found = {ue: w for ue, r in enumerate(fn.replies)
                 if (w := longest_gap(r, t0, t1)) is not None}
        per_ue = [g for g, _ in found.values()]
        worst = max(found.values(), default=None)
        # which UEs passed half a second, and when (seconds from the move's start)
        over = [{"ue": ue, "gap_s": round(g, 3), "began_s": round(a - t0, 3)}
                for ue, (g, a) in found.items() if g > 0.5]
        work = in_freeze(rep)
        total, frozen = rep["times"]["total"], rep["times"]["criu_frozen"]
        return {"ue_gap_max_s": round(max(per_ue), 3),
                "ue_gap_median_s": round(statistics.median(per_ue), 3),
                "ue_gap_worst_began_s": round(worst[1] - t0, 3) if worst else None,
                "ues_over_half_s": len(over), "over_half": over,
                "move_s": round(t1 - t0, 3),
                # when the switch began, from the move's start (the clock is the VM's)
                "switch_at_s": round(rep.get("moments", {}).get("switch", t0) - t0, 3),
                "ues_measured": len(per_ue), "total_s": round(total, 3),
                "criu_frozen_s": round(frozen, 3), "answered_again_s": round(back, 3),
                "gap_share_of_total": round(max(per_ue) / total, 4),
                "criu_ext_in_freeze": work,
                "criu_ext_share_of_freeze": round(work["total"] / frozen, 4),
                "stage": rep.get("stage", {}), "times": rep["times"],
                "timeline": rep.get("timeline", {})}


def _brief(run: dict) -> dict:
    """The figures of one move that its mode's median is taken of."""
    return {"ue_gap_max_s": run["ue_gap_max_s"], "criu_frozen_s": run["criu_frozen_s"],
            "total_s": run["total_s"], "criu_ext_in_freeze_s": run["criu_ext_in_freeze"]["total"],
            "criu_ext_share_of_freeze": run["criu_ext_share_of_freeze"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ues", type=int, default=200)
    ap.add_argument("--contexts", type=int, default=10_000)
    ap.add_argument("--out", default="out/stage-migrate-bench.json")
    ap.add_argument("--mode", action="append", choices=("carried", "stage"),
                    help="run only this mode (repeatable; default: both, for the ratio)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="moves per mode, each on a fresh fabric: the first is the mode's "
                         "figures, all of them in RUNS, the median in MEDIAN")
    a = ap.parse_args()
    res: dict = {"ues": a.ues, "contexts": a.contexts}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in a.mode or ("carried", "stage"):
            runs = []
            for n in range(max(a.repeat, 1)):
                d = Path(tmp) / f"{mode}-{n}"
                d.mkdir()
                runs.append(one(mode, a.ues, max(a.contexts, a.ues), d))
                print(json.dumps({mode: runs[-1]}), file=sys.stderr, flush=True)
            res[mode] = runs[0]
            if len(runs) > 1:
                res[f"{mode}_runs"] = [_brief(r) for r in runs]
                res[f"{mode}_median"] = {k: statistics.median(b[k] for b in res[f"{mode}_runs"])
                                         for k in res[f"{mode}_runs"][0]}
                # every move's parts of criu-ext's work in the freeze, not the first's alone
                res[f"{mode}_parts"] = [r["criu_ext_in_freeze"] | {
                    k: r["times"][k] for k in ("source_detail", "dest_detail") if k in r["times"]}
                    | {k: r[k] for k in ("ue_gap_worst_began_s", "over_half", "move_s",
                                         "switch_at_s")}
                    for r in runs]
    if "carried" in res and "stage" in res:
        res["gap_ratio"] = round(res["stage"]["ue_gap_max_s"] / res["carried"]["ue_gap_max_s"], 4)
    text = json.dumps(res, indent=2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
