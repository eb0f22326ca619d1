"""The action-script hook as a /bin/sh file: the one installed as ``criu-ext-hook``
(criu_ext/criu-ext-hook, shipped with the package) or a copy written by
``criu-ext hook-script`` with a given interpreter and source directory.

CRIU execs the action script in every phase. Under emulation a Python start
with site-packages costs about a second, a shell start a few milliseconds: the
shell script starts Python only at pre-dump / pre-restore (the session process,
outside the freeze window) and answers the later phases itself (see
criu_ext.hook and criu_ext.hook_server).
"""

from __future__ import annotations

import os
import shlex
import sys
from importlib import resources

SCRIPT = "criu-ext-hook"


def template() -> str:
    """The shipped script: interpreter and source directory found at run time."""
    return resources.files("criu_ext").joinpath(SCRIPT).read_text(encoding="utf-8")


def render(python: str | None = None, root: str | None = None, path_hint: str = "PATH") -> str:
    """The script with interpreter ``python`` and the directory holding criu_ext written in."""
    python = python or sys.executable
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = template()
    for name, value in (("PY", python), ("ROOT", root)):
        head = f"{name}=''"
        start = text.index("\n" + head) + 1
        end = text.index("\n", start)
        text = text[:start] + f"{name}={shlex.quote(value)}" + text[end:]
    return text.replace("PATH`", f"{path_hint}`", 2)


def install(path: str, python: str | None = None, root: str | None = None) -> str:
    """Write the script to ``path`` (mode 755) and return its absolute path."""
    path = os.path.abspath(path)
    text = render(python, root, path)
    tmp = path + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path
