"""SGi NAT rules (MASQUERADE / SNAT) that concern the UE pool, in whichever form the host uses.

Three forms are recognised: iptables-nft and iptables-legacy (read with
``iptables-{nft,legacy}-save -t nat``, rules kept as ``-S`` lines) and native
nftables (``nft -a list ruleset``; tables named like the iptables ones in the ip/ip6
families are left to the iptables readers, unless iptables-nft calls them incompatible:
then they hold nft's own form, as after CRIU reloaded the ruleset from nft's text). A
rule concerns the UE pool when its
source match overlaps a UE prefix, or when it has no source match at all (it then
applies to UE traffic too). Parsing and selection are pure functions.

Only the rule forms :mod:`gtp_util.natrule` accepts are recorded and restored, and a
rule is always rebuilt from its typed fields: nftables rules go through libnftables'
JSON API (in-process, inside the namespace), iptables rules through a fixed argument
list (``iptables -t nat -A POSTROUTING ...`` under ``nsenter --net=PATH``).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess

from procns.netns import in_netns

from . import natrule
from .errors import GtpError
from .model import NatRule

IPTABLES = {'iptables-nft': ('iptables-nft', 'ip6tables-nft'),
            'iptables-legacy': ('iptables-legacy', 'ip6tables-legacy')}
IPTABLES_TABLES = {'filter', 'nat', 'mangle', 'raw', 'security'}


def _run(netns: str | None, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if netns is not None:
        argv = ['nsenter', f'--net={netns}', '--'] + argv
    p = subprocess.run(argv, capture_output=True, text=True, close_fds=True)
    if check and p.returncode != 0:
        raise GtpError(f"{' '.join(argv)}: {(p.stderr or p.stdout).strip()}")
    return p


def _overlaps(net, pools: list) -> bool:
    if net is None:
        return True
    return any(net.version == p.version and net.overlaps(p) for p in pools)


def parse_iptables_save(text: str, backend: str, family: int, pools: list) -> list[NatRule]:
    """MASQUERADE/SNAT rules of an ``iptables-save -t nat`` output that concern ``pools``.

    Only the forms :mod:`gtp_util.natrule` accepts are kept (in their canonical text):
    a rule the restore could not rebuild is not recorded.
    """
    out = []
    for line in text.splitlines():
        if not line.startswith('-A POSTROUTING '):
            continue
        try:
            m = natrule.parse_iptables(line[len('-A POSTROUTING '):], family)
        except ValueError:
            continue
        if _overlaps(m.saddr, pools):
            out.append(NatRule(backend=backend, family=family, table='nat', chain='POSTROUTING',
                               rule=' '.join(m.iptables_args())))
    return out


_NFT_TABLE = re.compile(r'^table (\S+) (\S+) \{')
_NFT_CHAIN = re.compile(r'^\s*chain (\S+) \{')
_NFT_HANDLE = re.compile(r'\s+# handle \d+$')
# iptables-nft-save's line for a table it cannot represent (made or rewritten by nft)
_INCOMPATIBLE = re.compile(r"^# Table `nat' is incompatible", re.M)


def parse_nft_ruleset(text: str, pools: list, native: frozenset[str] = frozenset()
                      ) -> list[NatRule]:
    """masquerade/snat rules of ``nft -a list ruleset`` that concern ``pools``
    (only the forms :mod:`gtp_util.natrule` accepts, in their canonical text).

    Tables of the iptables names in the ip/ip6 families are read only when named in
    ``native`` (``"ip nat"``): the others are iptables-nft's, read with its own tool."""
    out = []
    table = chain = None
    spec = ''
    for line in text.splitlines():
        m = _NFT_TABLE.match(line)
        if m:
            table, chain = f'{m.group(1)} {m.group(2)}', None
            continue
        m = _NFT_CHAIN.match(line)
        if m:
            chain, spec = m.group(1), ''
            continue
        s = line.strip()
        if table is None or chain is None or not s or s == '}':
            continue
        if s.startswith('type ') and not spec:
            spec = _NFT_HANDLE.sub('', s)
            continue
        if s.startswith('policy '):
            spec = (spec + ' ' + s).strip()
            continue
        fam, name = table.split()
        if fam in ('ip', 'ip6') and name in IPTABLES_TABLES and table not in native:
            continue  # shown by iptables-nft
        family = socket.AF_INET6 if fam == 'ip6' else socket.AF_INET
        rule = NatRule(backend='nft', family=family, table=table, chain=chain,
                       rule=_NFT_HANDLE.sub('', s), chain_spec=spec)
        try:
            masq = natrule.parse_rule(rule)
        except ValueError:
            continue
        if _overlaps(masq.saddr, pools):
            rule.rule = masq.nft_text()
            out.append(rule)
    return out


def _legacy_tables(netns: str | None, family: int) -> set[str]:
    name = 'ip6_tables_names' if family == socket.AF_INET6 else 'ip_tables_names'
    with in_netns(netns):
        try:
            with open(f'/proc/thread-self/net/{name}', encoding='ascii') as f:
                return set(f.read().split())
        except OSError:
            return set()


def read_rules(netns: str | None, pools: list) -> list[NatRule]:
    """Every NAT rule of the namespace that concerns the UE prefixes ``pools``.

    Runs as few tools as it can (each is a process start, slow under emulation):
    ``nft`` once, ``iptables-nft-save`` only when nftables has a ``nat`` table of
    that family, ``iptables-legacy-save`` only when the legacy ``nat`` table exists.
    A ``nat`` table iptables-nft calls incompatible (one nft wrote, or reloaded from
    nft's text) is read from nft's listing, its rules as nft rules.
    """
    rules: list[NatRule] = []
    families = {socket.AF_INET6 if p.version == 6 else socket.AF_INET for p in pools}
    nft_text = ''
    native: set[str] = set()  # iptables-named tables in nft's own form
    if shutil.which('nft'):
        p = _run(netns, ['nft', '-a', 'list', 'ruleset'], check=False)
        if p.returncode == 0:
            nft_text = p.stdout
    for fam in sorted(families):
        i = 1 if fam == socket.AF_INET6 else 0
        nft_family = 'ip6' if i else 'ip'
        if f'table {nft_family} nat' in nft_text:
            tool = shutil.which(IPTABLES['iptables-nft'][i] + '-save')
            if tool:
                p = _run(netns, [tool, '-t', 'nat'], check=False)
                if p.returncode == 0 and _INCOMPATIBLE.search(p.stdout):
                    native.add(f'{nft_family} nat')
                elif p.returncode == 0:
                    rules += parse_iptables_save(p.stdout, 'iptables-nft', fam, pools)
        if 'nat' in _legacy_tables(netns, fam):
            tool = shutil.which(IPTABLES['iptables-legacy'][i] + '-save')
            if tool:
                p = _run(netns, [tool, '-t', 'nat'], check=False)
                if p.returncode == 0:
                    rules += parse_iptables_save(p.stdout, 'iptables-legacy', fam, pools)
    return parse_nft_ruleset(nft_text, pools, frozenset(native)) + rules


def _iptables(rule: NatRule, op: str) -> list[str]:
    """``iptables -t nat OP POSTROUTING ARGS`` rebuilt from the rule's checked fields."""
    masq = _checked(rule)
    v4, v6 = IPTABLES[rule.backend]
    tool = v6 if rule.family == socket.AF_INET6 else v4
    return [tool, '-w', '-t', 'nat', op, 'POSTROUTING'] + masq.iptables_args()


def _checked(rule: NatRule) -> natrule.Masq:
    try:
        return natrule.parse_rule(rule)
    except ValueError as e:
        raise GtpError(f"NAT rule refused: {e}") from None


def nft_json(netns: str | None, cmds: list[dict], check: bool = True) -> tuple[int, object, str]:
    """Run libnftables JSON commands inside ``netns``: no nft script, no process.

    The library's netlink socket belongs to the namespace current when the
    context is created, so the context lives and dies inside ``in_netns``.
    """
    try:
        import nftables
    except ImportError:
        raise GtpError("python3-nftables (libnftables' Python binding) is not installed") from None
    with in_netns(netns):
        ctx = nftables.Nftables()
        ctx.set_handle_output(True)
        rc, out, err = ctx.json_cmd({'nftables': cmds})
        del ctx
    if check and rc != 0:
        raise GtpError(f"nftables: {err.strip().splitlines()[0] if err.strip() else rc}")
    return rc, out, err


def _nft_where(rule: NatRule) -> tuple[str, str, str]:
    """(family, table, chain) of nftables holding ``rule`` (nft or iptables-nft)."""
    where = natrule.nft_chain(rule)
    if where is None:
        raise GtpError(f"{rule.backend} rules are not in nftables")
    fam, name = natrule.nft_table(where[0])
    return fam, name, where[1]


def _nft_chain_rules(netns: str | None, rule: NatRule
                     ) -> tuple[bool, list[tuple[int, natrule.Masq | None]]]:
    """Whether ``rule``'s nftables chain exists, and (handle, typed rule or None) of
    each of its rules."""
    fam, name, chain = _nft_where(rule)
    rc, out, _ = nft_json(netns, [{'list': {'chain': {'family': fam, 'table': name,
                                                  'name': chain}}}], check=False)
    if rc != 0 or not isinstance(out, dict):
        return False, []
    found = []
    for item in out.get('nftables', []):
        r = item.get('rule') if isinstance(item, dict) else None
        if isinstance(r, dict) and isinstance(r.get('handle'), int):
            found.append((r['handle'], natrule.parse_nft_expr(r.get('expr'), rule.family)))
    return True, found


# An iptables-nft rule is looked for, added and deleted with iptables first; when
# iptables-nft refuses because its table was reloaded by nft (CRIU restores a
# netns's nftables from nft's text), nftables does it in that table's own form.

def present(netns: str | None, rule: NatRule) -> bool:
    masq = _checked(rule)
    if rule.backend != 'nft':
        if _run(netns, _iptables(rule, '-C'), check=False).returncode == 0:
            return True
        if rule.backend == 'iptables-legacy':
            return False
    return any(masq.same(m) for _, m in _nft_chain_rules(netns, rule)[1])


def add(netns: str | None, rule: NatRule) -> None:
    """Add ``rule`` (table and base chain too, for nft, when missing), from its checked fields."""
    masq = _checked(rule)
    if rule.backend != 'nft':
        argv = _iptables(rule, '-A')
        p = _run(netns, argv, check=False)
        if p.returncode == 0:
            return
    # nft rules, and iptables-nft rules in a table iptables-nft refuses: through nftables
    chain_exists = rule.backend != 'iptables-legacy' and _nft_chain_rules(netns, rule)[0]
    if rule.backend != 'nft' and not chain_exists:
        raise GtpError(f"{' '.join(argv)}: {(p.stderr or p.stdout).strip()}")
    fam, name, chain = _nft_where(rule)
    cmds: list[dict] = []
    if not chain_exists:
        spec = natrule.parse_chain_spec(rule.chain_spec)
        cmds += [{'add': {'table': {'family': fam, 'name': name}}},
                 {'add': {'chain': {'family': fam, 'table': name, 'name': chain,
                                    **spec.nft_json()}}}]
    cmds.append({'add': {'rule': {'family': fam, 'table': name, 'chain': chain,
                                  'expr': masq.nft_expr()}}})
    nft_json(netns, cmds)


def delete(netns: str | None, rule: NatRule) -> None:
    """Delete one copy of ``rule``; nothing when it is not there."""
    masq = _checked(rule)
    if rule.backend != 'nft':
        if _run(netns, _iptables(rule, '-D'), check=False).returncode == 0:
            return
        if rule.backend == 'iptables-legacy':
            return
    fam, name, chain = _nft_where(rule)
    for handle, m in _nft_chain_rules(netns, rule)[1]:
        if masq.same(m):
            nft_json(netns, [{'delete': {'rule': {'family': fam, 'table': name, 'chain': chain,
                                              'handle': handle}}}])
            return
