"""The fabric's two hosts as `criu-ext migrate` / `criu-ext receive` see them.

Host A is a network namespace in the VM's PID namespace; host B a network
namespace with a PID and a mount namespace of its own (its init reaps orphans).
CRIU restores a task with its PID, and the source keeps its task, frozen,
until the destination has restored it: two hosts sharing one PID namespace
would collide. Both ends get certificates of one test CA (criu-ext tls-init's
code); ``rogue`` is a certificate of another CA.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from criu_ext.migrate.tls import make_test_pki
from lab.procs import alive
from scenario.fabric import HOST_ADDR, Fabric

ROOT = Path(__file__).resolve().parents[1]
CRIU_EXT = str(ROOT / ".venv" / "bin" / "criu-ext")
PID_BASE_B = 20000
# Host B's init reaps its orphans, as a host's init does: a restore CRIU abandoned
# leaves its killed tasks to it, and a zombie would keep their PIDs taken.
REAPER = ("import os, time\nwhile True:\n    try:\n        os.wait()\n"
          "    except ChildProcessError:\n        time.sleep(0.2)\n")


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


class Hosts:
    """Host A and host B of a started Fabric, and the commands run on them."""

    def __init__(self, fabric: Fabric, tmp: Path) -> None:
        self.fabric, self.tmp = fabric, tmp
        tmp.mkdir(parents=True, exist_ok=True)
        # mounts propagate into B's mount namespace (slave), so a netns the host's set-up
        # names later (/run/netns: a staged move's) is seen there too
        self.init = subprocess.Popen(["nsenter", f"--net={fabric.host_path('b')}", "--",
                                      "unshare", "--pid", "--fork", "--mount",
                                      "--propagation", "slave", "--mount-proc",
                                      sys.executable, "-c", REAPER], start_new_session=True)
        end = time.monotonic() + 30
        while not _children(self.init.pid):
            assert time.monotonic() < end, "host B's init did not start"
            time.sleep(0.05)
        self.init_b = _children(self.init.pid)[0]
        # B's own tasks (receivers, page servers, CRIU) take PIDs far from those the
        # VM hands out, which migrated tasks keep
        subprocess.run(self.prefix("b") + ["sh", "-c", f"echo {PID_BASE_B} > "
                                           "/proc/sys/kernel/ns_last_pid"], check=True)
        self.pidns_b = os.readlink(f"/proc/{self.init_b}/ns/pid")
        pki = make_test_pki(str(tmp / "pki"), {"a": [HOST_ADDR["a"]], "b": [HOST_ADDR["b"]]})
        self.tls = {h: ["--tls-cacert", f.cacert, "--tls-cert", f.cert, "--tls-key", f.key]
                    for h, f in pki.items()}
        rogue = make_test_pki(str(tmp / "rogue"), {"a": [HOST_ADDR["a"]]})["a"]
        self.rogue = ["--tls-cacert", rogue.cacert, "--tls-cert", rogue.cert, "--tls-key", rogue.key]
        self.work = {h: tmp / f"recv-{h}" for h in "ab"}
        self.n = 0

    def prefix(self, h: str) -> list[str]:
        if h == "a":
            return ["nsenter", f"--net={self.fabric.host_path('a')}", "--"]
        return ["nsenter", "-t", str(self.init_b), "-p", "-m", "-n", "--"]

    def global_pid(self, h: str, pid: int) -> int:
        if h == "a":
            return pid
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{p}/ns/pid") != self.pidns_b:
                    continue
                with open(f"/proc/{p}/status") as f:
                    ns = [ln.split()[1:] for ln in f if ln.startswith("NSpid:")][0]
            except (OSError, IndexError):
                continue
            if len(ns) == 2 and int(ns[1]) == pid:
                return int(p)
        raise AssertionError(f"no PID {pid} in host B's PID namespace")

    def tasks_b(self) -> list[str]:
        """Commands of every task in host B's PID namespace but its init."""
        out = []
        for p in os.listdir("/proc"):
            if p.isdigit() and int(p) != self.init_b:
                try:
                    if os.readlink(f"/proc/{p}/ns/pid") == self.pidns_b and alive(int(p)):
                        out.append(Path(f"/proc/{p}/cmdline").read_text().replace("\0", " "))
                except OSError:
                    pass
        return out

    def links(self, h: str) -> list[str]:
        res = subprocess.run(["ip", "-n", self.fabric.hosts[h], "-br", "link"],
                             capture_output=True, text=True, check=True)
        return sorted(line.split()[0].split("@")[0] for line in res.stdout.splitlines())

    def receiver(self, h: str, external: list[str], env: dict | None = None, extra=()):
        self.n += 1
        name = f"rx{self.n}-{h}"
        port_file = self.tmp / f"{name}.port"
        argv = self.prefix(h) + [CRIU_EXT, "receive", "--listen", f"{HOST_ADDR[h]}:0",
                                 "--port-file", str(port_file), *self.tls[h],
                                 "--work-dir", str(self.work[h]), "--timeout", "600", "--json",
                                 *[a for e in external for a in ("--external", e)], *extra]
        err = open(self.tmp / f"{name}.err", "w")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env, start_new_session=True,
                                close_fds=True, cwd=ROOT)
        end = time.monotonic() + 120
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > end:
                proc.kill()
                raise RuntimeError(f"criu-ext receive on host {h} did not start "
                                   f"({proc.poll()}): {(self.tmp / f'{name}.err').read_text()}")
            time.sleep(0.05)
        port = int(port_file.read_text())
        proc.name, proc.port, proc.host = name, port, h  # type: ignore[attr-defined]
        # the receiver itself (host B: nsenter forked it into the PID namespace)
        proc.rx_pid = proc.pid if h == "a" else _children(proc.pid)[0]  # type: ignore[attr-defined]
        return proc

    def net_state(self) -> str:
        """Addresses, routes, rules, neighbours and packet filters of both hosts: what a
        test prints when one host cannot reach the other."""
        out = []
        for h in "ab":
            for cmd in (["ip", "-br", "addr"], ["ip", "route"], ["ip", "rule"], ["ip", "neigh"],
                        ["nft", "list", "ruleset"], ["iptables-save"],
                        ["ss", "-tanp"]):
                res = subprocess.run(self.prefix(h) + cmd, capture_output=True, text=True)
                out.append(f"--- host {h}: {' '.join(cmd)}\n{res.stdout}{res.stderr}")
        return "\n" + "\n".join(out)

    def log(self, rx) -> str:
        return (self.tmp / f"{rx.name}.err").read_text()

    def failure_logs(self, h: str, err: str) -> str:
        """What a test prints after a CRIU failure on host h: the end of the CRIU log the
        error names ("see PATH") and the kernel's last lines (a crash or an OOM kill of
        CRIU leaves its trace there, not in the log)."""
        out = []
        if named := re.search(r"see (/\S+\.log)", err):
            path = named.group(1)
            res = subprocess.run(self.prefix(h) + ["tail", "-n", "40", path],
                                 capture_output=True, text=True)
            out.append(f"--- host {h}: {path}\n{res.stdout}{res.stderr}")
        res = subprocess.run(["dmesg"], capture_output=True, text=True)
        out.append("--- dmesg\n" + "\n".join(res.stdout.splitlines()[-15:]))
        return "\n" + "\n".join(out)

    def migrate(self, src: str, pid: int, rx, tls: list[str] | None = None, extra=(),
                wait: bool = True):
        argv = self.prefix(src) + [CRIU_EXT, "migrate", "--pid", str(pid), "--to",
                                   f"{HOST_ADDR[rx.host]}:{rx.port}", *(tls or self.tls[src]),
                                   "--json", "--timeout", "600", *extra]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, close_fds=True, cwd=ROOT)
        return self.finish(proc) if wait else proc

    @staticmethod
    def finish(proc) -> tuple[int, dict, str]:
        out, err = proc.communicate(timeout=900)
        try:
            rep = json.loads(out) if out.strip() else {}
        except ValueError:
            rep = {"stdout": out}
        return proc.returncode, rep, err

    def close(self) -> None:
        os.killpg(self.init.pid, signal.SIGKILL)
        self.init.wait()


@contextmanager
def two_hosts(prefix: str, tmp: Path) -> Iterator[Hosts]:
    """A started fabric (namespaces named ``prefix``-...) and its two hosts; both taken
    down after."""
    fabric = Fabric(prefix).start()
    hosts = None
    try:
        hosts = Hosts(fabric, tmp)
        yield hosts
    finally:
        if hosts is not None:
            hosts.close()
        fabric.cleanup()
