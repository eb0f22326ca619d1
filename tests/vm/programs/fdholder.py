"""A task for test_external_netns: a UDP socket bound to PORT and the read end of a pipe
(its write end closed, so the pipe has one end CRIU can match), their descriptor numbers
published in OUT as "UDP_FD PIPE_FD"; then it sleeps until killed.

    fdholder.py OUT PORT
"""

import os
import socket
import sys
import time

from zdtm import publish

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", int(sys.argv[2])))
r, w = os.pipe()
os.close(w)
publish(sys.argv[1], f"{udp.fileno()} {r}")
while True:
    time.sleep(1)
