from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class gtp_address_entry(_message.Message):
    __slots__ = ["address", "family", "local", "prefixlen"]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    PREFIXLEN_FIELD_NUMBER: _ClassVar[int]
    address: str
    family: int
    local: str
    prefixlen: int
    def __init__(self, family: _Optional[int] = ..., local: _Optional[str] = ..., prefixlen: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class gtp_device_entry(_message.Message):
    __slots__ = ["addresses", "hashsize", "ifindex", "mtu", "n_contexts", "name", "restart_count", "role", "sock0", "sock1", "up"]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    HASHSIZE_FIELD_NUMBER: _ClassVar[int]
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    N_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SOCK0_FIELD_NUMBER: _ClassVar[int]
    SOCK1_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedCompositeFieldContainer[gtp_address_entry]
    hashsize: int
    ifindex: int
    mtu: int
    n_contexts: int
    name: str
    restart_count: int
    role: int
    sock0: gtp_socket_entry
    sock1: gtp_socket_entry
    up: bool
    def __init__(self, name: _Optional[str] = ..., ifindex: _Optional[int] = ..., role: _Optional[int] = ..., hashsize: _Optional[int] = ..., restart_count: _Optional[int] = ..., mtu: _Optional[int] = ..., up: bool = ..., addresses: _Optional[_Iterable[_Union[gtp_address_entry, _Mapping]]] = ..., sock0: _Optional[_Union[gtp_socket_entry, _Mapping]] = ..., sock1: _Optional[_Union[gtp_socket_entry, _Mapping]] = ..., n_contexts: _Optional[int] = ...) -> None: ...

class gtp_head_entry(_message.Message):
    __slots__ = ["created", "kernel", "n_devices", "nat_rules", "netns", "routes", "sysctls", "version"]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    NAT_RULES_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    N_DEVICES_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    SYSCTLS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    created: float
    kernel: str
    n_devices: int
    nat_rules: _containers.RepeatedCompositeFieldContainer[gtp_nat_entry]
    netns: str
    routes: _containers.RepeatedCompositeFieldContainer[gtp_route_entry]
    sysctls: _containers.RepeatedCompositeFieldContainer[gtp_sysctl_entry]
    version: int
    def __init__(self, version: _Optional[int] = ..., n_devices: _Optional[int] = ..., netns: _Optional[str] = ..., kernel: _Optional[str] = ..., created: _Optional[float] = ..., sysctls: _Optional[_Iterable[_Union[gtp_sysctl_entry, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[gtp_route_entry, _Mapping]]] = ..., nat_rules: _Optional[_Iterable[_Union[gtp_nat_entry, _Mapping]]] = ...) -> None: ...

class gtp_nat_entry(_message.Message):
    __slots__ = ["backend", "chain", "chain_spec", "family", "rule", "table"]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CHAIN_SPEC_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    backend: str
    chain: str
    chain_spec: str
    family: int
    rule: str
    table: str
    def __init__(self, backend: _Optional[str] = ..., family: _Optional[int] = ..., table: _Optional[str] = ..., chain: _Optional[str] = ..., rule: _Optional[str] = ..., chain_spec: _Optional[str] = ...) -> None: ...

class gtp_pdp6_entry(_message.Message):
    __slots__ = ["ms6", "peer6", "row"]
    MS6_FIELD_NUMBER: _ClassVar[int]
    PEER6_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    ms6: str
    peer6: str
    row: int
    def __init__(self, row: _Optional[int] = ..., peer6: _Optional[str] = ..., ms6: _Optional[str] = ...) -> None: ...

class gtp_pdp_chunk_entry(_message.Message):
    __slots__ = ["flow", "i_tei", "ms", "o_tei", "peer", "tid", "v6", "version"]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    I_TEI_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    O_TEI_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    V6_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    flow: _containers.RepeatedScalarFieldContainer[int]
    i_tei: _containers.RepeatedScalarFieldContainer[int]
    ms: _containers.RepeatedScalarFieldContainer[int]
    o_tei: _containers.RepeatedScalarFieldContainer[int]
    peer: _containers.RepeatedScalarFieldContainer[int]
    tid: _containers.RepeatedScalarFieldContainer[int]
    v6: _containers.RepeatedCompositeFieldContainer[gtp_pdp6_entry]
    version: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, version: _Optional[_Iterable[int]] = ..., i_tei: _Optional[_Iterable[int]] = ..., o_tei: _Optional[_Iterable[int]] = ..., tid: _Optional[_Iterable[int]] = ..., flow: _Optional[_Iterable[int]] = ..., peer: _Optional[_Iterable[int]] = ..., ms: _Optional[_Iterable[int]] = ..., v6: _Optional[_Iterable[_Union[gtp_pdp6_entry, _Mapping]]] = ...) -> None: ...

class gtp_pdp_columns_entry(_message.Message):
    __slots__ = ["count", "flow", "i_tei", "ms", "o_tei", "peer", "tid", "v6", "version"]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    I_TEI_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    O_TEI_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    V6_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    count: int
    flow: bytes
    i_tei: bytes
    ms: bytes
    o_tei: bytes
    peer: bytes
    tid: bytes
    v6: _containers.RepeatedCompositeFieldContainer[gtp_pdp6_entry]
    version: bytes
    def __init__(self, count: _Optional[int] = ..., version: _Optional[bytes] = ..., i_tei: _Optional[bytes] = ..., o_tei: _Optional[bytes] = ..., tid: _Optional[bytes] = ..., flow: _Optional[bytes] = ..., peer: _Optional[bytes] = ..., ms: _Optional[bytes] = ..., v6: _Optional[_Iterable[_Union[gtp_pdp6_entry, _Mapping]]] = ...) -> None: ...

class gtp_route_entry(_message.Message):
    __slots__ = ["dev", "dst", "dst_len", "family", "gateway", "prefsrc", "priority", "proto", "scope", "table", "type"]
    DEV_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    DST_LEN_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    PREFSRC_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    dev: str
    dst: str
    dst_len: int
    family: int
    gateway: str
    prefsrc: str
    priority: int
    proto: int
    scope: int
    table: int
    type: int
    def __init__(self, family: _Optional[int] = ..., dst: _Optional[str] = ..., dst_len: _Optional[int] = ..., dev: _Optional[str] = ..., table: _Optional[int] = ..., type: _Optional[int] = ..., scope: _Optional[int] = ..., proto: _Optional[int] = ..., priority: _Optional[int] = ..., prefsrc: _Optional[str] = ..., gateway: _Optional[str] = ...) -> None: ...

class gtp_socket_entry(_message.Message):
    __slots__ = ["addr", "family", "fd", "guessed", "inode", "kind", "pid", "port"]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    FD_FIELD_NUMBER: _ClassVar[int]
    GUESSED_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    addr: str
    family: int
    fd: int
    guessed: bool
    inode: int
    kind: str
    pid: int
    port: int
    def __init__(self, kind: _Optional[str] = ..., pid: _Optional[int] = ..., fd: _Optional[int] = ..., family: _Optional[int] = ..., addr: _Optional[str] = ..., port: _Optional[int] = ..., inode: _Optional[int] = ..., guessed: bool = ...) -> None: ...

class gtp_sysctl_entry(_message.Message):
    __slots__ = ["name", "value"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class gtp_tail_entry(_message.Message):
    __slots__ = ["crc32", "entries", "n_contexts"]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    N_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    crc32: int
    entries: int
    n_contexts: int
    def __init__(self, entries: _Optional[int] = ..., n_contexts: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...
