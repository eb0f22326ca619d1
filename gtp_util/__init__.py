"""Snapshot and restore of kernel gtp devices, PDP contexts, routes and SGi masquerade.

Python API (what the CRIU plugin calls; importing this package loads no scapy and
no netlink code until a function needs it)::

    import gtp_util
    snap = gtp_util.take_snapshot('/proc/1234/ns/net')   # None: our own namespace
    gtp_util.save(snap, image_dir)                       # a directory gets gtp.img
    gtp_util.remove(snap, netns)       # delete the devices (contexts and routes go
                                       # with them) and the NAT rules, e.g. at
                                       # network-lock so CRIU can dump the netns
    snap = gtp_util.load(image_dir)
    res = gtp_util.restore(snap, netns, bind_pid=1234)   # transactional
    res.already_present                # True when nothing had to be done
    gtp_util.check(snap, netns)        # list of differences, [] when equal

* ``take_snapshot(netns=None, *, with_nat=True, with_sockets=True, with_contexts=True)
  -> Snapshot``; PDP contexts come in the kernel's order (``PdpTable.sort()`` sorts).
* ``watch(netns, contexts=False)`` -> a ``Watch`` whose ``changed()`` says whether
  links, addresses or routes changed since, and ``contexts_changed()`` whether PDP
  contexts did (the gtp family's notifications); ``refresh(base, netns, contexts=True)``
  -> ``base`` with its PDP contexts read again, or kept (None when ``base`` no longer
  holds); ``delete_links(netns, ifindexes)``: the quick path of a dump whose netns did
  not change (the CRIU plugin's).
* ``remove(snapshot, netns=None, *, nat_rules=True)``
* ``restore(snapshot, netns=None, *, bind_pid=None, dry_run=False, batch=2048) -> Result``:
  devices whose sockets belonged to a task are re-created on that task's sockets,
  copied with ``pidfd_getfd`` from ``bind_pid`` (default: the PID recorded at dump),
  matched by fd number, then by local address and port; kernel-socket devices get
  new kernel sockets. Raises ``Conflict`` (nothing applied) or ``RestoreFailed``
  (everything it created removed again).
* ``save(snapshot, path) -> path``, ``load(path) -> Snapshot``, ``dumps``/``loads``
  for bytes; ``to_json(snapshot)``; ``tunnel_lines(snapshot)``.
* Errors derive from ``GtpError`` and carry ``exit_code`` (see ``gtp_util.errors``).

``netns`` is always a path (``/run/netns/NAME``, ``/proc/PID/ns/net``);
``procns.netns.netns_path(name=..., pid=...)`` makes one.
"""

from __future__ import annotations

from procns.imports import skip_package_init

from .errors import (
    BadImage,
    Conflict,
    GtpError,
    GtpUnavailable,
    NoPermission,
    NoSuchTarget,
    RestoreFailed,
)
from .model import PdpContext, PdpTable, Snapshot

skip_package_init("pyroute2")  # its __init__ imports the whole library: procns/imports.py

__all__ = [
    'BadImage', 'Conflict', 'GtpError', 'GtpUnavailable', 'NoPermission', 'NoSuchTarget',
    'PdpContext', 'PdpTable', 'RestoreFailed', 'Snapshot', 'check', 'delete_links', 'dumps',
    'load', 'loads', 'refresh', 'remove', 'restore', 'save', 'take_snapshot', 'to_json',
    'tunnel_lines', 'watch',
]


def take_snapshot(netns=None, **kw):
    from .dump import take_snapshot as f
    return f(netns, **kw)


def refresh(base, netns=None, **kw):
    from .dump import refresh as f
    return f(base, netns, **kw)


def watch(netns=None, **kw):
    from .dump import Watch
    return Watch(netns, **kw)


def delete_links(netns, ifindexes):
    from .dump import delete_links as f
    return f(netns, ifindexes)


def remove(snapshot, netns=None, **kw):
    from .dump import remove as f
    return f(snapshot, netns, **kw)


def restore(snapshot, netns=None, **kw):
    from .restorer import restore as f
    return f(snapshot, netns, **kw)


def check(snapshot, netns=None):
    from .restorer import check as f
    return f(snapshot, netns)


def save(snapshot, path):
    from .image import save as f
    return f(snapshot, path)


def load(path):
    from .image import load as f
    return f(path)


def dumps(snapshot):
    from .image import dumps as f
    return f(snapshot)


def loads(data):
    from .image import loads as f
    return f(data)


def to_json(snapshot, indent=2):
    from .format import to_json as f
    return f(snapshot, indent)


def tunnel_lines(snapshot):
    from .format import tunnel_lines as f
    return f(snapshot)
