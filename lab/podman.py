"""Podman as the lab runs it: a private store on a tmpfs of its own, runc as the runtime
(Debian 12's crun is built without CRIU), the CRIU runc runs named per command with
``--runtime-flag criu=PATH``, and an image imported from a root tarball built here (no
registry is reachable).

One :class:`Podman` per test or scenario repetition; :meth:`close` removes its
containers, its store and its run root.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab import oci
from lab.netns import sh

PLAIN_CRIU = "/usr/sbin/criu"
IMAGE = "localhost/criu-ext-lab:1"


class Podman:
    def __init__(self, base: Path, name: str) -> None:
        """``base``: a new directory for the store (a tmpfs is mounted there: runc's
        pivot_root and CRIU's mount handling need a real file system); ``name``: a
        short unique word for the run root (conmon's socket paths must stay under 108
        bytes, so Podman refuses a run root longer than 50 characters)."""
        base.mkdir(parents=True)
        sh("mount", "-t", "tmpfs", "tmpfs", str(base))
        self.base = base
        self.runroot = Path("/run") / f"pm-{name}"
        self.imported = False

    def argv(self, *args: str, criu: str = PLAIN_CRIU) -> list[str]:
        return ["podman", "--root", str(self.base / "storage"), "--runroot",
                str(self.runroot), "--tmpdir", str(self.base / "tmp"),
                "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", "--runtime", "runc",
                "--runtime-flag", f"criu={criu}", *args]

    def run(self, *args: str, criu: str = PLAIN_CRIU, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
        """``podman ARGS``; its output through files, not pipes: a process it leaves
        behind (conmon, a container) must not keep us waiting for an end of file.
        Past ``timeout`` it is killed and the error lists what was still running."""
        argv = self.argv(*args, criu=criu)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 text=True)
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,wchan:24,args"],
                                    capture_output=True, text=True).stdout
                raise RuntimeError(f"podman {' '.join(args)}: no end after {timeout:.0f} s; "
                                   f"running then:\n{ps}\n{self.logs()}") from None
            out.seek(0)
            err.seek(0)
            res = subprocess.CompletedProcess(argv, rc, out.read(), err.read())
        if check and rc:
            raise RuntimeError(f"podman {' '.join(args)}: exit status {rc}: "
                               f"{(res.stdout + res.stderr).strip()[-1500:]}")
        return res

    def import_image(self) -> str:
        """The lab's image (oci.make_rootfs: busybox-static, /lib into the bound /usr)."""
        if not self.imported:
            rootfs, tar = self.base / "rootfs", self.base / "rootfs.tar"
            oci.make_rootfs(rootfs)
            sh("tar", "-C", str(rootfs), "-cf", str(tar), ".")
            self.run("import", str(tar), IMAGE)
            self.imported = True
        return IMAGE

    def start(self, name: str, netns: str, argv: list[str], *, ro: list[str],
              rw: tuple[str, ...] = (), cwd: str = "/", env: dict[str, str] | None = None,
              caps: tuple[str, ...] = ("NET_ADMIN", "NET_RAW"),
              extra: tuple[str, ...] = ()) -> None:
        """``podman run -d`` of ``argv`` in the network namespace at path ``netns`` (given
        by path, as an operator's or a CNI's), the host's /usr and the ``ro`` directories
        bound read-only, the ``rw`` ones read-write, each at its own path; ``extra``:
        more ``podman run`` options."""
        image = self.import_image()
        opts = ["--name", name, "--network", f"ns:{netns}", "-w", cwd,
                # explicit ulimits: Podman's defaults may exceed the limits it runs under
                "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
        opts += [a for c in caps for a in ("--cap-add", c)]
        # non-recursive: the test VM mounts cached copies below /usr and the repository
        # (tests/vm/runner.py), and CRIU cannot checkpoint a container holding 9p mounts
        opts += [a for d in ["/usr", *ro] for a in (
            "--mount", f"type=bind,source={d},destination={d},ro=true,bind-nonrecursive")]
        opts += [a for d in rw for a in ("-v", f"{d}:{d}")]
        opts += [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        opts += extra
        self.run("run", "-d", *opts, image, *argv)

    def state(self, name: str) -> dict:
        """The container's State (Status, Pid, ExitCode, ...); {} if there is none."""
        p = self.run("inspect", "-f", "{{json .State}}", name, check=False, timeout=120)
        try:
            return json.loads(p.stdout) if p.returncode == 0 else {}
        except ValueError:
            return {}

    def pid(self, name: str) -> int:
        pid = int(self.state(name).get("Pid") or 0)
        if pid <= 0:
            raise RuntimeError(f"container {name} is not running")
        return pid

    def logs(self) -> str:
        """The tails of CRIU's and criu-ext's logs anywhere in the store."""
        out = []
        for log in ("criu-ext.log", "dump.log", "restore.log"):
            for p in (self.base / "storage").rglob(log):
                out.append(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    def close(self) -> None:
        self.run("rm", "-a", "-f", "-t", "0", check=False, timeout=300)
        shutil.rmtree(self.runroot, ignore_errors=True)
        sh("umount", "-l", str(self.base), check=False)


class Container:
    """A Popen-like handle on one container's task (what scenario code waits on)."""

    def __init__(self, podman: Podman, name: str, argv: list[str]) -> None:
        self.podman, self.name, self.args = podman, name, argv
        self.pid = podman.pid(name)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        st = self.podman.state(self.name)
        if st.get("Running") or st.get("Status") in ("running", "paused"):
            return None
        self.returncode = int(st.get("ExitCode", -1))
        return self.returncode
