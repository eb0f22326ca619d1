# Hand-written: the names criu-ext imports from pyroute2.netlink (see stubs/README.md).
from typing import Any, ClassVar

NLM_F_REQUEST: int
NLM_F_MULTI: int
NLM_F_ACK: int
NLM_F_ECHO: int
NLM_F_DUMP: int
NLM_F_ROOT: int
NLM_F_MATCH: int
NLM_F_ATOMIC: int
NLM_F_REPLACE: int
NLM_F_EXCL: int
NLM_F_CREATE: int
NLM_F_APPEND: int
NLMSG_NOOP: int
NLMSG_ERROR: int
NLMSG_DONE: int
NLMSG_OVERRUN: int
GENL_ID_CTRL: int
CTRL_CMD_GETFAMILY: int

class nlmsg_base(dict[Any, Any]):
    """A message or attribute: a dict of its fields and ``attrs``, declared by class tables."""

    fields: ClassVar[Any]
    nla_map: ClassVar[Any]
    prefix: ClassVar[str | None]
    header: ClassVar[Any]
    data: Any
    offset: int
    length: int
    value: Any
    def __init__(self, data: Any = ..., offset: int = ..., length: int | None = ...,
                 parent: Any = ..., init: Any = ...) -> None: ...
    def encode(self) -> Any: ...
    def decode(self) -> Any: ...
    def get_attr(self, attr: str, default: Any = ...) -> Any: ...
    def get_attrs(self, attr: str) -> list[Any]: ...
    def getvalue(self) -> Any: ...
    def __getattr__(self, name: str) -> Any: ...  # nested nla classes declared in nla_map

class nla_base(nlmsg_base): ...
class nla(nla_base): ...
class nlmsg(nlmsg_base): ...
class genlmsg(nlmsg): ...
class ctrlmsg(genlmsg): ...
