"""Put a :class:`Snapshot` back into a network namespace, transactionally.

Three layers: :func:`validate` (the snapshot alone, pure), :func:`plan` (snapshot
against the live state, pure: what to create, what is already there, what
conflicts) and :func:`apply_plan` (the thin part that talks to the kernel and
undoes its own work when a step fails). :func:`restore` strings them together;
:func:`diff` is what ``gtp-restore --check`` prints.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from procns.netns import in_netns

from . import nat
from .dump import check_target, open_iproute, read_sysctls, take_snapshot, ue_pools
from .errors import Conflict, GtpError, NoPermission, NoSuchTarget, RestoreFailed
from .model import (
    SOCKET_KERNEL,
    SOCKET_NONE,
    SOCKET_TASK,
    Device,
    NatRule,
    PdpTable,
    Route,
    Snapshot,
    ip4,
)
from .natrule import same_rule
from .netlink import GTP_V0, GTP_V1, PdpChannel, PdpFailure, register_link_kind
from .rtnl import Rtnl
from .rtnl import warm as rtnl_warm
from .sockets import find_in_task

IFNAMSIZ = 16
DEFAULT_MTU = 1452


# --- validation (pure) ---------------------------------------------------------------------

def validate(snap: Snapshot) -> list[str]:
    """Problems that make the snapshot unrestorable whatever the target (empty: fine)."""
    problems = []
    names = set()
    for dev in snap.devices:
        if not dev.name or len(dev.name) >= IFNAMSIZ or '/' in dev.name or ' ' in dev.name:
            problems.append(f"device name {dev.name!r} is not a valid interface name")
        if dev.name in names:
            problems.append(f"device {dev.name} appears twice")
        names.add(dev.name)
        if dev.role not in (0, 1):
            problems.append(f"device {dev.name}: role {dev.role} is neither GGSN (0) nor SGSN (1)")
        if not 0 < dev.hashsize < 1 << 31:
            problems.append(f"device {dev.name}: PDP hash size {dev.hashsize} is out of range")
        if dev.restart_count > 255:
            problems.append(f"device {dev.name}: restart count {dev.restart_count} exceeds 255")
        if dev.sock0.kind not in (SOCKET_KERNEL, SOCKET_TASK, SOCKET_NONE) or \
                dev.sock1.kind not in (SOCKET_KERNEL, SOCKET_TASK, SOCKET_NONE):
            problems.append(f"device {dev.name}: the dump could not tell which sockets it "
                            f"used (sock0 {dev.sock0.kind}, sock1 {dev.sock1.kind})")
        elif dev.sock0.kind == SOCKET_NONE and dev.sock1.kind == SOCKET_NONE:
            problems.append(f"device {dev.name}: has no socket at all")
        problems += _validate_contexts(dev)
    for r in snap.routes:
        if r.dev not in names:
            problems.append(f"route {r.cidr()} uses device {r.dev}, not in the snapshot")
    return problems


def _validate_contexts(dev: Device) -> list[str]:
    t = dev.contexts
    out = []
    versions = set(t.version.tobytes())
    if versions - {GTP_V0, GTP_V1}:
        out.append(f"device {dev.name}: unknown GTP version(s) {sorted(versions - {0, 1})}")
    if GTP_V1 in versions and dev.sock1.kind == SOCKET_NONE:
        out.append(f"device {dev.name}: has GTPv1 contexts but no GTPv1-U socket")
    if GTP_V0 in versions and dev.sock0.kind == SOCKET_NONE:
        out.append(f"device {dev.name}: has GTPv0 contexts but no GTPv0 socket")
    if not t.keys_unique():
        out.append(f"device {dev.name}: two contexts share a TEI/TID")
    if len(set(t.ms)) != len(t) and not t.v6:
        out.append(f"device {dev.name}: two contexts share an MS address")
    return out


def require_valid(snap: Snapshot) -> None:
    """Raise :class:`Conflict` naming the first problem :func:`validate` finds."""
    problems = validate(snap)
    if problems:
        raise Conflict(f"snapshot cannot be restored: {problems[0]}"
                       + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ''))


# --- planning (pure) -----------------------------------------------------------------------

@dataclass
class Plan:
    create: list[Device] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    nat_rules: list[NatRule] = field(default_factory=list)
    sysctls: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (old, new)
    present: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.routes or self.nat_rules or self.sysctls)

    def describe(self) -> list[str]:
        lines = []
        for d in self.create:
            lines.append(f"create device {d.name} (role {'sgsn' if d.role else 'ggsn'}, "
                         f"hash size {d.hashsize}, sockets: v0 {d.sock0.describe()}, "
                         f"v1 {d.sock1.describe()}) with {len(d.contexts)} PDP contexts, "
                         f"{len(d.addresses)} addresses, mtu {d.mtu}, "
                         f"{'up' if d.up else 'down'}")
        for r in self.routes:
            lines.append(f"add route {r.cidr()} dev {r.dev} table {r.table}")
        for n in self.nat_rules:
            lines.append(f"add {n.backend} rule: {n.table} {n.chain} {n.rule}")
        for k, (old, new) in self.sysctls.items():
            lines.append(f"set {k} = {new} (was {old})")
        lines += [f"already present: {p}" for p in self.present]
        return lines


def device_differences(want: Device, have: Device) -> list[str]:
    """How live device ``have`` differs from snapshot device ``want`` (pure)."""
    out = []
    for f in ('role', 'hashsize', 'restart_count', 'mtu', 'up'):
        a, b = getattr(want, f), getattr(have, f)
        if a != b:
            out.append(f"{f} {b} instead of {a}")
    wa = sorted((a.family, a.local, a.prefixlen) for a in want.addresses)
    ha = sorted((a.family, a.local, a.prefixlen) for a in have.addresses)
    if wa != ha:
        out.append(f"addresses {[f'{x[1]}/{x[2]}' for x in ha]} instead of "
                   f"{[f'{x[1]}/{x[2]}' for x in wa]}")
    for s in ('sock0', 'sock1'):
        a, b = getattr(want, s), getattr(have, s)
        if a.kind != b.kind or (a.kind == SOCKET_TASK and (a.port, a.addr) != (b.port, b.addr)):
            out.append(f"{s} {b.describe()} instead of {a.describe()}")
    out += context_differences(want.contexts, have.contexts)
    return out


def _ctx_text(c) -> str:
    if c.version == GTP_V1:
        return f"v1 tei {c.i_tei}/{c.o_tei} ms {ip4(c.ms)} peer {ip4(c.peer)}"
    return f"v0 tid {c.tid} flow {c.flow} ms {ip4(c.ms)} peer {ip4(c.peer)}"


def context_differences(want: PdpTable, have: PdpTable, show: int = 3) -> list[str]:
    wmap = {(c.version, c.i_tei if c.version else c.tid): c for c in want}
    hmap = {(c.version, c.i_tei if c.version else c.tid): c for c in have}
    out = []
    missing = [wmap[k] for k in sorted(wmap.keys() - hmap.keys())]
    extra = [hmap[k] for k in sorted(hmap.keys() - wmap.keys())]
    changed = [(wmap[k], hmap[k]) for k in sorted(wmap.keys() & hmap.keys()) if wmap[k] != hmap[k]]
    if missing:
        out.append(f"{len(missing)} PDP contexts missing, e.g. "
                   + '; '.join(_ctx_text(c) for c in missing[:show]))
    if extra:
        out.append(f"{len(extra)} unexpected PDP contexts, e.g. "
                   + '; '.join(_ctx_text(c) for c in extra[:show]))
    if changed:
        out.append(f"{len(changed)} PDP contexts differ, e.g. "
                   + '; '.join(f"{_ctx_text(h)} instead of {_ctx_text(w)}"
                               for w, h in changed[:show]))
    return out


def _route_key(r: Route) -> tuple:
    return (r.family, r.dst, r.dst_len, r.dev, r.table, r.priority)


def plan(snap: Snapshot, live: Snapshot, live_nat: list[NatRule] | None = None) -> Plan:
    """What restoring ``snap`` over ``live`` would do (pure)."""
    p = Plan()
    for dev in snap.devices:
        have = live.device(dev.name)
        if have is None:
            p.create.append(dev)
            continue
        diffs = device_differences(dev, have)
        if diffs:
            p.conflicts.append(f"device {dev.name} exists and differs: {diffs[0]}")
        else:
            p.present.append(f"device {dev.name} with {len(dev.contexts)} PDP contexts")
    live_routes = {_route_key(r) for r in live.routes}
    for r in snap.routes:
        if _route_key(r) in live_routes:
            p.present.append(f"route {r.cidr()} dev {r.dev}")
        else:
            p.routes.append(r)
    live_nat = live_nat if live_nat is not None else live.nat_rules
    for n in snap.nat_rules:
        if any(same_rule(n, m) for m in live_nat):
            p.present.append(f"{n.backend} rule {n.chain} {n.rule}")
        else:
            p.nat_rules.append(n)
    for k, v in snap.sysctls.items():
        old = live.sysctls.get(k)
        if old is not None and old != v:
            p.sysctls[k] = (old, v)
    return p


def diff(snap: Snapshot, live: Snapshot) -> list[str]:
    """Every difference between a snapshot and the live state (pure; empty: equal)."""
    out = []
    for dev in snap.devices:
        have = live.device(dev.name)
        if have is None:
            out.append(f"device {dev.name} is missing")
        else:
            out += [f"device {dev.name}: {d}" for d in device_differences(dev, have)]
    for dev in live.devices:
        if snap.device(dev.name) is None:
            out.append(f"device {dev.name} is not in the snapshot")
    want = {_route_key(r) for r in snap.routes}
    got = {_route_key(r) for r in live.routes}
    out += [f"route {k[1]}/{k[2]} dev {k[3]} table {k[4]} is missing" for k in sorted(want - got)]
    out += [f"route {k[1]}/{k[2]} dev {k[3]} table {k[4]} is not in the snapshot"
            for k in sorted(got - want)]
    for n in snap.nat_rules:
        if not any(same_rule(n, m) for m in live.nat_rules):
            out.append(f"{n.backend} rule {n.chain} {n.rule} is missing")
    for n in live.nat_rules:
        if not any(same_rule(n, m) for m in snap.nat_rules):
            out.append(f"{n.backend} rule {n.chain} {n.rule} is not in the snapshot")
    for k, v in snap.sysctls.items():
        if live.sysctls.get(k, v) != v:
            out.append(f"sysctl {k} is {live.sysctls[k]} instead of {v}")
    return out


# --- applying ------------------------------------------------------------------------------

@dataclass
class Result:
    plan: Plan
    applied: bool
    created_devices: list[str] = field(default_factory=list)
    contexts: int = 0

    @property
    def already_present(self) -> bool:
        return self.plan.empty and not self.plan.conflicts


def _fetch_sockets(devs: list[Device], bind_pid: int | None) -> dict[tuple[str, int], int]:
    """Our copies of the task sockets the devices need: {(device, version): fd}."""
    fds: dict[tuple[str, int], int] = {}
    try:
        for dev in devs:
            for ver, ref in ((0, dev.sock0), (1, dev.sock1)):
                if ref.kind != SOCKET_TASK:
                    continue
                pid = bind_pid or ref.pid
                if not os.path.exists(f'/proc/{pid}'):
                    raise NoSuchTarget(f"device {dev.name}: no process with PID {pid} to take "
                                       f"its GTPv{ver} socket from (use --bind-pid)")
                try:
                    fds[(dev.name, ver)] = find_in_task(pid, ref)
                except LookupError as e:
                    raise Conflict(f"device {dev.name}: {e}") from None
                except PermissionError:
                    raise NoPermission(f"device {dev.name}: not allowed to take sockets from "
                                       f"PID {pid}") from None
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _ifindex(netns: str | None, name: str) -> int:
    """ifindex of a link by name (an ioctl: no rtnetlink dump to decode)."""
    with in_netns(netns):
        return socket.if_nametoindex(name)


def apply_plan(p: Plan, netns: str | None, fds: dict[tuple[str, int], int], *,
               batch: int = 2048, chan: PdpChannel | None = None) -> Result:
    """Do what the plan says; on failure undo it all and raise :class:`RestoreFailed`.

    ``chan``: an open :class:`PdpChannel` of ``netns`` to use (left open).
    """
    res = Result(plan=p, applied=True)
    undo: list[tuple[str, object]] = []
    rt = Rtnl(netns)
    own_chan = None
    step = 'start'
    try:
        if p.create:
            if chan is None:
                chan = own_chan = PdpChannel(netns)
            v6 = any(d.contexts.v6 for d in p.create)
            if v6 and not chan.has_ipv6:
                raise GtpError("the snapshot has IPv6 PDP contexts; this kernel's gtp family "
                               "does not support them (Linux 6.10+ does)")
            if v6:
                raise GtpError("the snapshot has IPv6 PDP contexts; restoring them is not "
                               "implemented yet")
        for dev in p.create:
            assert chan is not None  # opened above whenever p.create has devices
            step = f"creating device {dev.name}"
            rt.add_gtp_link(dev, fds.get((dev.name, 0)), fds.get((dev.name, 1)),
                            mtu=dev.mtu if dev.mtu and dev.mtu != DEFAULT_MTU else None)
            undo.append(('device', dev.name))
            res.created_devices.append(dev.name)
            idx = _ifindex(netns, dev.name)
            for a in dev.addresses:
                step = f"adding address {a.cidr()} to {dev.name}"
                rt.add_address(idx, a)
            step = f"adding {len(dev.contexts)} PDP contexts to {dev.name}"
            try:
                res.contexts += chan.add(idx, dev.contexts, batch=batch)
            except PdpFailure as e:
                i, err, msg = e.failures[0]
                raise GtpError(f"device {dev.name}: PDP context #{i} "
                               f"({_ctx_text(dev.contexts[i])}): {os.strerror(err)}"
                               + (f" ({msg})" if msg else '')) from None
        for r in p.routes:
            step = f"adding route {r.cidr()} dev {r.dev}"
            rt.add_route(_ifindex(netns, r.dev), r)
            undo.append(('route', r))
        for k, (old, new) in p.sysctls.items():
            step = f"setting {k} = {new}"
            _write_sysctl(netns, k, new)
            undo.append(('sysctl', (k, old)))
        for n in p.nat_rules:
            step = f"adding {n.backend} rule {n.chain} {n.rule}"
            nat.add(netns, n)
            undo.append(('nat', n))
    except Exception as e:
        notes = _rollback(netns, undo)
        what = f"{e}" if isinstance(e, GtpError) else f"{step}: {e}"
        msg = f"restore failed: {what}; rolled back {len(undo)} change(s)"
        if notes:
            msg += f" (rollback problems: {'; '.join(notes)})"
        raise RestoreFailed(msg) from e
    finally:
        if own_chan is not None:
            own_chan.close()
        rt.close()
    return res


def _write_sysctl(netns: str | None, name: str, value: str) -> None:
    with in_netns(netns):
        with open('/proc/sys/' + name.replace('.', '/'), 'w', encoding='ascii') as f:
            f.write(value)


def _rollback(netns, undo) -> list[str]:
    if not undo:
        return []
    notes = []
    ipr = open_iproute(netns)
    try:
        for kind, what in reversed(undo):
            try:
                if kind == 'device':
                    for idx in ipr.link_lookup(ifname=what):
                        ipr.link('del', index=idx)
                elif kind == 'route':
                    ipr.route('del', family=what.family, dst=what.dst, dst_len=what.dst_len,
                              table=what.table, **({'priority': what.priority}
                                                   if what.priority else {}))
                elif kind == 'sysctl':
                    _write_sysctl(netns, *what)
                elif kind == 'nat':
                    nat.delete(netns, what)
            except Exception as e:  # keep undoing the rest
                if kind == 'route' and 'No such' in str(e):
                    continue  # went away with its device
                notes.append(f"{kind} {what}: {e}")
    finally:
        ipr.close()
    return notes


def warm() -> None:
    """Pay, in our own namespace and changing nothing, the first-use costs a restore
    would otherwise pay: the gtp family lookup, the request encoders, the sysctl and
    interface reads (a CRIU plugin calls this before CRIU starts, so that the freeze
    window does not)."""
    try:
        PdpChannel(None).close()
    except GtpError:
        pass  # no gtp here: restore() will say so where it matters
    Rtnl(None).close()
    rtnl_warm()
    read_sysctls(None)
    socket.if_nameindex()


def restore(snap: Snapshot, netns: str | None = None, *, bind_pid: int | None = None,
            dry_run: bool = False, batch: int = 2048, validated: bool = False) -> Result:
    """Restore ``snap`` into the namespace at path ``netns``.

    Validates everything first (snapshot, target, the task sockets it must bind
    to), then creates what is missing. Raises :class:`Conflict` (nothing applied)
    when live state contradicts the snapshot, :class:`RestoreFailed` (all undone)
    when a step fails. When everything is already present nothing changes and
    ``result.already_present`` is true. ``validated``: :func:`validate` found
    nothing wrong with ``snap`` already (skip it).
    """
    if not validated:
        require_valid(snap)
    check_target(netns)
    if bind_pid is not None and not os.path.exists(f'/proc/{bind_pid}'):
        raise NoSuchTarget(f"no process with PID {bind_pid}")
    register_link_kind()
    # opened first: raises GtpUnavailable on a kernel without gtp
    chan = PdpChannel(netns) if snap.devices else None
    try:
        live = _live_state(snap, netns)
        live_nat = nat.read_rules(netns, ue_pools(snap)) if snap.nat_rules else []
        p = plan(snap, live, live_nat)
        if p.conflicts:
            raise Conflict(f"nothing restored: {p.conflicts[0]}" + (
                f" (and {len(p.conflicts) - 1} more)" if len(p.conflicts) > 1 else ''))
        if dry_run or p.empty:
            return Result(plan=p, applied=False)
        fds = _fetch_sockets(p.create, bind_pid)
        try:
            return apply_plan(p, netns, fds, batch=batch, chan=chan)
        finally:
            for fd in fds.values():
                os.close(fd)
    finally:
        if chan is not None:
            chan.close()


def _live_state(snap: Snapshot, netns: str | None) -> Snapshot:
    """What :func:`plan` needs of the live namespace.

    It looks only at live devices named as in ``snap`` and at routes through gtp
    devices; when no link has one of those names (the usual restore: into a fresh
    namespace, say the one CRIU restored), that is nothing but the sysctls, read
    without a rtnetlink session.
    """
    with in_netns(netns):
        names = {n for _, n in socket.if_nameindex()}
    if snap.devices and not names & {d.name for d in snap.devices}:
        return Snapshot(netns=netns or '', sysctls=read_sysctls(netns))
    return take_snapshot(netns, with_nat=False, with_sockets=bool(snap.devices))


def check(snap: Snapshot, netns: str | None = None) -> list[str]:
    """Differences between ``snap`` and the live state of the namespace."""
    live = take_snapshot(netns)
    return diff(snap, live)


__all__ = ['Plan', 'Result', 'apply_plan', 'check', 'diff', 'plan', 'require_valid', 'restore',
           'validate', 'warm']
