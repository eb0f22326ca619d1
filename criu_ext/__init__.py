"""CRIU integration: hook entry, phase dispatch, plugins, image I/O, RPC driver."""

from procns.imports import skip_package_init

# both packages' __init__ import the whole library (procns/imports.py): pycriu's every
# image type's protobuf module, where criu-ext's RPC needs only rpc_pb2
skip_package_init("pyroute2")
skip_package_init("pycriu")
