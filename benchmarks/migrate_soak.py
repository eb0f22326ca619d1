"""A soak of back-and-forth migrations with ``criu-ext migrate``: nothing drifts, nothing leaks.

Run inside the test VM, as root (the MME part needs the repair-mode kernel):

    python -m tests.vm.runner [--kernel BZIMAGE] --exec --timeout 20000 -- \\
        .venv/bin/python -m benchmarks.migrate_soak [--moves 50] [--contexts 10000] \\
        [--only spgw|mme] [--out out/migrate-soak.json]

One fabric and one pair of hosts (scenario.hosts) per function. The SPGW holds
``--contexts`` PDP contexts, the first ``--ues`` of which are pinged through
their tunnels; the MME has three base stations, one association each. Each is
moved A -> B -> A ... ``--moves`` times (with ``--idle-seconds``, each first runs
that long on a fabric of its own without moves, its RSS sampled as often: the
baseline of the moves' RSS). After every move:

* the peers are served again (every pinged UE answered with its TEID and the
  gateway's own check PASS; every base station answered),
* the SPGW's user plane equals the one before the first move (gtp_util.check:
  devices, PDP contexts, routes, NAT rules, sysctls),
* the footprint equals the one after the first move: network namespaces,
  processes in the VM, the moved task's descriptors, nftables tables and ip
  rules in both hosts and the function's namespace, criu-ext run directories,
  receivers' session directories, the source's image directories,
* and the moved task's resident memory is recorded.

At the end: the peers' verdict (no wrong TEID; no SCTP notification, no gap or
repeat in the numbered requests), RSS first/last, the per-move figures (frozen
time, peers' gap, bytes on the wire). Exit status 1 if anything drifted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

from lab.netns import sh
from scenario.fabric import Fabric
from scenario.functions import Mme, Spgw
from scenario.hosts import Hosts, two_hosts
from scenario.migration import migrate_cli
from scenario.run import recover


def tunnels(netns: str):
    """The user plane of the function's namespace, to compare with gtp_util.check."""
    import gtp_util

    return gtp_util.take_snapshot(f"/run/netns/{netns}")


def tunnel_drift(before, netns: str, most: int = 5) -> list[str]:
    """How the user plane differs from ``before``: devices, every PDP context, routes,
    NAT rules (as rules: one iptables-nft wrote reads back as nft's own after CRIU
    reloads the ruleset), sysctls; the task sockets by kind and address."""
    import gtp_util

    return gtp_util.check(before, f"/run/netns/{netns}")[:most]


def user_processes() -> int:
    """Processes in the VM but kernel threads (kthreadd, PID 2, and its children), whose
    number the kernel changes on its own."""
    n = 0
    for p in os.listdir("/proc"):
        if p.isdigit() and p != "2":
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            n += ppid != "2"
    return n


def _lines(ns: str, *argv: str) -> list[str]:
    return sorted(sh(*argv, ns=ns).stdout.splitlines())


def task_fds(pid: int, own: Path) -> int:
    """The task's descriptors but those on files under ``own``, the function's work
    directory: the lab programs rewrite their status file there (a temporary file,
    then a rename) every few seconds, so one more descriptor now and then is theirs."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed since the listing
        n += not target.startswith(f"{own}/")
    return n


def footprint(hosts: Hosts, fn, pid: int) -> dict:
    """What must not grow from one move to the next (RSS apart: it is reported)."""
    spaces = {"host a": hosts.fabric.hosts["a"], "host b": hosts.fabric.hosts["b"],
              "function": fn.ns}
    return {
        "netns": sorted(os.listdir("/run/netns")),
        "processes": user_processes(),
        "task_fds": task_fds(pid, fn.workdir),
        "nft_tables": {k: _lines(v, "nft", "list", "tables") for k, v in spaces.items()},
        "ip_rules": {k: _lines(v, "ip", "rule") for k, v in spaces.items()},
        "run_dirs": sorted(glob.glob("/run/criu-ext/*")),
        "receiver_sessions": sorted(str(p) for h in "ab" for p in hosts.work[h].glob("*")),
        "source_images": sorted(glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                       "criu-ext-migrate-*"))),
    }


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


def soak(fn, hosts: Hosts, moves: int) -> dict:
    pid = fn.start()
    recover(fn, time.monotonic(), timeout=300)
    before = tunnels(fn.ns) if isinstance(fn, Spgw) else None
    base: dict | None = None
    drift: list[str] = []
    runs, done = [], []
    src, dst, ns_pid = "a", "b", pid
    for n in range(1, moves + 1):
        m = migrate_cli(hosts, fn.ns, fn.name, ns_pid, fn.links, src, dst,
                        tcp_established=fn.tcp_established)
        ns_pid, fn.pid = m.ns_pid, m.pid
        back = recover(fn, m.t_restored, timeout=120)
        if before is not None:
            drift += [f"move {n}: tunnels: {d}" for d in tunnel_drift(before, fn.ns)]
        fp = footprint(hosts, fn, m.pid)
        if base is None:
            base = fp
        else:
            drift += [f"move {n}: {k}: {base[k]} -> {fp[k]}" for k in base if fp[k] != base[k]]
        runs.append({"move": n, "from": src, "to": dst, "frozen_s": round(m.frozen_s, 3),
                     "pre_copy_rounds": m.pre_copy_rounds, "bytes": m.image_bytes,
                     "answered_again_s": round(back, 3), "rss_kb": rss_kb(m.pid)})
        done.append(m)
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        src, dst = dst, src
    peers = fn.stop()
    for run, m in zip(runs, done):  # the peers' records are read at stop
        run["downtime_s"] = fn.figures(m)["downtime_s"]
    rss = [r["rss_kb"] for r in runs]
    return {"note": fn.note, "moves": runs, "peers": peers, "drift": drift,
            "rss_kb_first_last": [rss[0], rss[-1]] if rss else [],
            "footprint": base}


def idle(fn, seconds: float, samples: int) -> dict:
    """The function left where it started for ``seconds``: its resident memory at
    ``samples`` even steps, the baseline the moves' RSS is read against (a lab
    function keeps records of its peers' requests, which grow with time alone)."""
    pid = fn.start()
    recover(fn, time.monotonic(), timeout=300)
    rss = []
    for _ in range(samples):
        time.sleep(seconds / samples)
        rss.append(rss_kb(pid))
    fn.stop()
    return {"seconds": round(seconds, 1), "rss_kb": rss,
            "rss_kb_first_last": [rss[0], rss[-1]] if rss else []}


def peers_ok(name: str, peers: dict, ues: int) -> list[str]:
    if name == "spgw":
        ok = peers["wrong_teid"] == 0 and peers["ues_answered"] == ues
        return [] if ok else [f"spgw peers: {peers}"]
    bad = [f"{k}: {v}" for k, v in peers.items() if v.get("errors") or v.get("sequence_errors")
           or (k != "mme" and v.get("notifications") != ["ASSOC_CHANGE:COMM_UP"])]
    return [f"mme peers: {b}" for b in bad]


def make(name: str, fabric: Fabric, workdir: Path, a: argparse.Namespace):
    return (Spgw(fabric, workdir, a.ues, contexts=a.contexts) if name == "spgw"
            else Mme(fabric, workdir))


def write(path: Path, res: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")


def run_one(name: str, a: argparse.Namespace) -> dict:
    """The soak of one function, after its idle baseline when ``--idle-seconds``."""
    work = Path(f"/tmp/criu-ext-soak/{name}")
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    # the sources' image directories go here: what is left in it is ours alone
    os.environ["TMPDIR"] = str(work / "tmp")
    baseline = None
    if a.idle_seconds > 0:
        fabric = Fabric(name[:2] + "i").start()
        try:
            (work / "idle").mkdir(exist_ok=True)
            baseline = idle(make(name, fabric, work / "idle", a), a.idle_seconds, a.moves)
        finally:
            fabric.cleanup()
    t0 = time.monotonic()
    with two_hosts(name[:3], work / "hosts") as hosts:
        out = soak(make(name, hosts.fabric, work, a), hosts, a.moves)
    if baseline is not None:
        out["idle_baseline"] = baseline
    out["drift"] += peers_ok(name, out["peers"], a.ues)
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=50)
    ap.add_argument("--contexts", type=int, default=10_000, help="PDP contexts on the SPGW")
    ap.add_argument("--ues", type=int, default=50, help="of those, UEs pinged every 100 ms")
    ap.add_argument("--only", choices=("spgw", "mme"), action="append")
    ap.add_argument("--idle-seconds", type=float, default=0.0,
                    help="first run each function this long without moves, its RSS "
                         "sampled --moves times: the baseline of the moves' RSS")
    ap.add_argument("--out", default="out/migrate-soak.json")
    a = ap.parse_args()
    from sctp_repair import probe

    res: dict = {"moves": a.moves}
    for name in a.only or ["spgw", "mme"]:
        if name == "mme" and not probe().repair:
            res[name] = {"skipped": "this kernel has no SCTP repair mode"}
        else:
            res[name] = run_one(name, a)
        # written after each function: a long run cut short keeps what it finished
        write(Path(a.out), res)
    print(json.dumps(res, indent=2))
    drifted = [d for v in res.values() if isinstance(v, dict) for d in v.get("drift", [])]
    for d in drifted:
        print(f"migrate_soak: {d}", file=sys.stderr)
    sys.exit(1 if drifted else 0)


if __name__ == "__main__":
    main()
