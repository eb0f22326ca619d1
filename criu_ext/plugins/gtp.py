"""``gtp``: carries kernel gtp devices through a CRIU dump and restore, with gtp_util.

warm            (RPC mode, before CRIU starts) import gtp_util's netlink code, so
                the freeze window does not pay for it.
dump
  pre-dump      (resident: RPC mode and the action-script session process;
                tasks still running) read the devices, their
                addresses, routes, task sockets and PDP contexts, and start
                watching the netns's links, addresses, routes and contexts
                (gtp_util.dump.Watch: rtnetlink groups, the gtp family's
                multicast group).
  network-lock  (tasks frozen) snapshot every gtp device of the tree's netns:
                attributes, PDP contexts, routes through it, which task socket
                backs it; save it as criu-ext-gtp.img; delete the devices (CRIU
                refuses to dump a netns holding a gtp link). NAT rules are left
                alone: CRIU dumps them, the netfilter plugin checks them.
                When the watch saw no change since pre-dump and every task socket
                is still at its fd, nothing is read again here; when only
                contexts changed, only they are (gtp_util.dump.refresh);
                otherwise everything is.
                When CRIU was told the netns is external (runc, Podman: a netns
                given by path), CRIU dumps none of it: the snapshot then also
                holds the SGi masquerade and the forwarding sysctls, and the
                devices stay in place.
  rollback      (the source goes on running: failed dump or --leave-running)
                re-create what the snapshot holds and is missing, bound again
                to the live task's sockets.
restore
  post-restore  (tasks restored, not running) re-create the devices bound to
                the restored task's sockets (same fd numbers), the PDP contexts
                and routes (and, from an external netns's snapshot, the
                masquerade and sysctls) in the restored task's netns, whoever
                made it. A failure aborts the restore.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

from criu_ext.plugin import Plugin, PluginError

if TYPE_CHECKING:  # gtp_util itself is imported when first needed (see _gtp)
    from gtp_util.dump import Watch
    from gtp_util.model import Snapshot

IMAGE = "criu-ext-gtp.img"


def _gtp():
    try:
        import gtp_util
    except ImportError as exc:  # pragma: no cover - packaging problem
        raise PluginError(f"gtp_util is not importable: {exc}") from exc
    return gtp_util


def _warm(action: str) -> None:
    # The heavy imports (pyroute2, the genl family, protobuf) done ahead of the freeze,
    # and at restore the first-use costs of the calls post-restore makes.
    import gtp_util.dump  # noqa: F401
    import gtp_util.image
    import gtp_util.restorer

    gtp_util.image.warm()
    if action == "restore":
        gtp_util.restorer.warm()


def _task_pids(snap) -> set[int]:
    pids = set()
    for dev in snap.devices:
        for ref in (dev.sock0, dev.sock1):
            if ref.kind == "task":
                pids.add(ref.pid)
    return pids


def _netns_ino(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def bind_pid_for(snap, init_pid: int | None) -> int | None:
    """The PID to take sockets from at restore (None: the PIDs recorded at dump).

    CRIU gives restored tasks their old PIDs unless the tree has its own PID
    namespace. If every recorded holder is alive in the restored root's netns,
    use the recorded PIDs; otherwise, if one task held every socket, it is the
    restored root (the usual gateway); otherwise we cannot tell.
    """
    pids = _task_pids(snap)
    if not pids or init_pid is None:
        return None
    want = _netns_ino(init_pid)
    if want is not None and all(_netns_ino(p) == want for p in pids):
        return None
    if len(pids) == 1:
        return init_pid
    raise PluginError(f"the gtp sockets were held by PIDs {sorted(pids)}, not all of them "
                      "found in the restored tree (a PID namespace?): cannot bind the devices")


def external_netns(ctx) -> bool:
    """True when CRIU was told the tree's netns is external (``--external net[INO]:KEY``,
    what runc does for a netns given by path): CRIU neither dumps nor restores its links,
    addresses, routes or netfilter rules, and the restore joins a netns someone else made."""
    if ctx.netns_path is None:
        return False
    try:
        ino = os.stat(ctx.netns_path).st_ino
    except OSError:
        return False
    return any(e.startswith(f"net[{ino}]") for e in ctx.options.get("external", ()))


def _summary(snap) -> str:
    return (f"{len(snap.devices)} device(s) ({', '.join(d.name for d in snap.devices)}), "
            f"{snap.n_contexts} PDP context(s), {len(snap.routes)} route(s)")


class GtpPlugin(Plugin):
    name = "gtp"
    order = 100
    summary = "gtp devices, PDP contexts and routes, re-bound to the restored task's sockets"
    images = (IMAGE,)

    # -- dump --------------------------------------------------------------------------

    def __init__(self) -> None:
        self._base: tuple[str, Watch, Snapshot] | None = None  # RPC mode: pre-dump's
        self._loaded: tuple[str, Snapshot] | None = None  # RPC mode: prepare's (image path)

    def warm(self, action: str) -> None:
        _warm(action)

    def pre_dump(self, ctx) -> None:
        # Only a process that lives on to network-lock can use what is read here.
        # An external netns is read whole at network-lock (NAT included).
        if not ctx.resident or ctx.netns_path is None or external_netns(ctx):
            return
        g = _gtp()
        self._take_base()
        # the watch first: a change while we read is seen too
        watch = g.watch(ctx.netns_path, contexts=True)
        try:
            base = g.take_snapshot(ctx.netns_path, with_nat=False)
        except Exception as exc:  # noqa: BLE001 - network-lock reads everything then
            watch.close()
            ctx.log.debug(f"pre-dump read failed ({exc}); network-lock reads everything")
            return
        self._base = (ctx.netns_path, watch, base)

    def _take_base(self):
        """Pre-dump's (netns, snapshot, links changed?, contexts changed?) once, its
        watch closed; or None."""
        base, self._base = self._base, None
        if base is None:
            return None
        netns, watch, snap = base
        try:
            return netns, snap, watch.changed(), watch.contexts_changed()
        finally:
            watch.close()

    def _snapshot(self, ctx):
        """The netns's gtp state now: pre-dump's read, refreshed as little as it can be."""
        g = _gtp()
        base = self._take_base()
        if base is not None and base[0] == ctx.netns_path:
            netns, snap, changed, contexts_changed = base
            if not changed:
                fresh = g.refresh(snap, netns, contexts=contexts_changed)
                if fresh is not None:
                    ctx.log.debug("links, addresses, routes and sockets as at pre-dump; "
                                  + ("PDP contexts read again" if contexts_changed
                                     else "PDP contexts too (no notification)"))
                    return fresh, True
            ctx.log.debug("the netns changed since pre-dump: reading everything")
        return g.take_snapshot(ctx.netns_path, with_nat=False), False

    def network_lock(self, ctx) -> None:
        g = _gtp()
        path = ctx.image_path(IMAGE)
        external = external_netns(ctx)
        try:
            if external:  # nobody restores the masquerade and sysctls but us
                snap, fresh = g.take_snapshot(ctx.netns_path, with_nat=True), False
            else:
                snap, fresh = self._snapshot(ctx)
        except g.GtpError as exc:
            raise PluginError(f"cannot read the gtp state of {ctx.netns_path}: {exc}") from exc
        if not snap.devices:
            ctx.log.debug("no gtp device in the netns: nothing to do")
            if os.path.exists(path):
                os.unlink(path)  # a stale one from an earlier dump into this directory
            return
        for dev in snap.devices:
            for ref in (dev.sock0, dev.sock1):
                if ref.kind == "unknown":
                    raise PluginError(f"device {dev.name}: a GTP socket is held by no task "
                                      "we can find; the restored device could not be bound")
        g.save(snap, path)
        ctx.state["saved"] = True
        ctx.state["dump_init_pid"] = ctx.init_pid
        if external:  # CRIU does not dump this netns: the devices can stay (no blip)
            ctx.log.info(f"saved {_summary(snap)}, {len(snap.nat_rules)} NAT rule(s) of an "
                         "external netns; devices left in place")
            return
        # marked (and journaled) first: whatever part of the removal happens, a rollback or
        # ``criu-ext recover`` re-creates what is missing
        ctx.state["removed"] = True
        ctx.persist()
        if fresh:  # ifindexes known good (the watch saw no link change): no lookup
            g.delete_links(ctx.netns_path, [d.ifindex for d in snap.devices])
        else:
            g.remove(snap, ctx.netns_path, nat_rules=False)
        ctx.log.info(f"saved {_summary(snap)}; devices removed for the dump")

    def rollback(self, ctx) -> None:
        if not ctx.state.get("removed"):
            return
        g = _gtp()
        snap = g.load(ctx.image_path(IMAGE))
        try:
            res = g.restore(snap, ctx.netns_path)
        except g.GtpError as exc:
            raise PluginError(f"could not put the gtp state back on the source: {exc}; the "
                              f"snapshot is in {ctx.image_path(IMAGE)} "
                              "(gtp-restore can apply it by hand)") from exc
        ctx.state["removed"] = False
        what = "already there" if res.already_present else \
            f"re-created {', '.join(res.created_devices) or 'routes'} with {res.contexts} contexts"
        ctx.log.info(f"source put back: {what}")

    # -- restore -------------------------------------------------------------------------

    def _load(self, path: str):
        """The image's snapshot, validated (bad images: PluginError)."""
        g = _gtp()
        from gtp_util.restorer import require_valid
        try:
            snap = g.load(path)  # its errors name the file
        except g.GtpError as exc:
            raise PluginError(str(exc)) from exc
        try:
            require_valid(snap)
        except g.GtpError as exc:
            raise PluginError(f"{path}: {exc}") from exc
        return snap

    def prepare(self, ctx) -> None:
        """RPC restore, before CRIU starts: read and check the image (a bad one stops
        the restore before anything is created), outside the window."""
        path = ctx.image_path(IMAGE)
        if ctx.action == "restore" and os.path.exists(path):
            self._loaded = (path, self._load(path))

    def post_restore(self, ctx) -> None:
        path = ctx.image_path(IMAGE)
        if not os.path.exists(path):
            ctx.log.debug("no gtp image: nothing to restore")
            return
        g = _gtp()
        loaded, self._loaded = self._loaded, None
        snap = loaded[1] if loaded and loaded[0] == path else self._load(path)
        bind = bind_pid_for(snap, ctx.init_pid)
        try:
            res = g.restore(snap, ctx.netns_path, bind_pid=bind, validated=True)
        except g.GtpError as exc:
            raise PluginError(f"cannot re-create the gtp devices in the restored netns: {exc}") \
                from exc
        ctx.log.info(f"restored {_summary(snap)}, bound to the sockets of PID "
                     f"{bind or ', '.join(map(str, sorted(_task_pids(snap)))) or '-'}"
                     + (" (already present)" if res.already_present else ""))

    def show(self, images_dir: str) -> dict | None:
        path = os.path.join(images_dir, IMAGE)
        if not os.path.lexists(path):  # a link is there: the reader refuses it
            return None
        g = _gtp()
        snap = g.load(path)
        lines = [_summary(snap)]
        for dev in snap.devices:
            lines.append(f"{dev.name}: role {'sgsn' if dev.role else 'ggsn'}, "
                         f"v1 socket {dev.sock1.describe()}, v0 socket {dev.sock0.describe()}, "
                         f"{len(dev.contexts)} contexts")
        lines += [f"route {r.cidr()} dev {r.dev}" for r in snap.routes]
        for dev in snap.devices:
            dev.contexts.sort()  # the image keeps the kernel's (hash) order
        lines += list(itertools.islice(g.tunnel_lines(snap), 20))
        if snap.n_contexts > 20:
            lines.append(f"... {snap.n_contexts - 20} more contexts")
        return {"text": "\n".join(lines), "devices": len(snap.devices),
                "contexts": snap.n_contexts, "routes": len(snap.routes),
                "bytes": os.path.getsize(path)}

