# Hand-written (see stubs/README.md). criu-ext imports from the submodules, not from
# here: the package's __init__ is skipped at run time (procns/imports.py).
from pyroute2.conntrack import Conntrack as Conntrack
from pyroute2.iproute.linux import IPRoute as IPRoute
