"""The staged user plane's final step against carrying the tunnel list in the freeze (JSON).

Run inside the test VM, as root:

    python -m tests.vm.runner --exec --timeout 1800 -- .venv/bin/python -m benchmarks.stage_bench
    # in the VM: python -m benchmarks.stage_bench [--contexts 10000] [--churn 200]
    #            [--flows 50] [--burst 10000] [--repeat 3]
    #            [--out FILE (default out/stage-bench.json)]

A source gateway (lab.GtpLab: lab.gateway with ``--contexts`` PDP contexts, the
masquerade, ``--flows`` UEs pinging through it so their flows are in conntrack)
and a destination namespace with the same links on an eNB and PDN of its own
(lab.topology.segment). Per repetition:

* ``baseline_s``, what a move carries in CRIU's frozen window for the tunnel list
  without ``--stage``: gtp_util's ``take_snapshot`` + ``save`` of the source's user
  plane (the gtp plugin's work at dump), measured in the same run;
* the stage: a ``StageSender`` on the source, a ``StagedPlane`` fed by a child
  process of its own (its own interpreter: no shared GIL), over a socket pair;
  ``stage_s`` = image sent and restored there;
* ``lag_s``, the replication lag: ``--burst`` new contexts made at once on the
  source (one netlink batch, by a process of its own), the changes pumped as ``criu-ext
  migrate`` pumps them during pre-copy; from the burst's last context made on the
  source to its last applied on the destination (issue #14's target: 1 s for
  10,000);
* then ``--churn`` contexts attached and as many detached on the source, pumped;
* ``final_s``: ``finish()`` (the last changes read and sent, the conntrack read and
  sent, ``pdp-end``) until the destination says it applied everything: the step
  a staged migration runs while the destination restores the task.

``ratio`` = median final_s / median baseline_s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def receiver(fd: int, netns: str, workdir: str) -> None:
    """The destination's side in a process of its own: stage, apply, acknowledge."""
    from criu_ext.migrate.stage import IMAGE, StagedPlane
    from criu_ext.migrate.wire import Channel

    chan = Channel(socket.socket(fileno=fd))
    chan.recv_file(chan.recv("file"), workdir, 64 << 20)
    plane = StagedPlane(netns, os.path.join(workdir, IMAGE))
    chan.send("staged")
    while True:
        msg = chan.recv("pdp", "nat", "pdp-end", "sync", "remove")
        if msg["op"] == "pdp":
            plane.apply(msg)
        elif msg["op"] == "nat":
            plane.install_nat(msg)
        elif msg["op"] == "pdp-end":
            chan.send("applied", count=plane.finish(msg), nat=plane.nat_flows)
        elif msg["op"] == "sync":  # every change so far applied: when (one clock in the VM)
            chan.send("synced", count=plane.finish(msg), at=time.monotonic())
        else:
            plane.remove()
            chan.send("removed")
            return


def burst_child(netns: str, link: int, first: int, count: int) -> None:
    """The burst, in a process of its own as a gateway's signalling would be: ``count``
    contexts from UE ``first`` on device ``link``, one netlink batch; prints when the
    last was made (CLOCK_MONOTONIC: one clock in the VM)."""
    from gtp_util.model import PdpTable
    from gtp_util.netlink import PdpChannel
    from lab.gateway import ENB_ADDR, I_TEI_BASE, O_TEI_BASE, UE_BASE

    table = PdpTable()
    for i in range(first, first + count):
        table.append_v1(ENB_ADDR, UE_BASE + i, I_TEI_BASE + i, O_TEI_BASE + i)
    with PdpChannel(netns) as pdp:
        pdp.add(link, table)
    print(time.monotonic(), flush=True)


def follow_burst(sender, chan, netns: str, link: int, first: int, count: int) -> float:
    """A burst of ``count`` new contexts made on the source by another process, the
    changes pumped as ``criu-ext migrate`` pumps them while CRIU pre-dumps
    (pagesrv._wait: whenever the follower has some, at most every 50 ms); returns the
    replication lag: the burst's last context made on the source to its last applied
    on the destination."""
    import select

    child = subprocess.Popen([sys.executable, "-m", "benchmarks.stage_bench", "--burst-child",
                              netns, str(link), str(first), str(count)],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    fd = sender.follower.fileno()
    while child.poll() is None or select.select([fd], [], [], 0)[0]:
        if select.select([fd], [], [], 0.05)[0]:
            sender.pump()
            time.sleep(0.05)
    out, _ = child.communicate()
    if child.returncode:
        raise RuntimeError(f"the burst failed ({child.returncode})")
    sender.pump()
    chan.send("sync", count=sender.sent)
    return chan.recv("synced")["at"] - float(out.split()[-1])


def one(lab, dst: str, churn: int, base_ues: int, workdir: str, burst: int) -> dict:
    import gtp_util
    from criu_ext.migrate.stage import StageSender
    from criu_ext.migrate.wire import Channel
    from gtp_util.model import PdpTable
    from gtp_util.netlink import PdpChannel
    from lab.gateway import ENB_ADDR, I_TEI_BASE, O_TEI_BASE, UE_BASE
    from lab.netns import NetnsSet

    src = lab.gw_ns
    t = time.perf_counter()
    gtp_util.save(gtp_util.take_snapshot(src), os.path.join(workdir, "baseline.img"))
    baseline = time.perf_counter() - t

    a, b = socket.socketpair()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.stage_bench", "--receiver",
                              str(b.fileno()), NetnsSet.path(dst), workdir],
                             pass_fds=[b.fileno()], cwd=ROOT)
    b.close()
    chan = Channel(a)
    try:
        t = time.perf_counter()
        sender = StageSender(src, chan)
        sender.send_base()
        chan.recv("staged")
        stage_s = time.perf_counter() - t
        link = sender.snapshot.device("gtp0").ifindex
        new, gone = PdpTable(), PdpTable()
        for i in range(base_ues, base_ues + churn):
            new.append_v1(ENB_ADDR, UE_BASE + i, I_TEI_BASE + i, O_TEI_BASE + i)
        for i in range(base_ues - churn, base_ues):
            gone.append_v1(ENB_ADDR, UE_BASE + i, I_TEI_BASE + i, O_TEI_BASE + i)
        many = PdpTable()
        top = base_ues + churn
        for i in range(top, top + burst):
            many.append_v1(ENB_ADDR, UE_BASE + i, I_TEI_BASE + i, O_TEI_BASE + i)
        with PdpChannel(src) as pdp:
            lag = follow_burst(sender, chan, src, link, top, burst)
            pdp.delete(link, many)
            sender.pump()
            pdp.add(link, new)
            sender.pump()
            pdp.delete(link, gone)
            t = time.perf_counter()
            sender.finish()
            applied = chan.recv("applied")
            final = time.perf_counter() - t
            # back as it was, for the next repetition
            pdp.add(link, gone)
            pdp.delete(link, new)
        sender.close()
        chan.send("remove")
        chan.recv("removed")
    finally:
        chan.close()
        child.wait(timeout=120)
    return {"baseline_s": round(baseline, 4), "stage_s": round(stage_s, 3),
            "final_s": round(final, 4), "changes": applied["count"],
            "burst": burst, "lag_s": round(lag, 4),
            "nat_flows": applied["nat"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, default=10000)
    ap.add_argument("--churn", type=int, default=200,
                    help="contexts attached and as many detached while staged")
    ap.add_argument("--flows", type=int, default=50, help="UEs pinged: flows in conntrack")
    ap.add_argument("--burst", type=int, default=10000,
                    help="new contexts made at once on the source: the replication lag")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(ROOT) / "out" / "stage-bench.json")
    ap.add_argument("--receiver", nargs=3, metavar=("FD", "NETNS", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--burst-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.receiver:
        receiver(int(args.receiver[0]), args.receiver[1], args.receiver[2])
        return
    if args.burst_child:
        netns, link, first, count = args.burst_child
        burst_child(netns, int(link), int(first), int(count))
        return
    from lab.topology import GtpLab, segment

    with GtpLab(args.contexts) as lab:
        dst = lab.ns.add("dst")
        segment(lab.ns, dst, "b")
        import gtp_util

        with tempfile.TemporaryDirectory() as d:  # first-use costs out of the baseline
            gtp_util.save(gtp_util.take_snapshot(lab.gw_ns), os.path.join(d, "warm.img"))
        runs = []
        for _ in range(args.repeat):
            # the flows in conntrack anew (an echo's entry lives 30 s)
            answered = sum(v is not None for v in lab.ping_ues(args.flows, timeout=10).values())
            with tempfile.TemporaryDirectory() as d:
                runs.append(one(lab, dst, args.churn, args.contexts, d, args.burst)
                            | {"answered": answered})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    base = statistics.median(r["baseline_s"] for r in runs)
    final = statistics.median(r["final_s"] for r in runs)
    lag = max(r["lag_s"] for r in runs)
    result = {"kernel": os.uname().release, "contexts": args.contexts, "churn": args.churn,
              "runs": runs,
              "median_baseline_s": base, "median_final_s": final,
              "ratio": round(final / base, 4) if base else None,
              "max_lag_s": lag}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"final step {final:.3f} s, baseline {base:.3f} s: ratio {result['ratio']}; "
          f"{args.burst} new contexts on the destination at most {lag:.3f} s after the "
          f"source (results in {args.out})")


if __name__ == "__main__":
    main()
