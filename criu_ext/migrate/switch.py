"""Make-before-break, the network's half: keep the source's user plane forwarding
through CRIU's network lock, and move the function's links from one host's bridge to
the other's in one step (#14).

* :func:`pass_user_plane` / :func:`close_pass`: CRIU locks the tree's netns for the
  whole frozen window, even one it was told is external (``network_lock()`` runs
  before it looks at what it dumps): its iptables or nftables lock drops every
  packet at input and output but those carrying SOCCR_MARK, the mark CRIU's own
  TCP repair traffic wears. A kernel gtp device forwards without its task, so the
  GTP-U packets (the socket's UDP ports, both ways) are given that mark before the
  lock sees them (priority -150, before the lock's 0): the UEs keep their service
  while the task is frozen and CRIU dumps it. Forwarded packets (SGi) never meet
  the lock. Structured nftables (libnftables JSON), one table of our own.
* :func:`detach` / :func:`attach`: a function's outer veth ends, in the host's own
  namespace: off the bridge and down on the source, onto the bridge and up on the
  destination. The source's ends go first: the two copies share addresses and MACs
  and are never both on the fabric, and nothing the source sends after the switch
  (an ICMP error, a reset) reaches a peer. :class:`LinkMove` is the same move with
  the names resolved and the requests encoded beforehand: one netlink write. In the
  frozen window the switch moves no link at all: the source's ports are disabled
  by their state alone (:class:`PortsOff`; off the bridge for good once CRIU is
  done), and the destination's, on their bridge since before the freeze in a
  standby that lets nothing in (:func:`standby`: locked, not learning, flooded
  nothing), are made active (:class:`PortsOn`).
* :func:`announce`: a gratuitous ARP for every IPv4 address (an unsolicited
  neighbor advertisement for every IPv6 one) of the destination's
  links, so every bridge on the way learns the MACs' new port at once instead of
  when the function next speaks.
"""

from __future__ import annotations

import os
import socket
import struct

# at the top: the destination announces in the freeze, where an import is a file read
from criu_ext.plugins.announce import announce as garp

SOCCR_MARK = 0xC114  # CRIU's soccr/soccr.h: what its network lock lets through
PASS_TABLE = "criu-ext-upass"
_PRIO = -150  # mangle's: before CRIU's lock chains (priority 0)
IFF_UP = 0x1
IFLA_PROTINFO = 12
NLA_F_NESTED = 0x8000
BR_STATE_DISABLED = 0
# IFLA_BRPORT_* (uapi if_link.h), each a u8 in IFLA_PROTINFO's nest
IFLA_BRPORT_LEARNING = 8
IFLA_BRPORT_UNICAST_FLOOD = 9
IFLA_BRPORT_MCAST_FLOOD = 27
IFLA_BRPORT_BCAST_FLOOD = 30
IFLA_BRPORT_LOCKED = 39
# A port in standby lets nothing in: locked (a frame in is dropped unless the bridge's
# entry for its source MAC points at this port, and with learning off none does). Out,
# the bridge floods it nothing from other ports and forwards it nothing (no MAC is
# learned on it); only what the host itself floods through the bridge device reaches
# it (the flood flags do not apply to that), and any answer is dropped coming in.
# Active: a new port's defaults.
_STANDBY = {IFLA_BRPORT_LOCKED: 1, IFLA_BRPORT_LEARNING: 0, IFLA_BRPORT_UNICAST_FLOOD: 0,
            IFLA_BRPORT_MCAST_FLOOD: 0, IFLA_BRPORT_BCAST_FLOOD: 0}
_ACTIVE = {k: 1 - v for k, v in _STANDBY.items()}


class SwitchError(Exception):
    pass


def _nft(netns: str | None, cmds: list[dict], check: bool = True) -> int:
    from gtp_util.errors import GtpError
    from gtp_util.nat import nft_json

    try:
        return nft_json(netns, cmds, check=check)[0]
    except GtpError as exc:
        raise SwitchError(str(exc)) from None


def pass_user_plane(netns: str, ports: list[int]) -> None:
    """GTP-U of ``ports`` marked in ``netns`` so CRIU's network lock lets it through."""
    if not ports or any(type(p) is not int or not 0 < p < 65536 for p in ports):
        raise SwitchError(f"no valid GTP-U port to let through: {ports!r}")
    close_pass(netns)  # one left by a killed run: start from ours
    where = {"family": "inet", "table": PASS_TABLE}
    cmds: list[dict] = [{"add": {"table": {"family": "inet", "name": PASS_TABLE}}}]
    for chain, hook, field in (("pre", "prerouting", "dport"), ("out", "output", "sport")):
        cmds.append({"add": {"chain": {**where, "name": chain, "type": "filter",
                                       "hook": hook, "prio": _PRIO, "policy": "accept"}}})
        cmds.append({"add": {"rule": {**where, "chain": chain, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": field}},
                       "right": {"set": sorted(set(ports))}}},
            {"mangle": {"key": {"meta": {"key": "mark"}}, "value": SOCCR_MARK}}]}}})
    _nft(netns, cmds)


def close_pass(netns: str) -> None:
    """Remove the table :func:`pass_user_plane` made (absent: nothing to do)."""
    _nft(netns, [{"delete": {"table": {"family": "inet", "name": PASS_TABLE}}}], check=False)


def _index_of(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise SwitchError(f"no such link: {name}") from None


def present(names: list[str]) -> list[str]:
    """Those of ``names`` that are links of this process's netns (/sys would show the
    netns that mounted it)."""
    out = []
    for name in names:
        try:
            _index_of(name)
        except SwitchError:
            continue
        out.append(name)
    return out


class _Prepared:
    """Link requests of this process's netns, resolved and encoded when made (out of the
    frozen window), sent in one netlink write by :meth:`run`: one round trip."""

    def __init__(self, names: list[str]) -> None:
        from gtp_util.rtnl import Rtnl

        self.names = list(names)
        self.rt = Rtnl()
        self.requests: list[tuple[bytes, str]] = []
        try:
            for name in self.names:
                self.requests.append((self._request(name, _index_of(name)), f"link {name}"))
        except BaseException:
            self.close()
            raise

    def _request(self, name: str, index: int) -> bytes:
        raise NotImplementedError

    def run(self) -> None:
        from gtp_util.rtnl import RtnlError

        try:
            self.rt.send_all(self.requests)
        except (RtnlError, OSError) as exc:
            raise SwitchError(str(exc)) from None

    def close(self) -> None:
        self.rt.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


KEEP = "."  # LinkMove's target for "leave the link's bridge as it is" (no link has it)


class LinkMove(_Prepared):
    """Links put onto a bridge (or none: None; KEEP: as they are) and up or down."""

    def __init__(self, targets: dict[str, str | None], up: bool) -> None:
        self.targets, self.up = targets, up
        super().__init__(list(targets))

    def _request(self, name: str, index: int) -> bytes:
        from pyroute2.netlink.rtnl import RTM_NEWLINK
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        master = self.targets[name]
        msg = ifinfmsg()
        msg["index"] = index
        msg["flags"] = IFF_UP if self.up else 0
        msg["change"] = IFF_UP
        if master != KEEP:
            msg["attrs"] = [("IFLA_MASTER", _index_of(master) if master else 0)]
        return self.rt.encode(msg, RTM_NEWLINK)


class PortsOff(_Prepared):
    """The source's half of the switch: its outer links' bridge ports set to disabled
    (IFLA_PROTINFO, the port state alone). The bridge drops every frame from and to a
    disabled port at once, and the kernel does next to nothing: taking a port off its
    bridge or a link down waits for RCU grace periods (38-75 ms for two links in the
    emulated VM, in the frozen window). The links leave the bridge for good once the
    migration is over (:func:`detach`); :func:`restore` puts them back after a
    failure."""

    def _request(self, name: str, index: int) -> bytes:
        return _port_state(index, BR_STATE_DISABLED)


class _Ports(_Prepared):
    """Bridge ports' attributes (``flags``: IFLA_BRPORT_* -> u8) set."""

    def __init__(self, names: list[str], flags: dict[int, int]) -> None:
        self.flags = flags
        super().__init__(names)

    def _request(self, name: str, index: int) -> bytes:
        return _port_flags(index, self.flags)


class PortsOn(_Ports):
    """The destination's half of the switch: its outer links' ports, in standby on their
    bridges since before the freeze (:func:`standby`), made active (unlocked, learning,
    flooded): one attribute change per port, where putting a link onto a bridge and up
    took 5-29 ms for two links in the emulated VM."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names, _ACTIVE)


def _setlink_bridge(index: int, attr: bytes) -> bytes:
    """RTM_SETLINK of family AF_BRIDGE for port ``index`` with one attribute (br_setlink).
    Its sequence number is set by Rtnl.send_all."""
    from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
    from pyroute2.netlink.rtnl import RTM_SETLINK

    body = struct.pack("<BxHiII", socket.AF_BRIDGE, 0, index, 0, 0)  # ifinfomsg
    length = 16 + len(body) + len(attr)
    return struct.pack("<IHHII", length, RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 0, 0) \
        + body + attr


def _port_state(index: int, state: int) -> bytes:
    """The port's state alone: IFLA_PROTINFO as one byte (the form br_setlink takes
    without a nest)."""
    return _setlink_bridge(index, struct.pack("<HHB3x", 5, IFLA_PROTINFO, state))


def _port_flags(index: int, flags: dict[int, int]) -> bytes:
    """Port attributes (IFLA_BRPORT_*, u8 each) in IFLA_PROTINFO's nest."""
    inner = b"".join(struct.pack("<HHB3x", 5, kind, value) for kind, value in flags.items())
    return _setlink_bridge(index, struct.pack("<HH", 4 + len(inner),
                                              IFLA_PROTINFO | NLA_F_NESTED) + inner)


def restore(links: dict[str, str | None]) -> None:
    """After a failure: each link off its bridge, then back on it (None: up on none), a
    fresh port, forwarding, whatever state the switch left it in."""
    detach(list(links))
    for name, bridge in links.items():
        attach([name], bridge) if bridge else up([name])


def _set_links(names: list[str], master: str | None, up: bool) -> None:
    """Every link of ``names`` (this process's netns) onto ``master`` (None: off any
    bridge), and up or down."""
    with LinkMove(dict.fromkeys(names, master), up) as move:
        move.run()


def masters(names: list[str]) -> dict[str, str | None]:
    """The bridge each link of ``names`` (this process's netns) is on (None: none), to
    put them back. Read over rtnetlink: /sys shows the netns that mounted it."""
    from pyroute2.netlink.rtnl import RTM_GETLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    from gtp_util.rtnl import Rtnl

    with Rtnl() as rt:
        links = {m["index"]: (m.get_attr("IFLA_IFNAME"), m.get_attr("IFLA_MASTER"))
                 for m in rt.dump(RTM_GETLINK, ifinfmsg)}
    by_name = {name: master for name, master in links.values()}
    out: dict[str, str | None] = {}
    for name in names:
        if name not in by_name:
            raise SwitchError(f"no such link: {name}")
        master = by_name[name]
        out[name] = links[master][0] if master in links else None
    return out


def up(names: list[str]) -> None:
    """Links up, on no bridge."""
    _set_links(names, None, True)


def detach(names: list[str]) -> None:
    """The source's outer ends off their bridge and down."""
    _set_links(names, None, False)


def attach(names: list[str], bridge: str) -> None:
    """The destination's outer ends onto ``bridge`` and up."""
    _set_links(names, bridge, True)


def standby(links: dict[str, str]) -> None:
    """The destination's outer links, before the freeze: each down, onto its bridge, its
    port put in standby (see _STANDBY), then up, so that the port never passes the
    fabric's frames before :class:`PortsOn` makes it active. Undone by :func:`detach`."""
    names = list(links)
    with LinkMove(dict(links), up=False) as move:
        move.run()
    with _Ports(names, _STANDBY) as ports:
        ports.run()
    with LinkMove(dict.fromkeys(names, KEEP), up=True) as move:
        move.run()


def announce(netns: str) -> int:
    """A gratuitous ARP or unsolicited NA from each address of ``netns``'s Ethernet links (the
    announce plugin's); returns how many were sent."""
    return len(garp(netns, close_later=True))


def reclaim(pid: int) -> int | None:
    """After a failed migration that got as far as the destination's restore: the addresses
    of ``pid``'s network namespace announced from here again, if it has one of its own.

    CRIU brings the restored links up before it restores their netfilter rules (and with
    them its network lock), so the destination's kernel can send IPv6 neighbour discovery
    and MLD from the function's MAC address: the switches then move that MAC to the
    destination's port, and a function that only answers would stay unreachable here until
    their entries aged out. Returns how many were sent (None: the host's namespace, which
    nothing restored)."""
    path = f"/proc/{pid}/ns/net"
    if os.stat(path).st_ino == os.stat("/proc/self/ns/net").st_ino:
        return None
    return announce(path)
