"""``trace``: writes down every phase it sees; can be told to fail (tests, debugging).

Off unless selected (``--plugins trace`` or ``CRIU_EXT_PLUGINS=trace``). For each
phase it records the action, the root task's PID and state, its netns inode and
the time into ``criu-ext-trace.json``. ``$CRIU_EXT_TRACE_FAIL`` (comma-separated
phases, ``rollback`` included) makes it fail there, to test what CRIU and the
other plugins do then; ``$CRIU_EXT_TRACE_STALL`` (one phase) makes it log
``stalled at PHASE`` there and sleep until killed, to test what a SIGKILL of
criu-ext at that point leaves (``criu-ext recover``); ``$CRIU_EXT_TRACE_SLEEP``
(``PHASE:SECONDS``) makes it log ``sleeping at PHASE`` there and go on after that
long, to hold a phase open while something else happens (a migration's source
killed while the destination restores).
"""

from __future__ import annotations

import json
import os
import time

from criu_ext import phases as ph
from criu_ext.plugin import Plugin, PluginError
from procns.files import MiB, UnsafeFile, atomic_file, read_json

IMAGE = "criu-ext-trace.json"
MAX_IMAGE = 1 * MiB


def _task_state(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _netns(pid: int | None) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino if pid else None
    except OSError:
        return None


class TracePlugin(Plugin):
    name = "trace"
    order = 900
    summary = "record each phase (pid, task state, netns) in criu-ext-trace.json; can inject failures"
    images = (IMAGE,)
    default = False

    def _record(self, ctx, what: str) -> None:
        path = ctx.image_path(IMAGE)
        try:
            data = read_json(path, MAX_IMAGE)
        except (FileNotFoundError, ValueError):
            data = {}
        except UnsafeFile as exc:
            raise PluginError(str(exc)) from None
        if not isinstance(data, dict) or not isinstance(data.get(ctx.action, []), list):
            data = {}
        data.setdefault(ctx.action, []).append({
            "phase": what, "mode": ctx.mode, "init_pid": ctx.init_pid,
            "task_state": _task_state(ctx.init_pid), "netns": _netns(ctx.init_pid),
            "time": time.time(),
        })
        with atomic_file(path, "w", 0o644) as f:
            json.dump(data, f, indent=1)
        ctx.log.info(f"{ctx.action} {what} init_pid={ctx.init_pid}")
        fail = os.environ.get("CRIU_EXT_TRACE_FAIL", "").split(",")
        if what in fail:
            raise PluginError(f"failing at {what} as asked by CRIU_EXT_TRACE_FAIL")
        phase, _, seconds = os.environ.get("CRIU_EXT_TRACE_SLEEP", "").partition(":")
        if what and what == phase:
            try:
                pause = min(float(seconds), 3600.0)
            except ValueError:
                raise PluginError(f"CRIU_EXT_TRACE_SLEEP={phase}:{seconds[:20]}: "
                                  "PHASE:SECONDS expected") from None
            ctx.log.info(f"sleeping at {what} for {pause:g} s as asked by CRIU_EXT_TRACE_SLEEP")
            time.sleep(max(pause, 0.0))
        if what and what == os.environ.get("CRIU_EXT_TRACE_STALL"):
            ctx.log.info(f"stalled at {what} as asked by CRIU_EXT_TRACE_STALL")
            while True:  # until killed, like a criu-ext that hangs
                time.sleep(3600)

    def rollback(self, ctx) -> None:
        self._record(ctx, "rollback")

    def show(self, images_dir: str) -> dict | None:
        try:
            data = read_json(os.path.join(images_dir, IMAGE), MAX_IMAGE)
        except FileNotFoundError:
            return None
        except (UnsafeFile, ValueError) as exc:
            raise PluginError(str(exc)) from None
        if not isinstance(data, dict):
            raise PluginError(f"{IMAGE}: not a JSON object")
        return data


def _make(phase: str):
    def method(self, ctx):
        self._record(ctx, phase)
    method.__name__ = ph.method_name(phase)
    return method


for _phase in ph.ALL_PHASES:
    setattr(TracePlugin, ph.method_name(_phase), _make(_phase))
