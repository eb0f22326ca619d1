"""The saved state of one SCTP association: a plain data model.

No I/O here: conversions between the model, the kernel's repair structures
(``abi``) and the protobuf message kept on disk (``assoc_state.proto``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import socket
import struct
from dataclasses import dataclass, field

from . import abi
from . import assoc_state_pb2 as pb
from .queues import Message

# Fields of SctpRepairAssoc carried one to one (without the sra_ prefix).
SCALARS = (
    "my_vtag", "peer_vtag", "my_initial_tsn", "peer_initial_tsn", "next_tsn",
    "ctsn_ack_point", "adv_peer_ack_point", "peer_ctsn", "peer_rwnd", "rwnd",
    "addip_serial", "peer_addip_serial", "strreset_outseq", "strreset_inseq",
    "peer_caps", "rto_initial", "rto_min", "rto_max", "rto", "srtt", "rttvar",
    "hbinterval", "sackdelay", "max_retrans", "pathmaxrxt", "pathmtu",
)

# A peer announces its addresses in INIT/INIT-ACK; more than this in a saved
# state is not something a peer sent but a hostile image.
MAX_PEER_PATHS = 64


@dataclass
class Stream:
    mid: int = 0      # next SSN (DATA) or MID (I-DATA)
    mid_uo: int = 0   # next unordered MID (I-DATA only)


# Bounds on the carried queues read from an image: no more than socket buffers
# hold (net.core.rmem_max and wmem_max are at most 2 GiB, but queues over this
# many messages or bytes are not ones a socket had).
MAX_QUEUED = 1 << 16
MAX_QUEUED_BYTES = 64 << 20


@dataclass
class AssocState:
    local_addr: str = ""
    local_port: int = 0
    peer_addr: str = ""
    peer_port: int = 0
    family: int = 0                  # of the saved socket; 0: from local_addr
    peer_paths: list[str] = field(default_factory=list)  # other peer addresses
    my_vtag: int = 0
    peer_vtag: int = 0
    my_initial_tsn: int = 0
    peer_initial_tsn: int = 0
    next_tsn: int = 0
    ctsn_ack_point: int = 0
    adv_peer_ack_point: int = 0
    peer_ctsn: int = 0
    peer_rwnd: int = 0
    rwnd: int = 0
    addip_serial: int = 0
    peer_addip_serial: int = 0
    strreset_outseq: int = 0
    strreset_inseq: int = 0
    peer_caps: int = 0
    rto_initial: int = 0
    rto_min: int = 0
    rto_max: int = 0
    rto: int = 0
    srtt: int = 0
    rttvar: int = 0
    hbinterval: int = 0
    sackdelay: int = 0
    max_retrans: int = 0
    pathmaxrxt: int = 0
    pathmtu: int = 0
    out_streams: list[Stream] = field(default_factory=list)
    in_streams: list[Stream] = field(default_factory=list)
    unread: list[Message] = field(default_factory=list)  # the receive queue, if carried
    in_flight: list[Message] = field(default_factory=list)  # the send queue's DATA chunks
    unsent: list[Message] = field(default_factory=list)  # ... and messages not sent at all
    kernel_size: int = abi.SCTP_REPAIR_ASSOC_SIZE_VER0

    @property
    def caps(self) -> abi.Cap:
        return abi.Cap(self.peer_caps)

    # --- kernel structures -------------------------------------------------

    @classmethod
    def from_kernel(cls, sra: abi.SctpRepairAssoc, streams: bytes) -> AssocState:
        local = abi.sockaddr_to_tuple(sra.sra_local)
        peer = abi.sockaddr_to_tuple(sra.sra_peer)
        st = cls(local_addr=local[0], local_port=local[1], peer_addr=peer[0],
                 peer_port=peer[1], kernel_size=sra.sra_size,
                 **{name: getattr(sra, "sra_" + name) for name in SCALARS})
        outcnt, incnt, _ = abi.REPAIR_STREAMS_HDR.unpack_from(streams, 0)
        if outcnt != sra.sra_outstreams or incnt != sra.sra_instreams:
            raise ValueError(f"stream counts disagree: assoc {sra.sra_outstreams}/"
                             f"{sra.sra_instreams}, streams {outcnt}/{incnt}")
        entries = [Stream(mid, mid_uo) for mid, mid_uo in abi.REPAIR_STREAM.iter_unpack(
            streams[abi.REPAIR_STREAMS_HDR.size:
                    abi.REPAIR_STREAMS_HDR.size + (outcnt + incnt) * abi.REPAIR_STREAM.size])]
        if len(entries) != outcnt + incnt:
            raise ValueError(f"{len(entries)} stream entries for {outcnt + incnt} streams")
        st.out_streams, st.in_streams = entries[:outcnt], entries[outcnt:]
        return st

    def to_kernel(self) -> tuple[abi.SctpRepairAssoc, bytes]:
        """The two option values to set before a repaired connect()."""
        sra = abi.SctpRepairAssoc()
        sra.sra_size = ctypes.sizeof(sra)
        sra.sra_local = abi.tuple_to_sockaddr(self.local_addr, self.local_port)
        sra.sra_peer = abi.tuple_to_sockaddr(self.peer_addr, self.peer_port)
        for name in SCALARS:
            setattr(sra, "sra_" + name, getattr(self, name))
        sra.sra_outstreams = len(self.out_streams)
        sra.sra_instreams = len(self.in_streams)
        every = self.out_streams + self.in_streams
        streams = abi.REPAIR_STREAMS_HDR.pack(len(self.out_streams), len(self.in_streams), 0)
        streams += struct.pack(f"={2 * len(every)}I",
                               *[v for s in every for v in (s.mid, s.mid_uo)])
        return sra, streams

    # --- protobuf ---------------------------------------------------------------

    def to_proto(self) -> pb.SctpAssocState:
        msg = pb.SctpAssocState(kernel_size=self.kernel_size, local_addr=self.local_addr,
                                local_port=self.local_port, peer_addr=self.peer_addr,
                                peer_port=self.peer_port, family=self.family,
                                peer_paths=self.peer_paths,
                                **{name: getattr(self, name) for name in SCALARS})
        msg.out_streams.extend(pb.SctpStream(mid=s.mid, mid_uo=s.mid_uo)
                               for s in self.out_streams)
        msg.in_streams.extend(pb.SctpStream(mid=s.mid, mid_uo=s.mid_uo)
                              for s in self.in_streams)
        for field_, queue in ((msg.unread, self.unread), (msg.in_flight, self.in_flight),
                              (msg.unsent, self.unsent)):
            field_.extend(pb.SctpMessage(data=m.data, stream=m.stream, mid=m.mid, ppid=m.ppid,
                                         tsn=m.tsn, unordered=m.unordered, first=m.first,
                                         last=m.last)
                          for m in queue)
        return msg

    @classmethod
    def from_proto(cls, msg: pb.SctpAssocState) -> AssocState:
        return cls(kernel_size=msg.kernel_size, local_addr=msg.local_addr,
                   local_port=msg.local_port, peer_addr=msg.peer_addr,
                   peer_port=msg.peer_port, family=msg.family,
                   peer_paths=list(msg.peer_paths),
                   out_streams=[Stream(s.mid, s.mid_uo) for s in msg.out_streams],
                   in_streams=[Stream(s.mid, s.mid_uo) for s in msg.in_streams],
                   unread=_messages(msg.unread), in_flight=_messages(msg.in_flight),
                   unsent=_messages(msg.unsent),
                   **{name: getattr(msg, name) for name in SCALARS})

    def to_bytes(self) -> bytes:
        return self.to_proto().SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> AssocState:
        """Decode a saved state and check every field; ValueError (one line) if it is
        not one (an image is untrusted: it may come from anywhere)."""
        import warnings

        from google.protobuf.message import DecodeError
        try:
            with warnings.catch_warnings(record=True) as warned:  # garbage makes it warn
                warnings.simplefilter("always")
                msg = pb.SctpAssocState.FromString(bytes(data))
            if warned:
                raise DecodeError(str(warned[0].message))
        except (DecodeError, RuntimeError) as exc:
            raise ValueError(f"not a saved SCTP association (protobuf: {exc})") from None
        return cls.from_proto(msg).check()

    def check(self) -> AssocState:
        """``self`` when every field fits the kernel structure; ValueError otherwise."""
        import ipaddress
        if self.family not in (0, socket.AF_INET, socket.AF_INET6):  # 0: unset
            raise ValueError(f"family {self.family!r:.20} is neither AF_INET nor AF_INET6")
        if len(self.peer_paths) > MAX_PEER_PATHS:
            raise ValueError(f"{len(self.peer_paths)} peer paths, at most {MAX_PEER_PATHS}")
        addrs = [("local_addr", self.local_addr), ("peer_addr", self.peer_addr),
                 *(("peer path", v) for v in self.peer_paths)]
        for what, v in addrs:
            try:
                if not isinstance(v, str):
                    raise ValueError
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError(f"{what} {v!r:.60} is not an IP address") from None
        widths = {f[0][4:]: ctypes.sizeof(f[1]) for f in abi.SctpRepairAssoc._fields_}
        for name in ("local_port", "peer_port") + SCALARS:
            v, top = getattr(self, name), (1 << 8 * widths.get(name, 2)) - 1
            if type(v) is not int or not 0 <= v <= top:
                raise ValueError(f"{name} {v!r:.40} is out of range [0, {top}]")
        for what, streams in (("out", self.out_streams), ("in", self.in_streams)):
            if len(streams) > 0xFFFF:
                raise ValueError(f"{len(streams)} {what} streams, at most 65535")
            for st in streams:
                if not (0 <= st.mid <= 0xFFFFFFFF and 0 <= st.mid_uo <= 0xFFFFFFFF):
                    raise ValueError(f"an {what} stream sequence number is out of range")
        self._check_queues()
        if not 0 < self.kernel_size <= 1 << 16:
            raise ValueError(f"kernel_size {self.kernel_size} is out of range")
        return self

    def _check_queues(self) -> None:
        """The carried queues fit what SCTP_REPAIR_RCVQ and _SNDQ take back."""
        queued = self.unread + self.in_flight + self.unsent
        if len(queued) > MAX_QUEUED:
            raise ValueError(f"{len(queued)} queued messages, at most {MAX_QUEUED}")
        total = sum(len(m.data) if isinstance(m.data, bytes) else 0 for m in queued)
        if total > MAX_QUEUED_BYTES:
            raise ValueError(f"{total} bytes queued, at most {MAX_QUEUED_BYTES}")
        ssn_top = 0xFFFFFFFF if self.peer_caps & abi.Cap.INTL else 0xFFFF
        for what, queue, streams, top, biggest in (
                ("unread", self.unread, self.in_streams, ssn_top, abi.SCTP_REPAIR_MSG_MAX),
                ("in-flight", self.in_flight, self.out_streams, 0xFFFF, abi.SCTP_REPAIR_MSG_MAX),
                ("unsent", self.unsent, self.out_streams, 0, MAX_QUEUED_BYTES)):
            for m in queue:
                _check_message(m, what, len(streams), top, biggest)
        self._check_in_flight()

    def _check_in_flight(self) -> None:
        """The chunks in flight are exactly the TSNs after the cumulative ack point."""
        if not self.in_flight:  # the kernel checks the relation of a quiescent one
            return
        behind = (self.next_tsn - 1 - self.ctsn_ack_point) & 0xFFFFFFFF
        if len(self.in_flight) != behind:
            raise ValueError(f"{len(self.in_flight)} chunks in flight, but the state has "
                             f"{behind} TSNs unacknowledged")
        if self.peer_caps & abi.Cap.INTL:
            raise ValueError("chunks in flight with I-DATA cannot be carried")
        for i, m in enumerate(self.in_flight):
            if m.tsn != (self.ctsn_ack_point + 1 + i) & 0xFFFFFFFF:
                raise ValueError(f"chunk {i} in flight has TSN {m.tsn}, expected "
                                 f"{(self.ctsn_ack_point + 1 + i) & 0xFFFFFFFF}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for m in d["unread"] + d["in_flight"] + d["unsent"]:
            m["data"] = m["data"].hex()
        return d


def _messages(msgs) -> list[Message]:
    return [Message(m.data, m.stream, m.mid, m.ppid, m.tsn, m.unordered, m.first, m.last)
            for m in msgs]


def _check_message(m: Message, what: str, streams: int, top: int, biggest: int) -> None:
    if not isinstance(m.data, bytes) or not 0 < len(m.data) <= biggest:
        raise ValueError(f"an {what} message is not 1 to {biggest} bytes")
    if type(m.stream) is not int or not 0 <= m.stream < streams:
        raise ValueError(f"an {what} message is on stream {m.stream!r:.20}, the "
                         f"association has {streams} that way")
    if type(m.mid) is not int or not 0 <= m.mid <= top:
        raise ValueError(f"an {what} message's sequence number is out of [0, {top}]")
    for name in ("ppid", "tsn"):
        v = getattr(m, name)
        if type(v) is not int or not 0 <= v <= 0xFFFFFFFF:
            raise ValueError(f"an {what} message's {name} is out of range")
