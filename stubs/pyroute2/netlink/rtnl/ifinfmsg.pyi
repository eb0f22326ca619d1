from typing import Any, ClassVar

from pyroute2.netlink import nlmsg

class ifinfmsg(nlmsg):
    ifinfo: ClassVar[Any]  # the IFLA_LINKINFO class, where link kinds register
