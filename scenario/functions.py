"""The mobile-core functions of the scenario, each with the peers that watch it.

A function starts its task in its own namespace on host A, starts its peers,
says when the peers see it serving, and after the migrations turns what the
peers recorded into per-migration figures (downtime, UE service recovery)
plus its own continuity verdict.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from criu_ext import sctp_fence
from lab.netns import NetnsSet, sh
from lab.sctp_lab import PATIENCE
from lab.topology import ENB_IP, GW_S1U_IP, GW_SGI_IP, PDN_IP, UE_POOL
from procns.netns import in_netns
from scenario import hss
from scenario.fabric import Fabric
from scenario.migration import Migration
from scenario.pinger import READY as PINGER_READY
from scenario.pinger import read_status
from scenario.report import gaps

REPO = Path(__file__).resolve().parents[1]


def spawn(ns: str, argv: list[str], log: Path) -> subprocess.Popen:
    """Start a task in netns ``ns`` the way CRIU can dump it: nsenter (no new mount
    namespace), its own session, stdio on /dev/null and a file (no pipe to us)."""
    with open(log, "w") as out:
        return subprocess.Popen(["nsenter", f"--net={NetnsSet.path(ns)}", "--"] + argv,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, cwd=REPO)


def wait_line(log: Path, prefix: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in log.read_text().splitlines():
            if line.startswith(prefix):
                return line
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3:]} exited ({proc.returncode}): "
                               f"{log.read_text()[-500:]}")
        time.sleep(0.1)
    raise RuntimeError(f"{log.name}: no {prefix!r} within {timeout:.0f} s")


class Function:
    """What every function has: its links ({inner name: address} on the host bridge),
    how its task is started (``launch``: :func:`spawn`, or a container engine's), and
    what a host's network set-up gives its netns besides the links (:meth:`netns_setup`)."""

    name = ""
    addrs: dict[str, str] = {}
    tcp_established = False
    make_before_break = False  # criu-ext migrate --stage (a gtp user plane)
    launch = staticmethod(spawn)
    container_opts: tuple[str, ...] = ()  # ``podman run`` options its container needs

    @property
    def links(self) -> list[str]:
        return list(self.addrs)

    def netns_setup(self, ns: str, for_restore: bool = False) -> None:
        """Settings of a netns made for the function outside CRIU (a container's), before
        its links exist; ``for_restore``: the netns a restore will put the task in."""


class Spgw(Function):
    """The GTP gateway (lab.gateway) with N UEs pinging the PDN every 100 ms. In a fresh
    netns (a container's) criu-ext's gtp plugin restores the forwarding sysctl and the
    masquerade along with the tunnels: nothing to set up."""

    name = "spgw"
    addrs = {"s1u0": f"{GW_S1U_IP}/24", "sgi0": f"{GW_SGI_IP}/24"}
    make_before_break = True

    def __init__(self, fabric: Fabric, workdir: Path, ues: int, interval: float = 0.1,
                 contexts: int | None = None, download: bool = False):
        """``ues`` UEs ping; the gateway holds ``contexts`` PDP contexts (default: one per
        pinging UE; more for a large tunnel list whose first ``ues`` are pinged);
        ``download``: one more UE, a real stack, downloads from the PDN through the
        masquerade meanwhile (scenario.download)."""
        self.fabric, self.workdir, self.ues, self.interval = fabric, workdir, ues, interval
        self.contexts = max(contexts or ues, ues)
        self.download = None
        if download:
            from scenario.download import Download  # it uses this module's spawn
            self.download = Download(fabric, workdir)
        self.timeline: dict = {}

    @property
    def note(self) -> str:
        extra = "" if self.contexts == self.ues else f", {self.contexts} PDP contexts"
        if self.download:
            extra += ", a UE's TCP download through the SGi masquerade"
        return f"{self.ues} UEs pinging every {self.interval * 1000:.0f} ms{extra}"

    def start(self) -> int:
        f = self.fabric
        self.ns = f.function("spgw", self.addrs)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.ns)
        sh("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", UE_POOL, "-o", "sgi0",
           "-j", "MASQUERADE", ns=self.ns)
        log = self.workdir / "gateway.log"
        gw = self.launch(self.ns, [sys.executable, "-m", "lab.gateway", "--ues",
                                   str(self.contexts)], log)
        wait_line(log, "READY", gw, timeout=300)
        self.pid = gw.pid
        self.enb = f.peer("enb", "s1u0", f"{ENB_IP}/24")
        self.pdn = f.peer("pdn", "eth0", f"{PDN_IP}/24")
        self.replies_file = self.workdir / "pinger.json"
        plog = self.workdir / "pinger.log"
        self.pinger = spawn(self.enb, [sys.executable, "-m", "scenario.pinger", "--netns",
                                       NetnsSet.path(self.enb), "--ues", str(self.ues),
                                       "--interval", str(self.interval),
                                       "--out", str(self.replies_file)], plog)
        wait_line(plog, PINGER_READY, self.pinger)
        if self.download:
            self.download.start(self.ns, self.pdn)
        return self.pid

    def serving(self, since: float) -> bool:
        """Every UE answered within a second, after ``since``, and the gateway's own check
        (SIGUSR1: is its GTP-U socket still bound to the tunnels?) says PASS."""
        t, answered = read_status(str(self.replies_file))
        if t < since + 1.0 or answered < self.ues:
            return False
        return self.gateway_check() == "PASS"

    def gateway_check(self) -> str:
        log = self.workdir / "gateway.log"
        before = log.read_text().count("\n")
        os.kill(self.pid, signal.SIGUSR1)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            lines = log.read_text().splitlines()[before:]
            if lines:
                return lines[0]
            time.sleep(0.05)
        return "no answer"

    def diagnose(self) -> str:
        """What a person would look at when the tunnels do not answer."""
        t, answered = read_status(str(self.replies_file))
        out = [f"UEs answered in the last second: {answered}/{self.ues}",
               f"gateway's own check: {self.gateway_check()}"]
        for argv in (["ip", "-d", "link"], ["ip", "addr"], ["ip", "route"],
                     ["nft", "list", "ruleset"], ["sysctl", "net.ipv4.ip_forward"],
                     ["gtp-dump", "--tunnels"]):
            res = sh(*argv, ns=self.ns, check=False)
            out.append(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
        out.append(self._flows())
        return "\n".join(out)

    def _flows(self) -> str:
        """The UE echo flows in conntrack: translated to which echo id, bound or not."""
        from gtp_util.natflows import CtBatch, bound

        try:
            with CtBatch(NetnsSet.path(self.ns)) as ct:
                entries = [e for e in ct.dump() if e.tuple_orig and e.tuple_orig.proto == 1]
        except OSError as exc:
            return f"conntrack: {exc}"
        return f"conntrack, {len(entries)} ICMP entries:\n" + "\n".join(
            f"  {e.tuple_orig.saddr} id {e.tuple_orig.icmp_id} -> {e.tuple_orig.daddr}, reply to "
            f"{e.tuple_reply.daddr if e.tuple_reply else '?'} id "
            f"{e.tuple_reply.icmp_id if e.tuple_reply else '?'}, status {e.status:#x}"
            f"{' bound' if bound(e) else ' UNBOUND'}, {e.timeout} s" for e in entries)

    def stop(self) -> dict:
        self.pinger.send_signal(signal.SIGTERM)
        self.pinger.wait(timeout=60)
        data = json.loads(self.replies_file.read_text())
        self.replies = data["replies"]
        seen = {"sent": data["sent"], "wrong_teid": data["wrong_teid"],
                "ues_answered": sum(1 for r in self.replies if r)}
        if self.download:
            seen["download"] = self.download.finish()
        return seen

    def figures(self, m: Migration) -> dict:
        merged = sorted(t for r in self.replies for t in r)
        per_ue = [g for g in (gaps(r, m.t_dump_start, m.t_restored) for r in self.replies)
                  if g is not None]
        return {"downtime_s": gaps(merged, m.t_dump_start, m.t_restored),
                "srt_s": statistics.median(per_ue) if per_ue else None,
                "srt_max_s": max(per_ue) if per_ue else None,
                "ues_recovered": len(per_ue)}

    def timeline_data(self, t0: float, max_rows: int = 60) -> dict:
        step = max(1, len(self.replies) // max_rows)
        return {f"UE {i}": [round(t - t0, 3) for t in self.replies[i]]
                for i in range(0, len(self.replies), step)}


class Hss(Function):
    """The HSS (scenario.hss) with an MME-side client querying it every 50 ms over TCP."""

    name = "hss"
    tcp_established = True
    ADDR, CLIENT = "172.31.0.10", "172.31.0.20"
    addrs = {"eth0": f"{ADDR}/24"}

    def __init__(self, fabric: Fabric, workdir: Path, subscribers: int):
        self.fabric, self.workdir, self.subscribers = fabric, workdir, subscribers

    @property
    def note(self) -> str:
        return f"{self.subscribers} subscribers, a query every 50 ms"

    def start(self) -> int:
        self.ns = self.fabric.function("hss", self.addrs)
        log = self.workdir / "hss.log"
        proc = self.launch(self.ns, [sys.executable, "-m", "scenario.hss", "--subscribers",
                                     str(self.subscribers)], log)
        wait_line(log, "READY", proc, timeout=300)
        self.pid = proc.pid
        peer = self.fabric.peer("mmeq", "eth0", f"{self.CLIENT}/24")
        with in_netns(NetnsSet.path(peer)):
            self.client = hss.Client(self.ADDR)
        self.client.start()
        return self.pid

    def serving(self, since: float) -> bool:
        """The client got an answer after ``since`` and has seen nothing wrong."""
        return not self.client.errors and bool(self.client.replies) and \
            self.client.replies[-1] > since

    def diagnose(self) -> str:
        return f"client errors: {self.client.errors}; answers: {len(self.client.replies)}"

    def stop(self) -> dict:
        self.client.close()
        return {"answers": len(self.client.replies), "errors": self.client.errors}

    def figures(self, m: Migration) -> dict:
        return {"downtime_s": gaps(self.client.replies, m.t_dump_start, m.t_restored)}

    def timeline_data(self, t0: float) -> dict:
        return {"MME client": [round(t - t0, 3) for t in self.client.replies]}


class Mme(Function):
    """An MME-like SCTP server (lab.sctp_node) with base stations sending an
    S1AP-like request every 100 ms each on one association (lab.sctp_peer).

    Its associations move through the sctp plugin, which needs SCTP repair mode
    (the kernel built from kernel-patches/). All namespaces get short SCTP timers
    (RTO 100 ms..1 s, see lab.sctp_lab.PATIENCE): with Linux's defaults
    (RTO up to 60 s) a peer's next retransmission after a pause of a few seconds
    would come many seconds after the MME is back, and the figure would measure
    the peer's backoff, not the migration.
    """

    name = "mme"
    ADDR, PORT = "172.31.0.30", 36412
    addrs = {"eth0": f"{ADDR}/24"}
    # The sctp plugin swaps the task's sockets by running system calls in it (ptrace),
    # and refuses a task under a seccomp filter, which could kill it for one: Podman's
    # default profile is such a filter.
    container_opts = ("--security-opt", "seccomp=unconfined")

    def __init__(self, fabric: Fabric, workdir: Path, enbs: int = 3):
        self.fabric, self.workdir, self.enbs = fabric, workdir, enbs
        self.peers: dict[str, subprocess.Popen] = {}
        self.history: dict[str, list[float]] = {}  # every ack time seen, per base station

    @property
    def note(self) -> str:
        return f"{self.enbs} base stations, one SCTP association and a request every 100 ms each"

    def _status(self, name: str) -> dict:
        try:
            return json.loads((self.workdir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}

    def start(self) -> int:
        self.ns = self.fabric.function("mme", self.addrs)
        self.netns_setup(self.ns)
        node = self.launch(self.ns, [sys.executable, "-m", "lab.sctp_node", "mme", "--listen",
                                     f"{self.ADDR}:{self.PORT}", "--status",
                                     str(self.workdir / "mme.json")], self.workdir / "mme.log")
        self.pid = node.pid
        end = time.monotonic() + 120
        while not self._status("mme"):
            if node.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"the MME did not start: {(self.workdir / 'mme.log').read_text()}")
            time.sleep(0.1)
        for i in range(self.enbs):
            addr = f"172.31.0.{40 + i}"
            ns = self.fabric.peer(f"enb{i}", "eth0", f"{addr}/24")
            sh("sysctl", "-qw", *PATIENCE, ns=ns)
            self.peers[f"enb{i}"] = spawn(ns, [
                sys.executable, "-m", "lab.sctp_peer", "client", "--server",
                f"{self.ADDR}:{self.PORT}", "--bind", addr, "--status",
                str(self.workdir / f"enb{i}.json")], self.workdir / f"enb{i}.log")
        return self.pid

    def netns_setup(self, ns: str, for_restore: bool = False) -> None:
        sh("sysctl", "-qw", *PATIENCE, ns=ns)
        if for_restore:
            # Until the sctp plugin puts the sockets back (it lifts this table then), an
            # address without a socket would answer the base stations' retransmissions
            # and heartbeats with an ABORT: drop the MME's SCTP port both ways.
            sctp_fence.hold(NetnsSet.path(ns), [self.PORT])

    def _acks(self, name: str, status: dict | None = None) -> list[float]:
        """Every ack time of ``name`` seen so far (from ``status`` when the caller has
        just read it). A base station keeps its latest 2,000 (200 s); each read
        (serving() polls after every move) adds the new ones, so a long run keeps its
        first moves' windows."""
        hist = self.history.setdefault(name, [])
        last = hist[-1] if hist else float("-inf")
        st = self._status(name) if status is None else status
        hist.extend(t for t in st.get("ack_times", {}).get("ack", []) if t > last)
        return hist

    def serving(self, since: float) -> bool:
        """Every base station got an answer after ``since`` and saw nothing wrong."""
        for name in self.peers:
            st = self._status(name)
            acks = self._acks(name, st)
            if st.get("errors") or not acks or acks[-1] <= since:
                return False
        return True

    def diagnose(self) -> str:
        out = [f"{n}: {self._status(n)}" for n in ["mme", *self.peers]]
        res = sh("cat", "/proc/net/sctp/assocs", ns=self.ns, check=False)
        return "\n".join(out + [res.stdout])

    def stop(self) -> dict:
        self.acks = {n: self._acks(n) for n in self.peers}
        verdict = {}
        for name, proc in self.peers.items():
            st = self._status(name)
            flow = st.get("flows", {}).get("ack", {})
            verdict[name] = {"acks": flow.get("last", 0), "sequence_errors": flow.get("errors"),
                             "errors": st.get("errors"),
                             "notifications": st.get("notifications")}
            proc.send_signal(signal.SIGTERM)
        mme = self._status("mme")
        verdict["mme"] = {"errors": mme.get("errors"),
                          "sequence_errors": {k: v["errors"] for k, v in
                                              mme.get("flows", {}).items() if v["errors"]}}
        return verdict

    def figures(self, m: Migration) -> dict:
        merged = sorted(t for ts in self.acks.values() for t in ts)
        per_peer = [g for g in (gaps(ts, m.t_dump_start, m.t_restored)
                                for ts in self.acks.values()) if g is not None]
        return {"downtime_s": gaps(merged, m.t_dump_start, m.t_restored),
                "downtime_max_s": max(per_peer) if per_peer else None}

    def timeline_data(self, t0: float) -> dict:
        return {f"base station {n[3:]}": [round(t - t0, 3) for t in ts]
                for n, ts in self.acks.items()}
