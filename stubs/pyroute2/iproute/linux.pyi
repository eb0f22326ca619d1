# Hand-written: the names criu-ext imports from pyroute2 0.9 (see stubs/README.md).
from pyroute2.netlink.nlsocket import NetlinkSocket

class IPRoute(NetlinkSocket):
    def __enter__(self) -> IPRoute: ...
