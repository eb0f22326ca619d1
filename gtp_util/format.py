"""Text renderings of a snapshot: JSON, and the line format of libgtpnl's ``gtp-tunnel list``."""

from __future__ import annotations

import json

from procns.files import loads_json

from .errors import BadImage
from .fields import check_snapshot
from .model import V1, Snapshot, ip4

MAX_JSON = 32 << 20  # a JSON snapshot (about 200,000 contexts); larger: use the image


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


def from_json(text: str, what: str = 'JSON snapshot') -> Snapshot:
    """A snapshot from its JSON form, every field checked; :class:`BadImage` (one line)
    on anything malformed: bad JSON, too deep, a missing or unknown key, a wrong type,
    a value out of range."""
    try:
        data = loads_json(text, what)
    except ValueError as e:
        raise BadImage(str(e)) from None
    if not isinstance(data, dict):
        raise BadImage(f"{what}: not a JSON object")
    try:
        snap = Snapshot.from_dict(data)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as e:
        raise BadImage(f"{what}: malformed ({type(e).__name__}: {str(e)[:120]})") from None
    try:
        return check_snapshot(snap)
    except BadImage as e:
        raise BadImage(f"{what}: {e}") from None
