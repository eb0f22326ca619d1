"""SCTP socket option numbers and structure layouts that Python lacks.

Everything here mirrors ``include/uapi/linux/sctp.h``: the stock options the
toolkit reads (SCTP_STATUS and friends) and the repair-mode ones added by the
series in ``kernel-patches/``. Layouts are ctypes structures whose sizes are
checked at import against the sizes the kernel headers give on x86_64, so a
typo shows up as an import error, not as a silently misread field.
"""

from __future__ import annotations

import ctypes
import enum
import socket
import struct

IPPROTO_SCTP = 132
SOL_SCTP = 132

# Stock socket options (include/uapi/linux/sctp.h, Linux 6.1).
SCTP_RTOINFO = 0
SCTP_ASSOCINFO = 1
SCTP_INITMSG = 2
SCTP_NODELAY = 3
SCTP_AUTOCLOSE = 4
SCTP_PRIMARY_ADDR = 6
SCTP_PEER_ADDR_PARAMS = 9
SCTP_DEFAULT_SEND_PARAM = 10
SCTP_EVENTS = 11
SCTP_MAXSEG = 13
SCTP_STATUS = 14
SCTP_GET_PEER_ADDR_INFO = 15
SCTP_DELAYED_SACK = 16
SCTP_MAX_BURST = 20
SCTP_PEER_ADDR_THLDS = 31
SCTP_GET_PEER_ADDRS = 108
SCTP_GET_LOCAL_ADDRS = 109
SCTP_SOCKOPT_CONNECTX = 110
SCTP_GET_ASSOC_STATS = 112
SCTP_PR_SUPPORTED = 113
SCTP_RECONFIG_SUPPORTED = 117
SCTP_INTERLEAVING_SUPPORTED = 125
SCTP_EVENT = 127
SCTP_ASCONF_SUPPORTED = 128
SCTP_AUTH_SUPPORTED = 129
SCTP_ECN_SUPPORTED = 130
SCTP_PLPMTUD_PROBE_INTERVAL = 133  # the last stock option in 6.1

# Repair mode (kernel-patches/: first option numbers after the stock ones).
SCTP_REPAIR = 134
SCTP_REPAIR_ASSOC = 135
SCTP_REPAIR_STREAMS = 136
SCTP_REPAIR_RCVQ = 137
SCTP_REPAIR_SNDQ = 138
SCTP_REPAIR_OFF = 0
SCTP_REPAIR_ON = 1
SCTP_REPAIR_ON_RCVQ = 2  # repair mode in which the caller carries the receive queue
SCTP_REPAIR_ON_QUEUES = 3  # ... and the send queue
SCTP_REPAIR_STREAMS_MAX = 8192  # outgoing + incoming entries in one SCTP_REPAIR_STREAMS
SCTP_REPAIR_MSG_MAX = 65536  # bytes of one message written back to a queue
SCTP_REPAIR_QUEUE_WRITE_MAX = 69632  # bytes of one SCTP_REPAIR_RCVQ or _SNDQ write
SCTP_REPAIR_SNDQ_MAX = 65536  # chunks in flight in a state carried with its send queue
# srm_flags: SCTP_UNORDERED (enum sctp_sinfo_flags), and for SCTP_REPAIR_SNDQ the
# fragment flags of a chunk in flight, or a whole message not sent yet
SCTP_UNORDERED = 1
SCTP_REPAIR_MSG_FIRST = 0x0100
SCTP_REPAIR_MSG_LAST = 0x0200
SCTP_REPAIR_MSG_UNSENT = 0x0400

# Notifications (struct sctp_event / SCTP_EVENT).
# enum sctp_sn_type: SCTP_DATA_IO_EVENT is the base itself.
SCTP_SN_TYPE_BASE = 1 << 15
SCTP_DATA_IO_EVENT = SCTP_SN_TYPE_BASE
SCTP_ASSOC_CHANGE = SCTP_SN_TYPE_BASE + 1
SCTP_PEER_ADDR_CHANGE = SCTP_SN_TYPE_BASE + 2
SCTP_SEND_FAILED = SCTP_SN_TYPE_BASE + 3
SCTP_REMOTE_ERROR = SCTP_SN_TYPE_BASE + 4
SCTP_SHUTDOWN_EVENT = SCTP_SN_TYPE_BASE + 5
MSG_NOTIFICATION = 0x8000


class Cap(enum.IntFlag):
    """Peer capabilities, ``sra_peer_caps`` (SCTP_REPAIR_CAP_*)."""
    PRSCTP = 0x01
    AUTH = 0x02
    ASCONF = 0x04
    RECONF = 0x08
    INTL = 0x10
    ECN = 0x20


class State(enum.IntEnum):
    """``sstat_state`` of SCTP_STATUS: the kernel's enum sctp_state plus one."""
    EMPTY = 0
    CLOSED = 1
    COOKIE_WAIT = 2
    COOKIE_ECHOED = 3
    ESTABLISHED = 4
    SHUTDOWN_PENDING = 5
    SHUTDOWN_SENT = 6
    SHUTDOWN_RECEIVED = 7
    SHUTDOWN_ACK_SENT = 8


class AssocChange(enum.IntEnum):
    """``sac_state`` of an SCTP_ASSOC_CHANGE notification."""
    COMM_UP = 0
    COMM_LOST = 1
    RESTART = 2
    SHUTDOWN_COMP = 3
    CANT_STR_ASSOC = 4


class SockaddrStorage(ctypes.Structure):
    # 8-byte aligned in C; every use below sits at an offset that is already
    # aligned, which the offset checks at the end of this module confirm.
    _fields_ = [("ss_family", ctypes.c_uint16), ("data", ctypes.c_uint8 * 126)]


class SctpPaddrinfo(ctypes.Structure):
    _pack_ = 4
    _fields_ = [
        ("spinfo_assoc_id", ctypes.c_int32),
        ("spinfo_address", SockaddrStorage),
        ("spinfo_state", ctypes.c_int32),
        ("spinfo_cwnd", ctypes.c_uint32),
        ("spinfo_srtt", ctypes.c_uint32),
        ("spinfo_rto", ctypes.c_uint32),
        ("spinfo_mtu", ctypes.c_uint32),
    ]


class SctpStatus(ctypes.Structure):
    _fields_ = [
        ("sstat_assoc_id", ctypes.c_int32),
        ("sstat_state", ctypes.c_int32),
        ("sstat_rwnd", ctypes.c_uint32),
        ("sstat_unackdata", ctypes.c_uint16),
        ("sstat_penddata", ctypes.c_uint16),
        ("sstat_instrms", ctypes.c_uint16),
        ("sstat_outstrms", ctypes.c_uint16),
        ("sstat_fragmentation_point", ctypes.c_uint32),
        ("sstat_primary", SctpPaddrinfo),
    ]


class SctpEvent(ctypes.Structure):
    _fields_ = [("se_assoc_id", ctypes.c_int32), ("se_type", ctypes.c_uint16),
                ("se_on", ctypes.c_uint8)]


class SctpRepairAssoc(ctypes.Structure):
    """struct sctp_repair_assoc (version 0, 368 bytes)."""
    _fields_ = [
        ("sra_size", ctypes.c_uint32),
        ("sra_flags", ctypes.c_uint32),
        ("sra_local", SockaddrStorage),
        ("sra_peer", SockaddrStorage),
        ("sra_my_vtag", ctypes.c_uint32),
        ("sra_peer_vtag", ctypes.c_uint32),
        ("sra_my_initial_tsn", ctypes.c_uint32),
        ("sra_peer_initial_tsn", ctypes.c_uint32),
        ("sra_next_tsn", ctypes.c_uint32),
        ("sra_ctsn_ack_point", ctypes.c_uint32),
        ("sra_adv_peer_ack_point", ctypes.c_uint32),
        ("sra_peer_ctsn", ctypes.c_uint32),
        ("sra_peer_rwnd", ctypes.c_uint32),
        ("sra_rwnd", ctypes.c_uint32),
        ("sra_addip_serial", ctypes.c_uint32),
        ("sra_peer_addip_serial", ctypes.c_uint32),
        ("sra_strreset_outseq", ctypes.c_uint32),
        ("sra_strreset_inseq", ctypes.c_uint32),
        ("sra_outstreams", ctypes.c_uint16),
        ("sra_instreams", ctypes.c_uint16),
        ("sra_peer_caps", ctypes.c_uint32),
        ("sra_rto_initial", ctypes.c_uint32),
        ("sra_rto_min", ctypes.c_uint32),
        ("sra_rto_max", ctypes.c_uint32),
        ("sra_rto", ctypes.c_uint32),
        ("sra_srtt", ctypes.c_uint32),
        ("sra_rttvar", ctypes.c_uint32),
        ("sra_hbinterval", ctypes.c_uint32),
        ("sra_sackdelay", ctypes.c_uint32),
        ("sra_max_retrans", ctypes.c_uint16),
        ("sra_pathmaxrxt", ctypes.c_uint16),
        ("sra_pathmtu", ctypes.c_uint32),
    ]


SCTP_REPAIR_ASSOC_SIZE_VER0 = 368

# struct sctp_repair_streams header (u16 outcnt, u16 incnt, u32 reserved),
# then outcnt + incnt entries of struct sctp_repair_stream (u32 mid, u32 mid_uo).
REPAIR_STREAMS_HDR = struct.Struct("=HHI")
REPAIR_STREAM = struct.Struct("=II")

# struct sctp_repair_queue header (u32 size, u32 count, u32 msg_size, u32 reserved),
# then count items: struct sctp_repair_msg (u32 len, tsn, mid, ppid; u16 stream,
# flags; u32 reserved) and len bytes of data padded to 4.
REPAIR_QUEUE_HDR = struct.Struct("=IIII")
REPAIR_MSG = struct.Struct("=IIIIHHI")

# Sizes the kernel headers give on x86_64 (checked with a C compiler).
_SIZES = {SockaddrStorage: 128, SctpPaddrinfo: 152, SctpStatus: 176, SctpEvent: 8,
          SctpRepairAssoc: SCTP_REPAIR_ASSOC_SIZE_VER0}
for _t, _n in _SIZES.items():
    if ctypes.sizeof(_t) != _n:  # pragma: no cover - a layout bug, caught by unit tests too
        raise ImportError(f"{_t.__name__} is {ctypes.sizeof(_t)} bytes, the kernel's is {_n}")
_OFFSETS = {"sra_local": 8, "sra_peer": 136, "sra_my_vtag": 264, "sra_outstreams": 320,
            "sra_peer_caps": 324, "sra_max_retrans": 360, "sra_pathmtu": 364}
for _f, _o in _OFFSETS.items():
    if getattr(SctpRepairAssoc, _f).offset != _o:  # pragma: no cover
        raise ImportError(f"sctp_repair_assoc.{_f} at {getattr(SctpRepairAssoc, _f).offset}, "
                          f"the kernel's is at {_o}")


def sockaddr_to_tuple(ss: SockaddrStorage) -> tuple[str, int]:
    """(address, port) from a sockaddr_in / sockaddr_in6 held in a sockaddr_storage."""
    raw = bytes(ss)
    family = ss.ss_family
    if family == socket.AF_INET:
        port, = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6:
        port, = struct.unpack_from("!H", raw, 2)
        # inet_ntop's form: a v4-mapped address reads ::ffff:10.0.0.1, as the
        # socket module gives it (Python 3.11's ipaddress would say ::ffff:a00:1).
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    if family == 0:
        return "", 0
    raise ValueError(f"address family {family} is neither AF_INET nor AF_INET6")


def tuple_to_sockaddr(addr: str, port: int) -> SockaddrStorage:
    """A sockaddr_storage holding sockaddr_in or sockaddr_in6 for (addr, port).

    inet_pton rather than ipaddress: this runs once per association saved or
    restored (ValueError for what is not an address, as ipaddress raises)."""
    buf = bytearray(ctypes.sizeof(SockaddrStorage))
    try:
        if ":" in addr:
            struct.pack_into("=H", buf, 0, socket.AF_INET6)
            buf[8:24] = socket.inet_pton(socket.AF_INET6, addr)
        else:
            struct.pack_into("=H", buf, 0, socket.AF_INET)
            buf[4:8] = socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        raise ValueError(f"{addr!r:.60} does not appear to be an IPv4 or IPv6 address") from None
    struct.pack_into("!H", buf, 2, port)
    return SockaddrStorage.from_buffer(buf)
