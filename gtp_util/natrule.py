"""The SGi NAT rules the toolkit carries, as typed values (pure: no I/O).

A NAT rule read from an image is never handed to a tool as text. It is parsed
into a :class:`Masq` (source prefix, output interface, MASQUERADE or SNAT to one
address), and only these forms are accepted (docs/gtp.md lists them):

* iptables (``iptables-nft``, ``iptables-legacy``): table ``nat``, chain
  ``POSTROUTING``, rule ``[-s CIDR] [-o IFNAME] -j MASQUERADE`` or
  ``[-s CIDR] [-o IFNAME] -j SNAT --to-source ADDR``, options in any order;
* nftables: ``[ip|ip6 saddr CIDR] [oifname "IFNAME"] [counter [packets N bytes N]]
  masquerade`` or ``... snat to ADDR`` in a table of family ip, ip6 or inet, in a
  base chain ``type nat hook postrouting priority srcnat|N [policy accept|drop]``.

Anything else raises :class:`ValueError` with one line. iptables argument lists
and nftables JSON commands are rebuilt from the fields.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

IPTABLES_BACKENDS = ('iptables-nft', 'iptables-legacy')
BACKENDS = IPTABLES_BACKENDS + ('nft',)
NFT_FAMILIES = ('ip', 'ip6', 'inet')
_NFT_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_.-]{0,63}$')
_IFNAME_BAD = re.compile(r'[\s/:"\\\x00-\x1f\x7f]')
SRCNAT = 100  # nftables' "srcnat" priority (NF_IP_PRI_NAT_SRC)
MAX_RULE = 512  # characters of a rule text, chain spec


def check_ifname(name: object, what: str = 'interface name') -> str:
    """``name`` if the kernel accepts it as an interface name (dev_valid_name), else
    ValueError: 1 to 15 bytes, not . or .., no '/', ':', whitespace or control character."""
    if not isinstance(name, str):
        raise ValueError(f"{what} {name!r} is not a string")
    raw = name.encode('utf-8', 'surrogatepass')
    if not 0 < len(raw) < 16 or name in ('.', '..') or _IFNAME_BAD.search(name):
        raise ValueError(f"{what} {name!r} is not a valid interface name")
    return name


def check_nft_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NFT_NAME.match(name):
        raise ValueError(f"{what} {name!r} is not a valid nftables name")
    return name


@dataclass(frozen=True)
class Masq:
    """One source-NAT rule: traffic from ``saddr`` (any: None) leaving by ``oif``
    (any: None) is masqueraded (``to`` None) or SNATed to ``to``."""

    family: int  # AF_INET / AF_INET6
    saddr: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    oif: str | None = None
    to: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    counter: bool = False  # nftables only; counter values are never kept

    # -- iptables ------------------------------------------------------------

    def iptables_args(self) -> list[str]:
        """The rule as ``iptables -S`` prints it, without ``-A CHAIN``."""
        out = []
        if self.saddr is not None:
            out += ['-s', str(self.saddr)]
        if self.oif is not None:
            out += ['-o', self.oif]
        if self.to is None:
            out += ['-j', 'MASQUERADE']
        else:
            out += ['-j', 'SNAT', '--to-source', str(self.to)]
        return out

    # -- nftables ------------------------------------------------------------

    def nft_text(self) -> str:
        """The rule as ``nft list chain`` prints it (counter values left out)."""
        out = []
        if self.saddr is not None:
            net = self.saddr
            addr = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
            out.append(f"{'ip6' if self.family == socket.AF_INET6 else 'ip'} saddr {addr}")
        if self.oif is not None:
            out.append(f'oifname "{self.oif}"')
        if self.counter:
            out.append('counter')
        out.append('masquerade' if self.to is None else f'snat to {self.to}')
        return ' '.join(out)

    def nft_expr(self) -> list[dict]:
        """The rule's expressions in libnftables' JSON form."""
        expr: list[dict] = []
        if self.saddr is not None:
            net = self.saddr
            right: object = str(net.network_address) if net.prefixlen == net.max_prefixlen \
                else {'prefix': {'addr': str(net.network_address), 'len': net.prefixlen}}
            proto = 'ip6' if self.family == socket.AF_INET6 else 'ip'
            expr.append({'match': {'op': '==', 'left': {'payload': {'protocol': proto,
                                                                      'field': 'saddr'}},
                                   'right': right}})
        if self.oif is not None:
            expr.append({'match': {'op': '==', 'left': {'meta': {'key': 'oifname'}},
                                   'right': self.oif}})
        if self.counter:
            expr.append({'counter': None})
        expr.append({'masquerade': None} if self.to is None else
                    {'snat': {'addr': str(self.to)}})
        return expr

    def same(self, other: Masq | None) -> bool:
        """Equal as NAT rules (a counter statement does not change what a rule does)."""
        return other is not None and (self.family, self.saddr, self.oif, self.to) == \
            (other.family, other.saddr, other.oif, other.to)


def _net(text: str, family: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an address or prefix") from None
    if net.version != (6 if family == socket.AF_INET6 else 4):
        raise ValueError(f"{text!r} is not of the rule's address family")
    return net


def _addr(text: str, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an address") from None
    if a.version != (6 if family == socket.AF_INET6 else 4):
        raise ValueError(f"{text!r} is not of the rule's address family")
    return a


def _check_family(family: object) -> int:
    if family not in (socket.AF_INET, socket.AF_INET6) or isinstance(family, bool):
        raise ValueError(f"address family {family!r} is neither AF_INET nor AF_INET6")
    return family  # type: ignore[return-value]


def _check_text(rule: object) -> str:
    if not isinstance(rule, str):
        raise ValueError(f"rule {rule!r} is not a string")
    if len(rule) > MAX_RULE or any(ord(c) < 32 or ord(c) == 127 for c in rule):
        raise ValueError("rule text is too long or holds control characters")
    return rule


def parse_iptables(rule: object, family: int) -> Masq:
    """A ``-s CIDR -o IFNAME -j MASQUERADE`` style rule (see the module doc)."""
    words = _check_text(rule).split()
    family = _check_family(family)
    seen: dict[str, str] = {}
    i = 0
    while i < len(words):
        opt = words[i]
        if opt not in ('-s', '-o', '-j', '--to-source') or opt in seen or i + 1 >= len(words):
            raise ValueError(f"iptables rule {rule!r} is not one of the accepted NAT forms")
        seen[opt] = words[i + 1]
        i += 2
    target = seen.get('-j')
    if target == 'MASQUERADE' and '--to-source' not in seen:
        to = None
    elif target == 'SNAT' and '--to-source' in seen:
        to = _addr(seen['--to-source'], family)
    else:
        raise ValueError(f"iptables rule {rule!r} is not one of the accepted NAT forms")
    return Masq(family, _net(seen['-s'], family) if '-s' in seen else None,
                check_ifname(seen['-o']) if '-o' in seen else None, to)


_NFT_TOKEN = re.compile(r'\s*("[^"]*"|\S+)')


def parse_nft(rule: object, family: int) -> Masq:
    """An nftables masquerade/snat rule as ``nft list chain`` prints it (see the module doc)."""
    text = _check_text(rule)
    family = _check_family(family)
    words = _NFT_TOKEN.findall(text)
    bad = ValueError(f"nft rule {rule!r} is not one of the accepted NAT forms")
    saddr = oif = to = None
    counter = masq = False
    i = 0
    while i < len(words):
        w = words[i]
        rest = words[i + 1:]
        if w in ('ip', 'ip6') and len(rest) >= 2 and rest[0] == 'saddr' and saddr is None \
                and (w == 'ip6') == (family == socket.AF_INET6):
            saddr = _net(rest[1], family)
            i += 3
        elif w == 'oifname' and rest and oif is None:
            oif = check_ifname(rest[0][1:-1] if rest[0].startswith('"') else rest[0])
            i += 2
        elif w == 'counter' and not counter:
            counter = True
            i += 1
            if len(rest) >= 4 and rest[0] == 'packets' and rest[2] == 'bytes' \
                    and rest[1].isdigit() and rest[3].isdigit():
                i += 4
        elif w == 'masquerade' and not rest:
            masq = True
            i += 1
        elif w == 'snat' and len(rest) == 2 and rest[0] == 'to':
            to = _addr(rest[1], family)
            i += 3
        else:
            raise bad
    if not masq and to is None:
        raise bad
    return Masq(family, saddr, oif, to, counter)


def parse_nft_expr(expr: object, family: int) -> Masq | None:
    """A rule of libnftables' JSON listing as a :class:`Masq`; None when it is not
    one of the accepted forms (another rule of the same chain)."""
    if not isinstance(expr, list):
        return None
    saddr = oif = to = None
    counter = False
    action = None
    try:
        for e in expr:
            (key, val), = e.items()
            if key == 'match' and val.get('op') == '==':
                left, right = val['left'], val['right']
                if 'payload' in left and left['payload'].get('field') == 'saddr':
                    if isinstance(right, dict):
                        p = right['prefix']
                        saddr = _net(f"{p['addr']}/{p['len']}", family)
                    else:
                        saddr = _net(right, family)
                elif left.get('meta', {}).get('key') == 'oifname' and isinstance(right, str):
                    oif = right
                else:
                    return None
            elif key == 'counter':
                counter = True
            elif key == 'masquerade' and not val:
                action = 'masq'
            elif key == 'snat' and isinstance(val, dict) and set(val) == {'addr'}:
                action, to = 'snat', _addr(val['addr'], family)
            else:
                return None
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if action is None:
        return None
    return Masq(family, saddr, oif, to, counter)


@dataclass(frozen=True)
class ChainSpec:
    """The base chain an nft rule lives in (created only when missing)."""

    hook: str = 'postrouting'
    prio: int = SRCNAT
    policy: str = 'accept'

    def nft_json(self) -> dict:
        return {'type': 'nat', 'hook': self.hook, 'prio': self.prio, 'policy': self.policy}


_SPEC = re.compile(r'^type nat hook postrouting priority (srcnat|-?\d{1,9})'
                   r'(?:\s*;\s*policy (accept|drop))?\s*;?$')


def parse_chain_spec(spec: object) -> ChainSpec:
    """``type nat hook postrouting priority srcnat; policy accept;`` (default when empty)."""
    if spec == '':
        return ChainSpec()
    if not isinstance(spec, str) or len(spec) > MAX_RULE:
        raise ValueError(f"chain spec {spec!r} is not a string")
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(f"chain spec {spec!r} is not a nat postrouting base chain")
    prio = SRCNAT if m.group(1) == 'srcnat' else int(m.group(1))
    return ChainSpec(prio=prio, policy=m.group(2) or 'accept')


def nft_table(table: object) -> tuple[str, str]:
    """(family, name) of an nft rule's ``table`` field ``"<family> <name>"``."""
    if not isinstance(table, str) or len(table.split(' ')) != 2:
        raise ValueError(f"nft table {table!r} is not '<family> <name>'")
    fam, name = table.split(' ')
    if fam not in NFT_FAMILIES:
        raise ValueError(f"nft table family {fam!r} is not one of {', '.join(NFT_FAMILIES)}")
    return fam, check_nft_name(name, 'nft table name')


def parse_rule(rule) -> Masq:
    """Check every field of a :class:`~gtp_util.model.NatRule`; its typed rule.

    ValueError (one line) when the rule is not one of the accepted forms.
    """
    if rule.backend not in BACKENDS:
        raise ValueError(f"NAT rule backend {rule.backend!r} is not one of "
                         f"{', '.join(BACKENDS)}")
    family = _check_family(rule.family)
    if rule.backend == 'nft':
        fam, _ = nft_table(rule.table)
        if fam == 'ip' and family != socket.AF_INET or fam == 'ip6' and family != socket.AF_INET6:
            raise ValueError(f"nft table {rule.table!r} does not hold rules of family {family}")
        check_nft_name(rule.chain, 'nft chain name')
        parse_chain_spec(rule.chain_spec)
        return parse_nft(rule.rule, family)
    if rule.table != 'nat' or rule.chain != 'POSTROUTING' or rule.chain_spec != '':
        raise ValueError(f"iptables NAT rule in table {rule.table!r} chain {rule.chain!r}: "
                         "only the nat table's POSTROUTING chain is accepted")
    return parse_iptables(rule.rule, family)


def nft_chain(rule) -> tuple[str, str] | None:
    """("<family> <table>", chain) holding ``rule`` in nftables; None for iptables-legacy.

    iptables-nft writes into nftables' ``ip``/``ip6`` tables of the iptables names."""
    if rule.backend == 'nft':
        return rule.table, rule.chain
    if rule.backend == 'iptables-nft':
        return ('ip6 ' if rule.family == socket.AF_INET6 else 'ip ') + rule.table, rule.chain
    return None


def same_rule(a, b) -> bool:
    """``a`` and ``b`` are the same NAT rule in the same chain, whichever tool wrote them.

    A rule iptables-nft made reads back as an nft rule of table ``ip nat`` once the
    ruleset has been reloaded from nft's text (CRIU restores a netns's nftables that
    way): the same rule for every purpose but its tool."""
    try:
        where_a = nft_chain(a) or (a.backend, a.family, a.table, a.chain)
        where_b = nft_chain(b) or (b.backend, b.family, b.table, b.chain)
        return where_a == where_b and parse_rule(a).same(parse_rule(b))
    except ValueError:
        return False


__all__ = ['BACKENDS', 'ChainSpec', 'IPTABLES_BACKENDS', 'Masq', 'check_ifname',
           'check_nft_name', 'nft_chain', 'nft_table', 'parse_chain_spec', 'parse_iptables',
           'parse_nft', 'parse_nft_expr', 'parse_rule', 'same_rule']
