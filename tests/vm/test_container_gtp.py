"""Container checkpoint / restore of a GTP gateway, with criu-ext-criu as runc's --criu.

Topology (network namespaces inside the VM)::

    enb --- [br0 host] --- pdn
               |   |
        s1u0 sgi0 (the gateway container's netns; a fresh one for the restore)

The container runs lab.gateway with 300 PDP contexts, gtp0 bound to its own UDP
2152 socket, in a netns given by path (runc: config.json; Podman: ``--network
ns:PATH``). runc then marks that netns external to CRIU: CRIU dumps none of its
links, NAT rules or sysctls, and restores the task into the netns the restore
names. The test makes that one fresh (same addresses and MACs, as an engine
re-creating the container's network would) after the checkpoint.

* runc, an OCI bundle made here (busybox-static root, the host's /usr and the
  project tree bound read-only): with criu-ext-criu the eNB's echoes through the
  tunnels are answered again with the same TEIDs and the new netns's gtp state
  equals the one before; a checkpoint failing in a plugin leaves the container
  running with its tunnels; with the plain criu the restored gateway's socket has
  lost its tunnels.
* Podman (runtime runc, ``--runtime-flag criu=...``), an image imported from a
  locally built root tarball (no registry): ``container checkpoint --export`` /
  ``container restore --import`` keep the tunnels the same way; an archive whose
  criu-ext image is corrupt makes the restore fail with no gtp device created.
  (Podman's plain checkpoint and restore run the same runc and CRIU as runc's:
  the runc case shows what they lose.)

Figures go to out/container-gtp.json.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from lab import oci
from lab.files import record_json
from lab.netns import NetnsSet, mac, sh
from lab.podman import PLAIN_CRIU, Podman
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
RESULTS = ROOT / "out" / "container-gtp.json"
CONTEXTS = 300
STANDIN = str(VENV_BIN / "criu-ext-criu")
GATEWAY = [sys.executable, "-u", "-m", "lab.gateway", "--ues", str(CONTEXTS)]


def criu_log_seconds(path: Path) -> float | None:
    """CRIU's own time: the last ``(seconds.micros)`` stamp of its log."""
    try:
        stamps = re.findall(r"^\((\d+\.\d+)\)", path.read_text(errors="replace"), re.M)
    except OSError:
        return None
    return float(stamps[-1]) if stamps else None


class GatewayLab:
    """The netns around one gateway container; an engine subclass runs the container.
    stop() removes everything it made."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = NetnsSet("ct")
        self.base = tmp / "tmpfs"  # bundle, storage, state: pivot_root needs a real fs
        self.base.mkdir()
        sh("mount", "-t", "tmpfs", "tmpfs", str(self.base))
        self.name = f"gw{self.ns.tag}"
        self.pinger: Pinger | None = None
        self.role = "gwa"  # the gateway netns's role; its bridge ports are named after it
        self.moves = 0

    def start(self):
        ns = self.ns
        self.host = ns.add("host")
        sh("ip", "-n", self.host, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.host, "link", "set", "br0", "up")
        self.enb, self.pdn = ns.add("enb"), ns.add("pdn")
        ns.leg(self.enb, "s1u0", f"{ENB_IP}/24", self.host, "enb")
        ns.leg(self.pdn, "eth0", f"{PDN_IP}/24", self.host, "pdn")
        self.gw = self.network(self.role)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.gw)
        sh("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", UE_POOL, "-o", "sgi0",
           "-j", "MASQUERADE", ns=self.gw)
        self.run_container()
        line = self.wait_line(0, 300, "READY")  # Python + pyroute2 under emulation, busy host
        assert line.startswith("READY"), line + "\n" + "\n".join(self.lines())
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

    def move_network(self, same_path: bool = False) -> str:
        """What an engine does between checkpoint and restore: the old netns's links go,
        a fresh netns gets the same addresses and MACs; at the same path when the
        restore cannot be told another (Podman's ``--network ns:PATH`` is in the archive)."""
        macs = {i: mac(self.gw, i) for i in ("s1u0", "sgi0")}
        for inner in ("s1u", "sgi"):  # now, not when the kernel gets round to the netns
            sh("ip", "-n", self.host, "link", "del", f"{self.role}-{inner}")
        if same_path:
            sh("ip", "netns", "del", self.gw)
        else:
            self.moves += 1
            self.role = f"gw{chr(ord('a') + self.moves)}"
        self.gw = self.network(self.role, macs)
        return self.gw

    def count(self, *starts: str) -> int:
        return sum(1 for line in self.lines() if line.startswith(starts))

    def wait_line(self, seen: int, timeout: float, *starts: str) -> str:
        """The first line starting with one of ``starts`` after the ``seen`` there were."""
        end = time.monotonic() + timeout
        while True:
            hits = [line for line in self.lines() if line.startswith(starts)]
            if len(hits) > seen:
                return hits[seen]
            if time.monotonic() > end:
                return "no answer"
            time.sleep(0.3)

    def check_gateway(self) -> str:
        """The gateway's own verdict (SIGUSR1): PASS if its socket still has GTP encap."""
        seen = self.count("PASS", "FAIL")
        os.kill(self.pid(), signal.SIGUSR1)
        return self.wait_line(seen, 60, "PASS", "FAIL")

    def stop(self) -> None:
        if self.pinger:
            self.pinger.close()
        try:
            self.remove_container()
        finally:
            self.ns.cleanup()
            sh("umount", "-l", str(self.base), check=False)

    # the engine's part
    def run_container(self) -> None:
        raise NotImplementedError

    def lines(self) -> list[str]:
        raise NotImplementedError

    def pid(self) -> int:
        raise NotImplementedError

    def remove_container(self) -> None:
        raise NotImplementedError


class RuncGateway(GatewayLab):
    """runc directly, an OCI bundle made here; the container's stdout is runc's."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.bundle = self.base / "bundle"
        self.state = self.base / "state"
        self.bundle.mkdir()
        self.criu_conf = self.base / "criu.conf"  # org.criu.config: empty unless a test says
        self.criu_conf.write_text("")
        self.procs: list[subprocess.Popen] = []  # runc run / restore: their stdout is the ctr's
        self._lines: list[str] = []
        self._partial: dict[int, bytes] = {}  # id(proc): its unfinished line

    def runc(self, *args: str, criu: str = PLAIN_CRIU) -> list[str]:
        return ["runc", "--root", str(self.state), "--criu", criu, *args]

    def run_container(self) -> None:
        oci.make_bundle(self.bundle, GATEWAY, str(ROOT), f"/run/netns/{self.gw}",
                        [str(ROOT)], {"PYTHONDONTWRITEBYTECODE": "1"}, str(self.criu_conf))
        self._spawn(self.runc("run", "-d", "--bundle", str(self.bundle), self.name))

    def _spawn(self, argv: list[str], env=None) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=env, close_fds=True)
        self.procs.append(p)
        return p

    def lines(self) -> list[str]:
        """Every line so far from every runc we started (runc's own errors and Python's
        warnings land there too)."""
        for p in self.procs:
            fd = p.stdout.fileno() if p.stdout and not p.stdout.closed else None
            while fd is not None and select.select([fd], [], [], 0)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    p.stdout.close()
                    break
                buf = self._partial.get(id(p), b"") + chunk
                *done, self._partial[id(p)] = buf.split(b"\n")
                self._lines += [d.decode(errors="replace") for d in done]
        return list(self._lines)

    def pid(self) -> int:
        out = subprocess.run(self.runc("state", self.name), capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["pid"]

    def checkpoint(self, criu: str, images: Path, env=None) -> subprocess.CompletedProcess:
        return subprocess.run(self.runc("checkpoint", "--image-path", str(images),
                                        "--work-path", str(images), self.name, criu=criu),
                              capture_output=True, text=True, env=env)

    def restore(self, criu: str, images: Path, netns: str) -> int:
        oci.set_netns(self.bundle, f"/run/netns/{netns}")
        p = self._spawn(self.runc("restore", "-d", "--image-path", str(images),
                                  "--work-path", str(images), "--bundle",
                                  str(self.bundle), self.name, criu=criu))
        return p.wait(600)

    def remove_container(self) -> None:
        subprocess.run(self.runc("delete", "-f", self.name), capture_output=True)
        for p in self.procs:
            for f in (p.stdout, p.stdin):
                if f:
                    f.close()
            p.wait(30)


class PodmanGateway(GatewayLab):
    """Podman with runc as its runtime (lab.podman: a store on a tmpfs, an image imported
    from a root tarball built here, no registry)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.engine = Podman(self.base / "podman", self.name)

    def run(self, *args: str, criu: str = PLAIN_CRIU, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
        return self.engine.run(*args, criu=criu, check=check, timeout=timeout)

    def run_container(self) -> None:
        self.engine.start(self.name, f"/run/netns/{self.gw}", GATEWAY, ro=[str(ROOT)],
                          cwd=str(ROOT), env={"PYTHONDONTWRITEBYTECODE": "1"})

    def lines(self) -> list[str]:
        p = self.run("logs", self.name, check=False, timeout=60)
        return (p.stdout + p.stderr).splitlines()

    def pid(self) -> int:
        return self.engine.pid(self.name)

    def logs(self) -> str:
        return self.engine.logs()

    def remove_container(self) -> None:
        self.engine.close()


def logs(images: Path) -> str:
    out = []
    for name in ("criu-ext.log", "dump.log", "restore.log"):
        p = images / name
        if p.exists():
            out.append(f"--- {name}\n{p.read_text()[-3000:]}")
    return "\n".join(out)


@pytest.fixture
def runc_gateway(tmp_path):
    c = RuncGateway(tmp_path)
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def podman_gateway(tmp_path):
    c = PodmanGateway(tmp_path)
    try:
        yield c.start()
    finally:
        c.stop()


def test_runc_with_criu_ext_keeps_the_tunnels(runc_gateway, tmp_path):
    c = runc_gateway
    t_start = time.monotonic()
    assert c.pinger.wait_all(t_start, 30) == expected(), "no GTP service before the checkpoint"
    before = gtp_state(f"/run/netns/{c.gw}")
    assert sum(len(d["contexts"]) for d in before["devices"]) == CONTEXTS, before.keys()
    assert c.check_gateway() == "PASS"

    # An action-script in the CRIU configuration file runc names makes CRIU 3.17 abort
    # (BUG_ON in add_rpc_notify: runc always asks for RPC notifications), so that route
    # cannot carry the plugins; the container goes on running.
    bad = tmp_path / "bad"
    bad.mkdir()
    c.criu_conf.write_text("action-script /bin/true\n")
    d = c.checkpoint(PLAIN_CRIU, bad)
    c.criu_conf.write_text("")
    assert d.returncode != 0, "CRIU 3.17 took an action-script with RPC notify"
    said = d.stdout + d.stderr + logs(bad)
    record_json(RESULTS, "config-file-action-script", {"runc_said": said[-600:]})
    assert c.pinger.wait_all(time.monotonic(), 30) == expected(), said  # still tunnelling

    # A checkpoint failing in a plugin (after CRIU wrote every image) leaves the
    # container running with its tunnels.
    failed = tmp_path / "failed"
    failed.mkdir()
    env = dict(os.environ, CRIU_EXT_PLUGINS="gtp,netfilter,trace",
               CRIU_EXT_TRACE_FAIL="post-dump")
    d = c.checkpoint(STANDIN, failed, env=env)
    assert d.returncode != 0, "a plugin failing at post-dump did not fail the checkpoint"
    assert "CRIU_EXT_TRACE_FAIL" in (failed / "criu-ext.log").read_text(), logs(failed)
    t_failed = time.monotonic()
    assert c.pinger.wait_all(t_failed, 60) == expected(), logs(failed)
    assert gtp_state(f"/run/netns/{c.gw}") == before
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
    assert rc == 0, "\n".join(c.lines()) + logs(images)
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
        "restore_s": round(t3 - t2, 3),
        "criu_dump_s": criu_log_seconds(images / "dump.log"),
        "criu_restore_s": criu_log_seconds(images / "restore.log"),
        "image_bytes": image_size(images),
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

    # Without criu-ext, runc's own checkpoint and restore of the same container lose the
    # tunnels.
    plain = tmp_path / "plain"
    plain.mkdir()
    d = c.checkpoint(PLAIN_CRIU, plain)
    assert d.returncode == 0, d.stdout + d.stderr + logs(plain)
    gwc = c.move_network()
    rc = c.restore(PLAIN_CRIU, plain, gwc)
    t4 = time.monotonic()
    assert rc == 0, "\n".join(c.lines()) + logs(plain)
    assert gtp_state(f"/run/netns/{gwc}")["devices"] == []
    assert c.check_gateway().startswith("FAIL")  # its socket is plain UDP again
    time.sleep(5)
    assert c.pinger.teids_since(t4) == {}, "replies without criu-ext?"


def corrupt_gtp_image(archive: Path, out: Path) -> None:
    """A copy of an uncompressed checkpoint archive whose criu-ext-gtp.img is garbage."""
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name.endswith("criu-ext-gtp.img"):
                junk = b"\xff" * 64
                member.size = len(junk)
                dst.addfile(member, io.BytesIO(junk))
            else:
                dst.addfile(member, data)


def test_podman_export_import_keeps_the_tunnels(podman_gateway, tmp_path):
    c = podman_gateway
    assert c.pinger.wait_all(time.monotonic(), 30) == expected(), "no GTP service before"
    before = gtp_state(f"/run/netns/{c.gw}")
    assert sum(len(d["contexts"]) for d in before["devices"]) == CONTEXTS
    assert c.check_gateway() == "PASS"

    archive = tmp_path / "gw-checkpoint.tar"
    t0 = time.monotonic()
    c.run("container", "checkpoint", "--export", str(archive), "--compress", "none", c.name,
          criu=STANDIN)
    t1 = time.monotonic()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert any(n.endswith("criu-ext-gtp.img") for n in names), names
    c.run("rm", c.name)
    gw = c.move_network(same_path=True)

    # A corrupt criu-ext image: the restore fails before CRIU starts, nothing created.
    bad = tmp_path / "bad.tar"
    corrupt_gtp_image(archive, bad)
    r = c.run("container", "restore", "--import", str(bad), criu=STANDIN, check=False)
    assert r.returncode != 0, "a corrupt criu-ext image was restored"
    assert gtp_state(f"/run/netns/{gw}")["devices"] == []
    # runc names CRIU's log, which CRIU never wrote: criu-ext put the reason there
    assert "criu-ext: restore not started: " in c.logs(), r.stdout + r.stderr
    record_json(RESULTS, "podman-corrupt-image", {"podman_said": (r.stdout + r.stderr)[-600:]})
    c.run("rm", "-f", c.name, check=False)

    t2 = time.monotonic()
    r = c.run("container", "restore", "--import", str(archive), criu=STANDIN, check=False)
    t3 = time.monotonic()
    assert r.returncode == 0, r.stdout + r.stderr + c.logs()
    assert os.stat(f"/proc/{c.pid()}/ns/net").st_ino == os.stat(f"/run/netns/{gw}").st_ino
    got = c.pinger.wait_all(t3, 30)
    assert got == expected(), f"after restore: {got}\n{c.logs()}"
    assert gtp_state(f"/run/netns/{gw}") == before
    assert c.check_gateway() == "PASS"
    rec = {
        "checkpoint_export_s": round(t1 - t0, 3), "restore_import_s": round(t3 - t2, 3),
        "export_bytes": archive.stat().st_size, "ue_gap_s": c.pinger.gap(t0, t3),
        "first_reply_after_restore_s": round(min(t for t, _u, _t in c.pinger.replies
                                                 if t >= t3) - t3, 3),
        "contexts": CONTEXTS, "ues_pinged": N_UES,
    }
    record_json(RESULTS, "podman-criu-ext", rec)
    print(json.dumps(rec, indent=1))
