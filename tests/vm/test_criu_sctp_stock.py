"""SCTP sockets through CRIU on a stock kernel (no repair mode): what can go, what is refused.

* A listening MME moves from host A to host B (both interfaces); base
  stations connect to it there.
* An MME with an established association is refused, in one clear line,
  before anything is touched: the association carries on as if nothing happened.
* With the restart fallback asked for, it moves, says the peer will see a
  restart, and the peer does see one (SCTP_ASSOC_CHANGE / RESTART) and goes on.
* A one-to-many style socket is refused in one line; the task is left as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lab import criu_cmds
from lab.criu_cmds import ROOT, log_of
from lab.files import record_json, wait_for
from lab.sctp_migrate import dump_cmd, env_for, migrate, verdicts
from sctp_repair import probe

pytestmark = pytest.mark.vm

RESULTS = ROOT / "out" / "criu-sctp.json"


@pytest.fixture(autouse=True)
def stock_kernel():
    result = probe()
    assert result.sctp and not result.repair, f"these tests expect a stock kernel: {result}"


@pytest.mark.parametrize("mode", ["script", "rpc"])
def test_a_listening_mme_moves_and_takes_base_stations_on_host_b(mode, lab_factory, tmp_path):
    lab = lab_factory("mme", peers=("p1",), start_peers=False)
    rec = migrate(mode, lab, tmp_path)
    assert rec["sockets"] == 1
    lab.start_peer("p1")
    lab.wait_flowing(["node", "p1"], 10)
    st = verdicts(lab)
    assert st["node"]["errors"] == [] and st["p1"]["errors"] == []
    assert st["p1"]["notifications"] == ["ASSOC_CHANGE:COMM_UP"]
    rec.pop("t0")
    record_json(RESULTS, f"stock-listener-{mode}", rec)


@pytest.mark.parametrize("mode", ["script", "rpc"])
def test_an_established_association_is_refused_and_left_alone(mode, lab_factory, tmp_path):
    lab = lab_factory("mme", peers=("p1",))
    lab.wait_flowing(["node", "p1"], 5)
    notes = {n: st.get("notifications") for n, st in verdicts(lab).items()}
    images = tmp_path / "img"
    images.mkdir()
    d = lab.in_host(lab.a, dump_cmd(mode, lab, images, tmp_path), env=env_for(tmp_path))
    out = d.stdout + d.stderr + log_of(images, "dump.log")
    assert d.returncode != 0
    assert "no SCTP repair mode" in out and "restart fallback" in out, out
    assert "nothing was changed" in out
    assert lab.node.poll() is None
    assert not (images / "criu-ext-sctp.json").exists()
    lab.wait_flowing(["node", "p1"], 10)
    st = verdicts(lab)
    assert st["p1"]["notifications"] == notes["p1"]
    assert all(not f["errors"] for f in st["node"]["flows"].values())
    ruleset = lab.in_host(lab.node_ns, ["nft", "list", "ruleset"]).stdout
    assert "criu_ext_sctp" not in ruleset


def test_the_restart_fallback_warns_and_the_peer_sees_a_restart(lab_factory, tmp_path):
    lab = lab_factory("mme", peers=("p1",))
    lab.wait_flowing(["node", "p1"], 5)
    images = tmp_path / "img"
    images.mkdir()
    d = lab.in_host(lab.a, dump_cmd("rpc", lab, images, tmp_path, ["--sctp-fallback", "restart"]),
                    env=env_for(tmp_path))
    assert d.returncode == 0, d.stdout + d.stderr + log_of(images, "dump.log")
    assert "the peer will see a restart" in d.stderr
    lab.node.wait(timeout=10)
    lab.in_host(lab.a, ["ip", "link", "del", "nodea"])
    from lab.sctp_migrate import restore_cmd

    r = lab.in_host(lab.b, restore_cmd("rpc", images, tmp_path), env=env_for(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr + log_of(images, "restore.log")
    assert "restarted; the peer sees an SCTP restart" in r.stderr
    lab.restored_pid = int((tmp_path / "pid").read_text())
    lab.wait_flowing(["p1"], 10)
    notes = verdicts(lab)["p1"]["notifications"]
    assert "ASSOC_CHANGE:RESTART" in notes, notes
    record_json(RESULTS, "stock-restart-fallback", {"peer_notifications": notes,
                                                    "dump": json.loads(d.stdout)["seconds"]})


ONE_TO_MANY = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, 132)
s.bind(("127.0.0.1", 36412))
s.listen(4)
open(sys.argv[1], "w").write("ready")
while True:
    time.sleep(0.2)
"""


def test_a_one_to_many_socket_is_refused_before_anything_is_touched(netns, tmp_path):
    ns = netns("otm")
    ready = tmp_path / "ready"
    p = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "--", sys.executable, "-c",
                          ONE_TO_MANY, str(ready)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    try:
        wait_for(ready, 120)
        before = subprocess.run(["ls", "-l", f"/proc/{p.pid}/fd"], capture_output=True,
                                text=True).stdout
        images = tmp_path / "img"
        images.mkdir()
        d = subprocess.run(criu_cmds.dump_cmd("rpc", p.pid, images, tmp_path), capture_output=True,
                           text=True, env=env_for(tmp_path))
        assert d.returncode != 0
        assert "one-to-many style (SOCK_SEQPACKET) sockets are not supported" in d.stderr
        assert "nothing was changed" in d.stderr
        assert p.poll() is None
        assert subprocess.run(["ls", "-l", f"/proc/{p.pid}/fd"], capture_output=True,
                              text=True).stdout == before
        with open(f"/proc/{p.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] in ("S", "R")  # not left stopped
    finally:
        p.kill()
        p.wait()
