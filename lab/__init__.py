"""The lab: hosts as network namespaces and the programs that run on them.

The main job (scenario/), the benchmarks and the tests all build on it: the GTP
user plane (netns helpers, gateway, eNB, PDN), the SCTP node and its peers, and
the repair tier's two-host SCTP network (lab.sctpnet).

    from lab import GtpLab
    with GtpLab(n_ues=4) as lab:          # eNB --S1-U-- gateway --SGi-- PDN
        assert lab.ping_ues() == lab.expected_teids()
        lab.gateway_pid                   # the task that owns UDP 2152 and gtp0

Everything lives in network namespaces the lab creates and deletes; no traffic
leaves the machine. Needs a kernel with gtp (the test VM).
"""

from .netns import NetnsSet
from .topology import GtpLab

__all__ = ['GtpLab', 'NetnsSet']
