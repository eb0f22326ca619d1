"""GtpLab: eNB --(S1-U 10.0.0.0/24)-- gateway --(SGi 192.168.50.0/24)-- PDN.

The gateway namespace runs :mod:`lab.gateway` (UDP 2152 + gtp0 + N PDP
contexts + route of the UE pool 10.128.0.0/16 via gtp0); the lab adds IPv4
forwarding and a MASQUERADE rule for the UE pool out of ``sgi0``. The PDN host
answers pings; the eNB sends GTP-U encapsulated echo requests from the UEs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from .enb import Enb
from .gateway import ENB_ADDR, I_TEI_BASE, O_TEI_BASE, UE_BASE
from .netns import NetnsSet, sh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENB_IP, GW_S1U_IP = '10.0.0.2', '10.0.0.1'
GW_SGI_IP, PDN_IP = '192.168.50.1', '192.168.50.2'
UE_POOL = '10.128.0.0/16'


def ue_addr(i: int) -> str:
    import ipaddress
    return str(ipaddress.IPv4Address(UE_BASE + i))


def segment(ns: NetnsSet, gw: str, tag: str = '') -> tuple[str, str]:
    """An eNB and a PDN host (namespaces ``enb<tag>``, ``pdn<tag>`` of ``ns``) on the S1-U
    and SGi links of gateway namespace ``gw``, addressed as in the picture above;
    returns their names. A second one serves a user plane staged in another namespace."""
    enb, pdn = ns.add(f'enb{tag}'), ns.add(f'pdn{tag}')
    ns.veth(enb, 's1u0', f'{ENB_IP}/24', gw, 's1u0', f'{GW_S1U_IP}/24')
    ns.veth(gw, 'sgi0', f'{GW_SGI_IP}/24', pdn, 'eth0', f'{PDN_IP}/24')
    return enb, pdn


class GtpLab:
    def __init__(self, n_ues: int = 4, *, masquerade: bool = True):
        assert ENB_ADDR == 0x0A000002
        self.n_ues = n_ues
        self.masquerade = masquerade
        self.ns = NetnsSet('gtp')
        self.gateway: subprocess.Popen | None = None
        self.enb: Enb | None = None

    # names and paths
    @property
    def gw_ns(self) -> str:
        return self.ns.path(self.gw)

    @property
    def gateway_pid(self) -> int:
        return self.gateway.pid

    def start(self) -> GtpLab:
        try:
            self.gw = self.ns.add('gw')
            self.enb_name, self.pdn = segment(self.ns, self.gw)
            sh('sysctl', '-qw', 'net.ipv4.ip_forward=1', ns=self.gw)
            if self.masquerade:
                sh('iptables', '-w', '-t', 'nat', '-A', 'POSTROUTING', '-s', UE_POOL, '-o', 'sgi0',
                   '-j', 'MASQUERADE', ns=self.gw)
            self.gateway = subprocess.Popen(
                ['nsenter', f'--net={self.gw_ns}', '--', sys.executable, '-m',
                 'lab.gateway', '--ues', str(self.n_ues)],
                cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, close_fds=True,
                text=True)
            line = self.gateway.stdout.readline().split()
            if not line or line[0] != 'READY':
                raise RuntimeError(f"gateway did not start (exit {self.gateway.poll()})")
            self.gateway_fd = int(line[2])
            self.enb = Enb(self.ns.path(self.enb_name), ENB_IP, GW_S1U_IP)
        except BaseException:
            self.stop()
            raise
        return self

    def ues(self, count: int | None = None) -> list[tuple[str, int]]:
        """(UE address, uplink TEID) of the first ``count`` UEs."""
        return [(ue_addr(i), I_TEI_BASE + i) for i in range(count or self.n_ues)]

    def expected_teids(self, count: int | None = None) -> dict[str, int]:
        return {ue_addr(i): O_TEI_BASE + i for i in range(count or self.n_ues)}

    def ping_ues(self, count: int | None = None, timeout: float = 3.0) -> dict:
        return self.enb.ping(self.ues(count), PDN_IP, timeout)

    def gateway_check(self) -> str:
        """Ask the gateway to check itself (SIGUSR1); returns its PASS/FAIL line."""
        self.gateway.send_signal(signal.SIGUSR1)
        return self.gateway.stdout.readline().strip()

    def stop(self) -> None:
        if self.enb is not None:
            self.enb.close()
            self.enb = None
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.terminate()
            try:
                self.gateway.wait(5)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait()
        self.ns.cleanup()

    def __enter__(self) -> GtpLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
