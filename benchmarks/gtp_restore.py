"""Dump and restore rates of PDP contexts, batched vs one request per context (JSON out).

Run inside the test VM (needs the gtp module), as root:

    python -m benchmarks.gtp_restore [--sizes 1000,10000,100000] [--out FILE]

For each size, in a fresh namespace with a task-held GTP-U socket and one gtp
device, it measures:

* ``baseline_add_per_s``: one NEWPDP request, one acknowledgement, through
  pyroute2 (what ``gtp-tunnel add`` or a naive pyroute2 loop does); measured on at
  most ``--baseline-max`` contexts, since it is a rate;
* ``pyroute2_batch_add_per_s``: pyroute2's own ``nlm_request_batch`` (at most
  ``--baseline-max`` contexts);
* ``batched_add_per_s``: :class:`PdpChannel` (pre-packed requests, 2048 per send,
  an acknowledgement asked for only the last of each batch);
* ``batched_ack_every_add_per_s``: the same with every request acknowledged;
* ``dump_per_s``: the GETPDP dump decoded by :class:`PdpChannel`;
* ``end_to_end_s``: ``take_snapshot`` + save + ``remove`` + load + ``restore``
  (the whole user plane: device, contexts, route);
* ``dump_process.peak_rss_mb``: peak RSS (VmHWM) of a separate process that runs
  ``take_snapshot`` + ``save`` (interpreter and pyroute2 included); its ``seconds``
  are those two calls, ``imports_s`` the imports before them (in the VM, where the
  root file system is 9p, mostly file lookups).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def _table(n: int, ue_base: int = 0x0A800001):
    from gtp_util.model import PdpTable
    t = PdpTable()
    for i in range(n):
        t.append_v1(0x0A000002, ue_base + i, 1000 + i, 5000000 + i)
    return t


def _device_snapshot(pid: int, fd: int, n: int):
    from gtp_util.model import Device, Route, Snapshot, SocketRef
    ref = SocketRef(kind='task', pid=pid, fd=fd, family=socket.AF_INET, addr='0.0.0.0',
                    port=2152)
    return Snapshot(devices=[Device('gtp0', 0, up=True, sock1=ref, contexts=_table(n))],
                    routes=[Route(socket.AF_INET, '10.128.0.0', 9, 'gtp0')])


def dump_child(ns: str, path: str) -> None:
    t0 = time.perf_counter()
    import gtp_util
    import gtp_util.dump  # noqa: F401 - pyroute2: about 1,100 file lookups over the VM's 9p
    import gtp_util.image  # noqa: F401
    t1 = time.perf_counter()
    snap = gtp_util.take_snapshot(ns)
    gtp_util.save(snap, path)
    dt = time.perf_counter() - t1
    # VmHWM, not ru_maxrss: the latter survives execve and would report the parent's peak
    with open('/proc/self/status', encoding='ascii') as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024
    print(json.dumps({'contexts': snap.n_contexts, 'imports_s': t1 - t0, 'seconds': dt,
                      'peak_rss_mb': rss}))


def run_size(n: int, baseline_max: int) -> dict:
    import gtp_util
    from gtp_util.netlink import GtpGenl, PdpChannel
    from lab import holder
    from lab.netns import NetnsSet
    from procns.netns import in_netns

    nss = NetnsSet('bench')
    name = nss.add('gw')
    ns = nss.path(name)
    p, (fd,) = holder.start(ns, '0.0.0.0:2152')
    out: dict = {'contexts': n}
    try:
        gtp_util.restore(_device_snapshot(p.pid, fd, 0), ns)
        snap = gtp_util.take_snapshot(ns)
        idx = snap.devices[0].ifindex
        table = _table(n)
        with PdpChannel(ns) as ch:
            # baseline: one request with acknowledgement per context (pyroute2)
            nb = min(n, baseline_max)
            with in_netns(ns):
                g = GtpGenl()
            rows = [table[i] for i in range(nb)]
            t0 = time.perf_counter()
            for ctx in rows:
                g.new_pdp(idx, ctx)
            dt = time.perf_counter() - t0
            out['baseline_add_per_s'] = nb / dt
            out['baseline_measured_on'] = nb
            ch.delete(idx, table.slice(0, nb))
            # pyroute2's own batching
            from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
            msgs = []
            for ctx in rows:
                m = g._msg(0, idx, ctx)
                m['header']['type'] = g.prid
                m['header']['flags'] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
                msgs.append(m)
            t0 = time.perf_counter()
            for i in range(0, len(msgs), 256):
                g.nlm_request_batch(msgs[i:i + 256])
            dt = time.perf_counter() - t0
            out['pyroute2_batch_add_per_s'] = nb / dt
            g.close()
            ch.delete(idx, table.slice(0, nb))
            # batched, every request acknowledged
            t0 = time.perf_counter()
            ch.add(idx, table, ack_every=True)
            out['batched_ack_every_add_per_s'] = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            ch.delete(idx, table)
            out['batched_delete_per_s'] = n / (time.perf_counter() - t0)
            # batched, acknowledgement only for the last of each batch
            t0 = time.perf_counter()
            ch.add(idx, table)
            out['batched_add_per_s'] = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            tabs = ch.dump()
            out['dump_per_s'] = n / (time.perf_counter() - t0)
            assert len(tabs[idx]) == n
            del tabs
        out['restore_speedup_vs_baseline'] = out['batched_add_per_s'] / out['baseline_add_per_s']
        # end to end through the public API
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            snap = gtp_util.take_snapshot(ns)
            t1 = time.perf_counter()
            path = gtp_util.save(snap, d)
            t2 = time.perf_counter()
            gtp_util.remove(snap, ns)
            t3 = time.perf_counter()
            back = gtp_util.load(path)
            t4 = time.perf_counter()
            gtp_util.restore(back, ns)
            t5 = time.perf_counter()
            out['image_bytes'] = os.path.getsize(path)
            out['end_to_end'] = {'take_snapshot_s': t1 - t0, 'save_s': t2 - t1,
                                 'remove_s': t3 - t2, 'load_s': t4 - t3, 'restore_s': t5 - t4,
                                 'dump_and_restore_s': t5 - t0}
            child = subprocess.run([sys.executable, '-m', 'benchmarks.gtp_restore',
                                    '--dump-child', ns, os.path.join(d, 'child.img')],
                                   capture_output=True, text=True, close_fds=True,
                                   cwd=os.path.dirname(os.path.dirname(
                                       os.path.abspath(__file__))))
            if child.returncode:
                raise RuntimeError(child.stderr)
            c = json.loads(child.stdout)
            out['dump_process'] = c
            assert c['contexts'] == n
    finally:
        p.kill()
        nss.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', default='1000,10000,100000')
    ap.add_argument('--baseline-max', type=int, default=5000)
    ap.add_argument('--out')
    ap.add_argument('--dump-child', nargs=2, metavar=('NETNS', 'PATH'), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dump_child:
        dump_child(*args.dump_child)
        return
    result = {'kernel': os.uname().release, 'python': sys.version.split()[0], 'runs': []}
    for n in (int(x) for x in args.sizes.split(',')):
        result['runs'].append(run_size(n, args.baseline_max))
        print(json.dumps(result['runs'][-1]), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    print(text)


if __name__ == '__main__':
    main()
