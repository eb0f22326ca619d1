"""Carry the SCTP sockets of a task tree around CRIU, which refuses them.

Dump (before CRIU seizes the tree, docs/sctp-criu.md has the why):
1. find every SCTP socket of every process (a copy of each through
   pidfd_getfd); refuse what cannot be carried before touching anything;
2. drain: repair mode on (the kernel drops incoming DATA, takes SACKs), new
   INITs dropped; wait until nothing is unread, unacked or undelivered;
3. stop the tree (SIGSTOP), wait for the last SACKs, hold: drop every packet
   of the carried ports;
4. save each association, each socket's options and addresses;
5. swap: in each process, the socket's descriptor becomes the read end of a
   pipe (same number, same epoll registrations), which CRIU dumps happily;
6. close the copies silently: the associations are now only in the image.
CRIU then dumps the tree as stopped.

Put back (on the destination after CRIU's restore, or on the source when the
dump fails or leaves the tree running): create the sockets from the image in
the task's netns (repaired associations first, then listeners, still in repair
mode), swap them in for the pipes, lift the rules, end repair mode (its kick
and the chunks carried in flight reach the peer at once) and send again what
was never sent, SIGCONT the tree.

A failure at any step before the copies are closed puts the original sockets
back and lets the tree go on: the associations never noticed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from criu_ext import inject, sctp_fence, tasks
from procns.fds import steal_fd
from procns.files import MiB, UnsafeFile, atomic_file, read_json
from procns.netns import in_netns, netns_path
from procns.syscalls import pidfd_getfd
from sctp_repair import abi, sockopts
from sctp_repair.state import AssocState

IMAGE = "criu-ext-sctp.json"
FORMAT = 1
LISTENER, ASSOC, RESTART, IDLE = "listener", "association", "restart", "idle"
ROLES = (LISTENER, ASSOC, RESTART, IDLE)
PID_MAX = 1 << 22  # PID_MAX_LIMIT on 64-bit
FD_MAX = (1 << 31) - 1
MAX_IMAGE = 16 * MiB  # criu-ext-sctp.json
MAX_SOCKETS = 4096
MAX_QUEUED_BYTES = MAX_IMAGE // 4  # what the image has room for, in hex, beside the rest


class CarryError(Exception):
    """An SCTP socket cannot be carried, or putting it back failed; one line, says why."""


@dataclass
class Carried:
    """One SCTP socket at one descriptor of one process."""

    pid: int
    vpid: int  # the pid inside its pid namespace (what CRIU restores)
    fd: int
    cloexec: bool
    role: str
    setup: sockopts.SocketSetup
    epoll: list[tasks.EpollWatch] = field(default_factory=list)
    assoc: AssocState | None = None
    peer: tuple[str, int] | None = None
    sock: socket.socket | None = None  # our live copy (dump side)

    @property
    def where(self) -> str:
        return f"fd {self.fd} of pid {self.pid}"

    def live(self) -> socket.socket:
        """The live copy of the socket (dump side)."""
        if self.sock is None:
            raise CarryError(f"{self.describe()}: its socket copy is already closed")
        return self.sock

    def describe(self) -> str:
        local = ",".join(f"[{a}]:{p}" for a, p in self.setup.local_addrs) or "unbound"
        peer = f" <-> [{self.peer[0]}]:{self.peer[1]}" if self.peer else ""
        return f"{self.role} {local}{peer} ({self.where})"

    def to_dict(self) -> dict:
        return {"pid": self.pid, "vpid": self.vpid, "fd": self.fd, "cloexec": self.cloexec,
                "role": self.role, "setup": self.setup.to_dict(),
                "epoll": [w.to_dict() for w in self.epoll],
                "assoc": self.assoc.to_bytes().hex() if self.assoc else None,
                "peer": list(self.peer) if self.peer else None}

    @classmethod
    def from_dict(cls, d: dict) -> Carried:
        """From :meth:`to_dict`'s form, every field checked (it comes from an image);
        ValueError, TypeError or KeyError when a field is missing, mistyped or out
        of range, or the role is not one this version knows."""
        pid, vpid, fd = (_int(d[k], k, PID_MAX if k != "fd" else FD_MAX)
                         for k in ("pid", "vpid", "fd"))
        role = d["role"]
        if role not in ROLES:
            raise ValueError(f"role {role!r:.40} is not one of {', '.join(ROLES)}")
        if type(d["cloexec"]) is not bool:
            raise ValueError("cloexec must be true or false")
        watches = d["epoll"]
        if not isinstance(watches, list) or len(watches) > 64:
            raise ValueError("epoll: not a list of at most 64 registrations")
        epoll = [tasks.EpollWatch(_int(w["epfd"], "epfd", FD_MAX), fd,
                                  _int(w["events"], "events", 0xFFFFFFFF),
                                  _int(w["data"], "data", 0xFFFFFFFFFFFFFFFF), 0)
                 for w in watches]
        assoc = None
        if d["assoc"] is not None:
            if not isinstance(d["assoc"], str):
                raise ValueError("assoc is not a hex string")
            assoc = AssocState.from_bytes(bytes.fromhex(d["assoc"]))
        if (role == ASSOC) != (assoc is not None):
            raise ValueError(f"a socket of role {role} {'needs' if role == ASSOC else 'has'} "
                             "a saved association")
        peer = _peer(d["peer"]) if d["peer"] is not None else None
        if role in (ASSOC, RESTART) and peer is None:
            raise ValueError(f"a socket of role {role} needs its peer")
        return cls(pid=pid, vpid=vpid, fd=fd, cloexec=d["cloexec"], role=role,
                   setup=sockopts.SocketSetup.from_dict(d["setup"]), epoll=epoll,
                   assoc=assoc, peer=peer)


def _peer(v: object) -> tuple[str, int]:
    """[address, port] as a checked pair: it ends up in nft rules and connect()."""
    if not isinstance(v, list) or len(v) != 2:
        raise ValueError(f"peer {v!r:.60} is not [address, port]")
    addr, port = v
    try:
        # a scoped address (fe80::1%eth0) names an interface of the source host
        ip = ipaddress.ip_address(addr) if isinstance(addr, str) and "%" not in addr else None
    except ValueError:
        ip = None
    if ip is None:
        raise ValueError(f"peer address {addr!r:.60} is not a plain IP address")
    if type(port) is not int or not 0 < port < 65536:
        raise ValueError(f"peer port {port!r:.40} is not a port number")
    return str(ip), port


def _int(v: object, what: str, top: int) -> int:
    if type(v) is not int or not 0 <= v <= top:
        raise ValueError(f"{what} {v!r:.40} is not an integer in [0, {top}]")
    return v


def vpid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return pid


# -- finding and judging -----------------------------------------------------------


def discover(root: int, fallback: str | None, repair: bool) -> list[Carried]:
    """Every SCTP socket of the tree, judged; raises CarryError (nothing touched) if one
    cannot be carried. The returned items hold a live copy of their socket."""
    found: list[Carried] = []
    seen: dict[int, str] = {}
    try:
        for pid in tasks.tree(root):
            links = tasks.fds(pid)
            inodes = {fd: tasks.socket_inode(link) for fd, link in links.items()}
            socks = {fd: ino for fd, ino in inodes.items() if ino is not None}
            if not socks:
                continue
            watches = None
            pidfd = os.pidfd_open(pid)
            try:
                for fd, ino in sorted(socks.items()):
                    try:
                        copy = socket.socket(fileno=pidfd_getfd(pidfd, fd))
                    except OSError as exc:
                        raise CarryError(f"cannot look at fd {fd} of pid {pid}: "
                                         f"{exc.strerror or exc}") from exc
                    if copy.proto != abi.IPPROTO_SCTP:
                        copy.close()
                        continue
                    if ino in seen:
                        copy.close()
                        raise CarryError(f"SCTP socket at fd {fd} of pid {pid} is also {seen[ino]}: "
                                         "shared SCTP sockets are not supported")
                    seen[ino] = f"fd {fd} of pid {pid}"
                    if watches is None:
                        watches = tasks.epoll_watches(pid, links)
                    item = _judge(pid, fd, copy, fallback, repair)
                    item.epoll = [w for w in watches if w.fd == fd and w.ino in (ino, 0)]
                    found.append(item)
            finally:
                os.close(pidfd)
    except (CarryError, OSError) as exc:
        close_copies(found)
        if isinstance(exc, CarryError):
            raise
        raise CarryError(f"cannot read the task tree of pid {root}: {exc}") from exc
    return found


def _judge(pid: int, fd: int, copy: socket.socket, fallback: str | None,
           repair: bool) -> Carried:
    def refuse(why: str) -> CarryError:
        copy.close()
        return CarryError(f"SCTP socket at fd {fd} of pid {pid}: {why}; nothing was changed")

    stype = copy.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if stype != socket.SOCK_STREAM:
        raise refuse("one-to-many style (SOCK_SEQPACKET) sockets are not supported, "
                     "only one-to-one style (SOCK_STREAM)")
    setup = sockopts.read_setup(copy)
    item = Carried(pid, vpid_of(pid), fd, tasks.cloexec(pid, fd), IDLE, setup, sock=copy)
    if setup.listening:
        item.role = LISTENER
        return item
    state = sockopts.assoc_state(copy)
    if state in (None, abi.State.EMPTY, abi.State.CLOSED):
        return item
    if state != abi.State.ESTABLISHED:
        raise refuse(f"its association is in state {state.name}, neither established nor "
                     "closed; try again in a moment")
    item.peer = tuple(copy.getpeername()[:2])
    if repair:
        item.role = ASSOC
    elif fallback == "restart":
        item.role = RESTART
    else:
        raise refuse(f"established association with [{item.peer[0]}]:{item.peer[1]} and this "
                     "kernel has no SCTP repair mode (boot a kernel with kernel-patches/); "
                     "or ask for the restart fallback, which the peer sees as a restart")
    return item


def close_copies(items: list[Carried]) -> None:
    for it in items:
        if it.sock is not None:
            it.sock.close()
            it.sock = None


# -- dump side ------------------------------------------------------------------------


def drain(items: list[Carried], timeout: float, stopped: bool, rcvq: bool = False,
          sndq: bool = False) -> None:
    """Wait until no association has data undelivered, nor unread unless the receive
    queue is carried (``rcvq``), nor unacknowledged unless the send queue is (``sndq``)."""
    deadline = time.monotonic() + timeout
    busy: list[str] = []
    while True:
        busy = []
        for it in items:
            if it.role == ASSOC:  # a restart fails what is queued anyway: no wait for it
                unacked, pending, inq = sockopts.queued(it.live())
                if rcvq:
                    inq = 0
                if sndq:
                    unacked = 0
                if unacked or pending or inq:
                    busy.append(f"{it.describe()}: {unacked} unacked, {pending} undelivered, "
                                f"{inq} bytes unread")
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if busy:
        who = "the stopped task cannot read it" if stopped else "the task does not read it"
        raise CarryError(f"SCTP queues did not drain in {timeout:.1f} s ({who}): {busy[0]}")


def pause(items: list[Carried], rcvq: bool = False, sndq: bool = False) -> None:
    from sctp_repair import repair
    for it in items:
        if it.role == ASSOC:
            try:
                repair.pause(it.live(), rcvq, sndq)
            except repair.RepairError as exc:
                raise CarryError(f"{it.describe()}: {exc}") from exc


def save(items: list[Carried], wait: float, rcvq: bool = False, sndq: bool = False) -> None:
    from sctp_repair import repair
    for it in items:
        if it.role == ASSOC:
            try:
                it.assoc = repair.save(it.live(), wait=wait, rcvq=rcvq, sndq=sndq)
            except repair.RepairError as exc:
                raise CarryError(f"{it.describe()}: {exc}") from exc
    queued = sum(len(m.data) for it in items if it.assoc
                 for m in it.assoc.unread + it.assoc.in_flight + it.assoc.unsent)
    if queued > MAX_QUEUED_BYTES:  # the image is JSON with the states in hex
        raise CarryError(f"{queued} bytes queued in the SCTP sockets, more than the image "
                         f"carries ({MAX_QUEUED_BYTES}): let them drain first")


def unrepair(items: list[Carried]) -> None:
    from sctp_repair import repair
    for it in items:
        if it.role == ASSOC and it.sock is not None:
            try:
                repair.resume(it.sock)
            except repair.RepairError:
                pass


def by_process(items: list[Carried]) -> dict[int, list[Carried]]:
    out: dict[int, list[Carried]] = {}
    for it in items:
        out.setdefault(it.pid, []).append(it)
    return out


def swap_out(pid: int, items: list[Carried], done: list[Carried]) -> None:
    """Replace each socket of ``pid`` by a pipe's read end. ``done`` gets every item this
    touched, before touching it: putting those back undoes a failure half-way."""
    try:
        with inject.Remote(pid) as r:
            for it in items:
                done.append(it)
                for w in it.epoll:
                    r.epoll_del(w.epfd, it.fd)
                r.plug(it.fd, it.cloexec)
                for w in it.epoll:
                    r.epoll_add(w.epfd, it.fd, w.events, w.data)
    except inject.InjectError as exc:
        raise CarryError(f"swapping the SCTP sockets of pid {pid} out: {exc}") from exc


def swap_in(pid: int, items: list[Carried], socks: dict[int, socket.socket]) -> None:
    """Install ``socks[fd]`` at each item's descriptor of ``pid``, with its epoll registrations."""
    try:
        with inject.Remote(pid) as r:
            for it in items:  # epoll first loses the old socket, then gets the new one
                for w in it.epoll:
                    r.epoll_del(w.epfd, it.fd)
            r.put_all([(socks[it.fd].fileno(), it.fd, it.cloexec) for it in items])
            for it in items:
                for w in it.epoll:
                    r.epoll_add(w.epfd, it.fd, w.events, w.data)
    except inject.InjectError as exc:
        raise CarryError(f"putting the SCTP sockets of pid {pid} back: {exc}") from exc


def _carried_queues() -> tuple[bool, bool]:
    from sctp_repair.repair import probe
    kernel = probe()
    return kernel.rcvq, kernel.sndq


def take(root: int, items: list[Carried], drain_timeout: float,
         on_saved: Callable[[list[int]], None] | None = None,
         queues: bool = True) -> list[int]:
    """Steps 2-6 of the dump. Returns the stopped tree. On failure the tree runs on as before.
    ``on_saved(tree)`` runs once every association is saved, before the first swap: where
    the caller writes the image, so that from then on the image can put them back even if
    this process dies. On a kernel with SCTP_REPAIR_RCVQ the messages the task has not
    read are carried in the image, and with SCTP_REPAIR_SNDQ what its peers have not
    acknowledged too: the drain then waits for neither (unless ``queues`` is False)."""
    pids = tasks.tree(root)
    netns = netns_path(pid=root)
    ports = {it.setup.port for it in items if it.setup.port}
    swapped: dict[int, list[Carried]] = {}
    stopped = False
    carried = queues and any(it.role == ASSOC for it in items)
    rcvq, sndq = _carried_queues() if carried else (False, False)
    try:
        if ports:
            sctp_fence.drain(netns, ports)
        pause(items, rcvq, sndq)  # repair mode: no more DATA comes in, SACKs still do
        drain(items, drain_timeout, stopped=False, rcvq=rcvq, sndq=sndq)
        tasks.stop(pids)
        stopped = True
        drain(items, drain_timeout, stopped=True, rcvq=rcvq, sndq=sndq)  # sent before the stop
        if ports:
            sctp_fence.hold(netns, ports)
        save(items, wait=drain_timeout, rcvq=rcvq, sndq=sndq)
        if on_saved is not None:
            on_saved(pids)
        for pid, group in by_process(items).items():
            swap_out(pid, group, swapped.setdefault(pid, []))
    except (CarryError, sctp_fence.FenceError, TimeoutError, OSError, UnsafeFile) as exc:
        _undo_take(items, swapped, pids, netns, stopped)
        raise CarryError(str(exc)) from exc
    close_copies(items)  # repair mode is on: the associations end without a word
    return pids


def _undo_take(items, swapped, pids, netns, stopped) -> None:
    for pid, done in swapped.items():
        if done:
            try:
                swap_in(pid, done, {it.fd: it.sock for it in done})
            except CarryError:
                pass
    unrepair(items)
    close_copies(items)
    try:
        sctp_fence.lift(netns)
    except sctp_fence.FenceError:
        pass
    if stopped:
        tasks.cont(pids)


def release(root: int, where: list[tuple[int, int]]) -> None:
    """What :func:`take` leaves when the process running it dies before the image was
    written (``where``: the (pid, fd) of each socket): the sockets are still the task's,
    in repair mode, the tree stopped, the drain or hold rules in place. Repair mode off,
    rules lifted, tree continued: the associations go on as if nothing was tried."""
    from sctp_repair import repair

    problems = []
    for pid, fd in where:
        try:
            copy = socket.socket(fileno=steal_fd(pid, fd))
        except OSError as exc:
            problems.append(f"fd {fd} of pid {pid}: {exc.strerror or exc}")
            continue
        try:
            if copy.proto == abi.IPPROTO_SCTP:
                repair.resume(copy)
        except repair.RepairError as exc:
            problems.append(f"fd {fd} of pid {pid}: {exc}")
        finally:
            copy.close()
    try:
        sctp_fence.lift(netns_path(pid=root))
    except sctp_fence.FenceError as exc:
        problems.append(str(exc))
    tasks.cont(tasks.tree(root))
    if problems:
        raise CarryError(f"releasing the SCTP sockets of pid {root}: {'; '.join(problems)}")


# -- image ------------------------------------------------------------------------------


def write_image(path: str, root: int, pids: list[int], items: list[Carried]) -> None:
    data = {"format": FORMAT, "root_vpid": vpid_of(root),
            "tree_vpids": [vpid_of(p) for p in pids],
            "sockets": [it.to_dict() for it in items]}
    with atomic_file(path, "w", 0o600) as f:  # O_EXCL|O_NOFOLLOW: no planted link followed
        json.dump(data, f, indent=1)
        f.write("\n")


def read_image(path: str) -> tuple[list[int], list[Carried]]:
    """(tree vpids, carried sockets) of the image, every field checked; CarryError
    (one line) when it is missing, not a regular file, too large or malformed."""
    try:
        data = read_json(path, MAX_IMAGE)
    except FileNotFoundError:
        raise CarryError(f"{path} is missing: the dump carried no SCTP image") from None
    except UnsafeFile as exc:
        raise CarryError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise CarryError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else data
        raise CarryError(f"{path}: unknown format {found!r:.40} (this version reads {FORMAT})")
    try:
        vpids, socks = data["tree_vpids"], data["sockets"]
        if not isinstance(vpids, list) or not isinstance(socks, list) \
                or len(vpids) > MAX_SOCKETS or len(socks) > MAX_SOCKETS:
            raise ValueError(f"tree_vpids and sockets must be lists of at most {MAX_SOCKETS}")
        tree = [_int(v, "tree vpid", PID_MAX) for v in vpids]
        items = []
        for i, d in enumerate(socks):
            try:
                items.append(Carried.from_dict(d))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"socket #{i}: {type(exc).__name__}: {exc}") from None
        return tree, items
    except (KeyError, TypeError, ValueError) as exc:
        raise CarryError(f"{path} is corrupt: {str(exc)[:200]}") from None


# -- put back ---------------------------------------------------------------------------


def pid_map(root: int) -> dict[int, int]:
    """vpid -> real pid over the restored tree."""
    return {vpid_of(p): p for p in tasks.tree(root)}


def peers(items: list[Carried]) -> list[tuple[str, int]]:
    """(address, port) of the far end of every carried association."""
    return sorted({it.peer for it in items if it.peer})


def needs_repair(items: list[Carried]) -> bool:
    return any(it.role == ASSOC for it in items)


def _create(item: Carried, netns: str) -> socket.socket:
    from sctp_repair import repair
    if item.role == ASSOC and item.assoc is None:  # read_image refuses that
        raise CarryError(f"{item.describe()}: no association state to restore")
    with in_netns(netns):
        sock = sockopts.new_socket(item.setup)
    try:
        sockopts.apply_setup(sock, item.setup)
        if item.role == ASSOC and item.assoc is not None:
            sock.setblocking(True)
            repair.restore(sock, item.assoc, keep_repair=True)  # until the rules go
            sock.setblocking(not item.setup.nonblocking)
        else:
            sockopts.bind_and_listen(sock, item.setup)
    except (sockopts.SetupError, repair.RepairError) as exc:
        sock.close()
        raise CarryError(f"re-creating {item.describe()}: {exc}") from exc
    return sock


def _connect_restart(item: Carried, sock: socket.socket, timeout: float) -> None:
    """The stock-kernel fallback: a new INIT from the same addresses, which the peer
    treats as a restart of the association (RFC 9260 5.2.4)."""
    if item.peer is None:  # read_image refuses that
        raise CarryError(f"restarting {item.describe()}: no peer address")
    blocking = sock.getblocking()
    sock.setblocking(False)
    err = sock.connect_ex(item.peer)
    if err not in (0, 115):  # EINPROGRESS
        raise CarryError(f"restarting {item.describe()}: {os.strerror(err)}")
    _, w, _ = select.select([], [sock], [], timeout)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    sock.setblocking(blocking)
    if not w or err:
        raise CarryError(f"restarting {item.describe()}: "
                         f"{os.strerror(err) if err else 'no answer'}")


def put_back(root: int, pids: list[int], items: list[Carried], log=None,
             connect_timeout: float = 10.0) -> None:
    """Create the sockets, swap them in, lift the rules, end repair mode, continue the tree.

    ``pids`` is the tree to continue; item pids are mapped through ``vpid``.
    """
    order = {ASSOC: 0, RESTART: 1, IDLE: 2, LISTENER: 3}  # bind conflicts: listeners last
    real = pid_map(root)
    socks: dict[tuple[int, int], socket.socket] = {}
    try:
        tasks.stop(pids)
        for it in sorted(items, key=lambda i: order[i.role]):
            pid = real.get(it.vpid)
            if pid is None:
                raise CarryError(f"pid {it.vpid} of the dump is not in the restored tree")
            it.pid = pid
            socks[(pid, it.fd)] = _create(it, netns_path(pid=pid))
        for pid, group in by_process(items).items():
            swap_in(pid, group, {it.fd: socks[(pid, it.fd)] for it in group})
        netns = netns_path(pid=root)
        restarts = [it for it in items if it.role == RESTART]
        if restarts:  # the peers still talk to the old association until their INIT
            sctp_fence.restart(netns, peers(restarts))
        for it in restarts:
            _connect_restart(it, socks[(it.pid, it.fd)], connect_timeout)
            if log:
                log.warning(f"{it.describe()}: restarted; the peer sees an SCTP restart")
        sctp_fence.lift(netns)
        _leave_repair([it for it in items if it.role == ASSOC], socks)
    except (sctp_fence.FenceError, TimeoutError, OSError) as exc:
        raise CarryError(str(exc)) from exc
    finally:
        for s in socks.values():
            s.close()
    tasks.cont(pids)


def _leave_repair(items: list[Carried], socks: dict[tuple[int, int], socket.socket]) -> None:
    """Repair mode off once the rules are gone, so that its kick reaches the peer and the
    chunks carried in flight go out at once; then the messages never sent, again."""
    from sctp_repair import repair
    for it in items:
        if it.assoc is None:  # _create refused such an item already
            continue
        sock = socks[(it.pid, it.fd)]
        blocking = sock.getblocking()
        try:
            sock.setblocking(True)
            repair.finish(sock, it.assoc)
            sock.setblocking(blocking)
        except repair.RepairError as exc:
            raise CarryError(f"{it.describe()}: {exc}") from exc
