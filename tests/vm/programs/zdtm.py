"""What the ZDTM-style test programs share: result files that appear whole, and
the SIGUSR1 that asks for the check."""

import os
import signal


def publish(path: str, line: str) -> None:
    """Write ``line`` to ``path`` through a rename: a reader never sees half of it."""
    with open(path + ".tmp", "w") as f:
        f.write(line + "\n")
    os.rename(path + ".tmp", path)


class Wake:
    """Set by SIGUSR1: the program stops its work and checks its memory."""

    def __init__(self) -> None:
        self.woken = False
        signal.signal(signal.SIGUSR1, self._on)

    def _on(self, signum, frame) -> None:
        self.woken = True
