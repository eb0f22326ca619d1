"""Netfilter rules that keep a carried SCTP association quiet while it is away.

Two stages, one nftables table (``inet criu_ext_sctp``) in the task's netns:

* ``drain``: drop incoming INIT chunks for the carried ports, so that no new
  association starts while the sockets are being saved (the peer retries).
  DATA of the carried associations is dropped by the kernel itself once
  their sockets are in repair mode, which still lets SACKs in: a rule could
  not, since a peer that keeps sending bundles its SACKs with new DATA.
* ``hold``: drop every SCTP packet of those ports, both ways. From the moment
  the socket leaves its task until it is back, the peer's packets meet no
  association: without this the kernel would answer them with an ABORT.

CRIU carries the table with the netns (3.17 dumps the nftables ruleset), and
the restore side installs it again in case it did not.
"""

from __future__ import annotations

import subprocess

TABLE = "criu_ext_sctp"


class FenceError(Exception):
    pass


def _ports(ports) -> str:
    return "{ " + ", ".join(str(p) for p in sorted(set(ports))) + " }"


def _script(stage: str, ports) -> str:
    p = _ports(ports)
    head = (f"table inet {TABLE} {{\n"
            " chain in { type filter hook input priority -300; policy accept; }\n"
            " chain out { type filter hook output priority -300; policy accept; }\n"
            "}\n"
            f"flush chain inet {TABLE} in\n"
            f"flush chain inet {TABLE} out\n")
    if stage == "drain":
        return head + f"add rule inet {TABLE} in sctp dport {p} sctp chunk init exists drop\n"
    if stage == "hold":
        return head + (f"add rule inet {TABLE} in sctp dport {p} drop\n"
                       f"add rule inet {TABLE} out sctp sport {p} drop\n")
    raise ValueError(stage)


def _nft(netns: str, script: str, what: str) -> None:
    proc = subprocess.run(["nsenter", f"--net={netns}", "nft", "-f", "-"], input=script,
                          text=True, capture_output=True)
    if proc.returncode:
        msg = (proc.stderr.strip().splitlines() or ["nft failed"])[0]
        raise FenceError(f"{what} in {netns}: {msg}")


def drain(netns: str, ports) -> None:
    _nft(netns, _script("drain", ports), "SCTP drain rules")


def hold(netns: str, ports) -> None:
    _nft(netns, _script("hold", ports), "SCTP hold rules")


def lift(netns: str) -> None:
    """Remove the table; no error if it is not there."""
    _nft(netns, f"table inet {TABLE}\ndelete table inet {TABLE}\n", "removing the SCTP rules")
