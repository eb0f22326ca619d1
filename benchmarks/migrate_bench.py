"""Pre-copy against one-shot migration of the HSS under steady writes (JSON out).

Run inside the test VM, as root:

    python -m tests.vm.runner --exec -- .venv/bin/python -m benchmarks.migrate_bench \
        [--subscribers 100000] [--interval 0.005] [--network-lock iptables|nftables] \
        [--out out/migrate-bench.json]

In the same run, twice on a fresh fabric (scenario.hosts): the HSS
(scenario.hss, ``--subscribers`` in memory) with its client querying every
``--interval`` seconds (each answer bumps one subscriber's SQN: steady writes
spread over the whole database) is moved from host A to host B with
``criu-ext migrate`` (pre-copy) and with ``criu-ext migrate --no-pre-copy``
(the baseline). Figures per mode: the gap the client saw (its longest wait for
an answer across the migration: the frozen time as its clients see it), the
report's own frozen time, pre-copy rounds, pages per round, bytes on the wire,
total time. ``ratio`` = pre-copy gap / one-shot gap (the target: at most 0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from criu_ext.migrate.wire import NETWORK_LOCKS
from scenario.fabric import BRIDGE, outer_name
from scenario.functions import Hss
from scenario.hosts import two_hosts
from scenario.report import gaps
from scenario.run import recover


def one(mode: str, subscribers: int, interval: float, tmp: Path, lock: str) -> dict:
    with two_hosts("mb", tmp) as hosts:
        fabric = hosts.fabric
        fn = Hss(fabric, tmp, subscribers)
        pid = fn.start()
        fn.client.interval = interval
        recover(fn, time.monotonic(), timeout=300)
        time.sleep(2.0)  # a steady state: the writes have spread over the database
        rx = hosts.receiver("b", [f"veth[eth0]:{outer_name('hss', 'eth0')}@{BRIDGE}"])
        extra = ["--tcp-established", "--network-lock", lock] + (
            ["--no-pre-copy"] if mode == "one-shot" else [])
        t0 = time.monotonic()
        rc, rep, err = hosts.migrate("a", pid, rx, extra=extra)
        t1 = time.monotonic()
        rx.communicate(timeout=120)
        if rc:
            raise RuntimeError(f"{mode}: {err.strip()}")
        fabric.retire(fn.ns)
        recover(fn, t1, timeout=120)
        peers = fn.stop()
        if peers["errors"]:
            raise RuntimeError(f"{mode}: the client saw {peers['errors']}")
        return {"client_gap_s": gaps(fn.client.replies, t0 + rep["times"]["connect"]
                                     + rep["times"]["pre_copy"], t1),
                "frozen_s": rep["times"]["frozen"], "criu_frozen_s": rep["times"]["criu_frozen"],
                "pre_copy_rounds": rep["pre_copy_rounds"], "pages_per_round": rep["pages_per_round"],
                "bytes_sent": rep["bytes_sent"], "total_s": rep["times"]["total"],
                "times": rep["times"],  # every phase, as criu-ext migrate --json reports it
                "timeline": rep.get("timeline", {}),  # CRIU's notifications, both ends
                "answers": peers["answers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--interval", type=float, default=0.005)
    ap.add_argument("--network-lock", default="nftables", choices=NETWORK_LOCKS,
                    help="CRIU's network lock, both modes (criu-ext migrate --network-lock)")
    ap.add_argument("--out", default="out/migrate-bench.json")
    a = ap.parse_args()
    res: dict = {"subscribers": a.subscribers, "interval_s": a.interval,
                 "network_lock": a.network_lock}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("one-shot", "pre-copy"):
            d = Path(tmp) / mode
            d.mkdir()
            res[mode] = one(mode, a.subscribers, a.interval, d, a.network_lock)
            print(json.dumps({mode: res[mode]}), file=sys.stderr, flush=True)
    base, pre = res["one-shot"]["client_gap_s"], res["pre-copy"]["client_gap_s"]
    res["ratio"] = round(pre / base, 3) if base and pre else None
    text = json.dumps(res, indent=2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
