"""One migration of one function: CRIU dump on the source host, the images sent to the
destination host over the fabric, CRIU restore there. Timed phase by phase.

CRIU is driven through its RPC (criu_ext.rpc) with the toolkit's plugins
answering its callbacks in this process, the way ``criu-ext dump|restore`` does.
``criu swrk`` is started from inside the host's namespace, so CRIU runs "on"
that host: the function's veth outer ends are found there at dump and made
there, on the host's bridge, at restore.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tarfile
import threading
import time
from pathlib import Path

from criu_ext import phases as ph
from criu_ext.plugin import Log, select
from criu_ext.rpc import Options, run
from criu_ext.session import Session
from procns.netns import in_netns
from scenario.fabric import BRIDGE, HOST_ADDR, Fabric, outer_name

# Our own images: extract as they are. Python 3.11.4 added the filter argument (and
# 3.14 will want it); Debian 12's 3.11.2 does not know it.
TAR_TRUSTED = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}


@dataclasses.dataclass
class Migration:
    """What one migration took; times in seconds, ``t_*`` on CLOCK_MONOTONIC."""

    src: str
    dst: str
    pid: int
    checkpoint_s: float
    transfer_s: float
    restore_s: float
    image_bytes: int
    plugin_frozen_s: float
    t_dump_start: float
    t_restored: float

    @property
    def total_s(self) -> float:
        return self.checkpoint_s + self.transfer_s + self.restore_s


def image_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def send_images(fabric: Fabric, src: str, dst: str, src_dir: Path, dst_dir: Path) -> None:
    """Stream ``src_dir`` as tar over TCP from host ``src`` to host ``dst``."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    with in_netns(fabric.host_path(dst)):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST_ADDR[dst], 0))
    listener.listen(1)
    listener.settimeout(60)  # a sender that never connects must not hang us
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                tar.extractall(dst_dir, **TAR_TRUSTED)
        except BaseException as e:  # reported by the sender below
            errors.append(e)

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    with in_netns(fabric.host_path(src)):
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        conn.connect((HOST_ADDR[dst], listener.getsockname()[1]))
        with conn.makefile("wb") as f, tarfile.open(fileobj=f, mode="w|") as tar:
            for item in sorted(src_dir.iterdir()):
                tar.add(item, arcname=item.name)
    except OSError as e:
        errors.append(e)
    finally:
        conn.close()
        rx.join(timeout=60)
        listener.close()
    if errors:
        raise RuntimeError(f"image transfer to host {dst} failed: {errors[0]!r}") from errors[0]


def migrate(fabric: Fabric, fn_ns: str, role: str, pid: int, links: list[str], src: str,
            dst: str, workdir: Path, *, tcp_established: bool = False,
            log: Log | None = None) -> Migration:
    """Move the task tree ``pid`` living in namespace ``fn_ns`` from host ``src`` to ``dst``."""
    log = log or Log(open(os.devnull, "w"), 1)
    plugins = select(None, log)
    src_dir, dst_dir = workdir / f"on-{src}", workdir / f"on-{dst}"
    src_dir.mkdir(parents=True)
    dump_session = Session(ph.DUMP, str(src_dir), plugins, "rpc", log)
    t0 = time.monotonic()
    with in_netns(fabric.host_path(src)):
        run(ph.DUMP, Options(images_dir=str(src_dir), pid=pid, tcp_established=tcp_established,
                             log_file="dump.log", log_level=2), dump_session)
    t1 = time.monotonic()
    fabric.retire(fn_ns)
    send_images(fabric, src, dst, src_dir, dst_dir)
    t2 = time.monotonic()
    external = [f"veth[{ifname}]:{outer_name(role, ifname)}@{BRIDGE}" for ifname in links]
    restore_session = Session(ph.RESTORE, str(dst_dir), select(None, log), "rpc", log)
    with in_netns(fabric.host_path(dst)):
        res = run(ph.RESTORE, Options(images_dir=str(dst_dir), tcp_established=tcp_established,
                                      external=external, log_file="restore.log", log_level=2),
                  restore_session)
    t3 = time.monotonic()
    new_pid = res.resp.restore.pid
    fabric.adopt(fn_ns, new_pid)
    return Migration(src, dst, new_pid, t1 - t0, t2 - t1, t3 - t2, image_bytes(src_dir),
                     dump_session.plugin_seconds(ph.FROZEN), t0, t3)
