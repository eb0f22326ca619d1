"""Following the PDP contexts of a namespace as they change, to keep a copy equal.

The ``gtp`` generic netlink family multicasts every NEWPDP and DELPDP (Linux
5.10+) to the namespace's listeners, each with the whole context, as a GETPDP
dump reply would carry it. A :class:`Follower` joins that group *before* the
tunnel list is copied; what it reads afterwards is what changed since, and
:func:`replay` applies it to the copy (another namespace's devices) in order,
a run of adds or deletes of one device per netlink batch. So a copy made while
UEs attach and detach converges without copying the list again, and "nothing
changed since" is one empty read. This is how a migration can stage the user
plane on the destination before the freeze (docs/migrate.md).

An add replays as NEWPDP without NLM_F_EXCL (the copy may have the context
already: the kernel then updates it in place), a delete ignores a context the
copy does not have; so a change read twice, or one already in the copied list,
does no harm. The socket's buffer overflowing (ENOBUFS) means changes were
dropped by the kernel: :class:`Lost` is raised and the list must be copied again.
"""

from __future__ import annotations

import errno
import socket
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import GtpError, GtpUnavailable
from .model import PdpContext, PdpTable
from .netlink import (
    _DUMP_V1,
    _DUMP_V1_HDRS,
    _NLMSGHDR,
    GTP_CMD_DELPDP,
    GTP_CMD_NEWPDP,
    PdpChannel,
    decode_pdp,
)


class Lost(GtpError):
    """The kernel dropped notifications (the follower's buffer overflowed)."""


@dataclass(frozen=True)
class Change:
    """One context added (``add``) or deleted on device ``link`` (an ifindex)."""

    add: bool
    link: int
    ctx: PdpContext


class Changes:
    """Changes in order, column by column: each one's ``add`` (1 or 0) and device
    ``link`` beside a :class:`PdpTable` of the contexts. A burst is 10,000 changes: no
    object per change is made to read, send or apply them."""

    __slots__ = ('add', 'link', 'contexts')

    def __init__(self) -> None:
        self.add = array('B')
        self.link = array('I')
        self.contexts = PdpTable()

    @classmethod
    def of(cls, changes: Iterable[Change]) -> Changes:
        out = cls()
        for c in changes:
            out.append(c)
        return out

    def append(self, c: Change) -> None:
        self.add.append(c.add)
        self.link.append(c.link)
        self.contexts.append(c.ctx)

    def __len__(self) -> int:
        return len(self.add)

    def __iter__(self) -> Iterator[Change]:
        for i in range(len(self.add)):
            yield Change(bool(self.add[i]), self.link[i], self.contexts[i])

    def __eq__(self, other) -> bool:
        if not isinstance(other, Changes):
            return NotImplemented
        return (self.add, self.link, self.contexts) == (other.add, other.link, other.contexts)

    def slice(self, start: int, stop: int) -> Changes:
        out = Changes()
        out.add, out.link = self.add[start:stop], self.link[start:stop]
        out.contexts = self.contexts.slice(start, stop)
        return out

    def runs(self) -> Iterator[tuple[bool, int, int, int]]:
        """(add, link, start, stop) of each run of changes of one kind on one device."""
        add, link, n = self.add, self.link, len(self.add)
        i = 0
        while i < n:
            j = i + 1
            a, k = add[i], link[i]
            while j < n and add[j] == a and link[j] == k:
                j += 1
            yield bool(a), k, i, j
            i = j


class Follower:
    """The PDP contexts added and deleted in namespace ``netns`` from now on."""

    def __init__(self, netns: str | None = None, *, rcvbuf: int = 64 << 20):
        self.channel = PdpChannel(netns, rcvbuf=rcvbuf)
        if not self.channel.subscribe():
            self.channel.close()
            raise GtpUnavailable("this kernel's gtp family has no multicast group "
                                 "(Linux 5.10+): PDP contexts cannot be followed")
        self.count = 0  # changes read so far: the sequence a copy has caught up to
        self._buf = bytearray(1 << 20)

    def fileno(self) -> int:
        return self.channel.sock.fileno()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self) -> Changes:
        """Every change queued since the last read, oldest first (never blocks)."""
        out = Changes()
        adds, links, table = out.add.append, out.link.append, out.contexts
        buf = self._buf
        family = self.channel.family
        unpack_v1, v1_len = _DUMP_V1.unpack_from, _DUMP_V1.size
        ntohl = socket.ntohl
        while True:
            try:
                n = self.channel.sock.recv_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise Lost("PDP context notifications were lost (the follower's "
                               "buffer overflowed): copy the list again") from None
                raise
            off = 0
            while off + 20 <= n:
                length, mtype = _NLMSGHDR.unpack_from(buf, off)[:2]
                if length < 20 or off + length > n:
                    raise GtpError("malformed gtp notification")
                cmd = buf[off + 16]
                if mtype == family and cmd in (GTP_CMD_NEWPDP, GTP_CMD_DELPDP):
                    add = cmd == GTP_CMD_NEWPDP
                    t = unpack_v1(buf, off) if length == v1_len else None
                    if t is not None and t[8::2] == _DUMP_V1_HDRS:
                        # version, link, peer, ms, i_tei, o_tei (dump.py's fast path)
                        adds(add)
                        links(t[11])
                        table.append_v1(ntohl(t[13]), ntohl(t[15]), t[17], t[19])
                    else:
                        link, ctx = decode_pdp(bytes(buf[off:off + length]))
                        out.append(Change(add, link, ctx))
                off += (length + 3) & ~3
        self.count += len(out)
        return out


def replay(channel: PdpChannel, changes: Changes | list[Change], links: dict[int, int]) -> int:
    """Apply ``changes`` through ``channel`` (the copy's namespace), in order; ``links``
    maps each source ifindex to the copy's device. Returns how many were applied.
    A change on a device with no copy raises GtpError before anything is applied."""
    if not isinstance(changes, Changes):
        changes = Changes.of(changes)
    unknown = set(changes.link) - links.keys()
    if unknown:
        raise GtpError(f"PDP contexts changed on device(s) with no copy: ifindex "
                       f"{', '.join(map(str, sorted(unknown)))}")
    for add, link, i, j in changes.runs():
        table = changes.contexts.slice(i, j) if (i, j) != (0, len(changes)) \
            else changes.contexts
        if add:
            channel.add(links[link], table, excl=False)
        else:
            channel.delete(links[link], table, missing_ok=True)
    return len(changes)
