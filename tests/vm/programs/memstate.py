"""ZDTM-style test program: keep state in memory, wait for SIGUSR1, check it, say PASS/FAIL.

    memstate.py OUT

Writes OUT.expect (a token that exists only in this process's memory, and the
digest of 4 MiB of random memory), then counts until SIGUSR1 arrives and writes
OUT.result: "PASS|FAIL token digest ticks". Between the two it may be dumped,
killed and restored by CRIU: only a faithful restore of its memory gives PASS
with the same token.
"""

import hashlib
import os
import sys
import time

from zdtm import Wake, publish

out = sys.argv[1]
token = os.urandom(16).hex()
data = bytearray(os.urandom(4 << 20))
digest = hashlib.sha256(data).hexdigest()
wake = Wake()
publish(out + ".expect", f"{token} {digest}")
ticks = 0
while not wake.woken:
    ticks += 1
    time.sleep(0.01)
ok = hashlib.sha256(data).hexdigest() == digest
publish(out + ".result", f"{'PASS' if ok else 'FAIL'} {token} {digest} {ticks}")
