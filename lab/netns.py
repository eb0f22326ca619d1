"""Network namespace helpers: create, wire with veth pairs, run commands, clean up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (inside named netns ``ns`` through nsenter, not ``ip netns exec``)."""
    cmd = list(argv)
    if ns is not None:
        cmd = ['nsenter', f'--net=/run/netns/{ns}', '--'] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, close_fds=True)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def mac(ns: str, ifname: str) -> str:
    """The MAC address of link ``ifname`` of named netns ``ns``."""
    return json.loads(sh("ip", "-j", "-n", ns, "link", "show", ifname).stdout)[0]["address"]


def sctp_mib(ns: str) -> dict[str, int]:
    """The SCTP MIB counters of named netns ``ns`` (/proc/net/sctp/snmp)."""
    out = sh('cat', '/proc/net/sctp/snmp', ns=ns).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}


class NetnsSet:
    """Named namespaces with unique names; :meth:`cleanup` kills their tasks and deletes them."""

    def __init__(self, prefix: str = 'lab'):
        self.tag = f'{prefix}{uuid.uuid4().hex[:6]}'
        self.names: list[str] = []

    def add(self, role: str) -> str:
        name = f'{self.tag}-{role}'
        sh('ip', 'netns', 'add', name)
        self.names.append(name)
        sh('ip', '-n', name, 'link', 'set', 'lo', 'up')
        return name

    @staticmethod
    def path(name: str) -> str:
        return f'/run/netns/{name}'

    def veth(self, ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str) -> None:
        """A veth pair between two namespaces, addressed and up."""
        tmp_a, tmp_b = f'v{uuid.uuid4().hex[:8]}', f'v{uuid.uuid4().hex[:8]}'
        sh('ip', 'link', 'add', tmp_a, 'type', 'veth', 'peer', 'name', tmp_b)
        sh('ip', 'link', 'set', tmp_a, 'netns', ns_a, 'name', if_a)
        sh('ip', 'link', 'set', tmp_b, 'netns', ns_b, 'name', if_b)
        for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            sh('ip', '-n', ns, 'addr', 'add', addr, 'dev', ifname)
            sh('ip', '-n', ns, 'link', 'set', ifname, 'up')

    def hosts(self) -> tuple[str, str]:
        """Two hosts, each a namespace with a bridge br0, joined by a veth "trunk"."""
        a, b = self.add('host-a'), self.add('host-b')
        for h in (a, b):
            sh('ip', '-n', h, 'link', 'add', 'br0', 'type', 'bridge')
            sh('ip', '-n', h, 'link', 'set', 'br0', 'up')
        sh('ip', '-n', a, 'link', 'add', 'trunk', 'type', 'veth', 'peer', 'name', 'trunk',
           'netns', b)
        for h in (a, b):
            sh('ip', '-n', h, 'link', 'set', 'trunk', 'master', 'br0', 'up')
        return a, b

    @staticmethod
    def leg(inner_ns: str, inner: str, addr: str, host: str, outer: str) -> None:
        """A veth from ``inner_ns`` (``inner``, addressed, up) to ``host``'s br0 (``outer``)."""
        sh('ip', '-n', host, 'link', 'add', outer, 'type', 'veth', 'peer', 'name', inner,
           'netns', inner_ns)
        sh('ip', '-n', host, 'link', 'set', outer, 'master', 'br0', 'up')
        sh('ip', '-n', inner_ns, 'addr', 'add', addr, 'dev', inner)
        sh('ip', '-n', inner_ns, 'link', 'set', inner, 'up')

    def cleanup(self) -> None:
        for name in reversed(self.names):
            pids = sh('ip', 'netns', 'pids', name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh('ip', 'netns', 'del', name, check=False)
        self.names.clear()
