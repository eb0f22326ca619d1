"""Importing a package's submodules without its ``__init__`` running first.

``import pyroute2.netlink`` runs ``pyroute2/__init__.py`` before anything else, and
that file imports the whole library so that ``from pyroute2 import IPRoute`` works:
IPDB, NDB, ipset, IPVS, wireless, devlink... About 160 modules this toolkit never
uses, 0.15 s of every process's start on a host. In the test VM, where every file
lookup crosses 9p under emulation, the same import costs tens of seconds per
process, and every dump and restore starts one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def skip_package_init(name: str) -> None:
    """Make ``import name.sub`` load ``sub`` without running ``name/__init__.py``.

    The package's own ``__init__`` still runs, once, on the first access to an
    attribute that is not a submodule (``from name import Thing``), so code that
    wants the full package gets it. Does nothing when ``name`` is already imported,
    not installed or not a package.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(attr: str) -> object:
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        del package.__dict__["__getattr__"]
        loader.exec_module(package)
        return getattr(package, attr)

    package.__dict__["__getattr__"] = complete
    sys.modules[name] = package
