"""Share of CRIU's frozen window spent in the criu_ext plugins, 10,000 PDP contexts (JSON out).

Run inside the test VM (gtp module, CRIU), as root:

    python -m benchmarks.criu_plugins [--contexts 10000] [--repeat 3] [--out FILE]
    python -m tests.vm.runner --exec -- .venv/bin/python -m benchmarks.criu_plugins

A gateway task (lab.gateway) holds UDP 2152 and gtp0 with N PDP contexts and
the UE-pool route in a namespace of its own. It is dumped and restored with the
gtp and netfilter plugins, in RPC mode (``criu-ext dump|restore``) and in
action-script mode (``criu --action-script`` with the hook script).

The frozen window is CRIU's own measure: ``frozen_time`` of stats-dump (tasks
frozen until the dump ends) plus ``restore_time`` of stats-restore (until the
tasks run again). The plugin time inside it:

* RPC mode: the time the plugins took in the phases inside those windows
  (network-lock, post-dump, network-unlock at dump; pre-restore to
  network-unlock at restore), as recorded in criu-ext.json (imports are done
  before CRIU starts, by the plugins' ``warm``);
* action-script mode: for each frozen phase, what CRIU waited for the script:
  from its ``Running <phase> scripts`` log line to the hook's exit, i.e. fork,
  exec of the shell, the round trip to the session process and plugin work (the
  session process logs the hook's age when it answers; phases the hook ends in
  the shell cost the gap to CRIU's next line).

Target: at most 5 % in RPC mode. Baseline, measured in the same run: the kernel's
own share (adding the contexts to a fresh device, deleting a device holding them:
work that has to happen inside the window whoever does it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
TARGET = 0.05
# The phases inside CRIU's own windows: frozen_time (dump) and restore_time (restore;
# pre-resume and post-resume come after it).
RESTORE_FROZEN = ("pre-restore", "setup-namespaces", "post-setup-namespaces", "post-restore",
                  "network-unlock")
DUMP_FROZEN = ("network-lock", "post-dump", "network-unlock")
_AGE = re.compile(r"^criu-ext: debug: (\S+): ([\d.]+) ms in plugins, (\d+) ms since exec")


def sh(*argv, check=True, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, close_fds=True, **kw)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv))}: {p.stderr.strip() or p.stdout.strip()}")
    return p


class Gateway:
    """A netns with the lab gateway (UDP 2152, gtp0, N contexts, route, MASQUERADE)."""

    def __init__(self, n: int, tmp: Path):
        self.ns = f"cbench-{os.getpid()}"
        self.tmp = tmp
        sh("ip", "netns", "add", self.ns)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("nsenter", f"--net=/run/netns/{self.ns}", "--", "iptables", "-w", "-t", "nat", "-A",
           "POSTROUTING", "-s", "10.128.0.0/16", "-j", "MASQUERADE")
        self.out = tmp / "gateway.out"
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns}", "--", sys.executable, "-m",
             "lab.gateway", "--ues", str(n)], cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=open(self.out, "w"), stderr=subprocess.STDOUT, start_new_session=True,
            close_fds=True)
        end = time.monotonic() + 300
        while "READY" not in self.out.read_text():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.pid = 0
                self.close()  # its netns goes with it
                raise RuntimeError(f"gateway did not start: {self.out.read_text()}")
            time.sleep(0.2)
        self.pid = self.proc.pid

    def contexts(self, pid: int) -> int:
        import gtp_util

        return gtp_util.take_snapshot(f"/proc/{pid}/ns/net", with_nat=False,
                                      with_sockets=False).n_contexts

    def close(self, restored: int | None = None) -> None:
        for pid in (restored, self.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait()
        sh("ip", "netns", "del", self.ns, check=False)


def criu_stats(images: Path) -> dict:
    from criu_ext.criu_images import stats

    return stats(str(images))


def manifest(images: Path) -> dict:
    return json.loads((images / "criu-ext.json").read_text())


def plugin_seconds(m: dict, action: str, phases) -> float:
    return sum(t["seconds"] for t in m.get(action, {}).get("timings", [])
               if t["phase"] in phases or (t["phase"] == "rollback" and "network-unlock" in phases))


def script_phase_costs(log: str) -> dict[str, float]:
    """What CRIU waited for the script in each phase (seconds)."""
    from criu_ext import criulog

    ages = {}
    for line in log.splitlines():
        m = _AGE.match(line)
        if m:
            ages[m.group(1)] = int(m.group(3)) / 1000
    out = {}
    for c in criulog.phase_costs(log):
        # an answered phase reports the hook's age; a phase ended in the shell costs CRIU's gap
        out[c["phase"]] = ages.get(c["phase"], c["seconds"])
    return out


def run_once(mode: str, n: int, tmp: Path, keep_logs: Path | None = None) -> dict:
    from criu_ext import launcher

    gw = Gateway(n, tmp)
    restored = None
    try:
        images = tmp / f"img-{mode}"
        images.mkdir()
        env = dict(os.environ, CRIU_EXT_RUN_DIR=str(tmp / "run"), CRIU_EXT_LOG_LEVEL="4")
        env.pop("CRIU_EXT_PLUGINS", None)
        hook = launcher.install(str(tmp / "hook.sh"))
        t0 = time.monotonic()
        if mode == "rpc":
            d = sh(str(VENV_BIN / "criu-ext"), "dump", "-t", str(gw.pid), "-D", str(images),
                   "-v", "4", "--json", env=env)
        else:
            d = sh("criu", "dump", "-t", str(gw.pid), "-D", str(images), "-o", "dump.log", "-v4",
                   "--action-script", hook, env=env)
        dump_wall = time.monotonic() - t0
        gw.proc.wait(timeout=30)
        t0 = time.monotonic()
        if mode == "rpc":
            r = sh(str(VENV_BIN / "criu-ext"), "restore", "-D", str(images), "-v", "4", "--json",
                   "--pidfile", str(tmp / f"pid-{mode}"), env=env)
        else:
            r = sh("criu", "restore", "-D", str(images), "-o", "restore.log", "-v4",
                   "--restore-detached", "--pidfile", str(tmp / f"pid-{mode}"),
                   "--action-script", hook, env=env)
        restore_wall = time.monotonic() - t0
        restored = int((tmp / f"pid-{mode}").read_text())
        got = gw.contexts(restored)
        st = criu_stats(images)
        frozen = st["dump"]["frozen_time"] / 1e6
        restore_s = st["restore"]["restore_time"] / 1e6
        m = manifest(images)
        res = {
            "contexts_restored": got, "dump_wall_s": round(dump_wall, 3),
            "restore_wall_s": round(restore_wall, 3), "criu_frozen_s": frozen,
            "criu_restore_s": restore_s,
            "image_bytes": sum(f.stat().st_size for f in images.iterdir() if f.is_file()),
            "gtp_image_bytes": (images / "criu-ext-gtp.img").stat().st_size,
            "plugin_timings": {"dump": m["dump"]["timings"], "restore": m["restore"]["timings"]},
        }
        if mode == "rpc":
            in_dump = plugin_seconds(m, "dump", DUMP_FROZEN)
            in_restore = plugin_seconds(m, "restore", RESTORE_FROZEN)
            dn, rn = json.loads(d.stdout)["notify"], json.loads(r.stdout)["notify"]
            res["notify_dump"], res["notify_restore"] = dn, rn
            # the whole notify round (session bookkeeping, manifest) beside the plugins' own
            res["notify_frozen_s"] = round(
                sum(x["seconds"] for x in dn if x["phase"] in DUMP_FROZEN)
                + sum(x["seconds"] for x in rn if x["phase"] in RESTORE_FROZEN), 4)
        else:
            dlog, rlog = (images / "dump.log").read_text(), (images / "restore.log").read_text()
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                (keep_logs / "script-dump.log").write_text(dlog)
                (keep_logs / "script-restore.log").write_text(rlog)
            dcost = script_phase_costs(dlog)
            rcost = script_phase_costs(rlog)
            res["script_phase_costs"] = {"dump": dcost, "restore": rcost}
            in_dump = sum(v for k, v in dcost.items() if k in DUMP_FROZEN)
            in_restore = sum(v for k, v in rcost.items() if k in RESTORE_FROZEN)
        res.update({
            "plugin_frozen_dump_s": round(in_dump, 4),
            "plugin_frozen_restore_s": round(in_restore, 4),
            "share_dump": round(in_dump / frozen, 4) if frozen else None,
            "share_restore": round(in_restore / restore_s, 4) if restore_s else None,
            "share_total": round((in_dump + in_restore) / (frozen + restore_s), 4),
        })
        return res
    finally:
        gw.close(restored)


def kernel_floor(n: int) -> dict:
    """What the kernel alone takes for the work no plugin can leave out of the window:
    adding ``n`` PDP contexts to a fresh device (restore) and deleting a device that
    holds them (dump), timed around the bare netlink calls in a scratch netns."""
    from gtp_util.dump import delete_links
    from gtp_util.model import SOCKET_KERNEL, Device, SocketRef
    from gtp_util.netlink import PdpChannel
    from gtp_util.rtnl import Rtnl
    from lab.gateway import contexts

    ns = f"cfloor-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    path = f"/run/netns/{ns}"
    try:
        dev = Device("gtpf", 0, sock1=SocketRef(kind=SOCKET_KERNEL), up=True)
        with Rtnl(path) as rt:
            rt.add_gtp_link(dev, None, None)
        idx = int(sh("ip", "-n", ns, "-o", "link", "show", "gtpf").stdout.split(":")[0])
        table = contexts(n)
        with PdpChannel(path) as chan:
            t0 = time.perf_counter()
            chan.add(idx, table)
            t1 = time.perf_counter()
        delete_links(path, [idx])
        t2 = time.perf_counter()
    finally:
        sh("ip", "netns", "del", ns, check=False)
    return {"add_contexts_s": round(t1 - t0, 4), "delete_device_s": round(t2 - t1, 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, default=10000)
    ap.add_argument("--modes", default="rpc,script")
    ap.add_argument("--repeat", type=int, default=1,
                    help="RPC runs (the figures are their medians; script mode runs once)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "criu-plugins.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    out = {"contexts": args.contexts, "target_rpc_share_max": TARGET, "kernel": os.uname().release}
    with tempfile.TemporaryDirectory(prefix="criu-plugins-") as tmp:
        for mode in args.modes.split(","):
            runs = []
            for i in range(args.repeat if mode == "rpc" else 1):
                d = Path(tmp) / f"{mode}{i}"
                d.mkdir()
                runs.append(run_once(mode, args.contexts, d, args.out.with_suffix(".logs")))
            # the run whose share is the median, with every run's share beside it
            r = out[mode] = dict(sorted(runs, key=lambda x: x["share_total"])[len(runs) // 2])
            r["share_total_runs"] = [x["share_total"] for x in runs]
            print(f"{mode}: {r['contexts_restored']} contexts back; frozen {r['criu_frozen_s']:.2f} s "
                  f"+ restore {r['criu_restore_s']:.2f} s; plugins {r['plugin_frozen_dump_s']:.3f} s "
                  f"+ {r['plugin_frozen_restore_s']:.3f} s = {r['share_total'] * 100:.1f} % "
                  f"(dump {r['share_dump'] * 100:.1f} %, restore {r['share_restore'] * 100:.1f} %)",
                  flush=True)
    if "rpc" in out:
        out["rpc_within_target"] = out["rpc"]["share_total"] <= TARGET
        # the baseline of this run: the kernel's own share, which no plugin can avoid
        floor = kernel_floor(args.contexts)
        r = out["rpc"]
        window = r["criu_frozen_s"] + r["criu_restore_s"]
        floor["share"] = round((floor["add_contexts_s"] + floor["delete_device_s"]) / window, 4)
        floor["plugins_over_kernel"] = round(
            (r["plugin_frozen_dump_s"] + r["plugin_frozen_restore_s"])
            / (floor["add_contexts_s"] + floor["delete_device_s"]), 2)
        out["kernel_floor"] = floor
        print(f"kernel alone: add {floor['add_contexts_s']:.3f} s + delete "
              f"{floor['delete_device_s']:.3f} s = {floor['share'] * 100:.1f} % of the window; "
              f"plugins take {floor['plugins_over_kernel']}x that; RPC share over runs: "
              f"{[round(x * 100, 1) for x in r['share_total_runs']]} %", flush=True)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written {args.out}")
    ok = all(out[m]["contexts_restored"] == args.contexts for m in args.modes.split(","))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
