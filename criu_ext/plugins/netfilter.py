"""``netfilter``: the SGi masquerade rules of the UE pool (placeholder)."""

from __future__ import annotations

from criu_ext.plugin import Plugin


class NetfilterPlugin(Plugin):
    name = "netfilter"
    order = 200
    summary = "SGi MASQUERADE/SNAT rules of the UE pool, re-added when CRIU did not carry them"
