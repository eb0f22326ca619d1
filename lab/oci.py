"""OCI bundles for the lab's programs: a busybox-static root plus the host's /usr, read-only.

Debian 12 is merged-/usr, so binding /usr and linking lib, lib64 into it gives the
container the host's Python and its site-packages; the project tree is bound at
its own path so ``python -m lab.gateway`` runs as on the host.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

BUSYBOX = "/bin/busybox"
ENGINE_CAPS = ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_KILL",
               "CAP_SYS_PTRACE"]


def make_rootfs(rootfs: Path) -> None:
    """A minimal root: busybox-static as /bin, /lib and /lib64 as links into the bound /usr."""
    for d in ("bin", "usr", "proc", "sys", "dev", "tmp", "etc", "run"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    os.symlink("busybox", rootfs / "bin" / "sh")
    os.symlink("usr/lib", rootfs / "lib")
    os.symlink("usr/lib64", rootfs / "lib64")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")


def _bind(src: str, dest: str | None = None) -> dict:
    return {"destination": dest or src, "type": "bind", "source": src,
            # not rbind: see Podman.start in lab/podman.py
            "options": ["bind", "ro", "nosuid", "nodev"]}


def config(args: list[str], cwd: str, netns: str, binds: list[str], env: dict[str, str],
           criu_config: str = "") -> dict:
    """config.json for ``args`` in the network namespace at path ``netns`` (a netns given by
    path, as Podman gives it), the listed host directories bound read-only.
    ``criu_config``: the CRIU configuration file runc hands CRIU (annotation
    org.criu.config; empty: none, not even /etc/criu/runc.conf)."""
    caps = list(ENGINE_CAPS)
    return {
        "ociVersion": "1.0.2-dev",
        "annotations": {"org.criu.config": criu_config},
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0}, "args": args,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"] + [f"{k}={v}" for k, v in env.items()],
            "cwd": cwd,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "gw",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
            _bind("/usr"),
        ] + [_bind(b) for b in binds],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "mount"}, {"type": "network", "path": netns}],
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }


def make_bundle(bundle: Path, args: list[str], cwd: str, netns: str, binds: list[str],
                env: dict[str, str] | None = None, criu_config: str = "") -> None:
    make_rootfs(bundle / "rootfs")
    write_config(bundle, config(args, cwd, netns, binds, env or {}, criu_config))


def write_config(bundle: Path, cfg: dict) -> None:
    (bundle / "config.json").write_text(json.dumps(cfg, indent=1))


def set_netns(bundle: Path, netns: str) -> None:
    """Point the bundle at another network namespace (a restore into a fresh one)."""
    cfg = json.loads((bundle / "config.json").read_text())
    for ns in cfg["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = netns
    write_config(bundle, cfg)
