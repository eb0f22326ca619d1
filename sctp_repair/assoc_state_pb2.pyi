from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SctpAssocState(_message.Message):
    __slots__ = ["addip_serial", "adv_peer_ack_point", "ctsn_ack_point", "family", "hbinterval", "in_flight", "in_streams", "kernel_size", "local_addr", "local_port", "max_retrans", "my_initial_tsn", "my_vtag", "next_tsn", "out_streams", "pathmaxrxt", "pathmtu", "peer_addip_serial", "peer_addr", "peer_caps", "peer_ctsn", "peer_initial_tsn", "peer_paths", "peer_port", "peer_rwnd", "peer_vtag", "rto", "rto_initial", "rto_max", "rto_min", "rttvar", "rwnd", "sackdelay", "srtt", "strreset_inseq", "strreset_outseq", "unread", "unsent"]
    ADDIP_SERIAL_FIELD_NUMBER: _ClassVar[int]
    ADV_PEER_ACK_POINT_FIELD_NUMBER: _ClassVar[int]
    CTSN_ACK_POINT_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    HBINTERVAL_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    IN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDR_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRANS_FIELD_NUMBER: _ClassVar[int]
    MY_INITIAL_TSN_FIELD_NUMBER: _ClassVar[int]
    MY_VTAG_FIELD_NUMBER: _ClassVar[int]
    NEXT_TSN_FIELD_NUMBER: _ClassVar[int]
    OUT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    PATHMAXRXT_FIELD_NUMBER: _ClassVar[int]
    PATHMTU_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDIP_SERIAL_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDR_FIELD_NUMBER: _ClassVar[int]
    PEER_CAPS_FIELD_NUMBER: _ClassVar[int]
    PEER_CTSN_FIELD_NUMBER: _ClassVar[int]
    PEER_INITIAL_TSN_FIELD_NUMBER: _ClassVar[int]
    PEER_PATHS_FIELD_NUMBER: _ClassVar[int]
    PEER_PORT_FIELD_NUMBER: _ClassVar[int]
    PEER_RWND_FIELD_NUMBER: _ClassVar[int]
    PEER_VTAG_FIELD_NUMBER: _ClassVar[int]
    RTO_FIELD_NUMBER: _ClassVar[int]
    RTO_INITIAL_FIELD_NUMBER: _ClassVar[int]
    RTO_MAX_FIELD_NUMBER: _ClassVar[int]
    RTO_MIN_FIELD_NUMBER: _ClassVar[int]
    RTTVAR_FIELD_NUMBER: _ClassVar[int]
    RWND_FIELD_NUMBER: _ClassVar[int]
    SACKDELAY_FIELD_NUMBER: _ClassVar[int]
    SRTT_FIELD_NUMBER: _ClassVar[int]
    STRRESET_INSEQ_FIELD_NUMBER: _ClassVar[int]
    STRRESET_OUTSEQ_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    UNSENT_FIELD_NUMBER: _ClassVar[int]
    addip_serial: int
    adv_peer_ack_point: int
    ctsn_ack_point: int
    family: int
    hbinterval: int
    in_flight: _containers.RepeatedCompositeFieldContainer[SctpMessage]
    in_streams: _containers.RepeatedCompositeFieldContainer[SctpStream]
    kernel_size: int
    local_addr: str
    local_port: int
    max_retrans: int
    my_initial_tsn: int
    my_vtag: int
    next_tsn: int
    out_streams: _containers.RepeatedCompositeFieldContainer[SctpStream]
    pathmaxrxt: int
    pathmtu: int
    peer_addip_serial: int
    peer_addr: str
    peer_caps: int
    peer_ctsn: int
    peer_initial_tsn: int
    peer_paths: _containers.RepeatedScalarFieldContainer[str]
    peer_port: int
    peer_rwnd: int
    peer_vtag: int
    rto: int
    rto_initial: int
    rto_max: int
    rto_min: int
    rttvar: int
    rwnd: int
    sackdelay: int
    srtt: int
    strreset_inseq: int
    strreset_outseq: int
    unread: _containers.RepeatedCompositeFieldContainer[SctpMessage]
    unsent: _containers.RepeatedCompositeFieldContainer[SctpMessage]
    def __init__(self, kernel_size: _Optional[int] = ..., local_addr: _Optional[str] = ..., local_port: _Optional[int] = ..., peer_addr: _Optional[str] = ..., peer_port: _Optional[int] = ..., family: _Optional[int] = ..., peer_paths: _Optional[_Iterable[str]] = ..., my_vtag: _Optional[int] = ..., peer_vtag: _Optional[int] = ..., my_initial_tsn: _Optional[int] = ..., peer_initial_tsn: _Optional[int] = ..., next_tsn: _Optional[int] = ..., ctsn_ack_point: _Optional[int] = ..., adv_peer_ack_point: _Optional[int] = ..., peer_ctsn: _Optional[int] = ..., peer_rwnd: _Optional[int] = ..., rwnd: _Optional[int] = ..., addip_serial: _Optional[int] = ..., peer_addip_serial: _Optional[int] = ..., strreset_outseq: _Optional[int] = ..., strreset_inseq: _Optional[int] = ..., peer_caps: _Optional[int] = ..., rto_initial: _Optional[int] = ..., rto_min: _Optional[int] = ..., rto_max: _Optional[int] = ..., rto: _Optional[int] = ..., srtt: _Optional[int] = ..., rttvar: _Optional[int] = ..., hbinterval: _Optional[int] = ..., sackdelay: _Optional[int] = ..., max_retrans: _Optional[int] = ..., pathmaxrxt: _Optional[int] = ..., pathmtu: _Optional[int] = ..., out_streams: _Optional[_Iterable[_Union[SctpStream, _Mapping]]] = ..., in_streams: _Optional[_Iterable[_Union[SctpStream, _Mapping]]] = ..., unread: _Optional[_Iterable[_Union[SctpMessage, _Mapping]]] = ..., in_flight: _Optional[_Iterable[_Union[SctpMessage, _Mapping]]] = ..., unsent: _Optional[_Iterable[_Union[SctpMessage, _Mapping]]] = ...) -> None: ...

class SctpMessage(_message.Message):
    __slots__ = ["data", "first", "last", "mid", "ppid", "stream", "tsn", "unordered"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    MID_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TSN_FIELD_NUMBER: _ClassVar[int]
    UNORDERED_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    first: bool
    last: bool
    mid: int
    ppid: int
    stream: int
    tsn: int
    unordered: bool
    def __init__(self, data: _Optional[bytes] = ..., stream: _Optional[int] = ..., mid: _Optional[int] = ..., ppid: _Optional[int] = ..., tsn: _Optional[int] = ..., unordered: bool = ..., first: bool = ..., last: bool = ...) -> None: ...

class SctpStream(_message.Message):
    __slots__ = ["mid", "mid_uo"]
    MID_FIELD_NUMBER: _ClassVar[int]
    MID_UO_FIELD_NUMBER: _ClassVar[int]
    mid: int
    mid_uo: int
    def __init__(self, mid: _Optional[int] = ..., mid_uo: _Optional[int] = ...) -> None: ...
