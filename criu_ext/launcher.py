"""A /bin/sh launcher for the action-script entry that starts Python only when needed.

CRIU execs the action script in every phase. Under emulation a Python start
with site-packages costs about a second, a shell start a few milliseconds, so
the launcher reads the session's plan (one phase per line, written at
pre-dump / pre-restore) and ends phases in which no plugin acts without
starting Python; otherwise it starts Python with -I -S (no site-packages scan:
criu_ext.hook adds them only when a plugin is imported).
"""

from __future__ import annotations

import os
import shlex
import sys

TEMPLATE = """#!/bin/sh
# criu-ext action-script launcher (written by `criu-ext hook-script`).
# Give this file to CRIU: --action-script {path_hint} or `action-script {path_hint}`
# in a CRIU configuration file. It runs criu_ext.hook with {python}.
case "$CRTOOLS_SCRIPT_ACTION" in
pre-dump | pre-restore | "") ;;
*)
    plan="${{CRIU_EXT_RUN_DIR:-/run/criu-ext}}/$PPID/phases"
    if [ -r "$plan" ]; then
        act=0
        while read -r p; do
            [ "$p" = "$CRTOOLS_SCRIPT_ACTION" ] && act=1
        done <"$plan"
        [ "$act" = 1 ] || exit 0
    fi
    ;;
esac
exec {python} -I -S -c {code}
"""


def render(python: str | None = None, root: str | None = None, path_hint: str = "PATH") -> str:
    """The launcher's text for interpreter ``python`` and the directory holding criu_ext."""
    python = python or sys.executable
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, %r); from criu_ext.hook import main; "
            "sys.exit(main())" % root)
    return TEMPLATE.format(python=shlex.quote(python), code=shlex.quote(code), path_hint=path_hint)


def install(path: str, python: str | None = None, root: str | None = None) -> str:
    """Write the launcher to ``path`` (mode 755) and return its absolute path."""
    path = os.path.abspath(path)
    text = render(python, root, path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path
