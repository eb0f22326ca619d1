"""criu-ext check: verdict and formatting (pure), and its probes cross-checked on this host.

The cross-check compares each probe with an independent way of asking the
same kernel (iproute2, a plain socket() call), so it holds on any host: on
these machines' host kernel both say "no gtp, no SCTP"; in the VM both say yes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from criu_ext.check import Finding, as_json, as_table, missing, usable


def findings(**oks):
    base = {"kernel": True, "gtp": True, "sctp": True, "criu check": True}
    base.update(oks)
    out = [Finding(name, ok, "detail", hint="do this") for name, ok in base.items()]
    return out + [Finding("sctp repair mode", False, "not there", required=False, hint="opt")]


def test_optional_absence_keeps_the_toolkit_usable():
    f = findings()
    assert usable(f)
    table = as_table(f)
    assert table.splitlines()[-1] == "usable: the toolkit can work here (without: sctp repair mode)"
    assert "absent" in table


def test_missing_required_capabilities_are_named_with_their_hint():
    f = findings(gtp=False, **{"criu check": False})
    assert not usable(f)
    assert missing(f) == ["gtp", "criu check"]
    table = as_table(f)
    assert table.splitlines()[-1] == "NOT usable here: missing gtp, criu check"
    gtp_line = next(i for i, line in enumerate(table.splitlines()) if "gtp" in line)
    assert "MISSING" in table.splitlines()[gtp_line]
    assert "-> do this" in table.splitlines()[gtp_line + 1]


def test_json_output_carries_the_verdict_and_every_finding():
    f = findings(sctp=False)
    doc = json.loads(as_json(f))
    assert doc["usable"] is False
    assert doc["missing"] == ["sctp"]
    assert [d["name"] for d in doc["findings"]] == [x.name for x in f]


def _kernel_has_gtp() -> bool:
    res = subprocess.run(["unshare", "-n", "ip", "link", "add", "g0", "type", "gtp",
                          "role", "ggsn"], capture_output=True)
    return res.returncode == 0


def _kernel_has_sctp() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="probes need root")
def test_check_on_this_host_agrees_with_the_kernel():
    cli = shutil.which("criu-ext", path=os.path.dirname(sys.executable))
    res = subprocess.run([cli, "check", "--json"], capture_output=True, text=True)
    doc = json.loads(res.stdout)
    by_name = {f["name"]: f for f in doc["findings"]}
    assert by_name["kernel"]["detail"].split()[1] == os.uname().release
    assert by_name["gtp"]["ok"] is _kernel_has_gtp()
    assert by_name["sctp"]["ok"] is _kernel_has_sctp()
    criu_ok = subprocess.run(["criu", "check"], capture_output=True).returncode == 0
    assert by_name["criu check"]["ok"] is criu_ok
    assert res.returncode == (0 if doc["usable"] else 1)
    assert doc["usable"] is all(f["ok"] for f in doc["findings"] if f["required"])
