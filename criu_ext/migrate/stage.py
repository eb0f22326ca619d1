"""Make-before-break, the user plane's half: the source's gtp user plane staged in a
namespace on the destination, and kept equal to the source until the freeze (#14).

A kernel gtp device forwards the packets of existing bearers on its own; the task is
needed for signalling only. So the destination can hold a working copy of the data
path before the task is frozen:

* source (:class:`StageSender`): a :class:`gtp_util.follow.Follower` joins the gtp
  family's multicast group first, then the user plane is read (devices, contexts,
  routes, NAT rules, sysctls) and sent as a gtp image (``stage.img``);
  :meth:`StageSender.pump` sends what changed since, as ``pdp`` messages, while
  pre-copy runs; :meth:`StageSender.flows`, after pre-copy and before the freeze,
  the UE flows' conntrack entries (``nat``: gtp_util.natflows, each to be created
  with its NAT binding); :meth:`StageSender.finish`, once the task is frozen and
  while the destination restores it, the last changes, the flows conntrack
  confirmed since (its NEW events) and ``pdp-end`` with the count: one read of the
  follower, not the list; :meth:`StageSender.late`, at the switch, the flows
  confirmed since.
* destination (:class:`StagedPlane`): restores the image into the staged namespace,
  every device bound to a GTP-U socket it binds there itself and holds for the task
  (CRIU cannot hand an inet socket over: docs/migrate.md); replays every ``pdp``
  message in order, creates the ``nat`` flows; :meth:`StagedPlane.finish` checks
  the count; :meth:`remove`
  takes it all out again when the migration fails before the switch.

Everything received is checked before use: the image through gtp_util's validating
reader, each change's fields as numbers in their ranges and its device as one the
image holds.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from array import array
from dataclasses import replace
from typing import Any

from gtp_util.follow import Changes, Follower, replay
from gtp_util.model import Snapshot, SocketRef
from gtp_util.natflows import CtBatch, CtEvents
from gtp_util.netlink import PdpChannel

from .wire import Channel, ProtocolError

IMAGE = "stage.img"
# plugins whose work a staged migration does itself, out of the frozen window: the
# user plane (gtp), its NAT rules and flows (netfilter), the announcement (the switch)
REPLACES = ("gtp", "netfilter", "announce")
PER_MESSAGE = 8192  # changes per pdp message: about 0.5 MB of JSON, under MAX_MESSAGE


# a pdp message's columns, each a list of numbers: Changes' own, then its PdpTable's
# (the array types, and so the ranges, are theirs); ``v6`` beside them: [row, peer6, ms6]
_OWN = ("add", "link")
_COLUMNS = (*_OWN, "version", "peer", "ms", "i_tei", "o_tei", "tid", "flow")


def _holder(changes: Changes, column: str) -> Any:
    return changes if column in _OWN else changes.contexts


def encode(changes: Changes) -> dict[str, list]:
    """A run of changes as a ``pdp`` message's columns."""
    out: dict[str, list] = {c: getattr(_holder(changes, c), c).tolist() for c in _COLUMNS}
    out["v6"] = [[row, p6, m6] for row, (p6, m6) in sorted(changes.contexts.v6.items())]
    return out


def decode(cols: Any, links: dict[int, int]) -> Changes:
    """Changes as :func:`encode` wrote them, checked column by column: lists of one
    length, numbers in their ranges (the arrays refuse others: a negative number, one
    too large, a string or a float), ``add`` and ``version`` 0 or 1, every device one
    of ``links`` (the source's ifindexes the stage holds a copy of), IPv6 addresses
    parsed. JSON's true and false pass as 1 and 0."""
    if type(cols) is not dict or set(cols) != {*_COLUMNS, "v6"}:
        raise ProtocolError("malformed PDP changes")
    n = len(cols["add"]) if type(cols["add"]) is list else -1
    if not 0 <= n <= PER_MESSAGE or any(type(cols[c]) is not list or len(cols[c]) != n
                                        for c in _COLUMNS):
        raise ProtocolError("malformed PDP changes: columns of different lengths")
    out = Changes()
    t = out.contexts
    try:  # each column into an array of the type the empty one has
        for c in _COLUMNS:
            holder = _holder(out, c)
            setattr(holder, c, array(getattr(holder, c).typecode, cols[c]))
    except (TypeError, OverflowError) as exc:
        raise ProtocolError(f"PDP changes out of range: {exc}") from None
    if n and (max(out.add) > 1 or max(t.version) > 1):
        raise ProtocolError("PDP change with an add flag or a version other than 0 or 1")
    unknown = set(out.link) - links.keys()
    if unknown:
        raise ProtocolError(f"PDP change on device {min(unknown)}: refused")
    v6 = cols["v6"]
    if type(v6) is not list or len(v6) > n:
        raise ProtocolError("malformed PDP changes: v6")
    for item in v6:
        if type(item) is not list or len(item) != 3 or type(item[0]) is not int \
                or not 0 <= item[0] < n or item[0] in t.v6:
            raise ProtocolError("malformed PDP changes: v6")
        try:
            p6, m6 = (str(ipaddress.IPv6Address(a)) if a else "" for a in item[1:])
        except (ValueError, TypeError):
            raise ProtocolError("PDP change with a malformed IPv6 address") from None
        t.v6[item[0]] = (p6, m6)
    return out


def pools(snap: Snapshot) -> list:
    """The UE pools of a user plane: the prefixes routed through its gtp devices."""
    return sorted({ipaddress.ip_network(r.cidr(), strict=False) for r in snap.routes},
                  key=str)


class StageSender:
    """The source's side: its user plane, then every change, over ``chan``."""

    def __init__(self, netns: str, chan: Channel) -> None:
        import gtp_util

        self.chan, self.netns = chan, netns
        self.nat_flows = 0
        self.follower = Follower(netns)  # before the copy: nothing falls between
        self.conntrack: CtBatch | None = None
        self.events: CtEvents | None = None
        self.flows_sent: set[tuple] = set()
        try:
            self.snapshot = gtp_util.take_snapshot(netns)
            self.pools = pools(self.snapshot)
            self.conntrack = CtBatch(netns)  # opened now, read in the freeze
        except BaseException:
            self.close()
            raise
        self.sent = 0

    def send_base(self) -> int:
        """The user plane as it is now, as a gtp image; returns its size."""
        import gtp_util

        with tempfile.TemporaryDirectory(prefix="criu-ext-stage-") as d:
            path = os.path.join(d, IMAGE)
            gtp_util.save(self.snapshot, path)
            return self.chan.send_file(path, IMAGE)

    def pump(self) -> int:
        """Send what changed since the last call; returns how many changes."""
        changes = self.follower.read()
        for i in range(0, len(changes), PER_MESSAGE):
            self.chan.send("pdp", changes=encode(changes.slice(i, i + PER_MESSAGE)))
        self.sent += len(changes)
        return len(changes)

    def flows(self) -> int:
        """The UE flows' NAT state, before the freeze (the source forwards on): the
        conntrack table read once, and from then on its NEW events, which :meth:`finish`
        and :meth:`late` send. Returns how many flows went."""
        from gtp_util.natflows import CtEvents, to_row, translated

        self.events = CtEvents(self.netns)  # before the read: nothing falls between
        flows = translated(self.netns, self.pools, self.conntrack)
        self.flows_sent = {f.key for f in flows}
        self._send_nat([to_row(f) for f in flows])
        self.nat_flows = len(flows)
        return len(flows)

    def finish(self) -> int:
        """The task frozen (no more PDP changes come): the last changes, the UE flows
        conntrack confirmed since :meth:`flows` (all of them, when it was not called) and
        the count; returns the count. It runs while the destination restores the task;
        the flows conntrack confirms after it are :meth:`late`'s."""
        self.pump()
        if self.events is None:
            self.flows()
        else:
            self._send_nat(self.late())
        self.chan.send("pdp-end", count=self.sent)
        return self.sent

    def _send_nat(self, rows: list[list]) -> None:
        for i in range(0, len(rows), PER_MESSAGE):
            self.chan.send("nat", flows=rows[i:i + PER_MESSAGE])

    def late(self) -> list[list]:
        """The UE flows confirmed since the last step (the source forwards until the
        switch) not sent yet, as ``nat`` rows: conntrack's NEW events, or a dump when the
        kernel dropped some."""
        from gtp_util.natflows import EventsLost, flow_of, to_row

        assert self.events is not None and self.conntrack is not None, "flows() first"
        try:
            entries = self.events.read()
        except EventsLost:
            entries = self.conntrack.dump()
        rows = []
        for e in entries:
            f = flow_of(e, self.pools)
            if f is not None and f.key not in self.flows_sent:
                self.flows_sent.add(f.key)
                rows.append(to_row(f))
        self.nat_flows += len(rows)
        return rows

    def close(self) -> None:
        self.follower.close()
        if self.events is not None:
            self.events.close()
            self.events = None
        if self.conntrack is not None:
            self.conntrack.close()
            self.conntrack = None


class StagedPlane:
    """The destination's copy, in namespace ``netns`` (made by the host's network set-up,
    with the function's links and addresses), built from the image at ``image``."""

    def __init__(self, netns: str, image: str) -> None:
        import gtp_util

        self.netns = netns
        snap: Snapshot = gtp_util.load(image)
        self.held: dict[tuple[str, int], socket.socket] = {}
        # the task's own sockets on the source: inode and port (its images name them)
        self.task_sockets: dict[tuple[str, int], tuple[int, int]] = {}
        self._chan: PdpChannel | None = None
        try:
            for dev in snap.devices:
                for ver, attr in ((0, "sock0"), (1, "sock1")):
                    ref = getattr(dev, attr)
                    if ref.kind == "task":
                        s = self.held[(dev.name, ver)] = self._hold(ref)
                        self.task_sockets[(dev.name, ver)] = (ref.inode, ref.port)
                        setattr(dev, attr, replace(ref, pid=os.getpid(), fd=s.fileno()))
            gtp_util.restore(snap, netns, bind_pid=os.getpid())
        except BaseException:
            self.release()
            raise
        from procns.netns import in_netns

        with in_netns(netns):
            self.links = {d.ifindex: socket.if_nametoindex(d.name) for d in snap.devices}
        self.snapshot = snap
        self.pools = pools(snap)
        self.applied = self.nat_flows = 0
        self.nat_failed: list = []

    def _hold(self, ref: SocketRef) -> socket.socket:
        """A UDP socket of ours where the task's was (nothing else can take the port; the
        task gets this very socket from its restore: :meth:`inherit`)."""
        from procns.netns import in_netns

        with in_netns(self.netns):
            s = socket.socket(ref.family or socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((ref.addr or "0.0.0.0", ref.port))
        except OSError as exc:
            s.close()
            raise OSError(exc.errno, f"cannot hold {ref.addr}:{ref.port} in the staged "
                                     f"namespace: {exc.strerror}") from None
        return s

    def apply(self, msg: dict) -> int:
        """Replay a ``pdp`` message; returns how many changes it held."""
        changes = decode(msg.get("changes"), self.links)
        if self._chan is None:  # one for the plane's life
            self._chan = PdpChannel(self.netns)
        replay(self._chan, changes, self.links)
        self.applied += len(changes)
        return len(changes)

    def install_nat(self, msg: dict) -> int:
        """A ``nat`` message: the source's UE flows, created here with their binding
        (checked: well-formed, of this plane's UE pools). Returns how many were made; an
        entry a packet made first is left to the masquerade."""
        from gtp_util.natflows import from_row, install_all

        rows = msg.get("flows")
        if not isinstance(rows, list) or len(rows) > PER_MESSAGE:
            raise ProtocolError("malformed nat message")
        try:
            flows = [from_row(r, self.pools) for r in rows]
        except ValueError as exc:
            raise ProtocolError(f"NAT flow refused: {exc}") from None
        done, failed = install_all(self.netns, flows)
        self.nat_failed += failed
        self.nat_flows += len(done)
        return len(done)

    def retry_nat(self) -> int:
        """The flows not created, tried once more; returns how many are made now. Flows
        created while CRIU restores the task (its own copies of the entries, without
        their binding, go in meanwhile) can lose a race: between our delete and our
        create of a flow, CRIU's entry takes its place (EEXIST). Once CRIU is done,
        nothing races."""
        from gtp_util.natflows import install_all

        if not self.nat_failed:
            return 0
        done, self.nat_failed = install_all(self.netns, [f for f, _ in self.nat_failed])
        self.nat_flows += len(done)
        return len(done)

    def finish(self, msg: dict) -> int:
        """``pdp-end``: the source's count must be what was applied."""
        count = msg.get("count")
        if count != self.applied:
            raise ProtocolError(f"the source changed {count!r} PDP contexts during the "
                                f"migration, {self.applied} arrived")
        return self.applied

    def inherit_keys(self) -> dict[int, str]:
        """What :meth:`inherit` will return unless the images hold a unix socket at a
        stand-in's inode (inherit.stand_ins): the restore's request is encoded with it
        before the final dump."""
        from criu_ext.migrate.inherit import stand_ins

        inos = stand_ins(self.sockets())  # as inherit() gives them
        return self.inherit_fds({inode: (f"socket:[{ino}]", False) for inode, ino in inos.items()})

    def sockets(self) -> dict[int, int]:
        """The task's GTP sockets as the source dumped them: inode -> UDP port."""
        return dict(self.task_sockets.values())

    def inherit(self, images_dir: str):
        """The final dump's images in ``images_dir`` made to take the task's GTP sockets
        from us (inherit.Rewrite): ``files.img`` now. Returns the Rewrite: its ``keys``,
        and its ``descriptors()`` left to the caller, before CRIU's ``pre-restore`` is
        answered."""
        from criu_ext.migrate.inherit import Rewrite

        rewrite = Rewrite(images_dir, self.sockets())
        rewrite.files()
        return rewrite

    def inherit_fds(self, keys: dict[int, tuple[str, bool]]) -> dict[int, str]:
        """What CRIU's ``inherit_fd`` needs once the images are rewritten (``keys``:
        inherit's, by source inode): our descriptor -> its key."""
        return {s.fileno(): keys[self.task_sockets[k][0]][0] for k, s in self.held.items()}

    def reuse_as_dumped(self, keys: dict[int, tuple[str, bool]]) -> None:
        """Our sockets given the SO_REUSEADDR the task's had (CRIU restores no option
        of a socket it inherits)."""
        for k, s in self.held.items():
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,
                         int(keys[self.task_sockets[k][0]][1]))

    def remove(self) -> None:
        """Take the staged user plane out (before the switch: the source still forwards)."""
        import gtp_util

        try:
            gtp_util.remove(self.snapshot, self.netns)
        finally:
            self.release()

    def release(self) -> None:
        """Our sockets and our channel closed: once the task holds the sockets (the
        restore is over), or with the plane gone."""
        for s in self.held.values():
            s.close()
        self.held.clear()
        if self._chan is not None:
            self._chan.close()
            self._chan = None
