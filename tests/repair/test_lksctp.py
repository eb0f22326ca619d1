"""Checks by programs we did not write: lksctp-tools on the patched kernel.

* ``sctp_darn`` (a one-to-many listener) is the peer of an association that
  moves from A to B; it prints every notification and, for every message,
  its stream and SSN: the numbering must run on across the move, and its
  only notifications must be COMM_UP at the start and SHUTDOWN_COMP when the
  restored endpoint finally closes normally.
* ``sctp_test`` runs its own client/server exchange: plain SCTP still works.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import pytest

from lab.sctpnet import NSTREAMS, P_HOST, SVC_HOST, V4, V6, Endpoint, Net, move, send_on

pytestmark = [pytest.mark.repair,
              pytest.mark.skipif(shutil.which("sctp_darn") is None,
                                 reason="lksctp-tools is not installed (scripts/setup)")]

DARN_PORT = 5001


@pytest.fixture
def net():
    n = Net().up()
    yield n
    n.down()


def connect_retrying(net: Net, fam, timeout: float = 30) -> socket.socket:
    """sctp_darn takes a moment to listen under emulation."""
    end = time.monotonic() + timeout
    while True:
        s = net.socket("A", fam.af)
        s.bind((fam.addr(SVC_HOST), 0))
        try:
            s.connect((fam.addr(P_HOST), DARN_PORT))
            return s
        except ConnectionRefusedError:
            s.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.3)


def parse_darn(out: str) -> tuple[list[str], list[tuple[int, int, str]]]:
    """Notifications, and (stream, ssn, text) of every message, in print order."""
    notes, msgs = [], []
    sid = ssn = -1
    for line in out.splitlines():
        if line.startswith("NOTIFICATION: "):
            notes.append(line[len("NOTIFICATION: "):])
        elif m := re.match(r"\s+sinfo_stream (\d+)$", line):
            sid = int(m[1])
        elif m := re.match(r"\s+sinfo_ssn (\d+)$", line):
            ssn = int(m[1])
        elif m := re.match(r"DATA\(\d+\):\s+(.*)$", line):
            msgs.append((sid, ssn, m[1]))
    return notes, msgs


@pytest.mark.parametrize("fam", [V4, V6], ids=lambda f: f.name)
def test_sctp_darn_peer_sees_one_association_across_the_move(net, fam):
    net.add_svc("A", fam)
    darn = subprocess.Popen(["nsenter", f"--net={net.path('P')}", "stdbuf", "-oL",
                             "sctp_darn", "-H", fam.addr(P_HOST), "-P", str(DARN_PORT), "-l"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ep = Endpoint(connect_retrying(net, fam))
        sent = [0] * NSTREAMS

        def burst(n: int) -> None:
            for _ in range(n):
                sid = sum(sent) % NSTREAMS
                send_on(ep.sock, sid, b"%d:%d:m\n" % (sid, sent[sid]))
                sent[sid] += 1
                time.sleep(0.01)

        burst(20)
        moved = move(net, ep, fam)
        burst(20)
        time.sleep(1)
        ep.sock.close()              # repair mode is off again: a normal SHUTDOWN
        time.sleep(2)
    finally:
        darn.terminate()
        out = darn.communicate(timeout=30)[0]

    notes, msgs = parse_darn(out)
    assert notes == ["ASSOC_CHANGE - COMM_UP", "ASSOC_CHANGE - SHUTDOWN_COMP"], out[-2000:]
    assert len(msgs) == sum(sent) == 40, out[-2000:]
    seen = [0] * NSTREAMS
    for sid, ssn, text in msgs:
        tag_sid, n, _ = text.split(":")
        assert int(tag_sid) == sid, (sid, text)
        # In order, none lost or repeated, and the SSN sctp_darn reports runs
        # on across the move (it was carried in the saved state).
        assert int(n) == seen[sid] == ssn, (sid, ssn, text, seen)
        seen[sid] += 1
    assert seen == sent
    assert len(moved.state.out_streams) >= NSTREAMS


def test_sctp_test_client_and_server_exchange_on_the_patched_kernel(tmp_path):
    """lksctp's own functional exchange (1-byte and 1452-byte cases) still passes."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server = subprocess.Popen(["sctp_test", "-H", "127.0.0.1", "-P", "6100", "-l"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)
        for case in ("0", "1", "2"):
            out = subprocess.run(["sctp_test", "-H", "127.0.0.1", "-P", "6101", "-h",
                                  "127.0.0.1", "-p", "6100", "-s", "-c", case, "-x", "3"],
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            assert "sendmsg" in out.stdout
    finally:
        server.terminate()
        sout = server.communicate(timeout=30)[0]
    assert "recvmsg" in sout and "Data" in sout
