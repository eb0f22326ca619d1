"""CRIU integration: hook entry, phase dispatch, plugins, image I/O, RPC driver."""

from procns.imports import skip_package_init

skip_package_init("pyroute2")  # its __init__ imports the whole library: procns/imports.py
