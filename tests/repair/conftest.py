"""Every test of this tier needs the kernel built from kernel-patches/."""

from __future__ import annotations

import pytest

from sctp_repair import probe


@pytest.fixture(scope="module", autouse=True)
def repair_kernel():
    result = probe()
    assert result.repair, f"the test VM must boot the patched kernel: {result}"
