"""``criu-ext-criu``: a drop-in ``criu`` for container engines (runc's ``--criu PATH``).

``criu-ext-criu swrk FD`` relays the engine's RPC to the real ``criu swrk`` and
runs criu-ext's plugins on its notifications (criu_ext.relay). Every other
invocation (``check``, ``--version``, ``dump`` ...) runs the real criu unchanged.
The real criu is ``$CRIU_EXT_REAL_CRIU`` (default /usr/sbin/criu); the plugins are
every default one, or ``$CRIU_EXT_PLUGINS``; their messages go to criu-ext.log in
CRIU's work directory.

Argument handling stays criu's own, so this is a plain argv front, not click.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    from criu_ext import relay

    if len(args) == 2 and args[0] == "swrk" and args[1].isdigit():
        sys.exit(relay.swrk(int(args[1])))
    real = relay.real_criu()
    try:
        os.execv(real, [real, *args])
    except OSError as exc:
        sys.exit(f"criu-ext-criu: cannot run the real criu {real}: {exc} "
                 f"(set {relay.REAL_CRIU_ENV})")


if __name__ == "__main__":
    main()
