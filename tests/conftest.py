"""Test tiers: host unit tests run anywhere; `vm` and `repair` tests need the VM.

Outside the VM (no CRIU_EXT_VM in the environment) tests of those tiers are
skipped with a reason that says how to run them; scripts/test always runs them
in the VM, where a VM that cannot start fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

IN_VM = os.environ.get("CRIU_EXT_VM") == "1"
FREED: dict[str, int] = {}  # test -> bytes of its tmp_path removed after it (in the VM)
PEAK = [0]  # the most /tmp held at a test's end, before its tmp_path went


def _tmp_used() -> int:
    st = os.statvfs("/tmp")  # in the VM: the tmpfs under every writable overlay (/tmp, /var...)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def pytest_collection_modifyitems(config, items):
    if IN_VM:
        return
    skip = pytest.mark.skip(reason="runs inside the test VM: scripts/test, "
                            "or python -m tests.vm.runner [--tier repair]")
    for item in items:
        if "vm" in item.keywords or "repair" in item.keywords:
            item.add_marker(skip)


def _size(path: str) -> int:
    total = 0
    for top, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(top, f)).st_size
            except OSError:
                pass
    return total


@pytest.fixture(autouse=True)
def _tmp_path_freed(request):
    """In the VM, /tmp is memory (virtme-ng's overlay keeps its writes in a tmpfs) and
    goes when the VM powers off, so a test's tmp_path is removed once its other fixtures
    are torn down: kept, the tier's CRIU images (tens of MB a dump) pile up in the
    2 GB guest until a dump or a page server finds no room."""
    yield
    path = request.node.funcargs.get("tmp_path") if IN_VM else None
    if path is not None and os.path.isdir(path):
        FREED[request.node.nodeid] = _size(str(path))
        PEAK[0] = max(PEAK[0], _tmp_used())
        shutil.rmtree(path, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if not FREED:
        return
    mib = 1 << 20
    big = max(FREED, key=FREED.__getitem__)
    with open("/proc/meminfo") as f:
        avail = next(int(x.split()[1]) for x in f if x.startswith("MemAvailable:"))
    terminalreporter.write_line(
        f"criu-ext-vm: tests' tmp_path removed after them: {sum(FREED.values()) / mib:.0f} MiB "
        f"(largest {FREED[big] / mib:.0f} MiB, {big}); the guest's writes held at most "
        f"{PEAK[0] / mib:.0f} MiB, now {_tmp_used() / mib:.0f} MiB; "
        f"MemAvailable {avail >> 10} MiB")


@pytest.fixture
def netns():
    """Factory for named network namespaces with loopback up, deleted afterwards."""
    made = []

    def make(prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in reversed(made):
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def lab_factory(tmp_path):
    """SCTP labs (lab.sctp_lab) started on demand, torn down after the test."""
    from lab.sctp_lab import SctpLab

    labs = []

    def make(mode: str = "mme", **kw) -> SctpLab:
        lab = SctpLab(tmp_path, mode, **kw)
        labs.append(lab)
        return lab.start()

    yield make
    for lab in labs:
        lab.stop()
