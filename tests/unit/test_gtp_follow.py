"""gtp_util.follow with stand-ins (pure logic): crafted notifications over a datagram
socket pair stand for the gtp family's multicast group, and a recording channel for
the copy's kernel. The real group and devices: tests/vm/test_gtp_restore.py."""

from __future__ import annotations

import socket

import pytest

from gtp_util.errors import GtpError
from gtp_util.follow import Change, Changes, Follower, replay
from gtp_util.model import PdpContext
from gtp_util.netlink import GTP_CMD_DELPDP, encode_new_pdp

FAMILY = 0x1F
V1 = PdpContext(1, 0x0A000002, 0x0A800001, i_tei=7, o_tei=8)
V0 = PdpContext(0, 0x0A000002, 0x0A800002, tid=0x1122334455667788, flow=9)


class _StandInChannel:
    def __init__(self, sock: socket.socket) -> None:
        self.family = FAMILY
        self.sock = sock


def _follower(sock: socket.socket) -> Follower:
    f = Follower.__new__(Follower)  # no netlink here: the stand-in carries the messages
    f.channel = _StandInChannel(sock)  # type: ignore[assignment]
    f.count = 0
    f._buf = bytearray(1 << 16)
    return f


def _msg(ctx: PdpContext, link: int, cmd: int | None = None, family: int = FAMILY) -> bytes:
    m = bytearray(encode_new_pdp(family, 1, link, ctx, 0))
    if cmd is not None:
        m[16] = cmd
    return bytes(m)


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_adds_and_deletes_are_read_in_order_and_the_rest_ignored(pair):
    a, b = pair
    a.send(_msg(V1, 4))
    a.send(_msg(V0, 4))  # not the v1 layout: decoded attribute by attribute
    a.send(_msg(V1, 5, cmd=GTP_CMD_DELPDP))
    a.send(_msg(V1, 4, cmd=3))  # an echo request: the group carries those too
    a.send(_msg(V1, 4, family=FAMILY + 1))  # not the gtp family
    f = _follower(b)
    assert list(f.read()) == [Change(True, 4, V1), Change(True, 4, V0), Change(False, 5, V1)]
    assert f.count == 3
    assert len(f.read()) == 0 and f.count == 3


def test_a_truncated_notification_is_an_error(pair):
    a, b = pair
    m = bytearray(_msg(V1, 4))
    m[0] += 8  # says it is longer than what came
    a.send(bytes(m))
    with pytest.raises(GtpError, match='malformed'):
        _follower(b).read()


class _RecordingChannel:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def add(self, link, table, *, excl=True):
        self.calls.append(('add', link, [table[i] for i in range(len(table))], excl))

    def delete(self, link, table, *, missing_ok=False):
        self.calls.append(('del', link, [table[i] for i in range(len(table))], missing_ok))


def test_replay_keeps_the_order_one_batch_per_run():
    other = PdpContext(1, 0x0A000002, 0x0A800003, i_tei=9, o_tei=10)
    changes = [Change(True, 4, V1), Change(True, 4, other), Change(False, 4, V1),
               Change(True, 5, V0), Change(True, 4, V1)]
    ch = _RecordingChannel()
    assert replay(ch, changes, {4: 40, 5: 50}) == 5  # type: ignore[arg-type]
    assert ch.calls == [('add', 40, [V1, other], False), ('del', 40, [V1], True),
                        ('add', 50, [V0], False), ('add', 40, [V1], False)]


def test_replay_refuses_a_device_without_a_copy_before_applying_anything():
    ch = _RecordingChannel()
    with pytest.raises(GtpError, match='ifindex 5'):
        replay(ch, [Change(True, 4, V1), Change(True, 5, V0)], {4: 40})  # type: ignore[arg-type]
    assert ch.calls == []


def test_changes_keep_order_and_runs_split_by_kind_and_device():
    other = PdpContext(1, 0x0A000002, 0x0A800003, i_tei=9, o_tei=10)
    items = [Change(True, 4, V1), Change(True, 4, other), Change(False, 4, V1),
             Change(True, 5, V0), Change(True, 4, V1)]
    ch = Changes.of(items)
    assert list(ch) == items and len(ch) == 5
    assert list(ch.runs()) == [(True, 4, 0, 2), (False, 4, 2, 3), (True, 5, 3, 4),
                               (True, 4, 4, 5)]
    assert list(ch.slice(1, 4)) == items[1:4]
    assert list(Changes().runs()) == []
