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

Both go through structured interfaces, in-process: nftables through libnftables'
JSON API (Debian's python3-nftables), routing rules as rtnetlink messages. No
text is spliced into a command language and nothing is forked in the freeze
window. Addresses and ports come from images, so they are parsed and
range-checked here before any rule is built from them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

TABLE = "criu_ext_sctp"
SEAL_PREF = 10  # before the main table (32766), after local (0)
IPPROTO_SCTP = 132
FR_ACT_BLACKHOLE = 6  # include/uapi/linux/fib_rules.h


class FenceError(Exception):
    pass


Peer = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise FenceError(f"not an SCTP port: {value!r}")
    return value


def _peers(peers: Iterable[tuple[str, int]]) -> list[Peer]:
    """``peers`` as parsed (address, port) pairs, sorted, without duplicates."""
    out = set()
    for addr, port in peers:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            raise FenceError(f"not an IP address: {addr!r}") from None
        out.add((ip, _port(port)))
    return sorted(out, key=lambda p: (p[0].version, p[0], p[1]))


# -- nftables, as libnftables JSON commands --

def _chain(name: str, hook: str | None = None) -> dict:
    chain: dict[str, str | int] = {"family": "inet", "table": TABLE, "name": name}
    if hook:
        chain.update(type="filter", hook=hook, prio=-300, policy="accept")
    return {"chain": chain}


def _match(left: dict, right: object) -> dict:
    return {"match": {"op": "==", "left": left, "right": right}}


def _sctp(field: str) -> dict:
    return {"payload": {"protocol": "sctp", "field": field}}


def _chunk(name: str, present: bool) -> dict:
    return _match({"sctp chunk": {"name": name}}, present)


def _rule(chain: str, *expr: dict) -> dict:
    return {"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain,
                             "expr": [*expr, {"drop": None}]}}}


# Every stage replaces the one before in one transaction: no gap between them.
def _empty_chains() -> list[dict]:
    return [{"add": {"table": {"family": "inet", "name": TABLE}}},
            {"add": _chain("in", "input")}, {"add": _chain("out", "output")},
            {"flush": _chain("in")}, {"flush": _chain("out")}]


def stage_commands(stage: str, ports: Iterable[int]) -> list[dict]:
    """The ``drain`` or ``hold`` stage for the carried ``ports``."""
    ports_set = {"set": sorted({_port(p) for p in ports})}
    if stage == "drain":
        rules = [_rule("in", _match(_sctp("dport"), ports_set), _chunk("init", True))]
    elif stage == "hold":
        rules = [_rule("in", _match(_sctp("dport"), ports_set)),
                 _rule("out", _match(_sctp("sport"), ports_set))]
    else:
        raise ValueError(stage)
    return _empty_chains() + rules


def restart_commands(peers: Iterable[tuple[str, int]]) -> list[dict]:
    """The ``restart`` stage: ``peers`` are [(address, port)] of the restarting associations."""
    rules = _empty_chains()
    for ip, port in _peers(peers):
        proto = "ip6" if ip.version == 6 else "ip"
        rules.append(_rule("in", _match({"payload": {"protocol": proto, "field": "saddr"}},
                                        str(ip)),
                           _match(_sctp("sport"), port), _chunk("init-ack", False),
                           _chunk("cookie-ack", False), _chunk("abort", False)))
    return rules


def lift_commands() -> list[dict]:
    # Adding the table first makes the delete succeed when it is not there.
    return [{"add": {"table": {"family": "inet", "name": TABLE}}},
            {"delete": {"table": {"family": "inet", "name": TABLE}}}]


def _nft(netns: str | None, commands: list[dict], what: str) -> None:
    from gtp_util.errors import GtpError
    from gtp_util.nat import nft_json

    try:
        rc, _, err = nft_json(netns, commands, check=False)
    except GtpError as exc:  # libnftables' Python binding is missing
        raise FenceError(f"{what}: {exc}") from None
    except OSError as exc:
        raise FenceError(f"{what} in {netns}: {exc.strerror or exc}") from None
    if rc:
        msg = (err.strip().splitlines() or ["nft failed"])[0]
        raise FenceError(f"{what} in {netns}: {msg}")


def drain(netns: str, ports: Iterable[int]) -> None:
    _nft(netns, stage_commands("drain", ports), "SCTP drain rules")


def hold(netns: str, ports: Iterable[int]) -> None:
    _nft(netns, stage_commands("hold", ports), "SCTP hold rules")


def restart(netns: str, peers: Iterable[tuple[str, int]]) -> None:
    """Replace the hold with the ``restart`` stage for ``peers`` ([(address, port)])."""
    _nft(netns, restart_commands(peers), "SCTP restart rules")


def lift(netns: str) -> None:
    """Remove the table; no error if it is not there."""
    _nft(netns, lift_commands(), "removing the SCTP rules")


# -- the seal, as fib rules --

def seal_messages(peers: Iterable[tuple[str, int]]) -> list:
    """One blackhole rule per peer: SCTP to that address and port, before the main table."""
    from pyroute2.netlink.rtnl.fibmsg import fibmsg

    out = []
    for ip, port in _peers(peers):
        msg = fibmsg()
        msg["family"] = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        msg["dst_len"] = ip.max_prefixlen
        msg["action"] = FR_ACT_BLACKHOLE
        msg["attrs"] = [("FRA_DST", str(ip)), ("FRA_PRIORITY", SEAL_PREF),
                        ("FRA_IP_PROTO", IPPROTO_SCTP),
                        ("FRA_DPORT_RANGE", f"{port}:{port}")]
        out.append(msg)
    return out


def _rules(netns: str, verb: str, peers: Iterable[tuple[str, int]], what: str,
           force: bool = False) -> None:
    import errno

    from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
    from pyroute2.netlink.rtnl import RTM_DELRULE, RTM_NEWRULE

    from gtp_util.rtnl import Rtnl, RtnlError

    msgs = seal_messages(peers)
    if not msgs:
        return
    if verb == "add":
        mtype, flags = RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    else:
        mtype, flags = RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK
    try:
        with Rtnl(netns) as rtnl:
            for msg in msgs:
                try:
                    rtnl.request(msg, mtype, f"{what} in {netns}", flags)
                except RtnlError as exc:
                    # a rule already gone is what removing wanted
                    if not (force and exc.errno == errno.ENOENT):
                        raise
    except RtnlError as exc:
        if not force:
            raise FenceError(str(exc)) from None
    except OSError as exc:
        if not force:
            raise FenceError(f"{what} in {netns}: {exc.strerror or exc}") from None


def seal(netns: str, peers: Iterable[tuple[str, int]]) -> None:
    """Blackhole SCTP towards ``peers`` ([(address, port)]) from ``netns``."""
    _rules(netns, "add", peers, "SCTP seal rules")


def unseal(netns: str, peers: Iterable[tuple[str, int]]) -> None:
    """Remove what :func:`seal` added; no error for rules that are not there."""
    _rules(netns, "del", peers, "removing the SCTP seal rules", force=True)
