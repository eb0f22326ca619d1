"""Save and restore an SCTP association through the kernel's repair mode.

One verb per step, like CRIU's soccr for TCP:

* ``pause(sock)``   turn repair mode on: close() becomes silent from now on, and
  incoming DATA is dropped (the peer retransmits it later) while SACKs are
  still taken, so the queues can drain while the peer keeps sending;
  ``rcvq=True``: the receive queue will be carried (``SCTP_REPAIR_ON_RCVQ``),
  ``sndq=True``: both queues (``SCTP_REPAIR_ON_QUEUES``);
* ``save(sock)``    read the association's state (``AssocState``), with the
  messages waiting to be read and the data in flight or not sent yet if the
  queues are carried;
* ``release(sock)`` close silently (no SHUTDOWN, no ABORT to the peer);
* ``restore(sock, state)`` on a fresh one-to-one socket: bind, set the state,
  connect() without a handshake (the association is ESTABLISHED at once),
  put the carried unread messages back on its receive queue and the chunks
  in flight on its retransmit queue, and once repair mode is off send the
  messages that were never sent;
* ``resume(sock)``  turn repair mode off: the socket works as usual.

Repair mode needs the patched kernel (``kernel-patches/``) and CAP_NET_ADMIN
in the socket's network namespace. ``save`` fails with ``QueuesNotEmpty``
while anything is unreassembled, unread unless the receive queue is carried
(``rcvq=True``, on a kernel with ``SCTP_REPAIR_RCVQ``: ``probe().rcvq``), or
unacknowledged or unsent unless the send queue is carried too (``sndq=True``,
``probe().sndq``; a chunk gap-acknowledged, a message partly sent or I-DATA
still drain); the caller pauses, lets the queues drain, stops the traffic (a
netfilter rule, as CRIU does for TCP), then saves. An association that could
not be restored (SCTP-AUTH/ADD-IP, SCTP over UDP, too many streams) is refused
by ``save`` with ``RepairError``, and repair mode is turned off again, before
anything is closed.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass

from . import abi, queues
from .sockopts import getsockopt_raw, getsockopt_sized, sctp_addrs
from .state import AssocState


class RepairError(Exception):
    """Repair mode could not do what was asked; the message says why."""


class RepairUnsupported(RepairError):
    """The running kernel has no SCTP repair mode (or no SCTP at all)."""


class QueuesNotEmpty(RepairError):
    """The association still has data queued, in flight or unread (EBUSY)."""


@dataclass
class Probe:
    sctp: bool            # the kernel opens SCTP sockets at all
    repair: bool          # SCTP_REPAIR is known
    detail: str
    rcvq: bool = False    # SCTP_REPAIR_RCVQ is known: the receive queue can be carried
    sndq: bool = False    # SCTP_REPAIR_SNDQ is known: the send queue can be carried

    def __str__(self) -> str:
        return self.detail


def probe() -> Probe:
    """Does the running kernel have SCTP repair mode?

    Asks an unprivileged getsockopt(SCTP_REPAIR) on a new socket: a stock
    kernel answers ENOPROTOOPT.
    """
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, abi.IPPROTO_SCTP)
    except OSError as e:
        return Probe(False, False, f"this kernel has no SCTP ({e.strerror}): "
                                   "repair mode is missing too")
    with s:
        try:
            s.getsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, 4)
        except OSError as e:
            if e.errno == errno.ENOPROTOOPT:
                return Probe(True, False, "SCTP works but this kernel has no SCTP repair "
                                          "mode (SCTP_REPAIR unknown): boot a kernel built "
                                          "with kernel-patches/")
            raise
        rcvq, sndq = (_knows(s, opt) for opt in (abi.SCTP_REPAIR_RCVQ, abi.SCTP_REPAIR_SNDQ))
    carried = " and ".join(what for what, ok in (("receive", rcvq), ("send", sndq)) if ok)
    return Probe(True, True, "SCTP repair mode is available, "
                 + (f"with the {carried} queue carried" if carried else
                    "without queues carried: unread and unacknowledged data drain"),
                 rcvq=rcvq, sndq=sndq)


def _knows(s: socket.socket, opt: int) -> bool:
    """Outside the repair mode that reads it, a kernel that knows a queue option says
    EPERM; one that does not, ENOPROTOOPT."""
    try:
        s.getsockopt(abi.SOL_SCTP, opt, abi.REPAIR_QUEUE_HDR.size)
    except OSError as e:
        if e.errno == errno.ENOPROTOOPT:
            return False
        if e.errno != errno.EPERM:
            raise
    return True


def _opt_error(e: OSError, what: str) -> RepairError:
    if e.errno == errno.ENOPROTOOPT:
        return RepairUnsupported(f"{what}: this kernel has no SCTP repair mode")
    if e.errno == errno.EBUSY:
        return QueuesNotEmpty(f"{what}: data is still queued, in flight or unread; "
                              "stop the traffic and let the queues drain first")
    if e.errno == errno.EPERM:
        return RepairError(f"{what}: not permitted (repair mode needs CAP_NET_ADMIN in "
                           "the socket's network namespace, and must be on)")
    if e.errno == errno.ENOTCONN:
        return RepairError(f"{what}: the socket has no ESTABLISHED association")
    if e.errno == errno.EMSGSIZE:  # transient: it goes once the owner reads it
        return QueuesNotEmpty(f"{what}: a message waiting to be read is longer than "
                              f"{abi.SCTP_REPAIR_MSG_MAX} bytes, which repair mode cannot "
                              "carry: let the owner read it")
    if e.errno == errno.ENOBUFS:
        return RepairError(f"{what}: the socket's buffer cannot take the saved queue (is "
                           "SO_RCVBUF or SO_SNDBUF smaller than where it was saved?)")
    if e.errno == errno.EOPNOTSUPP:
        return RepairError(f"{what}: not supported for this socket or association: "
                           "one-to-many socket, or an association repair mode cannot "
                           "restore (SCTP-AUTH/ADD-IP, SCTP over UDP, over "
                           f"{abi.SCTP_REPAIR_STREAMS_MAX} streams)")
    return RepairError(f"{what}: {e.strerror or e}")


def set_repair(sock: socket.socket, on: bool, rcvq: bool = False, sndq: bool = False) -> None:
    """Repair mode on or off; ``rcvq``: on, with the receive queue carried; ``sndq``:
    with both queues carried."""
    val = abi.SCTP_REPAIR_OFF
    if on:
        val = (abi.SCTP_REPAIR_ON_QUEUES if sndq else
               abi.SCTP_REPAIR_ON_RCVQ if rcvq else abi.SCTP_REPAIR_ON)
    try:
        sock.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, val)
    except OSError as e:
        raise _opt_error(e, f"SCTP_REPAIR {'on' if on else 'off'}") from e


def in_repair(sock: socket.socket) -> bool:
    try:
        return bool(struct.unpack("i", sock.getsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR, 4))[0])
    except OSError as e:
        raise _opt_error(e, "SCTP_REPAIR") from e


def status(sock: socket.socket) -> abi.SctpStatus:
    """SCTP_STATUS of the socket's association (stock kernels have it)."""
    buf = bytearray(ctypes.sizeof(abi.SctpStatus))
    raw = sock.getsockopt(abi.SOL_SCTP, abi.SCTP_STATUS, len(buf))
    return abi.SctpStatus.from_buffer_copy(raw.ljust(len(buf), b"\0"))


def pause(sock: socket.socket, rcvq: bool = False, sndq: bool = False) -> None:
    set_repair(sock, True, rcvq, sndq)


def resume(sock: socket.socket) -> None:
    set_repair(sock, False)


def save(sock: socket.socket, wait: float = 0.0, rcvq: bool = False,
         sndq: bool = False) -> AssocState:
    """State of the socket's ESTABLISHED association; repair mode is turned on.

    ``rcvq``: the messages waiting to be read are saved too (``state.unread``), in
    ``SCTP_REPAIR_ON_RCVQ`` mode: they need not be read first. ``sndq``: the send
    queue as well (``state.in_flight``, ``state.unsent``), in
    ``SCTP_REPAIR_ON_QUEUES`` mode: the peer need not acknowledge everything first.

    With ``wait``, retry for up to that many seconds while queues are not
    empty (a delayed SACK, data just received), then give up with
    ``QueuesNotEmpty`` (repair mode stays on: the queues drain meanwhile).
    Any other failure is lasting (the association cannot be saved at all):
    repair mode is turned off again, so that the association goes on taking
    DATA as if nothing had been tried.
    """
    deadline = time.monotonic() + wait if wait else 0.0
    while True:
        try:
            return _save(sock, rcvq or sndq, sndq)
        except QueuesNotEmpty:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
        except RepairError:
            try:
                resume(sock)
            except RepairError:
                pass
            raise


_ASSOC_SIZE = ctypes.sizeof(abi.SctpRepairAssoc)
_KEYED = int(abi.Cap.AUTH | abi.Cap.ASCONF)   # capabilities whose keys are not carried


def _refuse_keyed(caps: int, can: str) -> None:
    if caps & _KEYED:
        raise RepairError("the association uses SCTP-AUTH/ASCONF, whose keys repair "
                          f"mode does not carry: it {can} be restored")


def _save(sock: socket.socket, rcvq: bool, sndq: bool) -> AssocState:
    pause(sock, rcvq, sndq)
    if not sndq:
        return _read_state(sock, rcvq)
    # The send queue moves on its own (a retransmission, a SACK): read it between
    # two reads of the rest, and keep it only if nothing moved meanwhile.
    first = _read_state(sock, rcvq)
    try:
        raw = getsockopt_sized(sock, abi.SOL_SCTP, abi.SCTP_REPAIR_SNDQ, 4096)
    except OSError as e:
        raise _opt_error(e, "SCTP_REPAIR_SNDQ") from e
    state = _read_state(sock, rcvq)
    if state != first:
        raise QueuesNotEmpty("the association moved while its send queue was read")
    state.in_flight, state.unsent = queues.from_kernel(raw, queues.SNDQ)
    try:
        state.check()
    except ValueError as e:
        raise QueuesNotEmpty(f"the send queue does not match the state: {e}") from None
    return state


def _read_state(sock: socket.socket, rcvq: bool) -> AssocState:
    size = _ASSOC_SIZE
    try:
        raw = getsockopt_raw(sock, abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, size)
    except OSError as e:
        raise _opt_error(e, "SCTP_REPAIR_ASSOC") from e
    sra = abi.SctpRepairAssoc.from_buffer_copy(raw.ljust(size, b"\0"))
    _refuse_keyed(sra.sra_peer_caps, "could not")
    count = sra.sra_outstreams + sra.sra_instreams
    ssize = abi.REPAIR_STREAMS_HDR.size + count * abi.REPAIR_STREAM.size
    try:
        streams = getsockopt_raw(sock, abi.SOL_SCTP, abi.SCTP_REPAIR_STREAMS, ssize)
    except OSError as e:
        raise _opt_error(e, "SCTP_REPAIR_STREAMS") from e
    try:
        paths = sctp_addrs(sock, abi.SCTP_GET_PEER_ADDRS)
    except OSError as e:
        raise _opt_error(e, "SCTP_GET_PEER_ADDRS") from e
    state = AssocState.from_kernel(sra, streams)
    state.family = sock.family
    if rcvq:
        try:
            raw = getsockopt_sized(sock, abi.SOL_SCTP, abi.SCTP_REPAIR_RCVQ, 4096)
        except OSError as e:
            raise _opt_error(e, "SCTP_REPAIR_RCVQ") from e
        state.unread, _ = queues.from_kernel(raw, queues.RCVQ)
    if len(paths) > 1:
        primary = ipaddress.ip_address(state.peer_addr)
        state.peer_paths = [a for a, _ in paths if ipaddress.ip_address(a) != primary]
    return state


def release(sock: socket.socket) -> None:
    """Close the socket without a word to the peer (repair mode on, then close)."""
    try:
        if not in_repair(sock):
            pause(sock)
    finally:
        sock.close()


def family_of(state: AssocState) -> int:
    """The family of the saved socket (an IPv6 socket may carry an IPv4 association)."""
    if state.family in (socket.AF_INET, socket.AF_INET6):
        return state.family
    if ipaddress.ip_address(state.local_addr).version == 6:
        return socket.AF_INET6
    return socket.AF_INET


def new_socket(state: AssocState) -> socket.socket:
    """A fresh one-to-one SCTP socket of the family the state needs."""
    return socket.socket(family_of(state), socket.SOCK_STREAM, abi.IPPROTO_SCTP)


def _enable_extensions(sock: socket.socket, caps: int) -> None:
    # PR-SCTP and ECN are on by default; RE-CONFIG and I-DATA are off.
    assoc_value = struct.Struct("=iI")
    if caps & abi.Cap.RECONF:
        sock.setsockopt(abi.SOL_SCTP, abi.SCTP_RECONFIG_SUPPORTED, assoc_value.pack(0, 1))
    if caps & abi.Cap.INTL:
        sock.setsockopt(abi.SOL_SCTP, 18, 2)  # SCTP_FRAGMENT_INTERLEAVE level 2
        sock.setsockopt(abi.SOL_SCTP, abi.SCTP_INTERLEAVING_SUPPORTED,
                        assoc_value.pack(0, 1))


def restore(sock: socket.socket, state: AssocState, *, bind: bool = True,
            keep_repair: bool = False) -> None:
    """Make ``sock`` (new, unbound unless ``bind`` is False) the saved association.

    Turns repair mode on, binds to the saved local address and port (taken
    in repair mode even if a listener holds it; SO_REUSEADDR on, for a
    listener re-created after it), sets the state and connects
    to the saved peer, with its other addresses too if it is multi-homed
    (sctp_connectx, primary first): no INIT is sent, the association is
    ESTABLISHED when this returns, and no SCTP_COMM_UP is queued. The
    carried unread messages then go back on its receive queue, where the
    owner reads them from the peer's address as if just received, and the
    chunks that were in flight on its retransmit queue. Repair mode is
    turned off again (the chunks go out) and the messages never sent are
    sent again, unless ``keep_repair``: then the caller does both later, with
    ``finish``.
    """
    _refuse_keyed(state.peer_caps, "cannot")
    if state.unread or state.in_flight:
        kernel = probe()
        if state.unread and not kernel.rcvq:
            raise RepairError(f"the state carries {len(state.unread)} unread message(s) and "
                              "this kernel cannot take them back (no SCTP_REPAIR_RCVQ)")
        if state.in_flight and not kernel.sndq:
            raise RepairError(f"the state carries {len(state.in_flight)} chunk(s) in flight "
                              "and this kernel cannot take them back (no SCTP_REPAIR_SNDQ)")
    _enable_extensions(sock, state.peer_caps)
    pause(sock, sndq=bool(state.in_flight))  # a state with data in flight needs that mode
    if bind:
        # Repair mode takes the port even beside its listener; SO_REUSEADDR
        # lets a listener put back after this socket bind the port too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((state.local_addr, state.local_port))
        except OSError as e:
            raise RepairError(f"bind to [{state.local_addr}]:{state.local_port}: "
                              f"{e.strerror} (is the address configured here?)") from e
    sra, streams = state.to_kernel()
    try:
        sock.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_ASSOC, bytes(sra))
    except OSError as e:
        raise _opt_error(e, "SCTP_REPAIR_ASSOC") from e
    try:
        sock.setsockopt(abi.SOL_SCTP, abi.SCTP_REPAIR_STREAMS, streams)
    except OSError as e:
        raise _opt_error(e, "SCTP_REPAIR_STREAMS") from e
    try:
        if state.peer_paths:
            sock.setsockopt(abi.SOL_SCTP, abi.SCTP_SOCKOPT_CONNECTX, _packed_addrs(
                [state.peer_addr, *state.peer_paths], state.peer_port))
        else:
            sock.connect((state.peer_addr, state.peer_port))
    except OSError as e:
        raise RepairError(f"repaired connect to [{state.peer_addr}]:{state.peer_port}: "
                          f"{e.strerror}") from e
    for opt, name, queue in ((abi.SCTP_REPAIR_RCVQ, queues.RCVQ, state.unread),
                             (abi.SCTP_REPAIR_SNDQ, queues.SNDQ, state.in_flight)):
        for batch in queues.to_kernel(queue, name):
            try:
                sock.setsockopt(abi.SOL_SCTP, opt, batch)
            except OSError as e:
                raise _opt_error(e, name) from e
    if not keep_repair:
        finish(sock, state)


def finish(sock: socket.socket, state: AssocState) -> None:
    """The end of a restore: repair mode off (its kick sends the chunks carried in
    flight), then the messages the saved association had not sent at all, again, in
    order (they had no TSN or SSN yet)."""
    resume(sock)
    for m in state.unsent:
        info = _SNDINFO.pack(m.stream, abi.SCTP_UNORDERED if m.unordered else 0,
                             m.ppid, 0, 0)
        try:
            sock.sendmsg([m.data], [(abi.IPPROTO_SCTP, _SCTP_SNDINFO, info)])
        except OSError as e:
            raise RepairError(f"sending a saved unsent message again: {e.strerror}") from e


_SCTP_SNDINFO = 2  # cmsg type (enum sctp_cmsg_type)
_SNDINFO = struct.Struct("=HHIIi")  # struct sctp_sndinfo: sid, flags, ppid, context, assoc_id


def _packed_addrs(addrs: list[str], port: int) -> bytes:
    """Addresses as sctp_connectx() takes them: sockaddr_in/_in6 back to back."""
    out = b""
    for addr in addrs:
        ss = abi.tuple_to_sockaddr(addr, port)
        out += bytes(ss)[:16 if ss.ss_family == socket.AF_INET else 28]
    return out
