"""Text renderings of a snapshot: JSON, and the line format of libgtpnl's ``gtp-tunnel list``."""

from __future__ import annotations

import json

from .model import V1, Snapshot, ip4


def tunnel_lines(snap: Snapshot):
    """One line per PDP context, as ``gtp-tunnel list`` prints them:

    ``gtp0 version 1 tei 100/200 ms_addr 10.0.0.2 sgsn_addr 192.168.0.2``
    ``gtp0 version 0 tid 5 ms_addr 10.0.0.2 sgsn_addr 192.168.0.2``
    """
    for dev in snap.devices:
        t = dev.contexts
        for i in range(len(t)):
            if t.version[i] == V1:
                key = f"tei {t.i_tei[i]}/{t.o_tei[i]}"
            else:
                key = f"tid {t.tid[i]}"
            yield (f"{dev.name} version {t.version[i]} {key} "
                   f"ms_addr {ip4(t.ms[i])} sgsn_addr {ip4(t.peer[i])}")


def to_json(snap: Snapshot, indent: int | None = 2) -> str:
    return json.dumps(snap.to_dict(), indent=indent)


def from_json(text: str) -> Snapshot:
    return Snapshot.from_dict(json.loads(text))
