from typing import Any

from pyroute2.netlink import nlmsg_base
from pyroute2.netlink.nlsocket import NetlinkSocket

class GenericNetlinkSocket(NetlinkSocket):
    prid: int
    def bind(self, proto: str, msg_class: type[nlmsg_base], groups: int = ...,
             pid: int | None = ..., **kwarg: Any) -> None: ...
