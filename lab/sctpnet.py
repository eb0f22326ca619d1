"""Hosts as network namespaces, numbered SCTP traffic, and the move itself.

Three hosts hang off one bridge: the peer P, and A and B between which the
endpoint's service address moves. Traffic is numbered per stream in both
directions; each side checks what it receives from the inside (its own
counters: no gap, no duplicate, no reordering within a stream), the way
CRIU's ZDTM tests check their own state.
"""

from __future__ import annotations

import errno
import socket
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

from lab.files import wait_until
from lab.netns import sctp_mib
from procns.netns import in_netns
from sctp_repair import abi, release, restore, save, status
from sctp_repair.repair import QueuesNotEmpty, new_socket

SCTP_SNDINFO = 2        # cmsg type: struct sctp_sndinfo
SCTP_RCVINFO = 3        # cmsg type: struct sctp_rcvinfo
SCTP_RECVRCVINFO = 32   # sockopt
SNDINFO = struct.Struct("=HHIIi")

NSTREAMS = 4


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


@dataclass
class Family:
    name: str
    af: int
    prefix: str       # network, without the host part
    plen: int

    def addr(self, host: int) -> str:
        return f"{self.prefix}{host:x}" if self.af == socket.AF_INET6 else f"{self.prefix}{host}"


V4 = Family("ipv4", socket.AF_INET, "10.77.0.", 24)
V6 = Family("ipv6", socket.AF_INET6, "fd77::", 64)
P_HOST, A_HOST, B_HOST, SVC_HOST = 1, 2, 3, 10


class Net:
    """Bridge + namespaces P, A, B, each with a veth on the bridge, dual stack."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.bridge = f"rbr{tag}"
        self.ns = {h: f"rp{h}-{tag}" for h in "PAB"}
        self.locked: set[str] = set()

    def path(self, host: str) -> str:
        return f"/run/netns/{self.ns[host]}"

    def ip(self, host: str, *args: str) -> None:
        sh("ip", "-n", self.ns[host], *args)

    def nsexec(self, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("nsenter", f"--net={self.path(host)}", *args, check=check)

    def snmp(self, host: str) -> dict[str, int]:
        """The host's non-zero SCTP MIB counters (/proc/net/sctp/snmp)."""
        return {k: v for k, v in sctp_mib(self.ns[host]).items() if v}

    def up(self) -> Net:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for n, host in enumerate("PAB"):
            ns = self.ns[host]
            sh("ip", "netns", "add", ns)
            self.nsexec(host, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0",
                        # Short retransmission timers, and patience: under
                        # software emulation a move takes seconds, and the peer
                        # must neither give up on the path nor the association.
                        "net.sctp.rto_min=100", "net.sctp.rto_initial=300",
                        "net.sctp.rto_max=1000", "net.sctp.path_max_retrans=100",
                        "net.sctp.association_max_retrans=200")
            outer = f"{self.bridge[:8]}{host}{n}"
            sh("ip", "link", "add", outer, "type", "veth", "peer", "eth0", "netns", ns)
            sh("ip", "link", "set", outer, "master", self.bridge, "up")
            self.ip(host, "link", "set", "lo", "up")
            self.ip(host, "link", "set", "eth0", "up")
            host_no = {"P": P_HOST, "A": A_HOST, "B": B_HOST}[host]
            for fam in (V4, V6):
                self.ip(host, "addr", "add", f"{fam.addr(host_no)}/{fam.plen}", "dev", "eth0",
                        *(["nodad"] if fam.af == socket.AF_INET6 else []))
        return self

    def down(self) -> None:
        for ns in self.ns.values():
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)

    def add_svc(self, host: str, fam: Family) -> None:
        self.ip(host, "addr", "add", f"{fam.addr(SVC_HOST)}/{fam.plen}", "dev", "eth0",
                *(["nodad"] if fam.af == socket.AF_INET6 else []))

    def del_svc(self, host: str, fam: Family) -> None:
        self.ip(host, "addr", "del", f"{fam.addr(SVC_HOST)}/{fam.plen}", "dev", "eth0")

    def lock(self, host: str) -> None:
        """Drop every SCTP packet in and out of ``host`` (as CRIU locks TCP)."""
        rules = ("table inet rplock {\n"
                 " chain in { type filter hook input priority -300; meta l4proto sctp drop; }\n"
                 " chain out { type filter hook output priority -300; meta l4proto sctp drop; }\n"
                 "}\n")
        subprocess.run(["nsenter", f"--net={self.path(host)}", "nft", "-f", "-"],
                       input=rules, text=True, check=True, capture_output=True)
        self.locked.add(host)

    def unlock(self, host: str) -> None:
        self.nsexec(host, "nft", "delete", "table", "inet", "rplock")
        self.locked.discard(host)

    def forget_neighbours(self, host: str) -> None:
        """What a gratuitous ARP / unsolicited NA from the new host would do."""
        self.nsexec(host, "ip", "neigh", "flush", "dev", "eth0")
        self.nsexec(host, "ip", "-6", "neigh", "flush", "dev", "eth0")

    def socket(self, host: str, af: int, type_: int = socket.SOCK_STREAM) -> socket.socket:
        with in_netns(self.path(host)):
            return socket.socket(af, type_, abi.IPPROTO_SCTP)


def subscribe(sock: socket.socket, *types: int) -> None:
    for t in types:
        sock.setsockopt(abi.SOL_SCTP, abi.SCTP_EVENT, bytes(abi.SctpEvent(0, t, 1)))
    sock.setsockopt(abi.SOL_SCTP, SCTP_RECVRCVINFO, 1)


NOTIFY_TYPES = (abi.SCTP_ASSOC_CHANGE, abi.SCTP_PEER_ADDR_CHANGE, abi.SCTP_SHUTDOWN_EVENT)


def send_on(sock: socket.socket, sid: int, data: bytes, flags: int = 0) -> None:
    sock.sendmsg([data], [(abi.IPPROTO_SCTP, SCTP_SNDINFO, SNDINFO.pack(sid, 0, 0, 0, 0))],
                 flags)


@dataclass
class Counters:
    """One direction, seen from one side: what was sent, received, and wrong."""
    sent: list[int] = field(default_factory=lambda: [0] * NSTREAMS)
    received: list[int] = field(default_factory=lambda: [0] * NSTREAMS)
    errors: list[str] = field(default_factory=list)
    notifications: list[tuple[int, int]] = field(default_factory=list)  # (type, state)

    def take(self, data: bytes, ancdata, flags: int) -> None:
        if flags & abi.MSG_NOTIFICATION:
            sn_type, = struct.unpack_from("=H", data, 0)
            state = struct.unpack_from("=H", data, 8)[0] if sn_type == abi.SCTP_ASSOC_CHANGE \
                else -1
            self.notifications.append((sn_type, state))
            return
        sid = -1
        for level, type_, val in ancdata:
            if level == abi.IPPROTO_SCTP and type_ == SCTP_RCVINFO:
                sid, = struct.unpack_from("=H", val, 0)
        try:
            tag_sid, n = (int(x) for x in data.split(b":")[:2])
        except ValueError:
            self.errors.append(f"garbled message {data[:40]!r}")
            return
        if tag_sid != sid:
            self.errors.append(f"message for stream {tag_sid} arrived on stream {sid}")
            return
        want = self.received[sid]
        if n != want:
            kind = "duplicate/reordered" if n < want else "lost"
            self.errors.append(f"stream {sid}: got {n}, expected {want} ({kind})")
            self.received[sid] = max(want, n + 1)
        else:
            self.received[sid] = n + 1

    def next_message(self, i: int) -> tuple[int, bytes]:
        sid = i % NSTREAMS
        return sid, b"%d:%d:" % (sid, self.sent[sid]) + b"x" * (20 + i % 200)


class Peer:
    """The peer P: a sender thread and a receiver thread on one socket."""

    def __init__(self, sock: socket.socket, interval: float = 0.02) -> None:
        self.sock = sock
        self.c = Counters()
        self.interval = interval
        self.sending = threading.Event()
        self._in_flight = threading.Lock()  # held from the sending check to the count
        self.stop = threading.Event()
        self.fatal: list[str] = []
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._recv, daemon=True)]

    def start(self) -> Peer:
        self.sending.set()
        for t in self._threads:
            t.start()
        return self

    def pause(self) -> None:
        """Stop sending; returns once a message already on its way is counted."""
        self.sending.clear()
        with self._in_flight:
            pass

    def _send(self) -> None:
        i = 0
        while not self.stop.is_set():
            with self._in_flight:
                if self.sending.is_set():
                    sid, msg = self.c.next_message(i)
                    try:
                        send_on(self.sock, sid, msg)
                    except TimeoutError:
                        # The send buffer is full while the endpoint is away (the
                        # socket's timeout is the receiver's): the message was not
                        # queued, try it again.
                        continue
                    except OSError as e:
                        self.fatal.append(f"peer send: {e}")
                        return
                    self.c.sent[sid] += 1
                    i += 1
            time.sleep(self.interval)

    def _recv(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data, anc, flags, _ = self.sock.recvmsg(65536, 256)
            except socket.timeout:
                continue
            except OSError as e:
                self.fatal.append(f"peer recv: {e}")
                return
            if not data and not flags & abi.MSG_NOTIFICATION:
                # Once a SHUTDOWN came in, an empty queue reads as the end even
                # though SHUTDOWN_COMP is still to be queued: go on reading.
                if "peer recv: end of association" not in self.fatal:
                    self.fatal.append("peer recv: end of association")
                time.sleep(0.05)
                continue
            self.c.take(data, anc, flags)

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(5)


class Endpoint:
    """The endpoint that moves: driven from the test's thread, non-blocking."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.c = Counters()
        self.i = 0

    def send_one(self) -> bool:
        sid, msg = self.c.next_message(self.i)
        try:
            send_on(self.sock, sid, msg, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        self.c.sent[sid] += 1
        self.i += 1
        return True

    def drain(self) -> int:
        n = 0
        while True:
            try:
                data, anc, flags, _ = self.sock.recvmsg(65536, 256, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return n
            if not data and not flags & abi.MSG_NOTIFICATION:
                raise AssertionError("endpoint: the association ended")
            self.c.take(data, anc, flags)
            n += 1

    def run(self, seconds: float, interval: float = 0.02) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.send_one()
            self.drain()
            time.sleep(interval)




@dataclass
class Move:
    state: object
    seconds: float          # from lock to unlock


def move(net: Net, ep: Endpoint, fam: Family, src: str = "A", dst: str = "B",
         subscribe_new: bool = True) -> Move:
    """Save the endpoint on ``src``, close it silently, restore it on ``dst``."""
    # Everything we sent must be acknowledged before the lock: queues are
    # not carried.
    wait_until(lambda: status(ep.sock).sstat_unackdata == 0
               and status(ep.sock).sstat_penddata == 0, 20, "the peer to ack our data",
               poll=ep.drain)
    t0 = time.monotonic()
    net.lock(src)
    state = None
    for _ in range(50):
        ep.drain()
        try:
            state = save(ep.sock)
            break
        except QueuesNotEmpty:
            time.sleep(0.05)
    assert state is not None, "the association never became quiescent"
    release(ep.sock)
    net.del_svc(src, fam)
    net.lock(dst)
    net.add_svc(dst, fam)
    with in_netns(net.path(dst)):
        sock = new_socket(state)
    if subscribe_new:
        subscribe(sock, *NOTIFY_TYPES)
    restore(sock, state)
    net.forget_neighbours("P")
    net.unlock(dst)
    net.unlock(src)
    ep.sock = sock
    return Move(state, time.monotonic() - t0)


def check_errno(fn, want: int) -> None:
    try:
        fn()
    except OSError as e:
        assert e.errno == want, f"expected {errno.errorcode[want]}, got {e!r}"
    else:
        raise AssertionError(f"expected {errno.errorcode[want]}, got success")
