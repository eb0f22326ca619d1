"""Two hosts, an SCTP node that moves between them, and its peers.

    p1 p2 darn --- [br0 host-a] ===trunk=== [br0 host-b] --- far
                        |
                      eth0 [ node netns: the migrated program, 10.0.0.1 ]

The node runs ``lab.sctp_node`` (``mme`` or ``client``). Peers p1 and p2
run ``lab.sctp_peer client`` against the MME, ``darn`` is lksctp-tools'
``sctp_darn`` fed numbered lines on its stdin; ``far`` runs
``lab.sctp_peer server`` for the client variant. CRIU runs in host-a's
netns to dump and in host-b's to restore, re-attaching the node's veth to
host-b's bridge. Every netns gets patient SCTP timers: under software
emulation a move takes seconds, and no peer may give up meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab.netns import NetnsSet, sctp_mib, sh

ROOT = Path(__file__).resolve().parents[1]
NODE_IP, FAR_IP, PORT = "10.0.0.1", "10.0.0.100", 36412  # 36412: S1AP's port
PEER_IPS = {"p1": "10.0.0.11", "p2": "10.0.0.12", "darn": "10.0.0.13"}
PATIENCE = ("net.sctp.rto_min=100", "net.sctp.rto_initial=300", "net.sctp.rto_max=1000",
            "net.sctp.path_max_retrans=1000", "net.sctp.association_max_retrans=2000")


class SctpLab:
    def __init__(self, tmp: Path, mode: str = "mme", peers=("p1", "p2", "darn"),
                 start_peers: bool = True) -> None:
        self.tmp = tmp
        self.mode = mode
        self.peer_names = list(peers) if mode == "mme" else ["far"]
        self.start_peers = start_peers
        self.ns = NetnsSet("sctp")
        self.procs: dict[str, subprocess.Popen] = {}
        self.node: subprocess.Popen | None = None
        self.restored_pid: int | None = None
        self._darn_stop = threading.Event()
        self.darn_sent = 0

    # -- set-up -------------------------------------------------------------------------

    def start(self) -> SctpLab:
        ns = self.ns
        self.a, self.b = ns.hosts()
        self.node_ns = ns.add("node")
        self._leg(self.node_ns, f"{NODE_IP}/24", self.a, "nodea")
        self.peer_ns = {}
        for name in self.peer_names:
            self.peer_ns[name] = ns.add(name)
            host = self.b if name == "far" else self.a
            ip = FAR_IP if name == "far" else PEER_IPS[name]
            self._leg(self.peer_ns[name], f"{ip}/24", host, f"{name}x")
        if self.mode == "mme":
            self.node = self._spawn("node", self.node_ns, ["-m", "lab.sctp_node", "mme",
                                                           "--listen", f"{NODE_IP}:{PORT}"])
            self.wait_status("node")
            for name in self.peer_names if self.start_peers else ():
                self.start_peer(name)
        else:
            self.procs["far"] = self._spawn("far", self.peer_ns["far"], [
                "-m", "lab.sctp_peer", "server", "--listen", f"{FAR_IP}:{PORT}"])
            self.wait_status("far")
            self.node = self._spawn("node", self.node_ns, ["-m", "lab.sctp_node", "client",
                                                           "--peer", f"{FAR_IP}:{PORT}"])
        return self

    def start_peer(self, name: str) -> None:
        """Start base station ``name`` (its netns exists) against the MME."""
        if name == "darn":
            self._start_darn()
        else:
            self.procs[name] = self._spawn(name, self.peer_ns[name], [
                "-m", "lab.sctp_peer", "client", "--server", f"{NODE_IP}:{PORT}",
                "--bind", PEER_IPS[name]])

    def _leg(self, inner_ns: str, address: str, host: str, outer: str) -> None:
        self.ns.leg(inner_ns, "eth0", address, host, outer)
        sh("sysctl", "-qw", *PATIENCE, ns=inner_ns)

    def status_path(self, name: str) -> Path:
        return self.tmp / f"{name}.json"

    def _spawn(self, name: str, netns: str, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, *args,
             "--status", str(self.status_path(name))],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / f"{name}.err", "w"), start_new_session=True, close_fds=True)

    def _start_darn(self) -> None:
        p = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.peer_ns['darn']}", "--", "sctp_darn",
             "-H", PEER_IPS["darn"], "-P", "0", "-h", NODE_IP, "-p", str(PORT), "-s"],
            stdin=subprocess.PIPE, stdout=open(self.tmp / "darn.out", "w"),
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        self.procs["darn"] = p

        def feed() -> None:
            n = 0
            while not self._darn_stop.wait(0.1) and p.poll() is None:
                n += 1
                try:
                    p.stdin.write(f"REQ {n}\n".encode())
                    p.stdin.flush()
                except OSError:
                    return
                self.darn_sent = n

        threading.Thread(target=feed, daemon=True).start()

    # -- reading the verdicts -------------------------------------------------------------

    def status(self, name: str) -> dict:
        try:
            return json.loads(self.status_path(name).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def wait_status(self, name: str, timeout: float = 240.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.status(name)
            if st:
                return st
            proc = self.node if name == "node" else self.procs.get(name)
            if proc is not None and proc.poll() is not None and not self.restored_pid:
                raise AssertionError(f"{name} exited: {(self.tmp / f'{name}.err').read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"{name} wrote no status in {timeout} s")

    def wait_until(self, cond, what: str, timeout: float = 240.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise AssertionError(f"not reached in {timeout:.0f} s: {what}{self.diagnose()}")
            time.sleep(0.1)

    def wait_flowing(self, names: list[str], count: int, timeout: float = 240.0) -> None:
        """Until every flow of every named program got ``count`` more numbers."""
        base = {n: {k: f["last"] for k, f in self.status(n).get("flows", {}).items()}
                for n in names}
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ok = True
            for n in names:
                flows = self.status(n).get("flows", {})
                if not flows or any(f["last"] < base[n].get(k, 0) + count
                                    for k, f in flows.items()):
                    ok = False
            if ok:
                return
            time.sleep(0.1)
        raise AssertionError(f"flows stalled: { {n: self.status(n).get('flows') for n in names} }"
                             + self.diagnose())

    def expected_node_flows(self) -> int:
        return len(self.peer_names) if self.mode == "mme" else 3

    @property
    def pid(self) -> int:
        return self.restored_pid or self.node.pid

    def in_host(self, host: str, argv: list[str], env=None) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net=/run/netns/{host}", "--"] + argv,
                              capture_output=True, text=True, env=env, close_fds=True)

    def snmp(self, name: str) -> dict[str, int]:
        """The peer netns's SCTP MIB counters (/proc/net/sctp/snmp)."""
        return sctp_mib(self.peer_ns[name])

    def diagnose(self) -> str:
        out = []
        for title, argv in (("node assocs", ["cat", "/proc/net/sctp/assocs"]),
                            ("node eps", ["cat", "/proc/net/sctp/eps"]),
                            ("node ruleset", ["nft", "list", "ruleset"]),
                            ("node ip rules", ["ip", "rule"])):
            p = subprocess.run(["nsenter", "-t", str(self.pid), "-n", *argv],
                               capture_output=True, text=True)
            out.append(f"--- {title}\n{p.stdout}{p.stderr}")
        for name, ns in sorted(self.peer_ns.items()):  # the other end's T3 and queues
            p = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/sctp/assocs"],
                               capture_output=True, text=True)
            out.append(f"--- {name} assocs\n{p.stdout}{p.stderr}")
        for f in sorted(self.tmp.glob("*.err")) + sorted(self.tmp.glob("*.out")):
            out.append(f"--- {f.name}\n{f.read_text()[-1500:]}")
        return "\n" + "\n".join(out)

    def stop(self) -> None:
        self._darn_stop.set()
        for pid in [self.restored_pid, self.node.pid if self.node else None] + \
                [p.pid for p in self.procs.values()]:
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in [self.node, *self.procs.values()]:
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        self.ns.cleanup()
