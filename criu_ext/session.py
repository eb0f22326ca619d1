"""One dump or one restore as the plugins see it: phase dispatch, state, timings.

The same class serves both modes. In RPC mode one Session object lives in the
``criu-ext dump|restore`` process for the whole run. In action-script mode one
session process answers the phases (see hook_server.py); it saves the session
to a small JSON file after each phase, from which another process can take over.

Rules (docs/criu-ext.md has the long form):
* plugins run in ascending (order, name);
* in a phase where CRIU acts on failure (phases.FATAL) the first plugin that
  raises stops the phase and the phase fails; in the others every plugin runs
  and failures are logged;
* at dump, ``network-unlock`` means the source tasks go on running (the dump
  failed, post-dump failed, or --leave-running): after the plugins'
  ``network_unlock`` methods, ``rollback`` runs in reverse order for every
  plugin that was called in a dump phase, whether or not it succeeded there.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from criu_ext import phases as ph
from criu_ext.hook_proto import PID_MAX
from criu_ext.plugin import Context, Log, PluginError, handles, load_registered, reference
from procns.files import MiB, UnsafeFile, atomic_file, read_json

MANIFEST = "criu-ext.json"
FORMAT = 1
MAX_MANIFEST = 4 * MiB
# The dump's phases inside its freeze, journaled only when one of their plugins has
# a rollback (Session.run); network-unlock always is: its rollback must not run twice.
QUIET = frozenset({"network-lock", "post-dump"})


class PhaseFailed(Exception):
    """A plugin failed in a phase where that makes CRIU stop."""

    def __init__(self, phase: str, plugin: str, message: str) -> None:
        super().__init__(f"{phase}: plugin {plugin}: {message}")
        self.phase = phase
        self.plugin = plugin
        self.message = message


class Session:
    def __init__(self, action: str, images_dir: str, plugins: list[Any], mode: str,
                 log: Log | None = None, options: dict | None = None) -> None:
        if action not in (ph.DUMP, ph.RESTORE):
            raise ValueError(f"action must be dump or restore, not {action!r}")
        self.action = action
        self.images_dir = images_dir
        self.plugins = list(plugins)
        self.mode = mode
        # the plugin objects live from phase to phase (RPC mode, the action-script session process)
        self.resident = mode == "rpc"
        self.log = log or Log()
        self.options = dict(options or {})
        self.init_pid: int | None = None
        self.state: dict[str, dict] = {p.name: {} for p in self.plugins}
        self.acted: list[str] = []  # plugins called in a dump phase (rollback candidates)
        self.rolled_back = False
        self.timings: list[dict] = []  # {"phase", "plugin", "seconds", "ok"}
        self.phases_seen: list[str] = []
        self.warmed = False  # the plugins' warm(action) has run (rpc.begin, or a Warmup)
        self._restore_check: bool | PhaseFailed | PluginError | None = None  # check_restore's
        # looked up once, not at each phase: several phases of a freeze run here
        self._acting: dict[str, list[Any]] = {}  # phase -> the plugins with its method
        self._logs: dict[str, Log] = {}  # plugin -> its log
        self._done: set[str] = set()  # the plugins that said they have nothing more to do
        # keeps the state where a SIGKILL of this process cannot take it (journal.Journal
        # in RPC mode, the session file in script mode); called at phase boundaries and
        # by the plugins (Context.persist)
        self.on_change: Callable[[], None] | None = None
        # records one word about this dump where a SIGKILL cannot take it, cheaper than
        # the whole state (Journal.mark: one file made); None: ``persist`` instead
        self.on_mark: Callable[[str], None] | None = None

    # -- planning -------------------------------------------------------------

    def phases(self) -> list[str]:
        """Phases in which at least one plugin acts, for this action."""
        wanted = ph.DUMP_PHASES if self.action == ph.DUMP else ph.RESTORE_PHASES
        acting: set[str] = set()
        for p in self.plugins:
            if self._idle(p):
                continue
            acting.update(x for x in ph.ALL_PHASES if handles(p, x))
            if self.action == ph.DUMP and callable(getattr(p, "rollback", None)):
                acting.add("network-unlock")  # rollback runs there
        return [p for p in wanted if p in acting]

    def _idle(self, plugin: Any) -> bool:
        """A plugin that says, after the first phase ran, that it has nothing more to do
        (for good: asked once it said so, it is not asked again)."""
        if plugin.name in self._done:
            return True
        if not self.phases_seen:
            return False
        return self._ask_idle(plugin, self.phases_seen[-1])

    def _ask_idle(self, plugin: Any, phase: str) -> bool:
        idle = getattr(plugin, "idle", None)
        if callable(idle) and idle(self.context(plugin, phase)):
            self._done.add(plugin.name)
            return True
        return False

    def settle(self) -> None:
        """Ask every plugin now whether it has anything more to do; those that have not
        are not called again (their rollback still runs). ``run`` does it after a dump's
        first phase (before the freeze); a receiver before CRIU's first notification of
        a restore, the images all there."""
        phase = self.phases_seen[-1] if self.phases_seen else ph.RESTORE_PHASES[0]
        for plugin in self.plugins:
            if plugin.name not in self._done:
                self._ask_idle(plugin, phase)

    def check_restore(self) -> None:
        """At restore: every plugin that wrote images at dump must be here. Looked at
        once (a receiver does it while CRIU starts, out of the freeze): its failure is
        raised again at ``pre-restore``."""
        if self._restore_check is None:
            try:
                self._check_restore()
            except (PhaseFailed, PluginError) as exc:
                self._restore_check = exc
                raise
            self._restore_check = True
        elif isinstance(self._restore_check, Exception):
            raise self._restore_check

    def _check_restore(self) -> None:
        manifest = read_manifest(self.images_dir)
        dumped = manifest.get("dump", {}).get("plugins", []) if manifest else []
        have = {p.name for p in self.plugins}
        missing = [d["name"] for d in dumped if d.get("images") and d["name"] not in have]
        if missing:
            raise PhaseFailed("pre-restore", missing[0],
                              f"the dump used plugin(s) {', '.join(missing)} whose images are in "
                              f"{self.images_dir}, but they are not available or not selected here")

    # -- running --------------------------------------------------------------

    def context(self, plugin: Any, phase: str) -> Context:
        log = self._logs.get(plugin.name)
        if log is None:
            log = self._logs[plugin.name] = self.log.child(plugin.name)
        return Context(phase=phase, action=self.action, images_dir=self.images_dir,
                       init_pid=self.init_pid, mode=self.mode, plugin=plugin.name,
                       log=log, state=self.state.setdefault(plugin.name, {}),
                       options=self.options, resident=self.resident, persist=self.persist,
                       mark=self.mark)

    def persist(self) -> None:
        """Hand the state to ``on_change``. A failure to keep it is logged, not raised: the
        dump itself can go on, only a crash of this process would need what was lost."""
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception as exc:  # noqa: BLE001 - see above
                self.log.warning(f"cannot keep this {self.action}'s state: {exc}")

    def mark(self, word: str) -> None:
        """Keep ``word`` (set in a plugin's state too) where a SIGKILL cannot take it:
        through ``on_mark`` when there is one, else the whole state through ``persist``."""
        if self.on_mark is None:
            self.persist()
            return
        try:
            self.on_mark(word)
        except Exception as exc:  # noqa: BLE001 - as persist: logged, the dump goes on
            self.log.warning(f"cannot keep this {self.action}'s mark {word!r}: {exc}")

    def run(self, phase: str, init_pid: int | None = None) -> None:
        """Run the plugins of ``phase``; raise PhaseFailed if CRIU must stop."""
        if phase not in ph.ALL_PHASES:
            self.log.warning(f"phase {phase!r} is unknown to this version; nothing done")
            return
        if init_pid:
            self.init_pid = init_pid
        self.phases_seen.append(phase)
        if phase == "pre-restore" and self.action == ph.RESTORE:
            self.check_restore()
        fatal = phase in ph.FATAL[self.action]
        errors: list[PhaseFailed] = []
        # journaled at the phase's edges (how far the dump got) and before each plugin
        # that becomes a rollback candidate runs, should this process die; in the freeze
        # (a write costs 1-4 ms there) only if a plugin of this phase, not idle, has
        # something for recover to undo: a migration's handoff keeps its one fact as a mark
        acting = self._acting.get(phase)
        if acting is None:
            acting = self._acting[phase] = [p for p in self.plugins if handles(p, phase)]
        if self._done:
            acting = [p for p in acting if p.name not in self._done]
        edges = self.action == ph.DUMP and (phase not in QUIET or any(
            callable(getattr(p, "rollback", None)) and not self._idle(p) for p in acting))
        due = edges
        try:
            for plugin in acting:
                if (self.action == ph.DUMP and phase != "network-unlock"
                        and plugin.name not in self.acted):
                    self.acted.append(plugin.name)
                    due = due or edges
                if due:
                    self.persist()
                    due = False
                err = self._call(plugin, phase, getattr(plugin, ph.method_name(phase)))
                if err:
                    if fatal:
                        raise err
                    errors.append(err)
            if phase == "network-unlock" and self.action == ph.DUMP:
                errors += self.rollback()
        finally:
            if edges:
                self.persist()
        if self.action == ph.DUMP and len(self.phases_seen) == 1:
            self.settle()
        for err in errors:
            self.log.error(f"{err} (CRIU goes on: this phase's failures are only logged)")

    def rollback(self) -> list[PhaseFailed]:
        """Undo, in reverse order, what the dump phases did on the source. Runs once."""
        if self.rolled_back:
            return []
        self.rolled_back = True
        errors = []
        for plugin in reversed(self.plugins):
            fn = getattr(plugin, "rollback", None)
            if plugin.name in self.acted and callable(fn):
                err = self._call(plugin, "rollback", fn, ctx_phase="network-unlock")
                if err:
                    errors.append(err)
        return errors

    def _call(self, plugin: Any, label: str, fn, ctx_phase: str | None = None) -> PhaseFailed | None:
        ctx = self.context(plugin, ctx_phase or label)
        t0 = time.perf_counter()
        err = None
        try:
            fn(ctx)
        except PluginError as exc:
            err = PhaseFailed(label, plugin.name, str(exc))
        except Exception as exc:  # a plugin bug must not take CRIU's session down silently
            err = PhaseFailed(label, plugin.name, f"{type(exc).__name__}: {exc}")
        dt = time.perf_counter() - t0
        self.timings.append({"phase": label, "plugin": plugin.name, "seconds": round(dt, 6),
                             "ok": err is None})
        if err:
            ctx.log.error(f"{label} failed after {dt * 1000:.1f} ms: {err.message}")
        elif ctx.log.level >= Log.LEVELS["debug"]:
            ctx.log.debug(f"{label} done in {dt * 1000:.1f} ms")
        return err

    def prepare(self) -> None:
        """RPC mode, before CRIU starts: plugins' ``prepare`` (work that needs the
        images but not the tasks: read and check them, encode requests). The first
        failure raises PhaseFailed: nothing has been touched yet."""
        for plugin in self.plugins:
            fn = getattr(plugin, "prepare", None)
            if callable(fn):
                err = self._call(plugin, "prepare", fn)
                if err:
                    raise err

    def finish(self) -> list[PhaseFailed]:
        """After CRIU ended (RPC mode): plugins' ``finish`` (work that had to wait for
        CRIU to let go of the tasks)."""
        errors = []
        for plugin in self.plugins:
            fn = getattr(plugin, "finish", None)
            if callable(fn):
                err = self._call(plugin, "finish", fn, ctx_phase="network-unlock")
                if err:
                    errors.append(err)
        return errors

    def plugin_seconds(self, phases: frozenset[str] | None = None) -> float:
        """Time spent in plugin code, optionally only in some phases."""
        return sum(t["seconds"] for t in self.timings
                   if phases is None or t["phase"] in phases
                   or (t["phase"] == "rollback" and "network-unlock" in phases))

    # -- persistence (script mode) and the manifest ------------------------------

    def to_json(self) -> dict:
        return {
            "action": self.action, "images_dir": self.images_dir, "mode": self.mode,
            "plugins": [{"name": p.name, "target": reference(p)} for p in self.plugins],
            "options": self.options, "init_pid": self.init_pid, "state": self.state,
            "acted": self.acted, "rolled_back": self.rolled_back, "timings": self.timings,
            "phases_seen": self.phases_seen,
        }

    @classmethod
    def from_json(cls, data: dict, log: Log | None = None, images_dir: str | None = None) -> Session:
        # only plugins registered here (or named by this run's own selection) are
        # imported: a session file never decides what code runs
        plugins = [load_registered(p["name"], p["target"]) for p in data["plugins"]]
        s = cls(data["action"], images_dir or data["images_dir"], plugins, data["mode"], log,
                data.get("options"))
        s.init_pid = data.get("init_pid")
        s.state.update(data.get("state", {}))
        s.acted = list(data.get("acted", []))
        s.rolled_back = bool(data.get("rolled_back"))
        s.timings = list(data.get("timings", []))
        s.phases_seen = list(data.get("phases_seen", []))
        return s

    def write_manifest(self) -> None:
        """Record in the image directory what each plugin wrote and how long it took."""
        path = os.path.join(self.images_dir, MANIFEST)
        data = read_manifest(self.images_dir) or {"format": FORMAT}
        if self.action == ph.DUMP and "pre-dump" in self.phases_seen[:1]:
            data.pop("restore", None)
        plugins = []
        for p in self.plugins:
            imgs = []
            for name in getattr(p, "images", ()):
                try:
                    imgs.append({"name": name, "size": os.stat(os.path.join(self.images_dir, name)).st_size})
                except FileNotFoundError:
                    pass
            plugins.append({"name": p.name, "target": reference(p), "order": getattr(p, "order", 500),
                            "images": imgs})
        data[self.action] = {"mode": self.mode, "init_pid": self.init_pid, "plugins": plugins,
                             "phases": self.phases_seen, "timings": self.timings,
                             "rolled_back": self.rolled_back}
        try:
            with atomic_file(path, "w", 0o644) as f:  # O_EXCL|O_NOFOLLOW temporary file
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
        except OSError as exc:
            self.log.warning(f"cannot write {MANIFEST}: {exc}")


def check_json(data: object) -> None:
    """The shape Session.from_json reads, checked before any plugin is imported from it
    (ValueError says what is wrong)."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("action") not in (ph.DUMP, ph.RESTORE):
        raise ValueError("no valid action")
    plugins = data.get("plugins")
    if not isinstance(plugins, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str)
            and isinstance(p.get("target"), str) and ":" in p["target"] for p in plugins):
        raise ValueError("bad plugin list")
    for key, typ in (("state", dict), ("acted", list), ("timings", list),
                     ("phases_seen", list), ("options", dict)):
        if key in data and not isinstance(data[key], typ):
            raise ValueError(f"{key} is not a {typ.__name__}")
    if not isinstance(data.get("images_dir"), str) or not isinstance(data.get("mode"), str):
        raise ValueError("no images directory or mode")
    pid = data.get("init_pid")
    if pid is not None and (type(pid) is not int or not 0 < pid < PID_MAX):
        raise ValueError("bad init_pid")


def read_manifest(images_dir: str) -> dict | None:
    """The manifest of ``images_dir``, its shape checked; None when there is none.

    PluginError (one line) when it is a link, not a regular file, larger than
    :data:`MAX_MANIFEST`, not JSON, or not of the shape :meth:`Session.write_manifest`
    writes."""
    path = os.path.join(images_dir, MANIFEST)
    try:
        data = read_json(path, MAX_MANIFEST)
    except FileNotFoundError:
        return None
    except UnsafeFile as exc:
        raise PluginError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise PluginError(f"{path} is unreadable: {exc}") from None
    try:
        check_manifest(data)
    except (ValueError, TypeError) as exc:
        raise PluginError(f"{path} is malformed: {exc}") from None
    return data


def _is_text(v: object) -> bool:
    return isinstance(v, str) and len(v) <= 4096 and not any(ord(c) < 32 for c in v)


def check_manifest(data: object) -> None:
    """ValueError unless ``data`` has the manifest's shape (what show and restore read)."""
    if not isinstance(data, dict) or type(data.get("format")) is not int:
        raise ValueError("not an object with an integer format")
    for action in (ph.DUMP, ph.RESTORE):
        if action not in data:
            continue
        rec = data[action]
        if not isinstance(rec, dict):
            raise ValueError(f"{action} is not an object")
        if not _is_text(rec.get("mode", "")) or not (rec.get("init_pid") is None or
                                                     type(rec.get("init_pid")) is int):
            raise ValueError(f"{action}: mode or init_pid of the wrong type")
        for p in _list(rec, "plugins", action):
            if not isinstance(p, dict) or not _is_text(p.get("name")) \
                    or not _is_text(p.get("target", "")):
                raise ValueError(f"{action}: a plugin entry without a name")
            for img in _list(p, "images", action):
                if not isinstance(img, dict) or not _is_text(img.get("name")) \
                        or type(img.get("size", 0)) is not int:
                    raise ValueError(f"{action}: plugin {p['name']}: a bad image entry")
        for t in _list(rec, "timings", action):
            if not isinstance(t, dict) or not _is_text(t.get("phase")) \
                    or not _is_text(t.get("plugin")) or type(t.get("ok")) is not bool \
                    or type(t.get("seconds")) not in (int, float):
                raise ValueError(f"{action}: a bad timing entry")
        if not all(_is_text(x) for x in _list(rec, "phases", action)):
            raise ValueError(f"{action}: phases is not a list of names")


def _list(rec: dict, key: str, where: str) -> list:
    v = rec.get(key, [])
    if not isinstance(v, list) or len(v) > 10000:
        raise ValueError(f"{where}: {key} is not a list")
    return v
