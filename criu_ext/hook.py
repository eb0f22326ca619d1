"""The action-script entry: ``criu dump|restore --action-script criu-ext-hook``.

CRIU runs the script once per phase (execvp of one path, no arguments, stdin
closed, stdout and stderr into CRIU's log) with CRTOOLS_SCRIPT_ACTION,
CRTOOLS_IMAGE_DIR and CRTOOLS_INIT_PID (not at pre-restore) in the environment.

Every phase is a new process, so this module imports only the standard library
until it knows there is work: ``pre-dump`` / ``pre-restore`` (tasks not frozen
yet) find the plugins and write the session's plan, keyed by CRIU's PID (our
parent), under $CRIU_EXT_RUN_DIR (default /run/criu-ext); later phases read the
one-line-per-phase plan and return at once when no plugin acts in them.

Plugins are selected with $CRIU_EXT_PLUGINS (see plugin.select) and the log
level with $CRIU_EXT_LOG_LEVEL (1 errors ... 4 debug, default 3). Lines are
prefixed ``criu-ext: `` so they can be grepped out of CRIU's log.
"""

from __future__ import annotations

import os
import sys

RUN_DIR_DEFAULT = "/run/criu-ext"
PREFIX = "criu-ext: "


def run_dir() -> str:
    return os.environ.get("CRIU_EXT_RUN_DIR") or RUN_DIR_DEFAULT


def session_dir(criu_pid: int) -> str:
    return os.path.join(run_dir(), str(criu_pid))


def _fast_exit(phase: str, sdir: str) -> bool:
    """True when the plan says no plugin acts in ``phase`` (cheap: one small read)."""
    try:
        with open(os.path.join(sdir, "phases"), encoding="ascii") as f:
            return phase not in f.read().split()
    except FileNotFoundError:
        return False


def _process_age_ms() -> float | None:
    """Milliseconds since this process was started (clock-tick resolution)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            up = float(f.read().split()[0])
        return (up - start / os.sysconf("SC_CLK_TCK")) * 1000
    except (OSError, ValueError, IndexError):
        return None


def _ensure_site() -> None:
    # The launcher starts Python with -S (no site): add site-packages only now,
    # when a plugin (pyroute2, pycriu ...) is about to be imported.
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()


def main() -> int:
    phase = os.environ.get("CRTOOLS_SCRIPT_ACTION")
    if not phase:
        sys.stderr.write(f"{PREFIX}this is a CRIU action script: give it to criu with "
                         "--action-script (it reads CRTOOLS_SCRIPT_ACTION)\n")
        return 2
    criu_pid = os.getppid()
    sdir = session_dir(criu_pid)
    if phase not in ("pre-dump", "pre-restore") and _fast_exit(phase, sdir):
        return 0
    _ensure_site()
    rc = _run(phase, criu_pid, sdir)
    # Skip the interpreter's teardown: modules like pyroute2 make it cost more than the
    # work itself, inside CRIU's freeze window. Every file we wrote is closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _run(phase: str, criu_pid: int, sdir: str) -> int:
    import json

    from criu_ext import phases as ph
    from criu_ext.plugin import Log, PluginError, select
    from criu_ext.session import PhaseFailed, Session

    try:
        level = int(os.environ.get("CRIU_EXT_LOG_LEVEL", "3"))
    except ValueError:
        level = 3
    log = Log(sys.stdout, level)
    # CRTOOLS_IMAGE_DIR is /proc/<criu>/fd/<n>; CRIU closes that fd before post-resume,
    # so work with the directory it points to, remembered in the session.
    real = os.path.realpath(os.environ.get("CRTOOLS_IMAGE_DIR", "."))
    images_dir = real if os.path.isdir(real) else None
    pid_s = os.environ.get("CRTOOLS_INIT_PID")
    init_pid = int(pid_s) if pid_s and pid_s.isdigit() else None
    state_path = os.path.join(sdir, "session.json")
    try:
        if phase in ph.FIRST:
            _prune(log)
            session = Session(ph.FIRST[phase], images_dir or ".",
                              select(os.environ.get("CRIU_EXT_PLUGINS"), log), "script", log)
        else:
            try:
                with open(state_path, encoding="utf-8") as f:
                    session = Session.from_json(json.load(f), log, images_dir)
            except FileNotFoundError:
                action = ph.action_of(phase) or _action_from_criu(criu_pid)
                log.warning(f"{phase}: no session for CRIU {criu_pid} in {sdir} (was "
                            f"pre-{action} run through this hook?); loading the plugins now")
                session = Session(action, images_dir or ".",
                                  select(os.environ.get("CRIU_EXT_PLUGINS"), log), "script", log)
        before = len(session.timings)
        session.run(phase, init_pid)
        failed = None
    except PhaseFailed as exc:
        failed = exc
    except PluginError as exc:
        log.error(f"{phase}: {exc}")
        return 1
    _save(session, sdir, state_path, log, first=phase in ph.FIRST)
    age = _process_age_ms()
    spent = sum(t["seconds"] for t in session.timings[before:])
    log.debug(f"{phase}: {spent * 1000:.1f} ms in plugins"
              + (f", {age:.0f} ms since exec" if age is not None else ""))
    if failed:
        log.error(f"{failed}")
        return 1
    return 0


def _save(session, sdir: str, state_path: str, log, first: bool) -> None:
    import json

    try:
        os.makedirs(sdir, mode=0o700, exist_ok=True)
        if first:
            with open(os.path.join(sdir, "phases"), "w", encoding="ascii") as f:
                f.write("\n".join(session.phases()) + "\n")
        tmp = state_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(session.to_json(), f)
        os.replace(tmp, state_path)
    except OSError as exc:
        log.warning(f"cannot keep the session in {sdir}: {exc} (later phases load every plugin)")
    if not first:
        session.write_manifest()


def _prune(log) -> None:
    """Remove the sessions of CRIU processes that are gone."""
    base = run_dir()
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return
    import shutil

    for name in names:
        if name.isdigit() and not os.path.exists(f"/proc/{name}"):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _action_from_criu(criu_pid: int) -> str:
    """dump or restore, from CRIU's command line (when no session was kept)."""
    try:
        with open(f"/proc/{criu_pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        args = []
    return "restore" if b"restore" in args else "dump"


if __name__ == "__main__":
    sys.exit(main())
