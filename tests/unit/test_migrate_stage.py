"""criu_ext.migrate.stage's wire form of PDP changes (column by column): what the
source encodes comes back equal, and what a hostile or broken peer could send is
refused before use. (The staged plane itself, against the kernel: tests/vm/test_stage.py.)"""

from __future__ import annotations

import copy
import json

import pytest

from criu_ext.migrate.stage import PER_MESSAGE, decode, encode
from criu_ext.migrate.wire import ProtocolError
from gtp_util.follow import Change, Changes
from gtp_util.model import PdpContext

LINKS = {7: 3}
SAMPLE = [Change(True, 7, PdpContext(1, 0x0A000002, 0x0A800001, 1000, 50000)),
          Change(False, 7, PdpContext(0, 0x0A000002, 0x0A800001, tid=2**64 - 1, flow=9)),
          Change(True, 7, PdpContext(1, 0, 0, 1, 2, peer6="2001:db8::1", ms6="fd00::5"))]


def test_changes_round_trip_through_json():
    changes = Changes.of(SAMPLE)
    got = decode(json.loads(json.dumps(encode(changes))), LINKS)
    assert got == changes and list(got) == SAMPLE
    assert decode(encode(Changes()), LINKS) == Changes()


def _set(path, value):
    def edit(cols):
        if len(path) == 1:
            cols[path[0]] = value
        else:
            cols[path[0]][path[1]] = value
    return edit


@pytest.mark.parametrize("edit", [
    _set(("add",), "nope"), _set(("link",), [7, 7]),               # shape, lengths
    _set(("add", 0), 2), _set(("version", 0), 2),                  # add, version
    _set(("peer", 0), 2**32), _set(("i_tei", 0), -1),              # ranges
    _set(("flow", 0), 2**16), _set(("tid", 0), 2**64),
    _set(("ms", 0), 1.5), _set(("o_tei", 0), "1"),                 # float, string
    _set(("link", 0), 8),                                          # unknown device
    _set(("v6", 0), [2, "2001:db8::1\n", ""]), _set(("v6", 0), [3, "", ""]),
    _set(("v6",), [[2, "", ""], [2, "", ""]]), _set(("v6",), "x"),
    lambda cols: cols.pop("flow"), lambda cols: cols.update(extra=[]),
])
def test_what_a_peer_must_not_send_is_refused(edit):
    cols = copy.deepcopy(encode(Changes.of(SAMPLE)))
    edit(cols)
    with pytest.raises(ProtocolError):
        decode(cols, LINKS)


def test_a_message_holds_at_most_per_message_changes():
    many = Changes.of([SAMPLE[0]] * (PER_MESSAGE + 1))
    assert len(decode(encode(many.slice(0, PER_MESSAGE)), LINKS)) == PER_MESSAGE
    with pytest.raises(ProtocolError):
        decode(encode(many), LINKS)
    with pytest.raises(ProtocolError):
        decode([], LINKS)
