"""ZDTM-style memory writer: dirties its memory steadily, checks all of it on SIGUSR1.

    memwriter.py OUT [MIB] [PAGES_PER_TICK]

Fills MIB MiB with pages derived from a seed that exists only in its memory
(written to OUT.expect as a token), then every 50 ms stamps PAGES_PER_TICK
pages with a counter it also keeps in memory. On SIGUSR1 it rebuilds every
page from the seed and its counters and writes OUT.result:
"PASS|FAIL token pages stamps". A pre-copy that missed a dirtied page, or a
restore that lost one, gives FAIL.
"""

import hashlib
import os
import sys
import time

from zdtm import Wake, publish

PAGE = 4096
out = sys.argv[1]
mib = int(sys.argv[2]) if len(sys.argv) > 2 else 16
per_tick = int(sys.argv[3]) if len(sys.argv) > 3 else 40
seed = os.urandom(16)
npages = (mib << 20) // PAGE


def base(p: int) -> bytes:
    return hashlib.shake_128(seed + p.to_bytes(4, "little")).digest(PAGE)


buf = bytearray(b"".join(base(p) for p in range(npages)))
stamps = [0] * npages
wake = Wake()
publish(out + ".expect", f"{seed.hex()} {npages}")
total = 0
cursor = 0
while not wake.woken:
    for _ in range(per_tick):
        p = cursor % npages
        cursor += 7  # co-prime with any power of two: every page gets its turn
        stamps[p] += 1
        total += 1
        buf[p * PAGE:p * PAGE + 8] = stamps[p].to_bytes(8, "little")
    time.sleep(0.05)
bad = 0
for p in range(npages):
    page = base(p)
    if stamps[p]:
        page = stamps[p].to_bytes(8, "little") + page[8:]
    if buf[p * PAGE:(p + 1) * PAGE] != page:
        bad += 1
publish(out + ".result", f"{'PASS' if not bad else 'FAIL'} {seed.hex()} {npages} {total} {bad}")
