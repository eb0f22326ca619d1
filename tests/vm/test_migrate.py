"""`criu-ext migrate` and `criu-ext receive` between the two hosts of the scenario's fabric.

Each end is a separate process on its host: host A is a network namespace in the
VM's PID namespace, host B a network namespace with a PID and mount namespace of
its own. CRIU restores a task with its PID, and the source keeps its task
(frozen) until the destination has restored it: two hosts must not share PIDs.

One fabric and one pair of hosts serve every case (module scope: each
migration costs tens of seconds in the emulated VM, a boot and a fabric should
not be paid per case):

* a memory writer moved A -> B with pre-copy: more than one round, its memory
  checked by itself (ZDTM style) on B;
* the HSS (TCP, --tcp-established) through failures: a certificate of another CA,
  the receiver killed during pre-copy, during the final transfer and during
  restore (one shot), the source's criu-ext killed during the final transfer and
  during restore (one shot each, then ``criu-ext recover`` on A), a plugin
  failing at restore (one shot). Each time the HSS
  runs on at A and its client is answered, nothing is left on B; then it moves
  A -> B (CRIU's iptables network lock) -> A (its nftables lock);
* the SPGW (gtp0, 200 UEs) moved A -> B -> A: every UE answered with its TEIDs,
  and a UE's TCP download through the SGi masquerade (a real stack behind its own
  bearer) ran across both moves and ended intact, without a reset. The move back
  starts from a namespace CRIU restored: its nat table is in nft's own form and
  its UE flows' conntrack entries come back without their NAT binding (the
  netfilter plugin gives it back); the UEs must not notice (the main job's moves
  back are the same path).

test_migrate_staged.py moves an SPGW with ``--stage`` on a fabric of its own.

Figures go to out/migrate.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.files import record_json, wait_for
from lab.procs import alive
from scenario.download import Download
from scenario.fabric import BRIDGE, outer_name
from scenario.functions import Hss, Spgw
from scenario.hosts import Hosts, two_hosts
from scenario.run import recover

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).parent / "programs"
RESULTS = ROOT / "out" / "migrate.json"
UES = 200  # as the issue asks; the UE peers ping them all after every move


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    with two_hosts("mg", tmp_path_factory.mktemp("hosts")) as h:
        yield h


def b_empty(hosts: Hosts, timeout: float = 30) -> None:
    """Nothing runs on host B but its init (B's init reaps what was killed there)."""
    end = time.monotonic() + timeout
    while hosts.tasks_b() and time.monotonic() < end:
        time.sleep(0.2)
    assert hosts.tasks_b() == []


def moved(hosts: Hosts, fn_ns: str | None, rx, rc: int, rep: dict, err: str) -> int:
    """After a migration that must have worked: the receiver says where the task runs;
    the function's netns name follows it. Returns the task's PID on the destination."""
    if rc != 0:  # say why before waiting for a receiver that may wait on
        rx.kill()
        rx.wait()
    src = "b" if rx.host == "a" else "a"
    assert rc == 0, (f"migrate: {err}\nreceiver: {hosts.log(rx)[-3000:]}"
                     + (hosts.net_state() if "cannot reach" in err else "")
                     + (hosts.failure_logs(src, err) if rc else ""))
    out, rx_err = rx.communicate(timeout=120)
    assert rx.returncode == 0, hosts.log(rx)[-3000:]
    got = json.loads(out)
    assert got["pid"] == rep["dest_pid"]
    t = rep["times"]  # the stop is CRIU's frozen time here plus the resume there
    assert t["frozen"] == pytest.approx(t["criu_frozen"] + t["dest_resume"]), t
    assert 0 < t["frozen"] <= t["final_dump_to_done"], t
    assert t["until_post_dump"] > t["plugins_begin"] > 0 and t["after_commit"] >= 0, t
    # when CRIU notified, both ends: pre-dump before the freeze, the lock (a task with
    # a netns of its own) after it, post-dump once every image is written
    at = {n["phase"]: n["at"] for n in rep["timeline"]["final_dump"]}
    assert 0 < at["pre-dump"] < at.get("network-lock", at["post-dump"]) <= at["post-dump"] \
        <= t["final_dump"], rep["timeline"]
    assert "post-restore" in [n["phase"] for n in rep["timeline"]["dest_restore"]], rep
    if fn_ns:
        hosts.fabric.retire(fn_ns)
        hosts.fabric.adopt(fn_ns, hosts.global_pid(rx.host, got["pid"]))
    return got["pid"]


def figures(rep: dict) -> dict:
    return {k: rep[k] for k in ("pre_copy_rounds", "pages_per_round", "bytes_sent",
                                "stop_reason")} | {"times": rep["times"]}


def test_memory_writer_pre_copied(hosts, tmp_path):
    out = tmp_path / "mem"
    proc = subprocess.Popen(hosts.prefix("a") + [sys.executable, str(PROGRAMS / "memwriter.py"),
                                                 str(out), "8", "40"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    seed, npages = wait_for(Path(f"{out}.expect"), 120).split()
    time.sleep(1)
    rx = hosts.receiver("b", [])
    rc, rep, err = hosts.migrate("a", proc.pid, rx)
    pid = moved(hosts, None, rx, rc, rep, err)
    assert pid == proc.pid  # CRIU keeps the PID (host B's own PID namespace)
    assert proc.wait(timeout=30) == -signal.SIGKILL  # CRIU ended the source; reaped
    assert rep["pre_copy_rounds"] >= 2, rep  # the writer keeps pages dirty: round 2
    assert rep["pages_per_round"][0] > int(npages)  # round 1: all of its memory
    # the writer checks every page on B and exits (B's init reaps it)
    os.kill(hosts.global_pid("b", pid), signal.SIGUSR1)
    verdict, token, pages, stamps, bad = wait_for(Path(f"{out}.result"), 120).split()
    assert (verdict, token, pages) == ("PASS", seed, npages), f"{bad} pages differ"
    assert int(stamps) > 0
    b_empty(hosts)
    record_json(RESULTS, "memwriter", {"a->b": figures(rep)})


def _source_runs_on(hosts: Hosts, fn, pid: int, rx, rc: int, rep: dict, err: str,
                    phase: str) -> None:
    """A failed migration: one line naming the phase, the source serving, B empty."""
    assert rc == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and phase in lines[0], err
    assert rep.get("failed_phase") and phase in rep["failed_phase"], rep
    assert alive(pid)
    # the switch sends the function's frames to A at once: B's restore may have brought
    # its links up there (the kernel speaking from their MACs), the source announced them
    # again (switch.reclaim)
    for link in fn.links:
        assert hosts.fabric.port_of(fn.ns, link) == "down-a", hosts.fabric.diagnose()
    recover(fn, time.monotonic(), timeout=60)
    assert not fn.client.errors
    if rx.poll() is None:
        rx.kill()
    rx.wait(timeout=60)
    b_empty(hosts)  # no restored task, no page server, no CRIU
    assert hosts.links("b") == sorted([BRIDGE, "lo", "up-b"])


def _logged(hosts: Hosts, rx, needle: str, mig=None, timeout: float = 300) -> None:
    """Once the receiver logged ``needle`` (the receiver, and ``mig`` if given, still run)."""
    end = time.monotonic() + timeout
    while needle not in hosts.log(rx):
        assert rx.poll() is None, hosts.log(rx)
        assert mig is None or mig.poll() is None, hosts.finish(mig)
        assert time.monotonic() < end, f"the receiver never logged {needle!r}"
        time.sleep(0.02)


def _kill_at(hosts: Hosts, rx, needle: str) -> None:
    """SIGKILL the receiver (only it: its children see it go) once it logged ``needle``."""
    _logged(hosts, rx, needle)
    os.kill(rx.rx_pid, signal.SIGKILL)


def _kill_source_at(hosts: Hosts, mig, rx, needle: str, delay: float,
                    timeout: float = 300) -> str:
    """SIGKILL the source's ``criu-ext migrate`` once the receiver logged ``needle``, wait
    for the CRIU it started to end, run ``criu-ext recover`` on host A. Returns what
    recover said."""
    from criu_ext import tasks
    from lab.criu_cmds import recover_cmd
    from lab.procs import gone

    _logged(hosts, rx, needle, mig, timeout)
    time.sleep(delay)
    children = tasks.tree(mig.pid)[1:]  # nsenter execs: mig is criu-ext itself
    mig.kill()
    mig.communicate(timeout=60)
    for p in children:
        assert gone(p, 120), f"CRIU (PID {p}) still runs after criu-ext was killed"
    r = subprocess.run(hosts.prefix("a") + recover_cmd(), capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return (r.stdout + r.stderr).strip()


def test_hss_failures_leave_it_running_then_it_moves_there_and_back(hosts, tmp_path):
    fn = Hss(hosts.fabric, tmp_path, subscribers=2000)
    pid = fn.start()
    recover(fn, time.monotonic(), timeout=120)
    ext = [f"veth[eth0]:{outer_name('hss', 'eth0')}@{BRIDGE}"]
    tcp = ["--tcp-established"]
    # past pre-copy, one round is enough to fail after (and cheaper than converging)
    one_round = [*tcp, "--max-rounds", "1"]
    one_shot = [*tcp, "--no-pre-copy"]
    cases = {}

    # a certificate of another CA: refused at the handshake, the receiver waits on
    rx = hosts.receiver("b", ext)
    rc, rep, err = hosts.migrate("a", pid, rx, tls=hosts.rogue, extra=tcp)
    assert rc == 1 and "failed at connect" in err and "certificate" in err, err
    assert alive(pid) and rx.poll() is None
    end = time.monotonic() + 30
    while "refused" not in hosts.log(rx):
        assert time.monotonic() < end, hosts.log(rx)
        time.sleep(0.1)
    cases["wrong certificate"] = err.strip()
    # the receiver killed during pre-copy (same receiver: it waited on)
    mig = hosts.migrate("a", pid, rx, extra=tcp, wait=False)
    _kill_at(hosts, rx, "round 1: page server")
    rc, rep, err = hosts.finish(mig)
    _source_runs_on(hosts, fn, pid, rx, rc, rep, err, "pre-copy round 1")
    cases["killed during pre-copy"] = err.strip()
    # (restore: the destination's trace plugin holds post-restore open for 10 s, before
    # the handoff says ready, so the kill lands while it restores however fast the
    # restore is; one shot there, the pre-copied case is the transfer's)
    held = dict(os.environ, CRIU_EXT_PLUGINS="sctp,gtp,netfilter,announce,trace",
                CRIU_EXT_TRACE_SLEEP="post-restore:10")
    for needle, phase, how, env in (("receiving images", "transfer", one_round, None),
                                    ("sleeping at post-restore", "restore", one_shot, held)):
        rx = hosts.receiver("b", ext, env=env)
        assert not list(hosts.work["b"].glob("session-*"))  # the killed one's are gone
        mig = hosts.migrate("a", pid, rx, extra=how, wait=False)
        _kill_at(hosts, rx, needle)
        rc, rep, err = hosts.finish(mig)
        _source_runs_on(hosts, fn, pid, rx, rc, rep, err, phase)
        cases[f"killed during {phase}"] = err.strip()
    # the source's criu-ext killed while it sends the final images, then while the
    # destination restores: CRIU lets the tree run again, `criu-ext recover` on A finds
    # nothing committed and rolls back, the receiver sees the source go and cleans up
    # (restore: held as above; the destination's announce plugin waits for the commit,
    # which never comes)
    for needle, phase, env in (("receiving images", "transfer", None),
                               ("sleeping at post-restore", "restore", held)):
        rx = hosts.receiver("b", ext, env=env)
        mig = hosts.migrate("a", pid, rx, extra=one_shot, wait=False)
        said = _kill_source_at(hosts, mig, rx, needle, 0.0)
        assert alive(pid) and "committed" not in said, said
        for link in fn.links:  # recover announced the source's addresses again
            assert hosts.fabric.port_of(fn.ns, link) == "down-a", hosts.fabric.diagnose()
        recover(fn, time.monotonic(), timeout=60)
        assert not fn.client.errors
        assert rx.wait(timeout=120) != 0, hosts.log(rx)
        # nothing committed, so nothing announced: B never drew the peers' frames
        assert "announced" not in hosts.log(rx), hosts.log(rx)
        b_empty(hosts)
        assert hosts.links("b") == sorted([BRIDGE, "lo", "up-b"])
        cases[f"source killed during {phase}"] = said
    # a plugin failing at restore
    env = dict(os.environ, CRIU_EXT_TRACE_FAIL="post-restore",
               CRIU_EXT_PLUGINS="sctp,gtp,netfilter,announce,trace")
    rx = hosts.receiver("b", ext, env=env)
    rc, rep, err = hosts.migrate("a", pid, rx, extra=one_shot)
    _source_runs_on(hosts, fn, pid, rx, rc, rep, err, "restore")
    assert "trace" in err
    assert not list(hosts.work["b"].glob("session-*"))
    cases["plugin fails at restore"] = err.strip()

    runs = {}
    # there with CRIU's default lock (iptables), back with its nftables lock
    for src, dst, lock in (("a", "b", "iptables"), ("b", "a", "nftables")):
        rx = hosts.receiver(dst, ext)
        rc, rep, err = hosts.migrate(src, pid, rx, extra=[*tcp, "--network-lock", lock])
        t = time.monotonic()
        pid = moved(hosts, fn.ns, rx, rc, rep, err)
        back = recover(fn, t, timeout=60)
        runs[f"{src}->{dst}"] = figures(rep) | {"answered_again_s": round(back, 3),
                                                 "network_lock": lock}
    peers = fn.stop()
    assert peers["errors"] == [], peers  # counters continuous: nothing lost or repeated
    assert peers["answers"] > 0
    record_json(RESULTS, "hss", {"failures": cases, "moves": runs})


def test_spgw_there_and_back(hosts, tmp_path):
    """...with a UE's TCP download through the SGi masquerade running across both
    moves: CRIU restores its conntrack entry without the NAT binding, the netfilter
    plugin gives it back (gtp_util.natflows), so the PDN's segments are translated
    back to the UE instead of reset by the gateway."""
    fn = Spgw(hosts.fabric, tmp_path, UES)
    pid = fn.start()
    recover(fn, time.monotonic(), timeout=120)
    download = Download(hosts.fabric, tmp_path)
    download.start(fn.ns, fn.pdn)
    ext = [f"veth[{i}]:{outer_name('spgw', i)}@{BRIDGE}" for i in fn.links]
    runs = {}
    try:
        for src, dst in (("a", "b"), ("b", "a")):
            before = wait_download(download, download.received() + 100_000)
            rx = hosts.receiver(dst, ext)
            rc, rep, err = hosts.migrate(src, pid, rx)
            t = time.monotonic()
            pid = moved(hosts, fn.ns, rx, rc, rep, err)
            fn.pid = hosts.global_pid(dst, pid)
            back = recover(fn, t, timeout=90)  # every UE answered, the gateway's check PASS
            wait_download(download, before + 300_000)  # it carries on through the new host
            runs[f"{src}->{dst}"] = figures(rep) | {"answered_again_s": round(back, 3)}
    finally:
        seen = download.finish()
    peers = fn.stop()
    runs["download"] = seen
    record_json(RESULTS, "spgw", runs)
    assert peers["wrong_teid"] == 0 and peers["ues_answered"] == UES, peers
    assert seen["pdn_error"] is None and seen["ue_error"] is None, seen  # no reset
    assert seen["clean_close"] and seen["intact"], seen
    assert seen["received"] == seen["sent"] > 1_000_000, seen


def wait_download(download: Download, at_least: int, timeout: float = 120) -> int:
    """The bytes the UE has read once they reach ``at_least``."""
    end = time.monotonic() + timeout
    while (got := download.received()) < at_least:
        assert time.monotonic() < end, f"the UE's download stalled at {got} bytes"
        time.sleep(0.2)
    return got
