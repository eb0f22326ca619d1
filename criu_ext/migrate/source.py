"""``criu-ext migrate``: move a task tree to a receiver, pre-copying its memory.

Order of the conversation (destination.py has the other side):

1. TLS handshake (mutual: our certificate and the receiver's, one CA), ``hello``.
2. Pre-copy, while the tasks run: for each round N, ``page-server N`` (the
   receiver starts ``criu page-server`` in its round directory and answers its
   port), ``criu pre-dump`` here with the page server and ``--track-mem``
   (round N > 1: parent ../N-1, only pages dirtied since go), ``round-done``.
   policy.next_round decides when to stop.
3. Final dump through RPC with the plugins (criu_ext.rpc, as ``criu-ext dump``),
   memory to one more page server. At ``post-dump`` (tasks frozen, every image
   written) the ``handoff`` step sends the other images as files, asks for the
   restore and waits for ``ready`` (the destination restored the tasks, not yet
   running), then sends ``commit`` and lets CRIU kill the source tasks.
   Any failure up to ``ready`` fails post-dump: CRIU unlocks the network, the
   plugins roll back, the tasks run on here with all their state.
4. ``done`` from the destination: the task runs there.

With ``stage`` (make-before-break, stage.py and switch.py): after ``hello`` the
user plane goes over as ``stage.img``, then every PDP change as it happens (read
while CRIU pre-dumps), and after pre-copy the UE flows' NAT state (``nat``); the
final dump treats the task's netns as external (CRIU dumps none of its
configuration) and lets GTP-U through CRIU's network lock, so the source forwards
while it is frozen. After ``restoring``, while the destination restores: the last
changes, the flows conntrack confirmed since and ``pdp-end`` (it applies them beside
CRIU and says so in ``ready``, its links made active on its bridge just before).
Then the switch: the flows conntrack confirmed since (``nat``), our outer links'
bridge ports disabled, ``commit`` (the destination announces its addresses); our
links leave the bridge once CRIU is done. A failure after our ports went off puts
them back.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass, field

from criu_ext import phases as ph
from criu_ext.criu_images import stats
from criu_ext.migrate import gcpause, switch, wire
from criu_ext.migrate.pagesrv import page_server_opts, pre_dump, round_dir
from criu_ext.migrate.policy import Policy, next_round
from criu_ext.migrate.report import Progress, Report, Round, notify_timeline
from criu_ext.migrate.switch import SwitchError
from criu_ext.migrate.tls import TlsError, TlsFiles
from criu_ext.plugin import Log, PluginError, Warmup, select
from criu_ext.rpc import CriuError, Options, Swrk, run
from criu_ext.session import Session


class MigrationFailed(wire.PhaseError):
    """The migration stopped at ``phase``; the source tasks run on (unless ``phase`` is
    after the commit, which the message then says)."""


@dataclass
class MigrateConfig:
    pid: int
    dest: tuple[str, int]
    tls: TlsFiles
    pre_copy: bool = True
    policy: Policy = field(default_factory=Policy)
    tcp_established: bool = False
    shell_job: bool = False
    network_lock: str = "nftables"  # one of wire.NETWORK_LOCKS (CRIU's default: iptables)
    external: list[str] = field(default_factory=list)
    plugin_spec: str | None = None
    criu: str = "criu"
    log_level: int = 2
    timeout: float = 300.0
    work_dir: str | None = None  # parent of the source's round directories (default: TMPDIR)
    keep: bool = False  # keep the source's directories (logs) after a success
    # make-before-break (#14): the user plane staged on the destination during pre-copy,
    # the task's netns left to criu-ext (CRIU: external), and at the end the function's
    # outer links (``switch_links``, in this host's netns) moved to the destination
    stage: bool = False
    switch_links: list[str] = field(default_factory=list)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(cfg: MigrateConfig) -> wire.Channel:
    """TCP then mutual TLS to the receiver; refusals in one line."""
    host, port = cfg.dest
    try:
        ctx = cfg.tls.client_context()
    except TlsError as exc:
        raise MigrationFailed("connect", str(exc)) from None
    try:
        raw = socket.create_connection((host, port), timeout=30)
    except OSError as exc:
        raise MigrationFailed("connect", f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock = ctx.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raw.close()
        raise MigrationFailed("connect", f"{host}:{port} refused: its certificate is not "
                              f"acceptable ({exc.verify_message})") from None
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise MigrationFailed("connect", f"{host}:{port} refused the TLS handshake "
                              f"({getattr(exc, 'reason', None) or exc}): is our certificate "
                              "signed by its CA?") from None
    sock.settimeout(cfg.timeout)
    return wire.Channel(sock)


class Handoff:
    """The source's last step (a plugin of our own), at ``post-dump``: images over,
    restore on the destination up to ``ready``, then ``commit``."""

    name = "migrate-handoff"
    order = 100_000  # after every other plugin's post-dump
    images = ()
    default = False

    def __init__(self, chan: wire.Channel, rep: Report, progress: Progress,
                 staging: _Staging | None = None) -> None:
        self.chan, self.rep, self.progress = chan, rep, progress
        self.session: Session | None = None
        self.phase = "final dump"
        self.committed = False
        self.post_dump_at = self.committed_at = 0.0
        self.staging = staging  # with --stage
        self.detached: dict[str, str | None] = {}  # our links taken off: name -> bridge
        self.restore_asked = False  # the destination may have brought our links up there

    def pre_dump(self, ctx) -> None:
        if self.staging is not None:  # before the freeze: criu-ext recover removes the
            # GTP-U pass and makes these links fresh ports on their bridges again (one
            # never taken off flaps once)
            ctx.state["staged"] = True
            ctx.state["links"] = self.staging.masters
            ctx.persist()

    def network_lock(self, ctx) -> None:
        self.rep.moments["network_lock"] = time.monotonic()

    def post_dump(self, ctx) -> None:
        t0 = self.post_dump_at = time.monotonic()
        try:
            self.phase = "transfer"
            self.progress.phase("transfer: images")
            if self.session is not None:
                self.session.write_manifest()  # the restore reads which plugins wrote images
            for name in sorted(os.listdir(ctx.images_dir)):
                path = os.path.join(ctx.images_dir, name)
                if name == "parent" or name.endswith(".log") or not os.path.isfile(path) \
                        or os.path.islink(path):
                    continue
                self.chan.send_file(path, name)
            self.restore_asked = True
            self.chan.send("restore")
            self.chan.recv("restoring")  # every image arrived, the last page server ended well
            t1 = time.monotonic()
            self.rep.times["transfer"] = t1 - t0
            if self.staging is not None:  # while the destination restores the task
                self.phase = "stage"
                self.progress.phase("user plane: last changes (the destination restores)")
                self.rep.stage["changes"] = _user_plane(self.staging.sender.finish)
                self.rep.times["stage_tail"] = time.monotonic() - t1
            self.phase = "restore"
            self.progress.phase("restore on the destination")
            ready = self.chan.recv("ready")
            self.rep.times["restore_until_ready"] = time.monotonic() - t1
            self.rep.times["dest_restore_until_ready"] = float(ready.get("restore_s", 0.0))
            if self.staging is not None:
                for key in ("prepare", "page_server_end", "inherit", "descriptors", "tail_wait",
                            "attach"):
                    self.rep.times[f"dest_{key}"] = float(ready.get(f"{key}_s", 0.0))
                self.rep.stage["nat_failed"] = int(ready.get("nat_failed", 0))
                self._switch(ctx)
            self.phase = "commit"
            t4 = time.monotonic()
            # journaled first: from here the tree belongs to the destination, and
            # criu-ext recover must not make it run on here too
            ctx.state["committing"] = True
            ctx.mark("committing")
            self.chan.send("commit")
            self.committed_at = time.monotonic()
            self.committed = True
            self.rep.times["commit"] = self.committed_at - t4
            self.rep.times["handoff"] = self.committed_at - t0
        except wire.PeerFailed as exc:
            self._switch_back(ctx)
            raise PluginError(f"the destination failed at {exc.phase}: {exc.reason}") from None
        except (wire.ProtocolError, SwitchError) as exc:
            self._switch_back(ctx)
            raise PluginError(f"{exc}") from None

    def _switch(self, ctx) -> None:
        """The destination's links are active since its ``ready``: the flows confirmed
        since the last step read the table go over, then ours go off in one netlink
        write (prepared before the freeze). The ``commit`` that follows is the rest."""
        from criu_ext.migrate.stage import PER_MESSAGE

        assert self.staging is not None and self.staging.detach is not None
        t0 = self.rep.moments["switch"] = time.monotonic()
        self.phase = "switch"
        self.progress.phase("switch")
        late = _user_plane(self.staging.sender.late)
        t1 = time.monotonic()
        self.detached = dict(self.staging.masters)  # from here a failure puts them back
        self.staging.detach.run()
        t2 = time.monotonic()
        for i in range(0, len(late), PER_MESSAGE):
            self.chan.send("nat", flows=late[i:i + PER_MESSAGE])
        self.rep.times.update({"switch": time.monotonic() - t0, "switch_late_flows": t1 - t0,
                               "switch_detach": t2 - t1})
        self.rep.stage["nat_flows"] = self.staging.sender.nat_flows
        self.rep.stage["late_flows"] = len(late)

    def _switch_back(self, ctx) -> None:
        """After a failure: our links back where they were (the source runs on), and the
        addresses announced from here again once the destination could have drawn them:
        it announces them at the switch, and its kernel speaks from our MAC address as
        soon as CRIU's restore brings the links up (switch.reclaim). A switch would send
        the peers' frames there until it forgot."""
        if not (self.detached or self.restore_asked):
            return
        if self.detached:
            try:
                switch.restore(self.detached)
            except SwitchError as exc:
                ctx.log.error(f"could not put links {', '.join(self.detached)} back: {exc}")
            self.detached = {}
        try:
            sent = switch.reclaim(ctx.init_pid)
        except OSError as exc:
            ctx.log.error(f"the source runs on, but its addresses were not announced: {exc}")
            return
        if sent is not None:
            ctx.log.info(f"the source runs on: {sent} address(es) announced from here again")


def _into_page_server(cfg: MigrateConfig, chan: wire.Channel, work: str, n: int,
                      **fields) -> Options:
    """Round ``n``'s page server started there; the options of CRIU's dump here into it
    (round ``n``'s directory, its memory on top of round ``n - 1``'s), with ``fields``."""
    chan.send("page-server", round=n)
    port = int(chan.recv("listening")["port"])
    o = Options(images_dir=round_dir(work, n), pid=cfg.pid, log_level=cfg.log_level,
                shell_job=cfg.shell_job, **fields)
    page_server_opts(o, cfg.dest[0], port, cfg.tls, n - 1 if n > 1 else None)
    return o


def _pre_dump_round(cfg: MigrateConfig, chan: wire.Channel, work: str, n: int,
                    progress: Progress, meanwhile=None) -> Round:
    """Round ``n``: a page server there, ``criu pre-dump`` here into it (its ``criu
    swrk`` started while the page server starts: each takes 0.1 s under emulation)."""
    progress.phase(f"pre-copy round {n}: page server")
    swrk = Swrk(cfg.criu, quiet=True)
    try:
        o = _into_page_server(cfg, chan, work, n, log_file="pre-dump.log")
    except BaseException:
        swrk.close()
        raise
    progress.phase(f"pre-copy round {n}: pre-dump")
    seconds = pre_dump(o, cfg.criu, meanwhile, swrk)
    chan.send("round-done", round=n)
    chan.recv("round-ok")
    st = stats(o.images_dir).get("dump", {})
    return Round(n, "pre-dump", int(st.get("pages_written", 0)), seconds,
                 st.get("frozen_time", 0) / 1e6)


def _user_plane(step):
    """A step of the staged user plane (``stager.pump``, ``finish``, ``late``), its own
    failures (gtp_util.follow.Lost: notifications lost, the list must be copied again;
    netlink errors) raised as the protocol's."""
    try:
        return step()
    except wire.ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - gtp_util's, OSError
        raise wire.ProtocolError(f"user plane: {_one_line(exc)}") from None


def _pre_copy(cfg: MigrateConfig, chan: wire.Channel, work: str, rep: Report,
              progress: Progress, stager=None) -> int:
    """Pre-dump rounds while the tasks run (after each, the user plane's changes when it
    is staged); returns the number of rounds taken."""
    pages: list[int] = []
    n = 0
    meanwhile = None
    if stager is not None:  # the changes go over as they happen, CRIU working meanwhile
        def pump() -> None:
            rep.stage["changes_pre_copy"] = rep.stage.get("changes_pre_copy", 0) \
                + _user_plane(stager.pump)

        meanwhile = (stager.follower.fileno(), pump)
    while True:
        decision = next_round(pages, cfg.policy)
        if not decision.again:
            rep.stop_reason = decision.reason
            return n
        n += 1
        phase = f"pre-copy round {n}"
        try:
            r = _pre_dump_round(cfg, chan, work, n, progress, meanwhile)
            if meanwhile is not None:
                meanwhile[1]()
        except wire.PeerFailed as exc:
            raise MigrationFailed(phase, f"the destination failed at {exc.phase}: "
                                  f"{exc.reason}") from None
        except wire.ProtocolError as exc:
            raise MigrationFailed(phase, str(exc)) from None
        except CriuError as exc:
            raise MigrationFailed(phase, _one_line(exc)) from None
        rep.rounds.append(r)
        progress.round(r)
        pages.append(r.pages)


class _Staging:
    """The source's side of a staged user plane: the sender, the task's netns (held
    open: the task goes at the end, the netns path with it) and the lock pass."""

    def __init__(self, pid: int, chan: wire.Channel) -> None:
        from criu_ext.migrate.stage import StageSender

        self.nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.netns = f"/proc/{os.getpid()}/fd/{self.nsfd}"
        self.passing = False
        self.masters: dict[str, str | None] = {}
        self.detach: switch.PortsOff | None = None
        try:
            self.sender = StageSender(self.netns, chan)
        except BaseException:
            os.close(self.nsfd)
            raise
        if not self.sender.snapshot.devices:
            self.close()
            raise MigrationFailed("stage", "--stage: the task's netns holds no gtp device")

    def external(self) -> str:
        """CRIU's ``--external`` for the task's netns: its inode, our key."""
        return f"net[{os.fstat(self.nsfd).st_ino}]:{wire.STAGE_KEY}"

    def prepare(self, links: list[str]) -> None:
        """Before the freeze: GTP-U let through CRIU's lock, and the switch's first half
        made ready (``links``' bridges read, their detach encoded)."""
        ports = sorted({getattr(d, a).port for d in self.sender.snapshot.devices
                        for a in ("sock0", "sock1") if getattr(d, a).kind == "task"})
        self.masters = switch.masters(links)
        self.detach = switch.PortsOff(links)
        self.passing = True
        switch.pass_user_plane(self.netns, ports)

    def close(self) -> None:
        try:
            if self.passing:
                switch.close_pass(self.netns)
        finally:
            if self.detach is not None:
                self.detach.close()
            self.sender.close()
            os.close(self.nsfd)


def migrate(cfg: MigrateConfig, log: Log, progress: Progress | None = None) -> Report:
    """Move the tree; returns the report (``ok``) or raises MigrationFailed."""
    progress = progress or Progress(enabled=False)
    rep = Report(source_pid=cfg.pid, pre_copy=cfg.pre_copy)
    t_start = time.monotonic()
    try:
        cfg.tls.check()
    except TlsError as exc:
        raise MigrationFailed("connect", str(exc)) from None
    if not os.path.exists(f"/proc/{cfg.pid}"):
        raise MigrationFailed("connect", f"no process with PID {cfg.pid}")
    if cfg.stage and not cfg.switch_links:  # both copies would be on the fabric at once
        raise MigrationFailed("connect", "--stage needs the links to take off the fabric at "
                              "the switch (--switch-link)")
    try:
        plugins = select(cfg.plugin_spec, log)
    except PluginError as exc:
        raise MigrationFailed("connect", str(exc)) from None
    if cfg.stage:  # the stage carries the user plane: nothing of it in the freeze
        from criu_ext.migrate.stage import REPLACES

        plugins = [p for p in plugins if p.name not in REPLACES]
    progress.phase(f"connecting to {cfg.dest[0]}:{cfg.dest[1]}")
    warmup = Warmup(plugins, ph.DUMP)  # the plugins' imports run beside pre-copy's CRIU
    chan = connect(cfg)
    work = tempfile.mkdtemp(prefix="criu-ext-migrate-", dir=cfg.work_dir)
    phase = "hello"
    ok = False
    staging: _Staging | None = None
    try:
        chan.send("hello", version=wire.VERSION, pid=cfg.pid, pre_copy=cfg.pre_copy,
                  tcp_established=cfg.tcp_established, shell_job=cfg.shell_job,
                  network_lock=cfg.network_lock, stage=cfg.stage)
        chan.recv("welcome")
        rep.times["connect"] = time.monotonic() - t_start
        if cfg.stage:
            phase = "stage"
            t0 = time.monotonic()
            progress.phase("user plane: staging on the destination")
            try:
                staging = _Staging(cfg.pid, chan)
                staging.sender.send_base()
            except (MigrationFailed, wire.ProtocolError):
                raise
            except Exception as exc:  # noqa: BLE001 - gtp_util's, OSError
                raise MigrationFailed("stage", _one_line(exc)) from None
            rep.stage["contexts"] = staging.sender.snapshot.n_contexts
            rep.times["stage_base"] = time.monotonic() - t0
        t1 = time.monotonic()
        n = 0
        if cfg.pre_copy:
            phase = "pre-copy"
            n = _pre_copy(cfg, chan, work, rep, progress,
                          staging.sender if staging else None)
        else:
            rep.stop_reason = "no pre-copy"
        rep.times["pre_copy"] = time.monotonic() - t1
        if staging is not None:  # the UE flows' NAT state over while the task runs: in
            # the freeze only those conntrack confirms from now on go
            phase = "stage"
            progress.phase("user plane: UE flows")
            t1 = time.monotonic()
            rep.stage["nat_flows_before_freeze"] = _user_plane(staging.sender.flows)
            rep.times["stage_flows"] = time.monotonic() - t1
        phase = "final dump"
        progress.phase("final dump: page server")
        try:  # started while the page server starts there: each takes 0.1 s under emulation
            swrk = Swrk(cfg.criu)
        except CriuError as exc:
            raise MigrationFailed("final dump", _one_line(exc)) from None
        try:
            o = _into_page_server(cfg, chan, work, n + 1, tcp_established=cfg.tcp_established,
                                  external=list(cfg.external), log_file="dump.log")
            images = o.images_dir
            o.extra["network_lock"] = cfg.network_lock
            try:
                warmup.join()
            except Exception as exc:
                raise MigrationFailed("final dump", f"the plugins cannot start: "
                                      f"{_one_line(exc)}") from None
            if staging is not None:
                o.external.append(staging.external())
                try:
                    staging.prepare(cfg.switch_links)
                except SwitchError as exc:
                    raise MigrationFailed("final dump", f"the switch cannot be prepared: {exc}") \
                        from None
            handoff = Handoff(chan, rep, progress, staging)
            session = Session(ph.DUMP, images, [*plugins, handoff], "rpc", log)
            session.warmed = True  # by the Warmup above
            handoff.session = session
            progress.phase("final dump: tasks frozen")
            t2 = time.monotonic()
        except BaseException:
            swrk.close()
            raise
        gcpause.hold()  # no pass of ours in the freeze: one now, none until CRIU is done
        try:
            res = run(ph.DUMP, o, session, cfg.criu, swrk=swrk)
        except CriuError as exc:
            failure = exc.plugin_failure
            if failure is not None and failure.plugin == handoff.name:
                phase = handoff.phase
                raise MigrationFailed(phase, failure.message) from None
            raise MigrationFailed("final dump", _one_line(exc)) from None
        finally:
            gcpause.release()
        t3 = time.monotonic()
        if staging is not None:  # our ports were disabled at the switch: now off for good
            try:
                switch.detach(cfg.switch_links)
            except SwitchError as exc:
                log.error(f"switched, but links {', '.join(cfg.switch_links)} are still "
                          f"on their bridge (ports disabled): {exc}")
        st = stats(images).get("dump", {})
        rep.rounds.append(Round(n + 1, "dump", int(st.get("pages_written", 0)),
                                res.seconds, st.get("frozen_time", 0) / 1e6))
        phase = "resume"
        done = chan.recv("done")
        t4 = time.monotonic()
        rep.dest_pid = int(done["pid"])
        criu_frozen = st.get("frozen_time", 0) / 1e6
        resume = float(done.get("resume_s", 0.0))
        rep.times.update({
            "final_dump": t3 - t2,
            # CRIU's frozen time here ends after post-dump, so after the handoff
            # (transfer, restore up to ready, commit); the destination's resume
            # follows. Their sum is the gap the task's peers see.
            "frozen": criu_frozen + resume,
            "until_post_dump": handoff.post_dump_at - t2,  # CRIU's dump up to the handoff
            "plugins_begin": res.begin_seconds,  # of it, the plugins' imports and prepare
            "after_commit": t3 - handoff.committed_at,  # CRIU ending the dump here
            "final_dump_to_done": t4 - t2,
            "criu_frozen": criu_frozen,
            "dest_resume": resume,
            "dest_restore": float(done.get("restore_s", 0.0)),
            "dest_criu_restore": float(done.get("criu_restore_s", 0.0)),
            "dest_begin": float(done.get("begin_s", 0.0)),  # the plugins' begin, CRIU's request
            "plugins_source": session.plugin_seconds() - sum(
                t["seconds"] for t in session.timings if t["plugin"] == handoff.name),
            "plugins_dest": float(done.get("plugin_s", 0.0)),
            "plugins_dest_post_restore": float(done.get("plugin_post_restore_s", 0.0)),
            "total": t4 - t_start,
        })
        rep.timeline = {"final_dump": notify_timeline(res.notify),
                        "dest_restore": notify_timeline(done.get("notify"))}
        rep.control_bytes = chan.sent
        rep.ok = ok = True
        return rep
    except wire.PeerFailed as exc:
        raise MigrationFailed(f"{phase} (destination: {exc.phase})", exc.reason) from None
    except wire.ProtocolError as exc:
        if phase == "resume":
            raise MigrationFailed("resume", f"{exc}: the source was ended after the "
                                  "destination's ready; check the destination") from None
        raise MigrationFailed(phase, str(exc)) from None
    finally:
        if staging is not None:
            staging.close()
        if not ok:
            try:
                chan.send("abort", reason="the source gave up")
            except wire.ProtocolError:
                pass
        chan.close()
        progress.done()
        if ok and not cfg.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            rep.error = f"source logs in {work}"


def dry_run(cfg: MigrateConfig, log: Log) -> dict:
    """Check both ends, change nothing: CRIU and the plugins here, what the tree needs,
    the receiver's own checks (over the authenticated channel)."""
    from criu_ext.migrate.checks import check_end, tree_needs

    try:
        needs = tree_needs(cfg.pid)
    except OSError:
        needs = []
    here = check_end(needs, cfg.plugin_spec)
    if not os.path.exists(f"/proc/{cfg.pid}"):
        here["ok"] = False
        here["problems"].append(f"no process with PID {cfg.pid}")
    try:
        chan = connect(cfg)
    except MigrationFailed as exc:
        return {"ok": False, "source": here, "destination": {"ok": False,
                                                             "problems": [exc.reason]}}
    try:
        chan.send("hello", version=wire.VERSION, pid=cfg.pid, dry_run=True, needs=needs)
        there = chan.recv("checked")
        there.pop("op", None)
    except wire.ProtocolError as exc:
        there = {"ok": False, "problems": [str(exc)]}
    finally:
        chan.close()
    return {"ok": bool(here["ok"] and there.get("ok")), "source": here, "destination": there}
