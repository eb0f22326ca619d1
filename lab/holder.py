"""A task that only holds UDP sockets: ``python -m lab.holder ADDR:PORT ...``.

Prints ``READY <pid> <fd> <fd> ...`` (one fd per socket, in argument order) and
sleeps until killed. Tests bind gtp devices to its sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


def main() -> None:
    socks = []
    for spec in sys.argv[1:]:
        addr, port = spec.rsplit(':', 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, int(port)))
        socks.append(s)
    print('READY', os.getpid(), *[s.fileno() for s in socks], flush=True)
    while True:
        signal.pause()


def start(netns_path: str, *specs: str) -> tuple[subprocess.Popen, list[int]]:
    """Start a holder inside ``netns_path``; returns the process and its socket fds."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen(['nsenter', f'--net={netns_path}', '--', sys.executable, '-m',
                          'lab.holder', *specs], cwd=repo, stdout=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, close_fds=True, text=True)
    line = p.stdout.readline().split()
    if not line or line[0] != 'READY':
        p.kill()
        raise RuntimeError('UDP holder did not start')
    return p, [int(x) for x in line[2:]]


if __name__ == '__main__':
    main()
