"""The series' own kselftest (tools/testing/selftests/net/sctp_repair.*), in the VM.

kernel-patches/build.sh keeps the booted kernel's uapi headers and the
selftest's sources beside its bzImage; the runner copies them where the guest
can see them and says where (CRIU_EXT_KERNEL_FILES). The program is compiled against exactly those
headers and run by its own script, as `make -C tools/testing/selftests
TARGETS=net` would, and its TAP output is checked test by test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.repair

TESTS = ("save_restore", "save_restore_v4mapped", "restore_beside_listener", "unprivileged",
         "refusals", "invalid_state", "busy_unread", "carry_unread", "carry_in_flight",
         "busy_partial_delivery")


def kernel_dir() -> Path:
    files = os.environ.get("CRIU_EXT_KERNEL_FILES")
    assert files, ("CRIU_EXT_KERNEL_FILES is unset or empty: run through tests.vm.runner "
                   "--kernel with a kernel built by kernel-patches/build.sh")
    return Path(files)


def test_selftest_passes_without_a_kernel_warning(tmp_path):
    kdir = kernel_dir()
    src = kdir / "selftests" / "net" / "sctp_repair.c"
    assert src.is_file(), f"{src} is missing: rebuild the kernel with kernel-patches/build.sh"
    gcc = shutil.which("gcc")
    assert gcc, "gcc is missing: scripts/setup --kernel-build installs it"
    binary = tmp_path / "sctp_repair"
    cc = subprocess.run([gcc, "-Wall", "-Werror", "-O2", "-isystem", str(kdir / "usr" / "include"),
                         "-o", str(binary), str(src)], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr

    run = subprocess.run(["bash", str(kdir / "selftests" / "net" / "sctp_repair.sh")],
                         env={**os.environ, "SCTP_REPAIR_PROG": str(binary)},
                         capture_output=True, text=True, timeout=600)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert re.search(rf"^1\.\.{len(TESTS)}$", out, re.M), out
    passed = re.findall(r"^ok \d+ global\.(\w+)$", out, re.M)
    assert sorted(passed) == sorted(TESTS), out
    assert not re.search(r"^not ok", out, re.M), out
    assert "the kernel warned" not in out
