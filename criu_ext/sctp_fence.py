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
* ``restart`` (the stock-kernel fallback, on the destination): everything
  passes except what the restart peers send that is not part of a handshake.
  Until a re-created socket's INIT is answered, the peer's retransmissions and
  heartbeats for the old association meet no association; the ABORT they
  would draw ends the peer's side, and the INIT then meets ECONNREFUSED.

CRIU carries the table with the netns (3.17 dumps the nftables ruleset), and
the restore side installs it again in case it did not.

``seal`` (the source, once the dump is written): routing rules that blackhole
SCTP towards the carried associations' peers. A netns that is deleted after
the dump unregisters its nftables hooks first (nf_tables' pre_exit) and its
interfaces only later; a peer's retransmission arriving in between would meet
no association and draw an ABORT, which ends the association the destination
is about to take over. Routing rules last until the interfaces are gone, and an
ABORT without a route is never sent.
"""

from __future__ import annotations

import subprocess

TABLE = "criu_ext_sctp"
SEAL_PREF = 10  # before the main table (32766), after local (0)


class FenceError(Exception):
    pass


def _ports(ports) -> str:
    return "{ " + ", ".join(str(p) for p in sorted(set(ports))) + " }"


# Every stage replaces the one before in one transaction: no gap between them.
_EMPTY_CHAINS = (f"table inet {TABLE} {{\n"
                 " chain in { type filter hook input priority -300; policy accept; }\n"
                 " chain out { type filter hook output priority -300; policy accept; }\n"
                 "}\n"
                 f"flush chain inet {TABLE} in\n"
                 f"flush chain inet {TABLE} out\n")


def _script(stage: str, ports) -> str:
    p = _ports(ports)
    if stage == "drain":
        rules = f"add rule inet {TABLE} in sctp dport {p} sctp chunk init exists drop\n"
    elif stage == "hold":
        rules = (f"add rule inet {TABLE} in sctp dport {p} drop\n"
                 f"add rule inet {TABLE} out sctp sport {p} drop\n")
    else:
        raise ValueError(stage)
    return _EMPTY_CHAINS + rules


def _restart_script(peers) -> str:
    """The ``restart`` stage: ``peers`` are [(address, port)] of the restarting associations."""
    rules = [_EMPTY_CHAINS]
    for addr, port in sorted(set(peers)):
        fam = "ip6" if ":" in addr else "ip"
        rules.append(f"add rule inet {TABLE} in {fam} saddr {addr} sctp sport {port} "
                     "sctp chunk init-ack missing sctp chunk cookie-ack missing "
                     "sctp chunk abort missing drop\n")
    return "".join(rules)


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


def restart(netns: str, peers) -> None:
    """Replace the hold with the ``restart`` stage for ``peers`` ([(address, port)])."""
    _nft(netns, _restart_script(peers), "SCTP restart rules")


def _seal_batches(verb: str, peers) -> dict[str, str]:
    """``ip -batch`` input per address family ({"-4": ..., "-6": ...})."""
    out: dict[str, list[str]] = {}
    for addr, port in sorted(set(peers)):
        out.setdefault("-6" if ":" in addr else "-4", []).append(
            f"rule {verb} to {addr} ipproto sctp dport {port} blackhole pref {SEAL_PREF}")
    return {fam: "\n".join(lines) + "\n" for fam, lines in out.items()}


def _ip_batch(netns: str, verb: str, peers, what: str, force: bool = False) -> None:
    for fam, script in _seal_batches(verb, peers).items():
        argv = ["nsenter", f"--net={netns}", "ip", fam, *(["-force"] if force else []),
                "-batch", "-"]
        proc = subprocess.run(argv, input=script, text=True, capture_output=True)
        if proc.returncode and not force:
            msg = (proc.stderr.strip().splitlines() or ["ip failed"])[0]
            raise FenceError(f"{what} in {netns}: {msg}")


def seal(netns: str, peers) -> None:
    """Blackhole SCTP towards ``peers`` ([(address, port)]) from ``netns``."""
    _ip_batch(netns, "add", peers, "SCTP seal rules")


def unseal(netns: str, peers) -> None:
    """Remove what :func:`seal` added; no error for rules that are not there."""
    _ip_batch(netns, "del", peers, "removing the SCTP seal rules", force=True)


def lift(netns: str) -> None:
    """Remove the table; no error if it is not there."""
    _nft(netns, f"table inet {TABLE}\ndelete table inet {TABLE}\n", "removing the SCTP rules")
