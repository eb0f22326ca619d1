"""A UE's TCP download through the SPGW: a real stack (lab.ue_stack) on the fabric's
S1-U segment reading a paced stream (lab.bulk) from the PDN host through its own
bearer and the SGi masquerade, while the gateway moves.

What a move must not do to it: reset it (the PDN's segments reaching a gateway whose
conntrack entry lost its NAT binding), lose or reorder a byte. :meth:`finish` ends
the stream with a clean close and says what both ends saw.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from lab.netns import NetnsSet
from lab.procs import kill_all
from lab.topology import GW_S1U_IP, PDN_IP
from lab.ue_stack import attach
from scenario.fabric import Fabric
from scenario.functions import spawn, wait_line

UE, UE_ENB = "10.128.200.1", "10.0.0.3"  # outside the pinged UEs' addresses
GW_TEI, UE_TEI = 7001, 8001  # each end's incoming TEI
PORT = 5001


class Download:
    def __init__(self, fabric: Fabric, workdir: Path, rate: int = 100_000):
        self.fabric, self.workdir, self.rate = fabric, workdir, rate
        self.ue_out = workdir / "download-ue.json"
        self.server_out = workdir / "download-pdn.json"

    def start(self, gw_ns: str, pdn_ns: str) -> None:
        """The bearer on the gateway in ``gw_ns`` (its gtp0), the stream from ``pdn_ns``."""
        attach(NetnsSet.path(gw_ns), "gtp0", UE, UE_ENB, GW_TEI, UE_TEI)
        ue_ns = self.fabric.peer("ue", "s1u0", f"{UE_ENB}/24")
        log = self.workdir / "download-pdn.log"
        self.server = spawn(pdn_ns, [sys.executable, "-m", "lab.bulk", "serve", "--port",
                                     str(PORT), "--rate", str(self.rate), "--out",
                                     str(self.server_out)], log)
        wait_line(log, "LISTENING", self.server)
        log = self.workdir / "download-ue.log"
        self.reader = spawn(ue_ns, [sys.executable, "-m", "lab.ue_stack", "--ue", UE,
                                    "--gateway", GW_S1U_IP, "--pdn", PDN_IP, "--i-tei",
                                    str(UE_TEI), "--o-tei", str(GW_TEI), "--port", str(PORT),
                                    "--out", str(self.ue_out)], log)
        wait_line(log, "CONNECTED", self.reader, timeout=60)

    def received(self) -> int:
        try:
            return json.loads(self.ue_out.read_text())["received"]
        except (FileNotFoundError, ValueError, KeyError):
            return 0

    def finish(self) -> dict:
        """End the stream; what the PDN sent and the UE read, and how it ended."""
        self.server.send_signal(signal.SIGTERM)
        try:
            self.server.wait(timeout=120)
            self.reader.wait(timeout=120)
        finally:
            kill_all((self.server, self.reader))
        sent = json.loads(self.server_out.read_text())
        got = json.loads(self.ue_out.read_text())
        return {"sent": sent["sent"], "received": got["received"], "intact": got["intact"],
                "pdn_error": sent["error"], "ue_error": got["error"],
                "clean_close": sent["clean_close"] and got["eof"],
                "longest_stall_s": got["max_gap_s"]}
