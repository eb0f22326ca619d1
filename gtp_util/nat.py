"""SGi NAT rules (MASQUERADE / SNAT) that concern the UE pool, in whichever form the host uses.

Three forms are recognised: iptables-nft and iptables-legacy (read with
``iptables-{nft,legacy}-save -t nat``, rules kept as ``-S`` lines) and native
nftables (``nft -a list ruleset``; tables named like the iptables ones in the ip/ip6
families are left to the iptables readers). A rule concerns the UE pool when its
source match overlaps a UE prefix, or when it has no source match at all (it then
applies to UE traffic too). Commands run inside the namespace through
``nsenter --net=PATH``. Parsing and selection are pure functions.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import socket
import subprocess

from procns.netns import in_netns

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


def _overlaps(src: str | None, pools: list) -> bool:
    if src is None:
        return True
    try:
        net = ipaddress.ip_network(src, strict=False)
    except ValueError:
        return False
    return any(net.version == p.version and net.overlaps(p) for p in pools)


def parse_iptables_save(text: str, backend: str, family: int, pools: list) -> list[NatRule]:
    """MASQUERADE/SNAT rules of an ``iptables-save -t nat`` output that concern ``pools``."""
    out = []
    for line in text.splitlines():
        if not line.startswith('-A '):
            continue
        args = shlex.split(line)
        chain = args[1]
        spec = args[2:]
        if '-j' not in spec or spec[spec.index('-j') + 1] not in ('MASQUERADE', 'SNAT'):
            continue
        src = spec[spec.index('-s') + 1] if '-s' in spec else None
        if _overlaps(src, pools):
            out.append(NatRule(backend=backend, family=family, table='nat', chain=chain,
                               rule=shlex.join(spec)))
    return out


_NFT_TABLE = re.compile(r'^table (\S+) (\S+) \{')
_NFT_CHAIN = re.compile(r'^\s*chain (\S+) \{')
_NFT_HANDLE = re.compile(r'\s+# handle \d+$')
_NFT_SADDR = re.compile(r'\bip6? saddr (\S+)')


def parse_nft_ruleset(text: str, pools: list) -> list[NatRule]:
    """masquerade/snat rules of ``nft -a list ruleset`` that concern ``pools``."""
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
        if fam in ('ip', 'ip6') and name in IPTABLES_TABLES:
            continue  # shown by iptables-nft
        rule = _NFT_HANDLE.sub('', s)
        words = rule.split()
        if 'masquerade' not in words and 'snat' not in words:
            continue
        m = _NFT_SADDR.search(rule)
        if _overlaps(m.group(1) if m else None, pools):
            family = socket.AF_INET6 if fam == 'ip6' else socket.AF_INET
            out.append(NatRule(backend='nft', family=family, table=table, chain=chain,
                               rule=rule, chain_spec=spec))
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
    """
    rules: list[NatRule] = []
    families = {socket.AF_INET6 if p.version == 6 else socket.AF_INET for p in pools}
    nft_text = ''
    if shutil.which('nft'):
        p = _run(netns, ['nft', '-a', 'list', 'ruleset'], check=False)
        if p.returncode == 0:
            nft_text = p.stdout
            rules += parse_nft_ruleset(nft_text, pools)
    for fam in sorted(families):
        i = 1 if fam == socket.AF_INET6 else 0
        nft_family = 'ip6' if i else 'ip'
        if f'table {nft_family} nat' in nft_text:
            tool = shutil.which(IPTABLES['iptables-nft'][i] + '-save')
            if tool:
                p = _run(netns, [tool, '-t', 'nat'], check=False)
                if p.returncode == 0:
                    rules += parse_iptables_save(p.stdout, 'iptables-nft', fam, pools)
        if 'nat' in _legacy_tables(netns, fam):
            tool = shutil.which(IPTABLES['iptables-legacy'][i] + '-save')
            if tool:
                p = _run(netns, [tool, '-t', 'nat'], check=False)
                if p.returncode == 0:
                    rules += parse_iptables_save(p.stdout, 'iptables-legacy', fam, pools)
    return rules


def _iptables(rule: NatRule) -> str:
    v4, v6 = IPTABLES[rule.backend]
    return v6 if rule.family == socket.AF_INET6 else v4


def present(netns: str | None, rule: NatRule) -> bool:
    if rule.backend == 'nft':
        p = _run(netns, ['nft', 'list', 'chain'] + rule.table.split() + [rule.chain],
                 check=False)
        return p.returncode == 0 and any(_NFT_HANDLE.sub('', ln.strip()) == rule.rule
                                         for ln in p.stdout.splitlines())
    p = _run(netns, [_iptables(rule), '-w', '-t', rule.table, '-C', rule.chain]
             + shlex.split(rule.rule), check=False)
    return p.returncode == 0


def add(netns: str | None, rule: NatRule) -> None:
    if rule.backend == 'nft':
        fam, name = rule.table.split()
        _run(netns, ['nft', 'add', 'table', fam, name])
        if _run(netns, ['nft', 'list', 'chain', fam, name, rule.chain], check=False).returncode:
            spec = rule.chain_spec or 'type nat hook postrouting priority srcnat;'
            if not spec.rstrip().endswith(';'):
                spec += ';'
            _run(netns, ['nft', 'add', 'chain', fam, name, rule.chain, '{ ' + spec + ' }'])
        _run(netns, ['nft', 'add', 'rule', fam, name, rule.chain] + shlex.split(rule.rule))
        return
    _run(netns, [_iptables(rule), '-w', '-t', rule.table, '-A', rule.chain]
         + shlex.split(rule.rule))


def delete(netns: str | None, rule: NatRule) -> None:
    if rule.backend == 'nft':
        p = _run(netns, ['nft', '-a', 'list', 'chain'] + rule.table.split() + [rule.chain])
        for ln in p.stdout.splitlines():
            m = re.search(r'# handle (\d+)$', ln.strip())
            if m and _NFT_HANDLE.sub('', ln.strip()) == rule.rule:
                _run(netns, ['nft', 'delete', 'rule'] + rule.table.split()
                     + [rule.chain, 'handle', m.group(1)])
                return
        return
    _run(netns, [_iptables(rule), '-w', '-t', rule.table, '-D', rule.chain]
         + shlex.split(rule.rule), check=False)
