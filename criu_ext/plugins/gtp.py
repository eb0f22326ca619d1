"""``gtp``: carries kernel gtp devices through a dump and a restore (placeholder until gtp_util lands)."""

from __future__ import annotations

from criu_ext.plugin import Plugin


class GtpPlugin(Plugin):
    name = "gtp"
    order = 100
    summary = "gtp devices, PDP contexts and routes, re-bound to the restored sockets"
    images = ("criu-ext-gtp.img",)
