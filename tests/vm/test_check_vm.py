"""criu-ext check inside the VM: the stock 6.1 kernel has everything the toolkit needs."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vm


def test_check_says_usable_in_the_guest():
    cli = shutil.which("criu-ext", path=os.path.dirname(sys.executable))
    res = subprocess.run([cli, "check", "--json"], capture_output=True, text=True)
    doc = json.loads(res.stdout)
    by_name = {f["name"]: f for f in doc["findings"]}
    assert doc["usable"], doc["missing"]
    assert res.returncode == 0
    for name in ("CAP_NET_ADMIN", "gtp", "sctp", "sctp_diag", "pidfd_getfd", "criu check"):
        assert by_name[name]["ok"], by_name[name]
    assert by_name["criu check"]["detail"] == "Looks good."
    # The stock kernel has no repair mode, and says so rather than pretending.
    assert by_name["sctp repair mode"]["ok"] is False
    # the table a user reads, from the same findings (one `criu check` is enough)
    from criu_ext.check import Finding, as_table

    table = as_table([Finding(**f) for f in doc["findings"]])
    print(table)
    assert table.splitlines()[-1].startswith("usable: the toolkit can work here")
