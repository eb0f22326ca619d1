"""``netfilter``: the SGi masquerade (NAT) rules of the UE pool.

CRIU 3.17 as Debian builds it dumps and restores a netns's nftables ruleset
(and iptables-legacy rules) itself, so the rules normally arrive with the
netns. This plugin makes sure of it without adding a second copy:

  pre-dump      (tasks running, outside the freeze window) record the NAT rules
                that concern the UE pools (the routes through gtp devices) with
                gtp_util's reader, into criu-ext-netfilter.json.
  post-restore  (after the gtp plugin) check that CRIU's own nftables image
                (nftables-<ns>.img, the text of ``nft list ruleset``) holds
                them, counters aside: CRIU restored them then; otherwise check
                the live chains with one ``nft list chain`` each. If something is
                missing, read the rules with gtp_util and add only the missing
                ones. Then give the UE flows' conntrack entries CRIU restored
                their NAT binding back (gtp_util.natflows.rebind): CRIU keeps a
                flow's translated tuple, not the binding that translates it.
                A failure aborts the restore.

Nothing is removed at dump, so there is nothing to roll back.

The image is untrusted input: :func:`read_image` checks every field (UE pools are
prefixes, rules are of the forms gtp_util.natrule accepts, chain keys are
nftables names) before anything uses it, and refuses a file over
:data:`MAX_IMAGE` bytes, a link or anything but a regular file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections import Counter

from criu_ext.plugin import Plugin, PluginError
from procns.files import MiB, UnsafeFile, atomic_file, read_json, read_text

IMAGE = "criu-ext-netfilter.json"
MAX_IMAGE = 1 * MiB  # criu-ext-netfilter.json
MAX_CRIU_NFT = 16 * MiB  # each of CRIU's nftables-<ns>.img
MAX_ITEMS = 1024  # pools, rules, chains, lines per chain


_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
_HANDLE = re.compile(r"\s+# handle \d+$")


def _rule_line(line: str) -> str | None:
    """A rule line of nft's listing, counters and handle blanked; None for anything else."""
    s = _HANDLE.sub("", line.strip())
    if not s or s in ("}", "{") or s.startswith(("table ", "chain ", "type ", "policy ", "#")):
        return None
    return _COUNTER.sub("counter", s)


def nft_rules(netns: str | None, table: str, chain: str) -> list[str] | None:
    """The rules of an nftables chain as ``nft list chain`` prints them, counters and
    handles blanked; None when the chain does not exist."""
    from gtp_util.natrule import check_nft_name, nft_table

    try:  # nft parses its arguments as one command line: only checked names go there
        argv = ["nft", "list", "chain", *nft_table(table), check_nft_name(chain, "nft chain")]
    except ValueError:
        return None
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", "--"] + argv
    p = subprocess.run(argv, capture_output=True, text=True, close_fds=True)
    if p.returncode:
        return None
    return [r for r in map(_rule_line, p.stdout.splitlines()) if r is not None]


def ruleset_chains(text: str) -> dict[str, list[str]]:
    """``{"<family> <table> <chain>": rule lines}`` of an ``nft list ruleset`` text, each
    line as :func:`nft_rules` gives it (sets, maps and other blocks skipped)."""
    out: dict[str, list[str]] = {}
    stack: list[tuple[str, str]] = []  # ("table" | "chain" | "other", name)
    for line in text.splitlines():
        s = line.strip()
        if s.endswith("{"):
            head = s[:-1].strip()
            if not stack and head.startswith("table "):
                stack.append(("table", head[6:].strip()))
            elif len(stack) == 1 and stack[0][0] == "table" and head.startswith("chain "):
                key = f"{stack[0][1]} {head[6:].strip()}"
                out.setdefault(key, [])
                stack.append(("chain", key))
            else:
                stack.append(("other", head))
        elif s.startswith("}"):
            if stack:
                stack.pop()
        elif stack and stack[-1][0] == "chain":
            rule = _rule_line(s)
            if rule is not None:
                out[stack[-1][1]].append(rule)
    return out


def criu_image_chains(images_dir: str) -> dict[str, list[str]]:
    """The nftables chains CRIU saved in ``images_dir`` (``nftables-<ns>.img`` holds the
    text of ``nft list ruleset`` of each dumped netns) and restores with it."""
    out: dict[str, list[str]] = {}
    try:
        names = sorted(n for n in os.listdir(images_dir)
                       if n.startswith("nftables-") and n.endswith(".img"))
    except OSError:
        return out
    for name in names:
        try:
            chains = ruleset_chains(read_text(os.path.join(images_dir, name), MAX_CRIU_NFT))
        except OSError:  # a link, a FIFO, too large, not UTF-8: cannot vouch for the rules
            continue
        for key, lines in chains.items():
            out.setdefault(key, []).extend(lines)
    return out


def _held(recorded: dict[str, list[str]], chains: dict[str, list[str]]) -> bool:
    return all(key in chains and not Counter(lines) - Counter(chains[key])
               for key, lines in recorded.items())


def chains_match(netns: str | None, recorded: dict[str, list[str]]) -> bool:
    """True when every recorded rule line is in its chain again (CRIU brought it back)."""
    live = {}
    for key in recorded:
        table, chain = key.rsplit(" ", 1)
        rules = nft_rules(netns, table, chain)
        if rules is None:
            return False
        live[key] = rules
    return _held(recorded, live)


def read_image(path: str) -> tuple[list, list, dict[str, list[str]]]:
    """(UE pools, NAT rules, nft chains) of the plugin's image, every field checked.

    FileNotFoundError when there is none; PluginError (one line) when it is malformed.
    """
    import ipaddress

    from gtp_util.errors import BadImage
    from gtp_util.fields import check_nat_rule, text
    from gtp_util.model import NatRule
    from gtp_util.natrule import check_nft_name, nft_table

    def bad(why: str) -> PluginError:
        return PluginError(f"{path}: {why}")

    try:
        data = read_json(path, MAX_IMAGE)
    except UnsafeFile as exc:
        raise PluginError(str(exc)) from None
    except ValueError as exc:
        raise PluginError(str(exc)) from None
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    raw_pools, raw_rules = data.get("pools", []), data.get("rules", [])
    raw_nft = data.get("nft_chains") or {}
    if not isinstance(raw_pools, list) or not isinstance(raw_rules, list) \
            or not isinstance(raw_nft, dict) \
            or max(len(raw_pools), len(raw_rules), len(raw_nft)) > MAX_ITEMS:
        raise bad(f"pools, rules, nft_chains must be lists / an object of at most {MAX_ITEMS}")
    pools = []
    for p in raw_pools:
        try:
            pools.append(ipaddress.ip_network(text(p, "UE pool", 64), strict=False))
        except (BadImage, ValueError) as exc:
            raise bad(f"UE pool {p!r:.60} is not a prefix ({exc})") from None
    rules = []
    for r in raw_rules:
        try:
            if not isinstance(r, dict):
                raise TypeError("not an object")
            rule = NatRule(**r)
            check_nat_rule(rule)
        except (TypeError, BadImage) as exc:
            raise bad(f"NAT rule {r!r:.80}: {exc}") from None
        rules.append(rule)
    nft: dict[str, list[str]] = {}
    for key, lines in raw_nft.items():
        try:
            fam, name, chain = key.split(" ")
            nft_table(f"{fam} {name}")
            check_nft_name(chain, "nft chain name")
            if not isinstance(lines, list) or len(lines) > MAX_ITEMS:
                raise ValueError(f"not a list of at most {MAX_ITEMS} rule lines")
            nft[key] = [text(ln, "nft rule line", 1024) for ln in lines]
        except (ValueError, BadImage) as exc:
            raise bad(f"nft chain {key!r:.60}: {exc}") from None
    return pools, rules, nft


class NetfilterPlugin(Plugin):
    name = "netfilter"
    order = 200
    summary = "SGi MASQUERADE/SNAT rules of the UE pool: checked after restore, re-added if missing"
    images = (IMAGE,)

    def warm(self, action: str) -> None:
        import gtp_util.dump  # noqa: F401
        import gtp_util.nat  # noqa: F401
        import gtp_util.natflows  # noqa: F401 - its conntrack requests need no pyroute2

    def pre_dump(self, ctx) -> None:
        import gtp_util
        from gtp_util.natrule import nft_chain

        path = ctx.image_path(IMAGE)
        try:
            snap = gtp_util.take_snapshot(ctx.netns_path, with_sockets=False, with_contexts=False)
        except gtp_util.GtpError as exc:
            raise PluginError(f"cannot read the NAT rules of {ctx.netns_path}: {exc}") from exc
        if not snap.routes:
            ctx.log.debug("no UE pool routed through a gtp device: nothing to record")
            if os.path.exists(path):
                os.unlink(path)
            return
        pools = sorted({r.cidr() for r in snap.routes})
        rules = [dict(vars(r)) for r in snap.nat_rules]
        # how nftables shows the chains holding them: a cheap, exact presence check later
        nft = {}
        for r in snap.nat_rules:
            where = nft_chain(r)
            if where and f"{where[0]} {where[1]}" not in nft:
                lines = nft_rules(ctx.netns_path, *where)
                if lines is not None:
                    nft[f"{where[0]} {where[1]}"] = lines
        with atomic_file(path, "w", 0o644) as f:
            json.dump({"pools": pools, "rules": rules, "nft_chains": nft}, f, indent=1)
        ctx.log.info(f"recorded {len(rules)} NAT rule(s) for UE pool(s) {', '.join(pools)}")

    def post_restore(self, ctx) -> None:
        from gtp_util import nat
        from gtp_util.errors import GtpError
        from gtp_util.natrule import nft_chain, same_rule

        try:
            pools, saved, nft = read_image(ctx.image_path(IMAGE))
        except FileNotFoundError:
            return
        covered = all(nft_chain(r) for r in saved)
        # No recorded rule still needs the rebinding below: the restored UE flows
        # lack their NAT binding either way.
        # CRIU's own nftables image holding them means CRIU restored them (it fails the
        # restore otherwise): a file read, where asking nft would start a process in
        # the freeze window. The live chains are read only when the image cannot tell.
        in_image = bool(saved and nft and covered
                        and _held(nft, criu_image_chains(ctx.images_dir)))
        ctx.log.debug("recorded rules " + ("found in CRIU's nftables image" if in_image else
                                           "not all in CRIU's nftables image"))
        if not saved or in_image or (nft and covered and chains_match(ctx.netns_path, nft)):
            missing = []
        else:
            try:
                live = nat.read_rules(ctx.netns_path, pools)
                missing = [r for r in saved if not any(same_rule(r, m) for m in live)]
                for r in missing:
                    nat.add(ctx.netns_path, r)
            except GtpError as exc:
                raise PluginError(f"cannot restore the NAT rules: {exc}") from exc
        from gtp_util.natflows import rebind

        try:
            rebound, failed = rebind(ctx.netns_path, pools)
        except OSError as exc:
            raise PluginError(f"cannot rebind the restored conntrack entries: {exc}") from exc
        for flow, why in failed[:5]:
            ctx.log.warning(f"{flow.describe()}: not rebound ({why}); it will be "
                            "masqueraded afresh")
        ctx.log.info(f"{len(saved) - len(missing)} NAT rule(s) came back with CRIU's netns, "
                     f"{len(missing)} re-added; {len(rebound)} UE flow(s) of the pool given "
                     f"their NAT binding back, {len(failed)} not")

    def show(self, images_dir: str) -> dict | None:
        try:
            pools, rules, nft = read_image(os.path.join(images_dir, IMAGE))
        except FileNotFoundError:
            return None
        lines = [f"UE pools: {', '.join(map(str, pools)) or '-'}"]
        for r in rules:
            fam = "ip6" if r.family == socket.AF_INET6 else "ip"
            lines.append(f"{r.backend} {fam} {r.table} {r.chain}: {r.rule}")
        return {"text": "\n".join(lines), "pools": [str(p) for p in pools],
                "rules": [dict(vars(r)) for r in rules], "nft_chains": nft}
