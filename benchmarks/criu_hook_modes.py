"""Dump + restore of one GTP gateway under three hooks, at several sizes (JSON out).

Run inside the test VM (gtp module, CRIU), as root:

    python -m benchmarks.criu_hook_modes [--contexts 300,10000] [--out FILE]
    python -m tests.vm.runner --exec -- .venv/bin/python -m benchmarks.criu_hook_modes

The gateway (lab.gateway: UDP 2152 and gtp0 bound to it, N PDP contexts, the UE-pool
route, SGi MASQUERADE, its own netns) is dumped and restored, each time a fresh one,

* naive: ``criu --action-script`` with a reference hook written here, the baseline:
  a Python script started by CRIU in every phase, importing gtp_util at the top; at
  network-lock it snapshots and removes the device, at post-restore it re-creates
  the device and adds the PDP contexts one netlink request (and acknowledgement)
  each;
* script: ``criu --action-script criu-ext-hook`` (the installed hook: one session
  process per dump or restore, later phases answered from the shell);
* rpc: ``criu-ext dump`` / ``criu-ext restore`` (CRIU's RPC, notify answered in-process).

Every mode must bring all N contexts back. Measured: wall time of the dump and of
the restore command, and CRIU's own windows (stats-dump frozen_time, stats-restore
restore_time). Ratios per size: script / naive and script / rpc on dump + restore
wall time. Targets (issue 18): script <= 0.5x naive, script <= 1.5x rpc.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.criu_plugins import ROOT, VENV_BIN, Gateway, criu_stats, sh

MODES = ("naive", "script", "rpc")
TARGET_VS_NAIVE = 0.5
TARGET_VS_RPC = 1.5

NAIVE_HOOK = '''#!{python}
# The naive action script of benchmarks/criu_hook_modes.py: started by CRIU in every
# phase, imports at the top, one netlink request per PDP context.
import os
import socket
import sys

sys.path.insert(0, {root!r})
import gtp_util
from gtp_util.model import PdpTable
from gtp_util.netlink import GtpGenl
from procns.netns import in_netns

phase = os.environ["CRTOOLS_SCRIPT_ACTION"]
image = os.path.join(os.path.realpath(os.environ["CRTOOLS_IMAGE_DIR"]), "naive-gtp.img")
pid = os.environ.get("CRTOOLS_INIT_PID")
netns = f"/proc/{{pid}}/ns/net" if pid else None
if phase == "network-lock":
    snap = gtp_util.take_snapshot(netns, with_nat=False)
    gtp_util.save(snap, image)
    gtp_util.remove(snap, netns, nat_rules=False)
elif phase == "post-restore":
    snap = gtp_util.load(image)
    tables = {{}}
    for dev in snap.devices:
        tables[dev.name], dev.contexts = dev.contexts, PdpTable()
    gtp_util.restore(snap, netns, bind_pid=int(pid))  # devices, addresses, routes
    with in_netns(netns):
        links = {{name: socket.if_nametoindex(name) for name in tables}}
        genl = GtpGenl()
    for name, table in tables.items():
        for ctx in table:
            genl.new_pdp(links[name], ctx)
    genl.close()
'''


def naive_hook(tmp: Path) -> str:
    path = tmp / "naive-hook.py"
    path.write_text(NAIVE_HOOK.format(python=VENV_BIN / "python", root=str(ROOT)))
    path.chmod(0o755)
    return str(path)


def run_once(mode: str, n: int, tmp: Path) -> dict:
    gw = Gateway(n, tmp)
    restored = None
    try:
        images = tmp / "img"
        images.mkdir()
        env = dict(os.environ, CRIU_EXT_RUN_DIR=str(tmp / "run"))
        env.pop("CRIU_EXT_PLUGINS", None)
        env.pop("CRIU_EXT_LOG_LEVEL", None)
        pidfile = str(tmp / "pid")
        hook = naive_hook(tmp) if mode == "naive" else str(VENV_BIN / "criu-ext-hook")
        t0 = time.monotonic()
        if mode == "rpc":
            sh(str(VENV_BIN / "criu-ext"), "dump", "-t", str(gw.pid), "-D", str(images),
               "-v", "4", env=env)
        else:
            sh("criu", "dump", "-t", str(gw.pid), "-D", str(images), "-o", "dump.log", "-v4",
               "--action-script", hook, env=env)
        dump_s = time.monotonic() - t0
        gw.proc.wait(timeout=60)  # reap it: CRIU restores the same PID
        t0 = time.monotonic()
        if mode == "rpc":
            sh(str(VENV_BIN / "criu-ext"), "restore", "-D", str(images), "-v", "4",
               "--pidfile", pidfile, env=env)
        else:
            sh("criu", "restore", "-D", str(images), "-o", "restore.log", "-v4",
               "--restore-detached", "--pidfile", pidfile, "--action-script", hook, env=env)
        restore_s = time.monotonic() - t0
        restored = int(Path(pidfile).read_text())
        got = gw.contexts(restored)
        st = criu_stats(images)
        return {"contexts_restored": got, "dump_s": round(dump_s, 3),
                "restore_s": round(restore_s, 3), "total_s": round(dump_s + restore_s, 3),
                "criu_frozen_s": st["dump"]["frozen_time"] / 1e6,
                "criu_restore_s": st["restore"]["restore_time"] / 1e6}
    finally:
        gw.close(restored)


def ratios(by_mode: dict) -> dict:
    out = {}
    s = by_mode.get("script")
    for base in ("naive", "rpc"):
        b = by_mode.get(base)
        if s and b:
            out[f"script_over_{base}"] = round(s["total_s"] / b["total_s"], 3)
            out[f"script_over_{base}_dump"] = round(s["dump_s"] / b["dump_s"], 3)
            out[f"script_over_{base}_restore"] = round(s["restore_s"] / b["restore_s"], 3)
    if "script_over_naive" in out:
        out["within_target_vs_naive"] = out["script_over_naive"] <= TARGET_VS_NAIVE
    if "script_over_rpc" in out:
        out["within_target_vs_rpc"] = out["script_over_rpc"] <= TARGET_VS_RPC
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="300,10000",
                    help="comma-separated gateway sizes (PDP contexts)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "criu-hook-modes.json")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.contexts.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (known: {', '.join(MODES)})")
    try:  # say so now, not after the runs
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(args.out.parent, os.W_OK):
            raise PermissionError("its directory is not writable here")
    except OSError as exc:
        ap.error(f"--out {args.out}: {exc.strerror or exc}")
    out = {"kernel": os.uname().release, "targets": {"script_over_naive_max": TARGET_VS_NAIVE,
                                                     "script_over_rpc_max": TARGET_VS_RPC},
           "sizes": {}}
    ok = True
    with tempfile.TemporaryDirectory(prefix="criu-hook-modes-") as tmp:
        for n in sizes:
            by_mode = {}
            for mode in modes:
                d = Path(tmp) / f"{mode}-{n}"
                d.mkdir()
                r = by_mode[mode] = run_once(mode, n, d)
                ok &= r["contexts_restored"] == n
                print(f"{n} contexts, {mode}: dump {r['dump_s']:.2f} s + restore "
                      f"{r['restore_s']:.2f} s = {r['total_s']:.2f} s "
                      f"({r['contexts_restored']} contexts back)", flush=True)
            by_mode["ratios"] = ratios(by_mode)
            out["sizes"][str(n)] = by_mode
            print(f"{n} contexts: {json.dumps(by_mode['ratios'])}", flush=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
