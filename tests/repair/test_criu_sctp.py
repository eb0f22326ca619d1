"""SCTP programs migrated with stock CRIU 3.17 and the sctp plugin, on the patched kernel.

An MME-like epoll server with three base-station peers (two Python clients and
lksctp-tools' sctp_darn) and a client-side variant (a thread blocked in
recvmsg, a select loop, a poll loop) move from host A to host B with
``criu dump`` / ``criu restore`` (action script) and ``criu-ext dump|restore``
(RPC). The verdicts come from the programs themselves: each checks its own
numbered messages (no gap, duplicate or reordering) and records every
notification after its association came up; the peers' SCTP MIB counters
must show no association ended or started. Failed dumps must put every
socket back and keep the associations. Figures go to out/criu-sctp.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lab import criu_cmds
from lab.criu_cmds import log_of
from lab.files import record_json
from lab.sctp_migrate import MIB_KEYS, assert_clean, dump_cmd, env_for, migrate, peer_gap, verdicts

pytestmark = pytest.mark.repair

RESULTS = Path(__file__).resolve().parents[2] / "out" / "criu-sctp.json"


@pytest.mark.parametrize("mode", ["script", "rpc"])
def test_mme_moves_and_its_base_stations_notice_nothing(mode, lab_factory, tmp_path):
    lab = lab_factory("mme")
    lab.wait_flowing(["node"] + ["p1", "p2"], 10)
    assert len(lab.status("node")["flows"]) == 3  # p1, p2 and sctp_darn
    mib = {n: lab.snmp(n) for n in lab.peer_names}
    notes = {n: st.get("notifications") for n, st in verdicts(lab).items()}
    assert all(x == ["ASSOC_CHANGE:COMM_UP"] for n, x in notes.items() if n != "node"), notes

    rec = migrate(mode, lab, tmp_path)
    lab.wait_flowing(["node", "p1", "p2"], 20)
    darn_before = lab.darn_sent
    rec["path_notifications"] = assert_clean(lab, notes)
    aborted = {}
    for n in lab.peer_names:
        after = lab.snmp(n)
        assert {k: after[k] for k in MIB_KEYS} == {k: mib[n][k] for k in MIB_KEYS}, n
        aborted[n] = after["SctpAborteds"] - mib[n]["SctpAborteds"]
    rec["peer_mib_aborteds"] = aborted  # seen once at 1 with the association alive: recorded
    assert lab.node.pid == lab.restored_pid
    rec["downtime_s"] = peer_gap(lab, rec.pop("t0") - 1)  # CLOCK_MONOTONIC is machine-wide
    rec["darn_lines_sent"] = darn_before
    record_json(RESULTS, f"mme-{mode}", rec)
    print(json.dumps(rec))
    assert rec["sockets"] == 4  # the listener and three associations


def test_client_with_a_thread_blocked_in_recvmsg_moves(lab_factory, tmp_path):
    lab = lab_factory("client")
    lab.wait_until(lambda: sorted(lab.status("node").get("flows", {})) ==
                   ["poll", "push", "select"], "all three loops of the client running")
    lab.wait_flowing(["node"], 10)
    notes = {n: st.get("notifications") for n, st in verdicts(lab).items()}
    rec = migrate("script", lab, tmp_path)
    lab.wait_flowing(["node", "far"], 20)
    rec["path_notifications"] = assert_clean(lab, notes)
    rec.pop("t0")
    record_json(RESULTS, "client-script", rec)
    assert rec["sockets"] == 3


FAILURES = {
    "plugin-network-lock": {"CRIU_EXT_TRACE_FAIL": "network-lock"},
    "plugin-post-dump": {"CRIU_EXT_TRACE_FAIL": "post-dump"},
}


def failed_dump(lab, failure: str, mode: str, tmp: Path) -> None:
    """One dump made to fail: every socket back, fence lifted, unsealed."""
    images = tmp / "img"
    images.mkdir(parents=True)
    d = lab.in_host(lab.a, dump_cmd(mode, lab, images, tmp),
                    env=env_for(tmp, **FAILURES[failure]))
    assert d.returncode != 0, f"{failure}: the dump was supposed to fail"
    assert lab.node.poll() is None, "the source must keep running"
    assert (images / "criu-ext-sctp.json").exists()  # the plugin acted before the failure
    lab.wait_flowing(["node", "p1", "p2"], 10)
    m = json.loads((images / "criu-ext.json").read_text())
    assert m["dump"]["rolled_back"] is True, failure
    assert_unfenced(lab)


def assert_unfenced(lab) -> None:
    assert "criu_ext_sctp" not in lab.in_host(lab.node_ns, ["nft", "list", "ruleset"]).stdout
    assert "blackhole" not in lab.in_host(lab.node_ns, ["ip", "rule"]).stdout  # unsealed


@pytest.mark.parametrize("mode", ["script", "rpc"])
def test_failed_dumps_put_every_socket_back(mode, lab_factory, tmp_path):
    """One MME through a plugin failing at network-lock, then at post-dump: each time
    every socket goes back and the base stations notice nothing."""
    lab = lab_factory("mme")
    lab.wait_flowing(["node", "p1", "p2"], 5)
    notes = {n: st.get("notifications") for n, st in verdicts(lab).items()}
    for failure in sorted(FAILURES):
        failed_dump(lab, failure, mode, tmp_path / failure)
    assert_clean(lab, notes)


def killed_dump(lab, point: str, tmp: Path) -> dict:
    """``criu-ext dump`` SIGKILLed at ``point``, then ``criu-ext recover``: every socket
    back, no rule left. ``take``: inside the plugin's drain (the node stopped with
    requests unread, repair mode on, nothing saved yet: recover releases the sockets in
    place); a phase: the trace plugin (after sctp) stalls there (the sockets saved and
    swapped for pipes, and at post-dump the netns sealed: recover puts them back)."""
    import os
    import signal

    tmp.mkdir()
    images = tmp / "img"
    images.mkdir()
    journal_dir = tmp / "run" / "journal"
    if point == "take":
        env = env_for(tmp, CRIU_EXT_SCTP_DRAIN="600")
        os.kill(lab.node.pid, signal.SIGSTOP)  # requests pile up unread: the drain waits
        time.sleep(0.5)

        def ready() -> bool:
            return any('"taking"' in j.read_text() for j in journal_dir.glob("*.json"))
    else:
        env = env_for(tmp, CRIU_EXT_TRACE_STALL=point)

        def ready() -> bool:
            return f"stalled at {point}" in (tmp / "dump.err").read_text()
    t0 = time.monotonic()
    criu_cmds.kill_when(["nsenter", f"--net=/run/netns/{lab.a}", "--",
                         *dump_cmd("rpc", lab, images, tmp)], env, tmp / "dump.err",
                        f"at {point}", ready)
    assert lab.node.poll() is None, "the source must have survived"
    (journal,) = journal_dir.glob("*.json")
    t1 = time.monotonic()
    r = lab.in_host(lab.a, criu_cmds.recover_cmd(), env=env)
    t2 = time.monotonic()
    assert r.returncode == 0, r.stdout + r.stderr + lab.diagnose()
    assert not journal.exists()
    lab.wait_flowing(["node", "p1", "p2"], 10)
    assert_unfenced(lab)
    return {"recover_said": r.stdout.strip(), "recover_s": round(t2 - t1, 3),
            "peer_gap_s": peer_gap(lab, t0 - 1)}


def test_killed_dumps_are_recovered_and_the_base_stations_notice_nothing(lab_factory, tmp_path):
    """#16's crash safety for SCTP: one MME through a criu-ext SIGKILLed inside the
    plugin's take, at network-lock and at post-dump; each time ``criu-ext recover`` puts
    the associations back and the base stations see no notification, no gap or repeat
    in their numbered requests and no association ended or started. Without sctp_darn:
    it never reads its socket, so after a few minutes its window is shut and the MME's
    zero-window probe stays unacknowledged, which a later dump's drain rightly refuses."""
    lab = lab_factory("mme", peers=("p1", "p2"))
    lab.wait_flowing(["node", "p1", "p2"], 5)
    mib = {n: lab.snmp(n) for n in lab.peer_names}
    notes = {n: st.get("notifications") for n, st in verdicts(lab).items()}
    rec = {}
    for point in ("take", "network-lock", "post-dump"):
        rec[point] = killed_dump(lab, point, tmp_path / point)
    rec["path_notifications"] = assert_clean(lab, notes)
    for n in lab.peer_names:
        after = lab.snmp(n)
        assert {k: after[k] for k in MIB_KEYS} == {k: mib[n][k] for k in MIB_KEYS}, n
        assert after["SctpAborteds"] == mib[n]["SctpAborteds"], f"{n} saw an ABORT"
    record_json(RESULTS, "mme-killed", rec)
    print(json.dumps(rec))


def test_source_left_behind_sends_no_abort(lab_factory, tmp_path):
    """A source netns deleted after the dump loses its nftables hooks before its
    interfaces (nf_tables' pre_exit comes first): the peers' retransmissions that
    reach it then must not draw an ABORT, or the association the destination takes
    over is gone. Here the netns is kept, its whole ruleset (the plugin's hold
    rules, CRIU's network lock) flushed by hand and the peers (on host A, beside
    it) left to retransmit for a few RTOs. Without the plugin's seal this ends
    p1's association (seen: SctpAborteds +1, flows stalled)."""
    lab = lab_factory("mme", peers=("p1", "p2"))
    lab.wait_flowing(["node", "p1", "p2"], 10)
    mib = {n: lab.snmp(n) for n in lab.peer_names}
    notes = {n: st.get("notifications") for n, st in verdicts(lab).items()}

    def without_rules() -> None:
        d = lab.in_host(lab.node_ns, ["nft", "flush", "ruleset"])
        assert d.returncode == 0, d.stderr
        assert "blackhole" in lab.in_host(lab.node_ns, ["ip", "rule"]).stdout
        time.sleep(4)  # RTO at most 1 s (PATIENCE): several retransmissions each

    migrate("rpc", lab, tmp_path, after_dump=without_rules)
    lab.wait_flowing(["node", "p1", "p2"], 10)
    assert_clean(lab, notes)
    for n in lab.peer_names:
        after = lab.snmp(n)
        assert after["SctpAborteds"] == mib[n]["SctpAborteds"], f"{n} saw an ABORT"
        assert after["SctpCurrEstab"] == mib[n]["SctpCurrEstab"]


def test_leave_running_dump_keeps_the_associations(lab_factory, tmp_path):
    lab = lab_factory("mme")
    lab.wait_flowing(["node", "p1", "p2"], 5)
    notes = {n: st.get("notifications") for n, st in verdicts(lab).items()}
    images = tmp_path / "img"
    images.mkdir()
    d = lab.in_host(lab.a, dump_cmd("rpc", lab, images, tmp_path, ["--leave-running"]),
                    env=env_for(tmp_path))
    assert d.returncode == 0, d.stdout + d.stderr + log_of(images, "dump.log")
    assert lab.node.poll() is None
    lab.wait_flowing(["node", "p1", "p2"], 10)
    assert_clean(lab, notes)


def test_unread_data_moves_with_a_stopped_program(lab_factory, tmp_path):
    """A program that has not read what it received moves with it: the kernel carries
    the receive queue (SCTP_REPAIR_RCVQ), so the dump does not wait for the program to
    read (a stopped one never would) and the image holds the unread messages. On B the
    program reads them first, in order: its own verdict sees no gap, duplicate or
    reordering, and the peer's association neither ended nor restarted."""
    import os
    import signal

    from criu_ext.sctp_carry import read_image

    lab = lab_factory("mme", peers=("p1",))
    lab.wait_flowing(["node", "p1"], 5)
    notes = {n: st.get("notifications") for n, st in verdicts(lab).items()}
    mib = lab.snmp("p1")
    os.kill(lab.node.pid, signal.SIGSTOP)  # p1's requests pile up unread
    time.sleep(0.5)
    rec = migrate("rpc", lab, tmp_path)  # the plugin continues the tree on B
    _, items = read_image(str(tmp_path / "img" / "criu-ext-sctp.json"))
    unread = [len(it.assoc.unread) for it in items if it.assoc is not None]
    assert unread and unread[0] > 0, unread
    lab.wait_flowing(["node", "p1"], 20)
    assert_clean(lab, notes)
    after = lab.snmp("p1")
    assert {k: after[k] for k in MIB_KEYS} == {k: mib[k] for k in MIB_KEYS}
    rec["unread_carried"] = unread[0]
    record_json(RESULTS, "mme-unread", rec)
    print(json.dumps(rec))
