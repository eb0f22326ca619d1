"""runc checkpoint / restore of a GTP gateway container, with criu-ext-criu as runc's --criu.

Topology (network namespaces inside the VM)::

    enb --- [br0 host] --- pdn
               |   |
        s1u0 sgi0 (gw-a: the container's netns at start; gw-b: a fresh one for the restore)

The container (an OCI bundle made here: busybox-static root, the host's /usr and the
project tree bound read-only) runs lab.gateway with 300 PDP contexts, gtp0 bound to
its own UDP 2152 socket, in a netns given by path in config.json, as Podman does.
runc then marks that netns external to CRIU: CRIU dumps none of its links, NAT rules
or sysctls, and restores the task into the netns the restore's config.json names. The
test makes that one fresh (same addresses and MACs, as an engine re-creating the
container's network would) after the checkpoint.

With criu-ext-criu the eNB's echoes through the tunnels are answered again with the
same TEIDs and the new netns's gtp state equals the one before; with the plain criu
the restored gateway's socket has lost its tunnels. Figures go to out/runc-gtp.json.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import oci
from lab.files import record_json
from lab.netns import NetnsSet, sh
from scenario.migration import image_bytes as image_size
from tests.vm.test_criu_gtp import (
    ENB_IP,
    GW_S1U_IP,
    GW_SGI_IP,
    N_UES,
    PDN_IP,
    UE_POOL,
    Pinger,
    expected,
    gtp_state,
)

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
RESULTS = ROOT / "out" / "runc-gtp.json"
CONTEXTS = 300
PLAIN_CRIU = "/usr/sbin/criu"
STANDIN = str(VENV_BIN / "criu-ext-criu")


class GatewayContainer:
    """The lab around one gateway container; stop() removes everything it made."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = NetnsSet("rc")
        self.base = tmp / "tmpfs"  # bundle and runc state: pivot_root needs a real fs
        self.base.mkdir()
        sh("mount", "-t", "tmpfs", "tmpfs", str(self.base))
        self.bundle = self.base / "bundle"
        self.state = self.base / "state"
        self.bundle.mkdir()
        self.criu_conf = self.base / "criu.conf"  # org.criu.config: empty unless a test says
        self.criu_conf.write_text("")
        self.name = f"gw{self.ns.tag}"
        self.proc: subprocess.Popen | None = None  # runc run / restore; its stdout is the ctr's
        self.pinger: Pinger | None = None
        self.lines: list[str] = []

    def runc(self, *args: str, criu: str = PLAIN_CRIU) -> list[str]:
        return ["runc", "--root", str(self.state), "--criu", criu, *args]

    def start(self) -> GatewayContainer:
        ns = self.ns
        self.host = ns.add("host")
        sh("ip", "-n", self.host, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.host, "link", "set", "br0", "up")
        self.enb, self.pdn = ns.add("enb"), ns.add("pdn")
        ns.leg(self.enb, "s1u0", f"{ENB_IP}/24", self.host, "enb")
        ns.leg(self.pdn, "eth0", f"{PDN_IP}/24", self.host, "pdn")
        self.gw = self.network("gwa")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.gw)
        sh("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", UE_POOL, "-o", "sgi0",
           "-j", "MASQUERADE", ns=self.gw)
        oci.make_bundle(self.bundle, [sys.executable, "-u", "-m", "lab.gateway", "--ues",
                                      str(CONTEXTS)], str(ROOT), f"/run/netns/{self.gw}",
                        [str(ROOT)], {"PYTHONDONTWRITEBYTECODE": "1"}, str(self.criu_conf))
        self.proc = self._spawn(self.runc("run", "-d", "--bundle", str(self.bundle), self.name))
        line = self.read_line(300, "READY")  # Python + pyroute2 under emulation, busy host
        assert line.startswith("READY"), line + "\n".join(self.lines)
        self.pinger = Pinger(f"/run/netns/{self.enb}", N_UES)
        return self

    def network(self, role: str, macs: dict[str, str] | None = None) -> str:
        """The gateway's netns: s1u0 and sgi0 on the bridge, addressed (MACs kept if given)."""
        gw = self.ns.add(role)
        for inner, addr in (("s1u0", f"{GW_S1U_IP}/24"), ("sgi0", f"{GW_SGI_IP}/24")):
            outer = f"{role}-{inner[:3]}"
            sh("ip", "-n", self.host, "link", "add", outer, "type", "veth", "peer", "name",
               inner, "netns", gw)
            if macs:
                sh("ip", "-n", gw, "link", "set", inner, "address", macs[inner])
            sh("ip", "-n", self.host, "link", "set", outer, "master", "br0", "up")
            sh("ip", "-n", gw, "addr", "add", addr, "dev", inner)
            sh("ip", "-n", gw, "link", "set", inner, "up")
        return gw

    def move_network(self) -> str:
        """What an engine does between checkpoint and restore: the old netns's links go,
        a fresh netns gets the same addresses and MACs."""
        macs = {i: json.loads(sh("ip", "-j", "-n", self.gw, "link", "show", i).stdout)[0]["address"]
                for i in ("s1u0", "sgi0")}
        for inner in ("s1u", "sgi"):
            sh("ip", "-n", self.host, "link", "del", f"gwa-{inner}")
        return self.network("gwb", macs)

    def _spawn(self, argv: list[str], env=None) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=env, close_fds=True)
        return p

    def read_line(self, timeout: float, *starts: str) -> str:
        """The next line of the container's output starting with one of ``starts`` (any
        line if none given); runc's own errors and Python's warnings land there too."""
        end = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < end:
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                ch = os.read(self.proc.stdout.fileno(), 1)
                if not ch:
                    break
                if ch == b"\n":
                    line = buf.decode(errors="replace")
                    self.lines.append(line)
                    buf = b""
                    if not starts or line.startswith(starts):
                        return line
                    continue
                buf += ch
        return buf.decode(errors="replace") or "no answer"

    def pid(self) -> int:
        out = subprocess.run(self.runc("state", self.name), capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["pid"]

    def check_gateway(self) -> str:
        """The gateway's own verdict (SIGUSR1): PASS if its socket still has GTP encap."""
        os.kill(self.pid(), signal.SIGUSR1)
        return self.read_line(30, "PASS", "FAIL")

    def checkpoint(self, criu: str, images: Path, env=None) -> subprocess.CompletedProcess:
        return subprocess.run(self.runc("checkpoint", "--image-path", str(images),
                                        "--work-path", str(images), self.name, criu=criu),
                              capture_output=True, text=True, env=env)

    def restore(self, criu: str, images: Path, netns: str, env=None) -> int:
        oci.set_netns(self.bundle, f"/run/netns/{netns}")
        old = self.proc
        self.proc = self._spawn(self.runc("restore", "-d", "--image-path", str(images),
                                          "--work-path", str(images), "--bundle",
                                          str(self.bundle), self.name, criu=criu), env=env)
        rc = self.proc.wait(300)
        if old:
            old.stdout.close()
            old.stdin.close()
        return rc

    def stop(self) -> None:
        if self.pinger:
            self.pinger.close()
        subprocess.run(self.runc("delete", "-f", self.name), capture_output=True)
        if self.proc:
            for f in (self.proc.stdout, self.proc.stdin):
                f.close()
            self.proc.wait(30)
        self.ns.cleanup()
        sh("umount", "-l", str(self.base), check=False)


@pytest.fixture
def container(tmp_path):
    c = GatewayContainer(tmp_path)
    try:
        yield c.start()
    finally:
        c.stop()


def logs(images: Path) -> str:
    out = []
    for name in ("criu-ext.log", "dump.log", "restore.log"):
        p = images / name
        if p.exists():
            out.append(f"--- {name}\n{p.read_text()[-3000:]}")
    return "\n".join(out)


def test_runc_with_criu_ext_keeps_the_tunnels(container, tmp_path):
    c = container
    t_start = time.monotonic()
    assert c.pinger.wait_all(t_start, 30) == expected(), "no GTP service before the checkpoint"
    before = gtp_state(f"/run/netns/{c.gw}")
    assert sum(len(d["contexts"]) for d in before["devices"]) == CONTEXTS, before.keys()
    assert c.check_gateway() == "PASS"

    images = tmp_path / "img"
    images.mkdir()
    t0 = time.monotonic()
    d = c.checkpoint(STANDIN, images)
    t1 = time.monotonic()
    assert d.returncode == 0, d.stdout + d.stderr + logs(images)
    assert (images / "criu-ext-gtp.img").exists(), logs(images)

    gwb = c.move_network()
    t2 = time.monotonic()
    rc = c.restore(STANDIN, images, gwb)
    t3 = time.monotonic()
    assert rc == 0, "\n".join(c.lines) + c.read_line(1) + logs(images)
    pid = c.pid()
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{gwb}").st_ino

    got = c.pinger.wait_all(t3, 30)
    assert got == expected(), f"after restore: {got}\n{logs(images)}"
    after = gtp_state(f"/run/netns/{gwb}")
    assert after == before  # devices, all 300 contexts, routes, masquerade, sysctls
    assert c.check_gateway() == "PASS"
    manifest = json.loads((images / "criu-ext.json").read_text())
    rec = {
        "checkpoint_s": round(t1 - t0, 3), "network_s": round(t2 - t1, 3),
        "restore_s": round(t3 - t2, 3), "image_bytes": image_size(images),
        "gtp_image_bytes": (images / "criu-ext-gtp.img").stat().st_size,
        "ue_gap_s": c.pinger.gap(t0, t3), "contexts": CONTEXTS, "ues_pinged": N_UES,
        "first_reply_after_restore_s": round(min(t for t, _u, _t in c.pinger.replies
                                                 if t >= t3) - t3, 3),
        "dump_phases": manifest["dump"]["phases"], "restore_phases": manifest["restore"]["phases"],
        "plugin_dump_s": round(sum(t["seconds"] for t in manifest["dump"]["timings"]), 4),
        "plugin_restore_s": round(sum(t["seconds"] for t in manifest["restore"]["timings"]), 4),
    }
    record_json(RESULTS, "runc-criu-ext", rec)
    print(json.dumps(rec, indent=1))


def test_plain_runc_loses_the_tunnels(container, tmp_path):
    """Also: an action-script in the CRIU configuration file runc names makes CRIU 3.17
    abort (BUG_ON in add_rpc_notify: runc always asks for RPC notifications), so that
    route cannot carry the plugins; the container goes on running."""
    c = container
    assert c.pinger.wait_all(time.monotonic(), 30) == expected()
    bad = tmp_path / "bad"
    bad.mkdir()
    c.criu_conf.write_text("action-script /bin/true\n")
    d = c.checkpoint(PLAIN_CRIU, bad)
    c.criu_conf.write_text("")
    assert d.returncode != 0, "CRIU 3.17 took an action-script with RPC notify"
    said = d.stdout + d.stderr + logs(bad)
    record_json(RESULTS, "config-file-action-script", {"runc_said": said[-600:]})
    t_bad = time.monotonic()
    assert c.pinger.wait_all(t_bad, 30) == expected(), said  # still up, still tunnelling

    images = tmp_path / "img"
    images.mkdir()
    d = c.checkpoint(PLAIN_CRIU, images)
    assert d.returncode == 0, d.stdout + d.stderr + logs(images)
    gwb = c.move_network()
    rc = c.restore(PLAIN_CRIU, images, gwb)
    t3 = time.monotonic()
    assert rc == 0, "\n".join(c.lines) + logs(images)
    assert gtp_state(f"/run/netns/{gwb}")["devices"] == []
    assert c.check_gateway().startswith("FAIL")  # its socket is plain UDP again
    time.sleep(5)
    assert c.pinger.teids_since(t3) == {}, "replies without criu-ext?"
