"""The carried queues of an association: SCTP_REPAIR_RCVQ and SCTP_REPAIR_SNDQ.

No I/O here: the model of one queued message or DATA chunk, and conversions
between a list of them and the kernel's layout (``struct sctp_repair_queue``
then items, each a ``struct sctp_repair_msg`` and its data padded to 4 bytes;
``kernel-patches/`` 0006 and 0007).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import abi

RCVQ, SNDQ = "SCTP_REPAIR_RCVQ", "SCTP_REPAIR_SNDQ"


@dataclass
class Message:
    """A message received and not read (SCTP_REPAIR_RCVQ), a DATA chunk sent and not
    acknowledged, or a message not sent at all (SCTP_REPAIR_SNDQ)."""
    data: bytes = b""
    stream: int = 0
    mid: int = 0              # SSN (DATA) or MID (I-DATA); 0 for a message not sent
    ppid: int = 0             # as on the wire
    tsn: int = 0              # 0 for a message not sent
    unordered: bool = False
    first: bool = True        # a chunk in flight: the first fragment of its message
    last: bool = True         # a chunk in flight: the last fragment of its message


def _flags(m: Message, opt: str) -> int:
    flags = abi.SCTP_UNORDERED if m.unordered else 0
    if opt == SNDQ:
        flags |= (abi.SCTP_REPAIR_MSG_FIRST if m.first else 0) | \
                 (abi.SCTP_REPAIR_MSG_LAST if m.last else 0)
    return flags


def from_kernel(raw: bytes, opt: str) -> tuple[list[Message], list[Message]]:
    """The items of a read of ``opt``: (queued, unsent), the second only from
    SCTP_REPAIR_SNDQ; ValueError if the layout is not one."""
    hdr, item = abi.REPAIR_QUEUE_HDR, abi.REPAIR_MSG
    if len(raw) < hdr.size:
        raise ValueError(f"{opt}: {len(raw)} bytes, short of its header")
    size, count, msg_size, _ = hdr.unpack_from(raw, 0)
    if size != len(raw) or msg_size != item.size:
        raise ValueError(f"{opt}: size {size}, item size {msg_size}: "
                         f"expected {len(raw)} and {item.size}")
    queued: list[Message] = []
    unsent: list[Message] = []
    off = hdr.size
    for _ in range(count):
        if len(raw) - off < item.size:
            raise ValueError(f"{opt}: an item runs past the end")
        length, tsn, mid, ppid, stream, flags, _ = item.unpack_from(raw, off)
        off += item.size
        if len(raw) - off < length:
            raise ValueError(f"{opt}: a message runs past the end")
        m = Message(raw[off:off + length], stream, mid, ppid, tsn,
                    bool(flags & abi.SCTP_UNORDERED))
        if opt == SNDQ and not flags & abi.SCTP_REPAIR_MSG_UNSENT:  # a chunk, not a message
            m.first = bool(flags & abi.SCTP_REPAIR_MSG_FIRST)
            m.last = bool(flags & abi.SCTP_REPAIR_MSG_LAST)
        (unsent if flags & abi.SCTP_REPAIR_MSG_UNSENT else queued).append(m)
        off += -(-length // 4) * 4
    return queued, unsent


def to_kernel(msgs: list[Message], opt: str) -> list[bytes]:
    """Writes of ``opt`` for ``msgs``, in order, each at most what one write carries."""
    hdr, item = abi.REPAIR_QUEUE_HDR, abi.REPAIR_MSG
    writes: list[bytes] = []
    batch: list[bytes] = []
    size = hdr.size

    def flush() -> None:
        if batch:
            writes.append(hdr.pack(size, len(batch), item.size, 0) + b"".join(batch))

    for m in msgs:
        pad = -len(m.data) % 4
        one = item.pack(len(m.data), m.tsn, m.mid, m.ppid, m.stream, _flags(m, opt),
                        0) + m.data + bytes(pad)
        if size + len(one) > abi.SCTP_REPAIR_QUEUE_WRITE_MAX:
            flush()
            batch, size = [], hdr.size
        batch.append(one)
        size += len(one)
    flush()
    return writes
