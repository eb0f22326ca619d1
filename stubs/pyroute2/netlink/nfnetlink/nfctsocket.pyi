# Hand-written: the names criu-ext imports from pyroute2 0.9 (see stubs/README.md).
from typing import Any

class NFCTAttrTuple:
    family: int
    saddr: str | None
    daddr: str | None
    proto: int | None
    sport: int | None
    dport: int | None
    icmp_id: int | None
    icmp_type: int | None
    def __init__(self, family: int = ..., saddr: str | None = ..., daddr: str | None = ...,
                 proto: int | None = ..., sport: int | None = ..., dport: int | None = ...,
                 icmp_id: int | None = ..., icmp_type: int | None = ...,
                 icmp_code: int | None = ...) -> None: ...
    def reverse(self) -> NFCTAttrTuple: ...
    def attrs(self) -> list[Any]: ...
