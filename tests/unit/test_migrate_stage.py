"""criu_ext.migrate.stage's wire form of a PDP change: what the source encodes comes
back equal, and what a hostile or broken peer could send is refused before use.
(The staged plane itself, against the kernel: tests/vm/test_stage.py.)"""

from __future__ import annotations

import pytest

from criu_ext.migrate.stage import decode, encode
from criu_ext.migrate.wire import ProtocolError
from gtp_util.follow import Change
from gtp_util.model import PdpContext

LINKS = {7: 3}


def test_changes_round_trip():
    for c in (Change(True, 7, PdpContext(1, 0x0A000002, 0x0A800001, 1000, 50000)),
              Change(False, 7, PdpContext(0, 0x0A000002, 0x0A800001, tid=2**64 - 1, flow=9)),
              Change(True, 7, PdpContext(1, 0, 0, 1, 2, peer6="2001:db8::1", ms6="fd00::5"))):
        assert decode(encode(c), LINKS) == c


@pytest.mark.parametrize("row", [
    "nope", [1, 7, 1], [1, 7, 1, 0, 0, 0, 0, 0, 0, "x"],          # shape
    [2, 7, 1, 0, 0, 0, 0, 0, 0], [1, 7, 2, 0, 0, 0, 0, 0, 0],     # add, version
    [1, 7, 1, 2**32, 0, 0, 0, 0, 0], [1, 7, 1, 0, 0, -1, 0, 0, 0],  # ranges
    [1, 7, 0, 0, 0, 0, 0, 0, 2**16], [True, 7, 1, 0, 0, 0, 0, 0, 0],
    [1, 7, 1, 0, 0, 1.5, 0, 0, 0], [1, 8, 1, 0, 0, 0, 0, 0, 0],   # float; unknown device
    [1, 7, 1, 0, 0, 0, 0, 0, 0, "2001:db8::1\\n", ""],
])
def test_what_a_peer_must_not_send_is_refused(row):
    with pytest.raises(ProtocolError):
        decode(row, LINKS)
