"""``sctp``: carries the tree's SCTP sockets around CRIU 3.17, which refuses them.

dump
  pre-dump      (before CRIU seizes the tree) find the SCTP sockets; refuse
                what cannot go (one-to-many sockets, associations in transition,
                established associations on a kernel without repair mode unless
                the restart fallback was asked for); drain, stop the tree, save
                the associations in repair mode, swap each socket for a pipe at
                the same fd; save criu-ext-sctp.json. CRIU dumps a stopped tree.
  post-dump     (images written, the source about to go) seal the source netns:
                SCTP towards the carried peers is blackholed, so the netns does
                not ABORT their retransmissions while it is being torn down.
  rollback      (failed dump, --leave-running) put the sockets back from the
                image on the source and continue the tree; CRIU still traces
                the tree then, so a child does it once CRIU has let go (in RPC
                mode ``criu-ext dump`` waits for it: ``finish``).
restore
  post-restore  (tasks restored, not running) check this kernel can take the
                image; drop the carried ports' packets in the new netns.
  post-resume   (CRIU has let go of the tree, which is still stopped) create the
                sockets (repaired associations), swap them in for the pipes,
                lift the rules, continue the tree. On failure the restored tree
                is killed: CRIU only logs this phase's failures.

Options: ``sctp_fallback=restart`` (RPC: ``--sctp-fallback restart``; action
script: ``CRIU_EXT_SCTP_FALLBACK=restart``), ``CRIU_EXT_SCTP_DRAIN`` (seconds
to wait for queues to drain, default 5) and ``CRIU_EXT_SCTP_QUEUES`` (``carry``,
the default: unread and unacknowledged data go in the image on a kernel with
SCTP_REPAIR_RCVQ / _SNDQ; ``drain``: wait for them as on a kernel without).
docs/sctp-criu.md has the design.
"""

from __future__ import annotations

import os
import signal

from criu_ext.plugin import Plugin, PluginError

IMAGE = "criu-ext-sctp.json"
_DEFERRED: list[int] = []  # put-back workers started in this process


def _carry():
    from criu_ext import sctp_carry
    return sctp_carry


def _where(taking: object) -> list[tuple[int, int]]:
    """The journal's (pid, fd) list, checked (it is read back from a file)."""
    if not isinstance(taking, list) or len(taking) > 4096:
        raise ValueError("the journal's SCTP socket list is malformed")
    out = []
    for pair in taking:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(type(v) is int and 0 <= v < (1 << 31) for v in pair)):
            raise ValueError("the journal's SCTP socket list is malformed")
        out.append((pair[0], pair[1]))
    return out


def _repair_available() -> bool:
    from sctp_repair.repair import probe
    return probe().repair


class SctpPlugin(Plugin):
    name = "sctp"
    order = 50  # before gtp: its pre-dump stops the tree CRIU is about to seize
    summary = "SCTP sockets carried around CRIU (associations through kernel repair mode)"
    images = (IMAGE,)

    def warm(self, action: str) -> None:
        import criu_ext.inject  # noqa: F401
        import criu_ext.sctp_carry  # noqa: F401
        import sctp_repair.repair  # noqa: F401

    def idle(self, ctx) -> bool:
        if ctx.action == "dump":
            return not ctx.state.get("taken")
        return not os.path.exists(ctx.image_path(IMAGE))

    # -- dump -----------------------------------------------------------------------

    def pre_dump(self, ctx) -> None:
        c = _carry()
        fallback = ctx.options.get("sctp_fallback") or os.environ.get("CRIU_EXT_SCTP_FALLBACK")
        if fallback not in (None, "", "restart"):
            raise PluginError(f"unknown SCTP fallback {fallback!r} (the only one is 'restart')")
        drain = float(os.environ.get("CRIU_EXT_SCTP_DRAIN", "5"))
        queues = os.environ.get("CRIU_EXT_SCTP_QUEUES", "carry")
        if queues not in ("carry", "drain"):
            raise PluginError(f"CRIU_EXT_SCTP_QUEUES={queues!r:.40}: 'carry' (the default: "
                              "queues go in the image where the kernel can) or 'drain'")
        def saved(pids: list[int]) -> None:  # before the first swap (see take)
            c.write_image(ctx.image_path(IMAGE), ctx.init_pid, pids, items)
            ctx.state["taken"] = True  # from here the image puts the sockets back
            ctx.persist()

        try:
            items = c.discover(ctx.init_pid, fallback or None, _repair_available())
            if not items:
                ctx.log.debug("no SCTP socket in the tree")
                return
            # journaled before repair mode goes on: should this process die before the
            # image is written, criu-ext recover releases them (sctp_carry.release)
            ctx.state["taking"] = [[it.pid, it.fd] for it in items]
            ctx.persist()
            c.take(ctx.init_pid, items, drain, on_saved=saved, queues=queues == "carry")
        except c.CarryError as exc:
            ctx.state["taken"] = False  # take put everything back itself
            raise PluginError(str(exc)) from exc
        finally:
            ctx.state.pop("taking", None)
        for it in items:
            ctx.log.info(f"carried {it.describe()}")
            if it.role == c.RESTART:
                ctx.log.warning(f"{it.describe()}: no repair mode, the peer will see a restart")

    def post_dump(self, ctx) -> None:
        if not ctx.state.get("taken"):
            return
        from criu_ext import sctp_fence
        c = _carry()
        try:
            _, items = c.read_image(ctx.image_path(IMAGE))
            ctx.state["sealed"] = True  # first: the rollback undoes a partial seal too
            ctx.persist()  # and so does recover, should this process die from here on
            sctp_fence.seal(ctx.netns_path, c.peers(items))
        except (c.CarryError, sctp_fence.FenceError) as exc:
            raise PluginError(str(exc)) from exc

    def rollback(self, ctx) -> None:
        taking = ctx.state.get("taking")
        if taking and not ctx.state.get("taken"):  # only in a journal: died inside take
            c = _carry()
            try:
                c.release(ctx.init_pid, _where(taking))
            except (c.CarryError, ValueError) as exc:
                raise PluginError(str(exc)) from exc
            ctx.state.pop("taking", None)
            ctx.log.info("SCTP sockets released in place (the dump died before saving them)")
            return
        if not ctx.state.get("taken"):
            return
        from criu_ext import tasks
        pids = tasks.tree(ctx.init_pid)
        ctx.state["taken"] = False
        if not any(tasks.tracer(p) for p in pids):
            self._put_back_on_source(ctx, pids)
            return
        # CRIU runs network-unlock before it lets go of the tree, and a traced task
        # cannot be borrowed: finish in a child once CRIU has detached.
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                tasks.wait_untraced(pids)
                self._put_back_on_source(ctx, pids)
                code = 0
            except BaseException as exc:  # noqa: BLE001 - the child must end here
                ctx.log.error(str(exc))
            finally:
                os._exit(code)
        _DEFERRED.append(pid)
        ctx.log.info(f"the SCTP sockets go back once CRIU lets go of the tree (worker {pid})")

    def _put_back_on_source(self, ctx, pids: list[int]) -> None:
        from criu_ext import sctp_fence
        c = _carry()
        try:
            _, items = c.read_image(ctx.image_path(IMAGE))
            if ctx.state.get("sealed"):
                sctp_fence.unseal(ctx.netns_path, c.peers(items))
            c.put_back(ctx.init_pid, pids, items, ctx.log)
        except (c.CarryError, TimeoutError) as exc:
            raise PluginError(f"putting the SCTP sockets back on the source: {exc}") from exc
        ctx.log.info(f"{len(items)} SCTP socket(s) back in place on the source")

    def finish(self, ctx) -> None:
        """RPC mode, after CRIU ended: wait for a deferred put-back, report its failure."""
        failed = 0
        while _DEFERRED:
            _, status = os.waitpid(_DEFERRED.pop(), 0)
            failed += status != 0
        if failed:
            raise PluginError("putting the SCTP sockets back on the source failed "
                              "(see the messages above)")

    # -- restore ----------------------------------------------------------------------

    def post_restore(self, ctx) -> None:
        from criu_ext import sctp_fence
        c = _carry()
        path = ctx.image_path(IMAGE)
        if not os.path.exists(path):
            return
        try:
            _, items = c.read_image(path)
            if c.needs_repair(items) and not _repair_available():
                raise PluginError("the image holds established SCTP associations and this "
                                  "kernel has no SCTP repair mode to re-create them")
            ports = {it.setup.port for it in items if it.setup.port}
            if ports:
                sctp_fence.hold(ctx.netns_path, ports)
        except (c.CarryError, sctp_fence.FenceError) as exc:
            raise PluginError(str(exc)) from exc

    def post_resume(self, ctx) -> None:
        c = _carry()
        path = ctx.image_path(IMAGE)
        if not os.path.exists(path):
            return
        from criu_ext import tasks
        pids = tasks.tree(ctx.init_pid)
        try:
            _, items = c.read_image(path)
            tasks.wait_untraced(pids, timeout=10)  # CRIU has detached by post-resume
            c.put_back(ctx.init_pid, pids, items, ctx.log)
        except (c.CarryError, TimeoutError) as exc:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise PluginError(f"{exc}; the restored tree was killed") from exc
        ctx.log.info(f"{len(items)} SCTP socket(s) put back; tree continued")

    def show(self, images_dir: str) -> dict | None:
        path = os.path.join(images_dir, IMAGE)
        if not os.path.lexists(path):  # a link is there: the reader refuses it
            return None
        _, items = _carry().read_image(path)
        return {"sockets": [it.describe() for it in items]}
