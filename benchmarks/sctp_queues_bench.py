"""The MME's dump with its SCTP queues carried against drained (JSON out).

Runs inside a VM booted from the patched kernel (root, network namespaces,
CRIU, SCTP repair mode with SCTP_REPAIR_RCVQ and SCTP_REPAIR_SNDQ):

    python -m tests.vm.runner --tier repair --kernel "$kernel" --exec --timeout 1800 -- \\
        .venv/bin/python -m benchmarks.sctp_queues_bench [--repeat 3] \\
        [--out out/sctp-queues-bench.json]

Each move: the SCTP lab's MME (lab.sctp_lab: an epoll server and three base
stations sending requests without pause) dumped on host A and restored on
host B through criu-ext's RPC with the sctp plugin, alternately with
``CRIU_EXT_SCTP_QUEUES=drain`` (the baseline, measured in the same run: the
dump waits until the MME has read everything and its peers acknowledged
everything) and with ``carry`` (the default: the queues go in the image), each
on a fresh lab. Figures per move: the sctp plugin's time in the dump (find,
drain, stop, save, swap), the whole checkpoint, the base stations' longest
gap, and what the image carried; then the medians and the ratio carry / drain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from criu_ext.plugins.sctp import IMAGE  # noqa: E402
from criu_ext.sctp_carry import read_image  # noqa: E402
from lab.sctp_lab import SctpLab  # noqa: E402
from lab.sctp_migrate import migrate, peer_gap  # noqa: E402


def carried(images: Path) -> dict:
    """Messages and bytes the image's associations carried, by queue."""
    out = {"unread": [0, 0], "in_flight": [0, 0], "unsent": [0, 0]}  # messages, bytes
    _, items = read_image(str(images / IMAGE))
    for it in items:
        if it.assoc is not None:
            for name, total in out.items():
                queue = getattr(it.assoc, name)
                total[0] += len(queue)
                total[1] += sum(len(m.data) for m in queue)
    return {k: {"messages": v[0], "bytes": v[1]} for k, v in out.items()}


def move(queues: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="sctp-queues-") as d:
        tmp = Path(d)
        lab = SctpLab(tmp).start()
        try:
            lab.wait_flowing(["node", "p1", "p2"], 10)
            rec = migrate("rpc", lab, tmp, env={"CRIU_EXT_SCTP_QUEUES": queues})
            lab.wait_flowing(["node", "p1", "p2"], 20)
            return {"queues": queues, "sctp_plugin_dump_s": rec["plugin_s"]["dump"],
                    "checkpoint_s": rec["checkpoint_s"], "restore_s": rec["restore_s"],
                    "peer_gap_s": peer_gap(lab, rec["t0"] - 1),
                    "carried": carried(tmp / "img")}
        finally:
            lab.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--repeat", type=int, default=3, help="moves per mode (default 3)")
    ap.add_argument("--out", default="out/sctp-queues-bench.json")
    args = ap.parse_args(argv)
    runs = []
    for _ in range(args.repeat):
        for queues in ("drain", "carry"):
            runs.append(move(queues))
            print(json.dumps(runs[-1]), flush=True)
    res: dict = {"runs": runs}
    for key in ("sctp_plugin_dump_s", "checkpoint_s", "peer_gap_s"):
        med = {q: statistics.median(r[key] for r in runs if r["queues"] == q)
               for q in ("drain", "carry")}
        res[f"median_{key}"] = med
        res[f"ratio_{key}"] = round(med["carry"] / med["drain"], 3) if med["drain"] else None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
