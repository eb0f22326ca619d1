from pyroute2.netlink import nlmsg

SOCK_DIAG_BY_FAMILY: int

class inet_diag_req(nlmsg): ...
