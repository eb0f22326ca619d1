"""Two hosts and a switch, as network namespaces.

    peers (eNB, PDN, HSS client, ...)
          |            |
       [ switch: bridge br0 ]
          |                 |
    [ host A: br0 ]   [ host B: br0 ]     172.30.0.1 / .2 on br0: image transfer
          |
    function netns (SPGW, HSS, MME): veth inside, outer end on A's br0

A function's outer veth ends sit on the bridge of the host it runs on; CRIU,
run inside that host's namespace, dumps the function's namespace, and restores
it inside the other host's with ``--external veth[inner]:outer@br0``. Peers keep
reaching it through the switch, as in a data-centre fabric.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from lab.netns import NetnsSet, mac, sh

HOST_ADDR = {"a": "172.30.0.1", "b": "172.30.0.2"}
BRIDGE = "br0"


class Fabric:
    def __init__(self, prefix: str = "mig"):
        self.ns = NetnsSet(prefix)
        self.hosts: dict[str, str] = {}
        self.switch = ""

    def start(self) -> Fabric:
        self.switch = self.ns.add("sw")
        self._bridge(self.switch)
        for h in ("a", "b"):
            name = self.hosts[h] = self.ns.add(f"host{h}")
            self._bridge(name)
            self._link(name, f"up-{h}", self.switch, f"down-{h}")
            sh("ip", "-n", name, "link", "set", f"up-{h}", "master", BRIDGE)
            sh("ip", "-n", name, "addr", "add", f"{HOST_ADDR[h]}/24", "dev", BRIDGE)
        return self

    @staticmethod
    def _bridge(ns: str) -> None:
        # A bridge without an address of its own takes its lowest port's, so a function's
        # veth joining or leaving (a migration) changed the host's MAC under the other
        # host's ARP cache, and connections to it timed out: give it a fixed one.
        mac = "02:" + ":".join(f"{b:02x}" for b in hashlib.sha256(ns.encode()).digest()[:5])
        sh("ip", "-n", ns, "link", "add", BRIDGE, "address", mac, "type", "bridge")
        sh("ip", "-n", ns, "link", "set", BRIDGE, "up")

    @staticmethod
    def _link(ns_in: str, if_in: str, ns_bridge: str, if_bridge: str,
              addr: str | None = None, mac: str | None = None) -> None:
        """veth: ``if_in`` in ``ns_in`` (addressed, up; ``mac`` if given); ``if_bridge`` on
        ``ns_bridge``'s br0."""
        sh("ip", "link", "add", if_in, *(["address", mac] if mac else []), "netns", ns_in,
           "type", "veth", "peer", if_bridge, "netns", ns_bridge)
        sh("ip", "-n", ns_bridge, "link", "set", if_bridge, "master", BRIDGE, "up")
        if addr:
            sh("ip", "-n", ns_in, "addr", "add", addr, "dev", if_in)
        sh("ip", "-n", ns_in, "link", "set", if_in, "up")

    def host_path(self, h: str) -> str:
        return NetnsSet.path(self.hosts[h])

    def peer(self, role: str, ifname: str, addr: str) -> str:
        """A peer namespace on the switch; returns its name."""
        name = self.ns.add(role)
        self._link(name, ifname, self.switch, f"{role[:8]}-{ifname}"[:15], addr)
        return name

    def function(self, role: str, links: dict[str, str], host: str = "a") -> str:
        """A function's namespace with veths {inner name: address} onto ``host``'s bridge."""
        name = self.ns.add(role)
        for ifname, addr in links.items():
            self._link(name, ifname, self.hosts[host], outer_name(role, ifname), addr)
        return name

    def remake(self, name: str, links: dict[str, str], src: str, dst: str,
               prepare: Callable[[str], None]) -> None:
        """What a container host's network set-up does when a function moves: the
        function's netns on host ``src`` goes, and a fresh one at the same path joins host
        ``dst``'s bridge with the same links, addresses and MACs (the peers' ARP caches
        stay right); ``prepare(name)`` runs on it before its links exist."""
        role = name.removeprefix(f"{self.ns.tag}-")
        macs = {ifname: mac(name, ifname) for ifname in links}
        for ifname in links:  # now, not when the kernel gets round to freeing the netns
            sh("ip", "-n", self.hosts[src], "link", "del", outer_name(role, ifname))
        sh("ip", "netns", "del", name)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        prepare(name)
        for ifname, addr in links.items():
            self._link(name, ifname, self.hosts[dst], outer_name(role, ifname), addr,
                       macs[ifname])

    def stage(self, name: str, links: dict[str, str], host: str) -> str:
        """What a host's network set-up does before a make-before-break move
        (``criu-ext migrate --stage``): a second netns for the function in ``name``, on
        ``host``, with the same links, addresses and MACs, their outer ends on ``host``
        but off its bridge and down until the switch puts them on. Returns its name."""
        role = name.removeprefix(f"{self.ns.tag}-").split("@")[0]
        macs = {ifname: mac(name, ifname) for ifname in links}
        staged = self.ns.add(f"{role}@{host}")
        for ifname, addr in links.items():
            outer = outer_name(role, ifname)
            # one left by the function's earlier stay on ``host`` (its netns retired, the
            # kernel not yet round to freeing it): now, not later
            sh("ip", "-n", self.hosts[host], "link", "del", outer, check=False)
            sh("ip", "link", "add", ifname, "address", macs[ifname], "netns", staged,
               "type", "veth", "peer", outer, "netns", self.hosts[host])
            sh("ip", "-n", staged, "addr", "add", addr, "dev", ifname)
            sh("ip", "-n", staged, "link", "set", ifname, "up")
        return staged

    @staticmethod
    def retire(name: str) -> None:
        """After a dump: the source namespace goes, with its veths (no twin on the fabric)."""
        sh("ip", "netns", "del", name, check=False)

    @staticmethod
    def adopt(name: str, pid: int) -> None:
        """After a restore: the name refers to the restored task's namespace."""
        sh("ip", "netns", "attach", name, str(pid))

    def port_of(self, ns: str, ifname: str) -> str | None:
        """The switch's port that its forwarding table maps ``ifname``'s MAC (in ``ns``)
        to, None if it has not learnt it: where the peers' frames for it go."""
        address = mac(ns, ifname)
        fdb = json.loads(sh("bridge", "-j", "fdb", "show", "br", BRIDGE, ns=self.switch).stdout)
        return next((e["ifname"] for e in fdb if e.get("mac") == address
                     and "permanent" not in e.get("state", "")), None)

    def diagnose(self) -> str:
        """Namespaces, host links and the switch's forwarding table, for a failure report."""
        out = []
        for ns, argv in ([(None, ["ip", "netns", "list"])]
                         + [(h, ["ip", "-br", "link"]) for h in self.hosts.values()]
                         + [(self.switch, ["bridge", "fdb", "show", "br", BRIDGE])]):
            res = sh(*argv, ns=ns, check=False)
            out.append(f"[{ns or 'vm'}] $ {' '.join(argv)}\n{res.stdout}{res.stderr}")
        return "\n".join(out)

    def cleanup(self) -> None:
        self.ns.cleanup()


def outer_name(role: str, ifname: str) -> str:
    """Name of a function veth's outer end on the host bridge (IFNAMSIZ: 15 chars)."""
    return f"{role[:6]}-{ifname}"[:15]
