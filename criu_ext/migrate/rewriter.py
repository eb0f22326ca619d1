"""The staged sockets' image rewrite (inherit.py) in a process of its own, beside the
final images' transfer.

The receiver gets ``files.img`` after every ``fdinfo-*.img`` (the source sends in name
order), in the middle of the final dump's images and with the source frozen. Done in
the receiving loop, the rewrite (a few milliseconds under emulation) lengthens the
transfer by as much; done in a thread, it shares the loop's interpreter lock and
lengthens it by more. So a :class:`Rewriter` is started with the stage, its imports
paid then, and is given the job the moment ``files.img`` is written; a thread of
ours reads its answer when it comes (blocked in a read, it holds the lock only to
parse one line): at ``restore`` the receiver only joins it. Its requests and
answers are JSON lines on its stdin and stdout; it only ever touches the directory
it is given, through
:func:`inherit.as_inherited` (every image bounded and checked, nothing written unless
all of it holds, no link followed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

MAX_ANSWER = 1 << 16


class RewriterError(Exception):
    """The process gave no usable answer (it died, or said nothing in time)."""


class Rewriter:
    """One rewriting process, one job at a time: :meth:`submit`, then :meth:`result`.
    Its answer is read, and parsed, by a thread of ours as soon as it comes (the rest
    of the transfer): at ``restore`` only a join is left."""

    def __init__(self, workdir: str) -> None:
        """``workdir``: where it warms up (inherit.warm), on made-up images."""
        # its start (pycriu's schema, a warm run) yields to the function's own work on
        # this host; it takes our priority back once warm
        self.proc = subprocess.Popen([sys.executable, "-m", "criu_ext.migrate.rewriter",
                                      workdir, str(os.getpriority(os.PRIO_PROCESS, 0))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, close_fds=True)
        self._reader: threading.Thread | None = None
        self._answer: dict[int, tuple[str, bool]] | Exception = RewriterError("no job")

    def submit(self, images_dir: str, sockets: dict[int, int]) -> None:
        """Rewrite ``images_dir`` for ``sockets`` (source inode -> UDP port)."""
        assert self.proc.stdin is not None
        # in their order: the stand-ins' inodes follow it (inherit.stand_ins)
        line = json.dumps({"dir": images_dir, "sockets": list(sockets.items())})
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise RewriterError(f"the image rewriter is gone: {exc}") from None
        self._reader = threading.Thread(target=self._read, name="criu-ext-rewriter",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        from criu_ext.migrate.inherit import InheritError

        assert self.proc.stdout is not None
        try:
            answer = json.loads(self.proc.stdout.readline(MAX_ANSWER))
        except (OSError, ValueError):
            self._answer = RewriterError("the image rewriter ended without an answer")
            return
        if not isinstance(answer, dict):
            self._answer = RewriterError("the image rewriter answered nonsense")
        elif "error" in answer:
            self._answer = InheritError(str(answer["error"])[:500])
        else:
            try:
                self._answer = {int(inode): (str(key), bool(reuse))
                                for inode, key, reuse in answer["keys"]}
            except (KeyError, TypeError, ValueError):
                self._answer = RewriterError("the image rewriter answered nonsense")

    def result(self, timeout: float) -> dict[int, tuple[str, bool]]:
        """The job's keys (inherit.as_inherited's); InheritError as the rewrite said it,
        RewriterError when the process said nothing usable within ``timeout`` s."""
        reader, self._reader = self._reader, None
        if reader is None:
            raise RewriterError("no job was given to the image rewriter")
        reader.join(timeout)
        if reader.is_alive():
            raise RewriterError(f"the image rewriter said nothing in {timeout:.0f} s")
        answer, self._answer = self._answer, RewriterError("no job")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self._reader is not None:  # its read ends with the process
            self._reader.join(5.0)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def main() -> None:
    """The process: one JSON job a line on stdin, one JSON answer a line on stdout."""
    os.setpriority(os.PRIO_PROCESS, 0, 19)  # its imports yield to the function's work
    from criu_ext.migrate.inherit import InheritError, as_inherited, warm

    warm(sys.argv[1])  # the first job then runs warm
    try:  # the job comes in a freeze: at its caller's priority (root may raise it back)
        os.setpriority(os.PRIO_PROCESS, 0, int(sys.argv[2]))
    except (IndexError, ValueError, PermissionError):
        pass
    for line in sys.stdin:
        try:
            job = json.loads(line)
            keys = as_inherited(os.fspath(job["dir"]),
                                {int(i): int(p) for i, p in job["sockets"]})
            answer: dict = {"keys": [[i, k, r] for i, (k, r) in keys.items()]}
        except (InheritError, OSError, ValueError, KeyError, TypeError) as exc:
            answer = {"error": str(exc)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
