"""NAT rule selection from iptables-save and nft output (pure parsing)."""

import ipaddress
import socket

from gtp_util.model import NatRule
from gtp_util.nat import parse_iptables_save, parse_nft_ruleset
from gtp_util.natrule import same_rule

POOL = [ipaddress.ip_network('10.128.0.0/16')]


def test_iptables_rules_for_the_pool():
    text = """*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 10.128.0.0/16 -o sgi0 -j MASQUERADE
-A POSTROUTING -s 192.168.0.0/16 -j MASQUERADE
-A POSTROUTING -s 10.128.5.0/24 -j SNAT --to-source 1.2.3.4
-A PREROUTING -d 1.2.3.4 -j DNAT --to-destination 10.128.0.1
COMMIT"""
    rules = parse_iptables_save(text, 'iptables-legacy', 2, POOL)
    assert [r.rule for r in rules] == ['-s 10.128.0.0/16 -o sgi0 -j MASQUERADE',
                                       '-s 10.128.5.0/24 -j SNAT --to-source 1.2.3.4']
    assert {r.backend for r in rules} == {'iptables-legacy'}


def test_native_nft_rules_and_chain_spec():
    text = """table ip nat {
	chain POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.128.0.0/16 oifname "sgi0" counter packets 0 bytes 0 masquerade # handle 4
	}
}
table inet sgw {
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.128.0.0/16 oifname "sgi0" masquerade # handle 3
		ip saddr 172.16.0.0/12 masquerade # handle 5
	}
}"""
    (r,) = parse_nft_ruleset(text, POOL)  # table ip nat belongs to iptables-nft
    assert (r.backend, r.table, r.chain) == ('nft', 'inet sgw', 'post')
    assert r.rule == 'ip saddr 10.128.0.0/16 oifname "sgi0" masquerade'
    assert r.chain_spec.startswith('type nat hook postrouting priority srcnat;')
    # the same text, ip nat reloaded by nft (iptables-nft calls it incompatible)
    rules = parse_nft_ruleset(text, POOL, frozenset({'ip nat'}))
    assert [(r.table, r.chain, r.rule) for r in rules] == [
        ('ip nat', 'POSTROUTING', 'ip saddr 10.128.0.0/16 oifname "sgi0" counter masquerade'),
        ('inet sgw', 'post', 'ip saddr 10.128.0.0/16 oifname "sgi0" masquerade')]


def test_same_rule_whichever_tool_wrote_it():
    ipt = NatRule('iptables-nft', socket.AF_INET, 'nat', 'POSTROUTING',
                  '-s 10.128.0.0/16 -o sgi0 -j MASQUERADE')
    spec = 'type nat hook postrouting priority srcnat; policy accept;'
    reloaded = NatRule('nft', socket.AF_INET, 'ip nat', 'POSTROUTING',
                       'oifname "sgi0" ip saddr 10.128.0.0/16 counter masquerade', spec)
    assert same_rule(ipt, reloaded) and same_rule(reloaded, ipt)
    # elsewhere, or doing something else, or written by a tool with its own tables
    assert not same_rule(ipt, NatRule('nft', socket.AF_INET, 'inet sgw', 'POSTROUTING',
                                      reloaded.rule, spec))
    assert not same_rule(ipt, NatRule('nft', socket.AF_INET, 'ip nat', 'POSTROUTING',
                                      'ip saddr 10.128.0.0/16 masquerade', spec))
    assert not same_rule(ipt, NatRule('iptables-legacy', socket.AF_INET, 'nat', 'POSTROUTING',
                                      ipt.rule))
    assert not same_rule(ipt, NatRule('nft', socket.AF_INET, 'ip nat', 'POSTROUTING',
                                      'masquerade; add table ip evil', spec))
