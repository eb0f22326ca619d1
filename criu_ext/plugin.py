"""The plugin API and the registry.

A plugin is an object with a ``name`` and one method per CRIU phase it acts in,
named after the phase (``network-lock`` -> ``network_lock(ctx)``), plus an
optional ``rollback(ctx)`` that undoes on the source what its dump phases did
when the source tasks go on running (failed dump, ``--leave-running``).

Plugins are found in two places: the built-ins below and the entry-point group
``criu_ext.plugins`` (value: a class, a factory or an instance). They run in
ascending ``order`` (then name); ``rollback`` runs in the reverse order.

Import-light: only the standard library at import time. Plugin modules are
imported when a phase needs them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from criu_ext import phases as ph

ENTRY_POINT_GROUP = "criu_ext.plugins"

# name -> reference of the built-in plugins. Those in NOT_DEFAULT run only when
# selected by name (see select()).
BUILTIN = {
    "sctp": "criu_ext.plugins.sctp:SctpPlugin",
    "gtp": "criu_ext.plugins.gtp:GtpPlugin",
    "netfilter": "criu_ext.plugins.netfilter:NetfilterPlugin",
    "announce": "criu_ext.plugins.announce:AnnouncePlugin",
    "trace": "criu_ext.plugins.trace:TracePlugin",
}

NOT_DEFAULT = frozenset({"trace"})

IMAGE_PREFIX = "criu-ext-"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class PluginError(Exception):
    """A plugin cannot do its job; the message says what and what to do."""


class Plugin:
    """Base class for plugins (subclassing it is optional, duck typing works).

    Class attributes:
      name     short unique name, also the stem of its image files
      order    lower runs first (built-ins: sctp 50, gtp 100, netfilter 200, trace 900)
      summary  one line for ``criu-ext plugins``
      images   names of the files the plugin writes to the image directory;
               they must start with ``criu-ext-``
      default  False: runs only when selected by name
    """

    name: str = ""
    order: int = 500
    summary: str = ""
    images: tuple[str, ...] = ()
    default: bool = True

    def idle(self, ctx: Context) -> bool:
        """After the first phase (pre-dump, pre-restore): True if no later phase of this
        dump or restore needs the plugin, so the action-script launcher can skip
        starting Python for it. Optional; the default is to be asked every time."""
        return False

    def warm(self, action: str) -> None:
        """Import what the phases of ``action`` will need (RPC mode calls this before
        CRIU starts, so imports do not count inside the freeze window)."""

    def show(self, images_dir: str) -> dict | None:
        """What this plugin's images in ``images_dir`` hold, as JSON-able data."""
        return None


def warm_all(plugins: list[Any], action: str) -> None:
    """Every plugin's ``warm(action)``: imports and first sockets, before CRIU needs them."""
    for plugin in plugins:
        warm = getattr(plugin, "warm", None)
        if callable(warm):
            warm(action)


class Warmup:
    """``warm_all`` in a thread, while something slow runs elsewhere (CRIU's pre-copy
    rounds are other processes); ``join`` waits and raises what the thread raised.
    The caller then marks its Session ``warmed``, so rpc.begin does not warm again."""

    def __init__(self, plugins: list[Any], action: str) -> None:
        import threading

        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(plugins, action),
                                       name="criu-ext-warm", daemon=True)
        self.thread.start()

    def _run(self, plugins: list[Any], action: str) -> None:
        try:
            warm_all(plugins, action)
        except BaseException as exc:  # handed to join(), in the caller's thread
            self.error = exc

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise err


class Log:
    """Lines prefixed ``criu-ext: [plugin: ]`` on a stream (CRIU's log in script mode)."""

    LEVELS = {"error": 1, "warning": 2, "info": 3, "debug": 4}

    def __init__(self, stream=None, level: int = 3, prefix: str = "criu-ext: ") -> None:
        self.stream = stream
        self.level = level
        self.prefix = prefix

    def child(self, name: str) -> Log:
        sub = Log(self.stream, self.level, f"{self.prefix}{name}: ")
        return sub

    def _emit(self, lvl: str, msg: str) -> None:
        if self.LEVELS[lvl] > self.level:
            return
        stream = self.stream or sys.stderr
        tag = "" if lvl == "info" else f"{lvl}: "
        for line in str(msg).splitlines() or [""]:
            stream.write(f"{self.prefix}{tag}{line}\n")
        stream.flush()

    def error(self, msg: str) -> None:
        self._emit("error", msg)

    def warning(self, msg: str) -> None:
        self._emit("warning", msg)

    def info(self, msg: str) -> None:
        self._emit("info", msg)

    def debug(self, msg: str) -> None:
        self._emit("debug", msg)


@dataclass
class Context:
    """What a plugin method gets.

    ``state`` is this plugin's own dict, kept from phase to phase of one dump or
    one restore (in script mode it is also saved as JSON after each phase, so
    keep it JSON-able and small; big data goes to an image file).
    ``options`` holds what is known of CRIU's options (RPC mode knows them all,
    script mode none).
    """

    phase: str
    action: str  # "dump" or "restore"
    images_dir: str
    init_pid: int | None
    mode: str  # "script" or "rpc"
    plugin: str
    log: Log
    state: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    # True when this plugin object lives on to the next phase (RPC mode, and the
    # action-script session process): what it keeps in memory is there next time.
    resident: bool = False
    # Write ``state`` where it survives this process being killed (the dump's journal,
    # the session file), now. A plugin calls it between setting a rollback mark and
    # changing the source, so ``criu-ext recover`` knows what to undo.
    persist: Callable[[], None] = field(default=lambda: None, repr=False)
    # Keep one word about this dump the same way, for a fact that must be kept inside
    # the freeze (where rewriting the state costs milliseconds): the journal makes a file.
    # The plugin sets the same fact in ``state`` too; ``recover`` reads either.
    mark: Callable[[str], None] = field(default=lambda word: None, repr=False)

    @property
    def netns_path(self) -> str | None:
        """The network namespace of the dumped/restored tree (its root task's)."""
        if self.init_pid is None:
            return None
        return f"/proc/{self.init_pid}/ns/net"

    def image_path(self, name: str) -> str:
        if not name.startswith(IMAGE_PREFIX) or "/" in name:
            raise ValueError(f"plugin image names start with {IMAGE_PREFIX!r}: {name!r}")
        return os.path.join(self.images_dir, name)


@dataclass(frozen=True)
class PluginRef:
    """A plugin not loaded yet: where it comes from and how to import it."""

    name: str
    target: str  # "module:attr" or "/path/file.py:attr"
    source: str  # "builtin", the distribution of an entry point, or "env"


def handles(plugin: Any, phase: str) -> bool:
    return callable(getattr(plugin, ph.method_name(phase), None))


def plugin_phases(plugin: Any) -> list[str]:
    """The phases a plugin acts in, in CRIU's order (``rollback`` counts as network-unlock)."""
    out = [p for p in ph.ALL_PHASES if handles(plugin, p)]
    if callable(getattr(plugin, "rollback", None)) and "network-unlock" not in out:
        out.append("network-unlock")
    return [p for p in ph.ALL_PHASES if p in out]


def sort_key(plugin: Any) -> tuple[int, str]:
    return (int(getattr(plugin, "order", 500)), plugin.name)


def load(ref: PluginRef | str) -> Any:
    """Import a plugin and return an instance."""
    target = ref.target if isinstance(ref, PluginRef) else ref
    modname, sep, attr = target.rpartition(":")
    if not sep or not modname or not attr:
        raise PluginError(f"bad plugin reference {target!r}: expected module:attribute")
    try:
        if modname.endswith(".py"):
            mod = _import_file(modname)
        else:
            mod = importlib.import_module(modname)
        obj = mod
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, OSError) as exc:
        raise PluginError(f"cannot load plugin {target!r}: {exc}") from exc
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "name")):
        obj = obj()
    name = getattr(obj, "name", "")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PluginError(f"plugin {target!r} has no valid name (got {name!r})")
    if isinstance(ref, PluginRef) and ref.name != name:
        raise PluginError(f"plugin {target!r} is registered as {ref.name!r} but calls itself {name!r}")
    try:
        obj._criu_ext_ref = target
    except AttributeError:
        pass
    for img in getattr(obj, "images", ()):
        if not img.startswith(IMAGE_PREFIX) or "/" in img:
            raise PluginError(f"plugin {name!r}: image {img!r} must start with {IMAGE_PREFIX!r}")
    return obj


def load_registered(name: str, target: str, log: Log | None = None) -> Any:
    """Load plugin ``name`` only if ``target`` is where it is registered here (built-in
    or entry point), or is named by ``$CRIU_EXT_PLUGINS``: a file written between
    phases (the script mode's session) may name plugins, never choose code."""
    allowed = {r.target: r for r in discover(log)}
    extra = parse_selection(os.environ.get("CRIU_EXT_PLUGINS"))[2]
    if target in allowed and allowed[target].name == name:
        return load(allowed[target])
    if target in extra:
        return load(target)
    raise PluginError(f"the session names plugin {name!r} at {target!r:.120}, which is not "
                      "registered here nor given in CRIU_EXT_PLUGINS: refused")


def _import_file(path: str):
    modname = "criu_ext_file_plugin_" + re.sub(r"\W", "_", os.path.abspath(path))
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


def discover(log: Log | None = None) -> list[PluginRef]:
    """Built-ins plus the ``criu_ext.plugins`` entry points, by name."""
    refs = {name: PluginRef(name, target, "builtin") for name, target in BUILTIN.items()}
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        if ep.name in refs:
            if log:
                log.warning(f"entry point {ep.name}={ep.value} from {dist} ignored: "
                            f"the name is taken by {refs[ep.name].target}")
            continue
        refs[ep.name] = PluginRef(ep.name, ep.value, dist)
    return list(refs.values())


def parse_selection(spec: str | None) -> tuple[list[str], list[str], list[str]]:
    """Split a selection like ``gtp,-netfilter,mod:Cls`` into (only, exclude, extra)."""
    only, exclude, extra = [], [], []
    for item in (spec or "").replace(" ", ",").split(","):
        if not item:
            continue
        if item.startswith("-"):
            exclude.append(item[1:])
        elif ":" in item:
            extra.append(item.lstrip("+"))
        else:
            only.append(item.lstrip("+"))
    return only, exclude, extra


def select(spec: str | None = None, log: Log | None = None,
           refs: list[PluginRef] | None = None) -> list[Any]:
    """Load the plugins to run, sorted by order.

    ``spec`` (``--plugins`` or ``$CRIU_EXT_PLUGINS``): comma-separated; a bare
    name selects (then only the named ones and the references run), ``-name``
    excludes, ``module:attr`` or ``/path/file.py:attr`` adds a plugin that is
    not registered. With no bare name, every plugin whose ``default`` is true runs.
    """
    only, exclude, extra = parse_selection(spec)
    refs = discover(log) if refs is None else refs
    known = {r.name for r in refs}
    for name in only + exclude:
        if name not in known:
            raise PluginError(f"no plugin named {name!r} (known: {', '.join(sorted(known))})")
    plugins = []
    for ref in refs:
        if ref.name in exclude or (only and ref.name not in only):
            continue
        if not only and ref.source == "builtin" and ref.name in NOT_DEFAULT:
            continue  # known without importing it
        plugin = load(ref)
        if only or getattr(plugin, "default", True):
            plugins.append(plugin)
    for target in extra:
        plugin = load(target)
        if plugin.name in {p.name for p in plugins}:
            raise PluginError(f"plugin {target!r}: the name {plugin.name!r} is taken")
        plugins.append(plugin)
    return sorted(plugins, key=sort_key)


def reference(plugin: Any) -> str:
    """``module:attr`` to load ``plugin`` again in another process."""
    ref = getattr(plugin, "_criu_ext_ref", None)
    if ref:
        return ref
    cls = type(plugin)
    mod = cls.__module__
    if mod.startswith("criu_ext_file_plugin_"):
        path = sys.modules[mod].__file__
        return f"{path}:{cls.__qualname__}"
    return f"{mod}:{cls.__qualname__}"
