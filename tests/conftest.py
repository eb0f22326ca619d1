"""Test tiers: host unit tests run anywhere; `vm` and `repair` tests need the VM.

Outside the VM (no CRIU_EXT_VM in the environment) tests of those tiers are
skipped with a reason that says how to run them; scripts/test always runs them
in the VM, where a VM that cannot start fails the run.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

IN_VM = os.environ.get("CRIU_EXT_VM") == "1"


def pytest_collection_modifyitems(config, items):
    if IN_VM:
        return
    skip = pytest.mark.skip(reason="runs inside the test VM: scripts/test, "
                            "or python -m tests.vm.runner [--tier repair]")
    for item in items:
        if "vm" in item.keywords or "repair" in item.keywords:
            item.add_marker(skip)


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
