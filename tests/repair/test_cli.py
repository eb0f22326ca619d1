"""The sctp-repair command on the patched kernel: probe, dump a live process's socket, show."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab.sctpnet import SVC_HOST, V4, Net
from sctp_repair import AssocState, probe

pytestmark = pytest.mark.repair

CLI = [str(Path(sys.executable).with_name("sctp-repair"))]

HOLDER = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.send(b"hello")
    print(s.fileno(), flush=True)
    time.sleep(600)
""")


def test_probe_says_repair_mode_is_there():
    assert probe().repair
    out = subprocess.run(CLI + ["probe"], capture_output=True, text=True)
    assert out.returncode == 0 and "available" in out.stdout, out


def test_dump_a_running_process_socket_and_show_it(tmp_path):
    net = Net().up()
    try:
        net.add_svc("A", V4)
        server = net.socket("A", V4.af)
        server.bind((V4.addr(SVC_HOST), 36412))
        server.listen(1)
        holder = subprocess.Popen(["nsenter", f"--net={net.path('P')}", sys.executable, "-c",
                                   HOLDER, V4.addr(SVC_HOST), "36412"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            conn, _ = server.accept()
            assert conn.recv(100) == b"hello"
            fd = int(holder.stdout.readline())
            out_file = tmp_path / "assoc.state"
            out = subprocess.run(CLI + ["dump", "--pid", str(holder.pid), "--fd", str(fd),
                                        "-o", str(out_file)], capture_output=True, text=True)
            assert out.returncode == 0, out
            state = AssocState.from_bytes(out_file.read_bytes())
            assert (state.peer_addr, state.peer_port) == (V4.addr(SVC_HOST), 36412)
            assert state.out_streams and state.out_streams[0].mid == 1   # one message sent
            show = subprocess.run(CLI + ["show", str(out_file)], capture_output=True,
                                  text=True, check=True)
            assert f"[{V4.addr(SVC_HOST)}]:36412" in show.stdout
            assert "out 0: next 1" in show.stdout
            # The holder's socket left repair mode again: it still works.
            conn.send(b"still there")
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
            server.close()
    finally:
        net.down()


def test_dump_refuses_what_is_not_a_one_to_one_sctp_socket(tmp_path):
    with open(os.devnull) as f, \
            socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, 132) as many:
        for fd, why in ((f.fileno(), "is not a socket"),
                        (many.fileno(), "is not a one-to-one SCTP socket")):
            out = subprocess.run(CLI + ["dump", "--pid", str(os.getpid()), "--fd", str(fd),
                                        "-o", str(tmp_path / "x")], capture_output=True,
                                 text=True)
            assert out.returncode == 1 and why in out.stderr, out
            assert "Traceback" not in out.stderr
