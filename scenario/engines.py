"""How the scenario runs a function's task and moves it from one host to the other.

* ``criu-ext`` (:class:`MigrateEngine`): the task runs in its netns on host A;
  ``criu-ext receive`` on host B and ``criu-ext migrate`` on host A move it, CRIU
  carrying the netns, or, for a function with a gtp user plane, host B's set-up
  making it and ``--stage`` readying the user plane there before the freeze
  (scenario.migration).
* ``podman`` (:class:`PodmanEngine`): the task runs in a Podman container (runtime
  runc) whose netns is the function's, given by path. A move is
  ``podman container checkpoint --export`` with criu-ext-criu as runc's CRIU, the
  archive copied to host B's directory, the function's netns made afresh on host
  B's bridge with the same addresses and MACs (what the destination's network
  set-up does for a container; CRIU leaves a netns given by path alone) and
  ``podman container restore --import`` through criu-ext-criu, whose plugins put
  the gtp devices, tunnels, masquerade and SCTP associations into that netns.
  One Podman in the VM stands for both hosts' engines: a container has a PID
  namespace of its own, so the hosts need no separate ones.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from criu_ext.criu_images import stats
from lab.podman import Container, Podman
from scenario.fabric import Fabric
from scenario.functions import Function
from scenario.hosts import Hosts
from scenario.migration import Migration, migrate_cli

ROOT = Path(__file__).resolve().parents[1]
CRIU_EXT_CRIU = str(ROOT / ".venv" / "bin" / "criu-ext-criu")


class MigrateEngine:
    """``criu-ext migrate`` / ``criu-ext receive`` between the fabric's two hosts."""

    name = "criu-ext"

    def __init__(self, fabric: Fabric, workdir: Path) -> None:
        self.fabric = fabric
        self.hosts = Hosts(fabric, workdir / "hosts")

    def adopt(self, fn: Function) -> None:
        """Nothing to change: the function's task is started with nsenter."""

    def move(self, fn: Function, pid: int, src: str, dst: str) -> Migration:
        """``pid``: the task's PID in host ``src``'s PID namespace."""
        return migrate_cli(self.hosts, fn.ns, fn.name, pid, fn.links, src, dst,
                           tcp_established=fn.tcp_established,
                           stage=fn.addrs if fn.make_before_break else None)

    def close(self) -> None:
        self.hosts.close()


class PodmanEngine:
    """Podman checkpoint --export / restore --import through criu-ext-criu."""

    name = "podman"

    def __init__(self, fabric: Fabric, workdir: Path) -> None:
        self.fabric, self.workdir = fabric, workdir
        self.podman = Podman(workdir / "podman", fabric.ns.tag)
        self.containers: dict[str, str] = {}  # function -> container
        self.outputs: dict[str, Path] = {}  # function -> its task's output
        self.n = 0

    def adopt(self, fn: Function) -> None:
        """From now on ``fn`` starts its task in a container."""
        def launch(ns: str, argv: list[str], log: Path) -> Container:
            name = self.containers[fn.name] = f"{fn.name}-{self.fabric.ns.tag}"
            self.outputs[fn.name] = log
            # the task's output goes to ``log`` as with nsenter; exec: the task is the
            # container's PID 1 and gets signals sent to it
            sh_argv = ["/bin/sh", "-c", f"exec \"$@\" >{shlex.quote(str(log))} 2>&1", "sh",
                       *argv]
            self.podman.start(name, f"/run/netns/{ns}", sh_argv, ro=[str(ROOT)],
                              rw=(str(log.parent),), cwd=str(ROOT),
                              env={"PYTHONDONTWRITEBYTECODE": "1"}, extra=fn.container_opts)
            return Container(self.podman, name, argv)
        fn.launch = launch  # type: ignore[method-assign]

    def move(self, fn: Function, pid: int, src: str, dst: str) -> Migration:
        name = self.containers[fn.name]
        self.n += 1
        archive = self.workdir / "podman" / f"{name}-{self.n}.tar"
        arrived = self.workdir / "podman" / f"{name}-{self.n}-on-{dst}.tar"
        tcp = ["--tcp-established"] if fn.tcp_established else []
        t0 = time.monotonic()
        self._podman("container", "checkpoint", "--export", str(archive), "--compress",
                     "none", *tcp, name)
        t1 = time.monotonic()
        shutil.copyfile(archive, arrived)  # the destination's copy
        t2 = time.monotonic()
        self._podman("rm", name)
        self.fabric.remake(fn.ns, fn.addrs, src, dst,
                           lambda ns: fn.netns_setup(ns, for_restore=True))
        self._podman("container", "restore", "--import", str(arrived), *tcp)
        t3 = time.monotonic()
        try:
            new_pid = self.podman.pid(name)
        except RuntimeError as e:
            out = self.outputs[fn.name].read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{e} after its restore; its output:\n{out}\n"
                               f"{self.podman.logs()}") from None
        size = archive.stat().st_size
        archive.unlink()
        plugins, frozen = checkpoint_figures(arrived)
        arrived.unlink()
        # frozen: CRIU's at the checkpoint; the container is down from then until the
        # restore returns, which the peers' downtime shows
        return Migration(src, dst, new_pid, checkpoint_s=t1 - t0, transfer_s=t2 - t1,
                         restore_s=t3 - t2, image_bytes=size, plugin_frozen_s=plugins,
                         t_dump_start=t0, t_restored=t3, total_s=t3 - t0, pre_copy_rounds=0,
                         frozen_s=frozen, ns_pid=new_pid)

    def _podman(self, *args: str) -> None:
        try:
            self.podman.run(*args, criu=CRIU_EXT_CRIU, timeout=300)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{self.podman.logs()}") from None

    def close(self) -> None:
        self.podman.close()


def checkpoint_figures(archive: Path) -> tuple[float, float]:
    """The criu-ext plugins' seconds at the checkpoint (the manifest's) and CRIU's frozen
    time (stats-dump), from a checkpoint archive."""
    plugins = frozen = None
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory() as tmp:
        for member in tar.getmembers():
            base = Path(member.name).name
            if not member.isfile() or base not in ("criu-ext.json", "stats-dump"):
                continue
            f = tar.extractfile(member)
            data = f.read() if f else b""
            if base == "criu-ext.json":
                timings = json.loads(data)["dump"]["timings"]
                plugins = round(sum(t["seconds"] for t in timings), 4)
            else:
                Path(tmp, base).write_bytes(data)
                frozen = stats(tmp).get("dump", {}).get("frozen_time")
    if plugins is None or frozen is None:
        raise RuntimeError(f"{archive.name}: no criu-ext.json or stats-dump in the archive")
    return plugins, frozen / 1e6


def make_engine(name: str, fabric: Fabric, workdir: Path):
    return {"criu-ext": MigrateEngine, "podman": PodmanEngine}[name](fabric, workdir)
