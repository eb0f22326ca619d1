"""``criu-ext receive``: accept one authenticated migration, restore it with the plugins.

One connection at a time. A peer whose certificate our CA did not sign (or
that shows none) is refused at the TLS handshake, in one line, and the
receiver waits for the next one. An authenticated source then drives the
session (see source.py for the order of messages):

* ``page-server N``: a round directory (``N``, ``parent`` -> ``../N-1``) and a
  ``criu page-server`` on this end of the connection, TLS with our certificate;
* ``round-done N``: that page server must have ended well;
* ``file``: one image of the final dump (bounded, plain names, no links);
* ``restore``: CRIU restores the final directory through RPC with the plugins
  (criu_ext.rpc, as ``criu-ext restore``); at ``post-restore`` (the tasks are
  restored, not running) the ``handoff`` step tells the source ``ready`` and
  waits for ``commit``: without it the restore is aborted (CRIU kills the
  restored tasks, their namespace goes), so the task never runs on both hosts.

Whatever fails, the session directory is removed and the error goes back to
the source. Directories left by a receiver that was killed are removed by the
next one (``owner`` file: its PID).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field

# at the top, not where the restore needs them: a module imported once the source is
# frozen is read in its freeze (under emulation, tens of milliseconds)
from criu_ext import phases as ph
from criu_ext.criu_images import stats
from criu_ext.migrate import gcpause, wire
from criu_ext.migrate.inherit import InheritError
from criu_ext.migrate.inherit import warm as inherit_warm
from criu_ext.migrate.pagesrv import PageServer, round_dir
from criu_ext.migrate.rewriter import Rewriter, RewriterError
from criu_ext.migrate.tls import TlsFiles
from criu_ext.plugin import Log, PluginError, Warmup, select
from criu_ext.rpc import CriuError, Options, Request, Swrk, run
from criu_ext.session import PhaseFailed
from criu_ext.session import Session as PluginSession
from procns.files import read_text, write_atomic

DEFAULT_BUDGET = 4 << 30  # bytes of non-page images one migration may send
STAGED = "staged"  # in a session directory: the staged netns and links, until the commit


@dataclass
class ReceiveConfig:
    listen: tuple[str, int]
    tls: TlsFiles
    work_dir: str
    external: list[str] = field(default_factory=list)
    plugin_spec: str | None = None
    criu: str = "criu"
    timeout: float = 300.0  # a source silent this long is gone
    budget: int = DEFAULT_BUDGET
    log_level: int = 2
    # make-before-break (#14): a netns the host's network set-up made for the function
    # (its links and addresses; their outer ends off the fabric), where a staging
    # source's user plane is built and the task restored; ``switch_links``
    # ("OUTER@BRIDGE", this host's netns) go onto the fabric at the switch
    stage_netns: str | None = None
    switch_links: list[str] = field(default_factory=list)


class ReceiveFailed(wire.PhaseError):
    """A migration failed on this end; ``phase`` names where."""


class Handoff:
    """The last step of the restore (a plugin of our own): at ``post-restore``,
    tell the source the task is ready and wait for its ``commit``."""

    name = "migrate-handoff"
    order = 100_000  # after every other plugin's post-restore
    images = ()
    default = False

    def __init__(self, chan: wire.Channel, t0: float, staged=None) -> None:
        self.chan = chan
        self.t0 = t0
        self.ready_at: float | None = None
        self.committed_at: float | None = None
        self.staged = staged  # _Staged, when the source stages its user plane
        self.times: dict[str, float] = {}
        # what failed once CRIU was asked (the source told, the tail started): the
        # restore is abandoned here
        self.late: BaseException | None = None

    def pre_restore(self, ctx) -> None:
        if self.late is not None:  # CRIU stops before it reads the descriptors
            raise PluginError(f"once the restore began: {self.late}")

    def post_restore(self, ctx) -> None:
        extra: dict = {}
        if self.staged is not None:  # the task holds the devices' sockets (inherit.py)
            t0 = time.monotonic()
            try:
                self.staged.join_tail()
                retried = self.staged.plane.retry_nat()  # CRIU's restore is over
            except Exception as exc:  # noqa: BLE001 - the protocol's, gtp_util's
                raise PluginError(f"the source's last user-plane changes: {exc}") from None
            if retried:
                self.staged.log.info(f"{retried} UE flow(s) created once CRIU was done")
            self.times["tail_wait_s"] = round(time.monotonic() - t0, 6)
            extra = {**self.times, "applied": self.staged.plane.applied,
                     "nat_flows": self.staged.plane.nat_flows,
                     "nat_failed": len(self.staged.plane.nat_failed)}
            self.staged.log_failed()
        if self.staged is not None:  # our links active: the source's go off on ``ready``
            extra["attach_s"] = self.staged.attach_links()
        try:
            self.ready_at = time.monotonic()
            self.chan.send("ready", restore_s=round(self.ready_at - self.t0, 6), **extra)
            if self.staged is not None:
                self.staged.last_steps(self.chan)
            else:
                self.chan.recv("commit")
            self.committed_at = time.monotonic()
            if self.staged is not None:  # the plane is the task's now: never taken out
                self.staged.committed = True
                self.staged.plane.release()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(os.path.dirname(ctx.images_dir), STAGED))
                self.staged.announce()
        except wire.ProtocolError as exc:
            raise PluginError(f"no commit from the source ({exc}): restore abandoned") from None


@dataclass
class _Plan:
    """The restore of one round's images, encoded before that round's dump (Session._plan)."""

    round: int
    handoff: Handoff
    session: PluginSession
    opts: Options
    request: Request
    keys: dict[int, str]  # with --stage: the GTP sockets' inherit keys it was encoded with


class _Staged:
    """This end of a staged user plane: the plane, its last changes, then the switch."""

    def __init__(self, cfg: ReceiveConfig, image: str, log: Log) -> None:
        from criu_ext.migrate import switch
        from criu_ext.migrate.stage import StagedPlane

        self.cfg, self.log = cfg, log
        assert cfg.stage_netns is not None
        self.links = [_link_spec(x) for x in cfg.switch_links]
        # the images are rewritten beside their transfer (a Rewriter), here only when it
        # could not be (a warm run now)
        inherit_warm(os.path.dirname(image))
        self.plane = StagedPlane(cfg.stage_netns, image)
        names = [n for n, _ in self.links]
        try:  # our links on the fabric now, passing nothing; the switch's half here
            # encoded now: one netlink write in the freeze makes them pass
            switch.standby(dict(self.links))
            self.attach = switch.PortsOn(names)
        except switch.SwitchError:
            _off_fabric(names, log)
            self.plane.remove()
            raise
        self.rewriter = Rewriter(os.path.dirname(image))
        self.committed = False
        self.tail: threading.Thread | None = None
        self.tail_error: BaseException | None = None
        self.chan: wire.Channel | None = None

    def start_tail(self, chan: wire.Channel) -> None:
        """The source's last changes, UE flows and ``pdp-end``, read and applied in a
        thread of their own while CRIU restores the task (the channel is this thread's
        alone until :meth:`join_tail`)."""
        def run() -> None:
            try:
                while True:
                    msg = chan.recv("pdp", "nat", "pdp-end")
                    if msg["op"] == "pdp":
                        self.plane.apply(msg)
                    elif msg["op"] == "nat":
                        self.plane.install_nat(msg)
                    else:
                        self.plane.finish(msg)
                        return
            except BaseException as exc:  # noqa: BLE001 - raised by join_tail
                self.tail_error = exc

        self.chan = chan
        self.tail = threading.Thread(target=run, name="criu-ext-stage-tail", daemon=True)
        self.tail.start()

    def join_tail(self) -> None:
        """Wait for :meth:`start_tail`'s thread (its reads time out with the channel's);
        raises what it failed with."""
        if self.tail is None:
            raise wire.ProtocolError("the source's last user-plane changes never came")
        self.tail.join()
        if self.tail_error is not None:
            raise self.tail_error

    def log_failed(self) -> None:
        """The UE flows not created here, and why (the first few): the masquerade
        translates them afresh, maybe to another port."""
        failed = self.plane.nat_failed
        if failed:
            self.log.error(f"{len(failed)} UE flow(s) not created with their binding: "
                           + "; ".join(f"{f.describe()}: {why}" for f, why in failed[:5]))

    def attach_links(self) -> float:
        """Our links made active on their bridge (one netlink write, encoded at the
        stage), once the task is restored and just before ``ready``: the source's go
        off when it reads it. Until then both are on the fabric, ours with nothing
        announced: the peers' frames still go to the source. Returns its seconds."""
        from criu_ext.migrate import switch

        t0 = time.monotonic()
        try:
            self.attach.run()
        except switch.SwitchError as exc:
            raise PluginError(f"switch: {exc}") from None
        return round(time.monotonic() - t0, 6)

    def last_steps(self, chan: wire.Channel) -> None:
        """After ``ready``: the flows confirmed on the source since, then its
        ``commit``, its links off by then."""
        late = 0
        while (msg := chan.recv("nat", "commit"))["op"] == "nat":
            late += self.plane.install_nat(msg)
        self.log_failed()
        if late:
            self.log.info(f"{late} UE flow(s) confirmed on the source during the switch")

    def announce(self) -> None:
        """Committed: every address announced, so the bridges on the way learn the
        MACs' new port at once."""
        from criu_ext.migrate import switch

        try:
            sent = switch.announce(self.plane.netns)
        except OSError as exc:
            self.log.error(f"switched, but nothing announced: {exc}")
            return
        self.log.info(f"switched: {', '.join(n for n, _ in self.links) or 'no link'} on the "
                      f"fabric, {sent} address(es) announced")

    def undo(self) -> None:
        """The migration ended: the rewriter stopped; if it failed, our links off the
        fabric again, the plane removed."""
        self._stop_tail()
        self.rewriter.close()
        self.attach.close()
        if self.committed:  # the task runs here now, on these links
            return
        # in standby since the stage, or active from a switch half made
        _off_fabric([n for n, _ in self.links], self.log)
        try:
            self.plane.remove()
        except Exception as exc:  # noqa: BLE001 - gtp_util's
            self.log.error(f"could not remove the staged user plane: {exc}")

    def _stop_tail(self) -> None:
        """The tail thread ended: a source that is gone is not waited for."""
        if self.tail is None or not self.tail.is_alive():
            return
        self.tail.join(5.0)
        if self.tail.is_alive() and self.chan is not None:
            self.chan.shutdown()
            self.tail.join(5.0)


def _link_spec(text: str) -> tuple[str, str]:
    name, sep, bridge = text.partition("@")
    if not sep or not name or not bridge:
        raise ValueError(f"--switch-link {text!r}: OUTER@BRIDGE expected")
    return name, bridge


class Session:
    """One migration on the receiving side."""

    def __init__(self, cfg: ReceiveConfig, chan: wire.Channel, addr: str, log: Log) -> None:
        self.cfg, self.chan, self.addr, self.log = cfg, chan, addr, log
        self.dir = os.path.join(cfg.work_dir, f"session-{uuid.uuid4().hex[:12]}")
        self.round = 0
        self.ps: PageServer | None = None
        self.budget = cfg.budget
        self.phase = "hello"
        self.result: dict = {}
        self.staged: _Staged | None = None
        # the restore's criu swrk, started with the first page server: its start (over
        # 0.1 s under emulation) is then out of the freeze; with --stage it holds the
        # staged netns (``nsfd``) and sockets CRIU is to hand the task (inherit_fd)
        self.swrk: Swrk | None = None
        self.nsfd: int | None = None
        self.plugins: list = []
        # the restore of the next round's images, encoded while the source runs: at
        # ``restore`` only what needs the final images is left (_Plan)
        self.plan: _Plan | None = None
        self.next_dir: str | None = None  # that round's directory, made for the plan
        # --stage: the final images given to the Rewriter as soon as files.img was
        # written, and whether a descriptors' image came after that (then the restore
        # is refused: the source sends in name order)
        self.rewriting = False
        self.rewrite_late = False

    def run(self) -> dict:
        hello = self.chan.recv("hello")
        if hello.get("version") != wire.VERSION:
            raise wire.PeerFailed("hello", f"protocol version {hello.get('version')!r}, "
                                  f"this receiver speaks {wire.VERSION}")
        # a source that does not say used CRIU's default
        self.network_lock = hello.get("network_lock", "iptables")
        if self.network_lock not in wire.NETWORK_LOCKS:
            raise wire.PeerFailed("hello", f"network lock {self.network_lock!r}: "
                                  f"one of {', '.join(wire.NETWORK_LOCKS)}")
        self.hello = hello
        if hello.get("dry_run"):
            from criu_ext.migrate.checks import check_end

            needs = [str(n)[:32] for n in hello.get("needs", []) if isinstance(n, str)][:8]
            report = check_end(needs, self.cfg.plugin_spec)
            if not os.access(self.cfg.work_dir, os.W_OK):
                report["ok"] = False
                report["problems"].append(f"work directory {self.cfg.work_dir} is not writable")
            self.chan.send("checked", **report)
            return {"dry_run": True, **report}
        if hello.get("stage") and not (self.cfg.stage_netns and self.cfg.switch_links):
            raise wire.PeerFailed("hello", "the source stages its user plane, and this "
                                  "receiver has no --stage-netns to build it in or no "
                                  "--switch-link to put on the fabric")
        plugins = select(self.cfg.plugin_spec, self.log)  # a bad selection fails now
        if hello.get("stage"):
            from criu_ext.migrate.stage import REPLACES

            plugins = [p for p in plugins if p.name not in REPLACES]
        self.plugins = plugins
        # imports and first sockets beside the pre-copy rounds (CRIU's page servers are
        # other processes), done before the restore, which runs while the source is frozen
        warmup = Warmup(plugins, "restore")
        os.makedirs(self.dir, 0o700)
        write_atomic(os.path.join(self.dir, "owner"), f"{os.getpid()}\n")
        self.chan.send("welcome", plugins=[p.name for p in plugins])
        while True:
            msg = self.chan.recv("page-server", "round-done", "file", "restore", "abort",
                                 "pdp", "nat")
            op = msg["op"]
            if op == "page-server":
                self.phase = "page server"
                n = msg.get("round")
                if n != self.round + 1:
                    raise wire.ProtocolError(f"round {n!r} out of order (expected {self.round + 1})")
                self.round = n
                images, self.next_dir = self.next_dir or round_dir(self.dir, n), None
                self.ps = PageServer(images, self.addr, self.cfg.tls, self.cfg.criu)
                if self.swrk is None:
                    self._start_swrk()
                gcpause.hold()  # this round may be the final dump's: released at its end
                self.log.info(f"round {n}: page server on port {self.ps.port}")
                self.chan.send("listening", port=self.ps.port)
                if self.plan is None:  # the first round: its dump may be the final one
                    self.plan = self._plan(n, images)
            elif op == "round-done":
                self.phase = f"pre-copy round {self.round}"
                gcpause.release()
                self._end_page_server()
                self.chan.send("round-ok", round=self.round)
                # the next round may be the final dump: its restore encoded now, while
                # the source runs
                self._drop_plan()
                self.next_dir = round_dir(self.dir, self.round + 1)
                self.plan = self._plan(self.round + 1, self.next_dir)
            elif op == "file" and self.round == 0 and self.hello.get("stage") \
                    and self.staged is None:
                self._stage(msg)
            elif op == "pdp":
                if self.staged is None:
                    raise wire.ProtocolError("a PDP change before the staged user plane")
                self.staged.plane.apply(msg)
            elif op == "nat":
                if self.staged is None:
                    raise wire.ProtocolError("UE flows before the staged user plane")
                self.staged.plane.install_nat(msg)
            elif op == "file":
                if self.phase != "transfer":
                    self.log.info(f"round {self.round}: receiving images")
                self.phase = "transfer"
                if self.round == 0:
                    raise wire.ProtocolError("a file before any round")
                images = os.path.join(self.dir, str(self.round))
                self.budget -= self.chan.recv_file(msg, images, self.budget)
                if self.staged is not None:
                    self._rewrite_aside(msg["name"], images)
            elif op == "abort":
                raise wire.PeerFailed("source", str(msg.get("reason", "aborted"))[:500])
            else:
                t_in = time.monotonic()
                self.phase = "transfer"
                warmup.join()
                return self._restore(t_in)

    def _rewrite_aside(self, name: str, images: str) -> None:
        """files.img written (after every fdinfo-*.img, in the source's name order): the
        rewrite goes to the Rewriter while the other images arrive."""
        assert self.staged is not None
        if name == "files.img" and not self.rewriting:
            try:
                self.staged.rewriter.submit(images, self.staged.plane.sockets())
                self.rewriting = True
            except RewriterError as exc:
                self.log.warning(f"{exc}: the images are rewritten at the restore")
        elif name.startswith("fdinfo-") and self.rewriting:
            self.rewrite_late = True

    def _stage(self, msg: dict) -> None:
        """The source's user plane (stage.img), built in the staged netns."""
        from criu_ext.migrate.stage import IMAGE

        self.phase = "stage"
        if msg.get("name") != IMAGE:
            raise wire.ProtocolError(f"a file before any round: {str(msg.get('name'))[:64]!r}")
        self.budget -= self.chan.recv_file(msg, self.dir, self.budget)
        # journaled first: a receiver killed from here on leaves devices in the staged
        # netns, which the next receiver takes out (remove_stale)
        write_atomic(os.path.join(self.dir, STAGED),
                     "".join(f"{x}\n" for x in [self.cfg.stage_netns, *self.cfg.switch_links]))
        t0 = time.monotonic()
        try:
            self.staged = _Staged(self.cfg, os.path.join(self.dir, IMAGE), self.log)
        except (ValueError, OSError) as exc:
            raise wire.ProtocolError(f"staging the user plane: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - gtp_util's GtpError
            raise wire.ProtocolError(f"staging the user plane: {exc}") from None
        self.log.info(f"user plane staged in {self.cfg.stage_netns}: "
                      f"{self.staged.plane.snapshot.n_contexts} PDP contexts "
                      f"({time.monotonic() - t0:.2f} s)")

    def _start_swrk(self) -> None:
        """The restore's ``criu swrk``, started now and waiting for its request; with
        --stage given the staged netns and sockets at their numbers here."""
        fds: list[int] = []
        if self.staged is not None:
            self.nsfd = os.open(self.staged.plane.netns, os.O_RDONLY | os.O_CLOEXEC)
            fds = [self.nsfd, *(s.fileno() for s in self.staged.plane.held.values())]
        try:
            self.swrk = Swrk(self.cfg.criu, pass_fds=fds)
        except CriuError as exc:
            raise wire.ProtocolError(str(exc)) from None

    def _end_page_server(self) -> None:
        if self.ps is None:
            raise wire.ProtocolError("no page server is running")
        ps, self.ps = self.ps, None
        ps.wait(self.cfg.timeout)

    def _plan(self, n: int, images: str) -> _Plan:
        """The restore of round ``n``'s images (in ``images``), encoded now: the plugin
        session, CRIU's options and request (with --stage, the GTP sockets' keys as the
        rewrite will give them)."""
        handoff = Handoff(self.chan, 0.0, self.staged)
        # the announcement draws the function's traffic here: only once the source has
        # committed, or a restore that fails after it would leave the switches pointing
        # at this host while the function runs on at the source
        late = [p for p in self.plugins if p.name == "announce"]
        session = PluginSession(ph.RESTORE, images,
                                [*(p for p in self.plugins if p not in late), handoff, *late],
                                "rpc", self.log)
        session.warmed = True  # by the Warmup joined before the restore
        opts = Options(images_dir=images, tcp_established=bool(self.hello.get("tcp_established")),
                       shell_job=bool(self.hello.get("shell_job")), external=list(self.cfg.external),
                       log_file="restore.log", log_level=self.cfg.log_level,
                       extra={"network_lock": self.network_lock})
        keys: dict[int, str] = {}
        if self.staged is not None:  # the task's netns: the staged one (CRIU: external)
            assert self.nsfd is not None  # by _start_swrk, at the first page server
            opts.external = []
            keys = self.staged.plane.inherit_keys()
            opts.inherit_fd = {self.nsfd: wire.STAGE_KEY, **keys}
        return _Plan(n, handoff, session, opts, Request(ph.RESTORE, opts), keys)

    def _inherit(self, images: str):
        """The staged sockets' keys (by source inode) once the images are rewritten: by
        the Rewriter beside the transfer when it could be given the final ones (its
        answer is all that is left), else here (files.img now; the descriptors'
        Rewrite returned for the caller)."""
        assert self.staged is not None
        if self.rewriting:
            self.rewriting = False
            try:
                keys = self.staged.rewriter.result(self.cfg.timeout)
            except RewriterError as exc:
                raise InheritError(str(exc)) from None
            if self.rewrite_late:  # not from our source, which sends in name order
                raise InheritError("a descriptors' image (fdinfo-*.img) came after files.img")
            return keys, None
        rewrite = self.staged.plane.inherit(images)
        return rewrite.keys, rewrite

    def _drop_plan(self) -> None:
        if self.plan is not None:
            self.plan.request.close()
            self.plan = None

    def _restore(self, t_in: float) -> dict:
        """CRIU's restore, from the source's ``restore`` (received at ``t_in``)."""
        self.phase = "restore"
        images = os.path.join(self.dir, str(self.round))
        plan, self.plan = self.plan, None
        if plan is None or plan.round != self.round:  # not encoded ahead: now
            if plan is not None:
                plan.request.close()
            plan = self._plan(self.round, images)
        handoff, session, opts, request = plan.handoff, plan.session, plan.opts, plan.request
        t0 = handoff.t0 = time.monotonic()
        rewrite = None
        socket_keys: dict[int, tuple[str, bool]] = {}
        if self.staged is not None:
            try:  # the task's GTP sockets: the plane's, installed by CRIU itself
                socket_keys, rewrite = self._inherit(images)
            except (InheritError, OSError) as exc:
                request.close()
                raise wire.ProtocolError(f"the task's GTP sockets: {exc}") from None
            handoff.times["inherit_s"] = round(time.monotonic() - t0, 6)
            keys = self.staged.plane.inherit_fds(socket_keys)
            if keys != plan.keys:  # a stand-in's inode was taken in the images
                request.close()
                opts.inherit_fd.update(keys)
                request = Request(ph.RESTORE, opts)
        swrk, self.swrk = self.swrk, None
        # this end's work from the source's ``restore`` to CRIU's request (with --stage,
        # the rewriter's answer): criu-ext's, in the freeze
        handoff.times["prepare_s"] = round(time.monotonic() - t_in, 6)

        def sent() -> None:  # while CRIU starts, all of it before its pre-restore is
            # answered (it reads the descriptors' and the memory's images after that):
            # the final page server's end, our sockets' options, the descriptors'
            # rewrite, the source told, the tail's reader, the manifest read
            # (pre-restore raises what failed), the plugins asked whether they act
            try:
                t1 = time.monotonic()
                self._end_page_server()
                handoff.times["page_server_end_s"] = round(time.monotonic() - t1, 6)
                if self.staged is not None:
                    self.staged.plane.reuse_as_dumped(socket_keys)
                if rewrite is not None:
                    t1 = time.monotonic()
                    rewrite.descriptors()
                    handoff.times["descriptors_s"] = round(time.monotonic() - t1, 6)
                self.chan.send("restoring")
                if self.staged is not None:
                    self.staged.start_tail(self.chan)
            except (CriuError, InheritError, OSError, wire.ProtocolError, RuntimeError) as exc:
                handoff.late = exc
            self.log.info(f"restoring from round {self.round}")
            with contextlib.suppress(PhaseFailed, PluginError):
                session.check_restore()
            session.settle()  # the plugins with nothing to restore are not called again

        try:
            res = run(ph.RESTORE, opts, session, self.cfg.criu, swrk=swrk, request=request,
                      sent=sent)
        finally:
            if self.nsfd is not None:
                os.close(self.nsfd)
                self.nsfd = None
        pid = res.resp.restore.pid
        self.phase = "resume"
        late = [t for t in session.timings if not t["ok"]]
        if late:  # after the commit: CRIU only logged it; the plugin killed what it restored
            raise wire.PeerFailed("resume", f"plugin {late[0]['plugin']} failed at "
                                  f"{late[0]['phase']} (restored PID {pid})")
        plugin_s = sum(t["seconds"] for t in session.timings if t["plugin"] != handoff.name)
        post_s = sum(t["seconds"] for t in session.timings
                     if t["plugin"] != handoff.name and t["phase"] == "post-restore")
        t1 = time.monotonic()
        self.result = {"pid": pid, "restore_s": round(t1 - t0, 6),
                       # the commit to CRIU's return: the tasks resumed here
                       "resume_s": round(t1 - (handoff.committed_at or t1), 6),
                       "plugin_s": round(plugin_s, 6), "plugin_post_restore_s": round(post_s, 6),
                       **handoff.times,
                       "begin_s": round(res.begin_seconds, 6),
                       "criu_restore_s": stats(images).get("restore", {}).get("restore_time", 0) / 1e6,
                       "notify": res.notify}
        self.log.info(f"restored: PID {pid} runs here")
        self.chan.send("done", **self.result)
        return self.result

    def cleanup(self) -> None:
        self._drop_plan()
        if self.ps is not None:
            self.ps.kill()
            self.ps = None
        if self.swrk is not None:
            self.swrk.close()
            self.swrk = None
        if self.nsfd is not None:
            os.close(self.nsfd)
            self.nsfd = None
        if self.staged is not None:
            self.staged.undo()
            self.staged = None
        shutil.rmtree(self.dir, ignore_errors=True)


def remove_stale(work_dir: str, log: Log) -> None:
    """Session directories of receivers that are gone (killed): remove them."""
    try:
        entries = os.listdir(work_dir)
    except FileNotFoundError:
        return
    for name in entries:
        path = os.path.join(work_dir, name)
        if not name.startswith("session-") or os.path.islink(path):
            continue
        try:
            owner = int(read_text(os.path.join(path, "owner"), 32).strip())
            os.kill(owner, 0)
            continue  # its receiver still runs
        except (OSError, ValueError):
            pass
        _remove_staged(path, log)
        shutil.rmtree(path, ignore_errors=True)
        log.info(f"removed {path}, left by a receiver that is gone")


def _off_fabric(names: list[str], log: Log) -> list[str]:
    """Our outer links that still exist off their bridge and down (a failure logged);
    returns those taken off."""
    from criu_ext.migrate import switch

    names = switch.present(names)
    if not names:
        return []
    try:
        switch.detach(names)
    except switch.SwitchError as exc:
        log.error(f"could not take {', '.join(names)} off the fabric: {exc}")
        return []
    return names


def _remove_staged(path: str, log: Log) -> None:
    """A staged user plane a killed receiver left (its session journaled ``staged``, not
    committed): its links taken off the fabric (they wait there in standby), its devices
    taken out of the namespace the journal names, as the image it was built from lists
    them. The journal and the image are read as any other input (validated)."""
    from criu_ext.migrate.stage import IMAGE
    from gtp_util.natrule import check_ifname

    try:
        lines = read_text(os.path.join(path, STAGED), 4096).splitlines()
        netns, links = lines[0].strip(), [_link_spec(x.strip()) for x in lines[1:]]
        names = [check_ifname(n, "link") for n, _ in links]
    except FileNotFoundError:
        return
    except (OSError, ValueError, IndexError) as exc:
        log.error(f"{path}: unreadable {STAGED} journal: {exc}")
        return
    taken = _off_fabric(names, log)
    if taken:
        log.info(f"took {', '.join(taken)} off the fabric (a killed receiver's standby)")
    image = os.path.join(path, IMAGE)
    if not os.path.exists(netns) or not os.path.exists(image):
        return  # the host's set-up removed the netns, devices and all; or killed before
        # the image was whole: nothing was built from it
    try:
        import gtp_util

        gtp_util.remove(gtp_util.load(image), netns)
        log.info(f"removed the user plane a killed receiver staged in {netns}")
    except Exception as exc:  # noqa: BLE001 - gtp_util's, OSError
        log.error(f"could not remove the user plane staged in {netns}: {exc}")


def serve(cfg: ReceiveConfig, log: Log, once: bool = True, ready=None) -> dict:
    """Accept connections until one authenticated migration has ended (``once``).

    Returns that session's result; raises wire.ProtocolError (or PeerFailed,
    CriuError...) when it failed, after cleaning up. ``ready(port)`` is called
    once listening.
    """
    cfg.tls.check()
    try:  # a bad --plugins refused before listening, and the plugins' modules read before
        # a source waits for our welcome (0.4 s under emulation, once per receiver)
        select(cfg.plugin_spec, log)
    except PluginError as exc:
        raise ReceiveFailed("start", str(exc)) from None
    os.makedirs(cfg.work_dir, 0o700, exist_ok=True)
    remove_stale(cfg.work_dir, log)
    ctx = cfg.tls.server_context()
    family = socket.AF_INET6 if ":" in cfg.listen[0] else socket.AF_INET
    lsk = socket.socket(family, socket.SOCK_STREAM)
    lsk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsk.bind(cfg.listen)
    lsk.listen(4)
    if ready:
        ready(lsk.getsockname()[1])
    try:
        while True:
            conn, peer = lsk.accept()
            conn.settimeout(30)
            try:
                tconn = ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                conn.close()
                log.error(f"refused {peer[0]}:{peer[1]}: {_tls_reason(exc)}")
                continue
            tconn.settimeout(cfg.timeout)
            chan = wire.Channel(tconn)
            session = Session(cfg, chan, tconn.getsockname()[0], log)
            try:
                try:
                    result = session.run()
                finally:  # whatever round it failed in
                    gcpause.release()
            except Exception as exc:
                session.cleanup()
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if not isinstance(exc, wire.PeerFailed) or exc.phase != "source":
                    try:
                        chan.send("error", phase=session.phase, reason=reason)
                    except wire.ProtocolError:
                        pass
                chan.close()
                if once:
                    raise ReceiveFailed(session.phase, reason) from exc
                log.error(f"migration from {peer[0]} failed at {session.phase}: {reason}")
                continue
            if not result.get("dry_run"):
                shutil.rmtree(session.dir, ignore_errors=True)
            chan.close()
            if once:
                return result
    finally:
        lsk.close()


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
    return f"connection failed before TLS was up: {exc}"

