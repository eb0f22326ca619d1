"""Images are untrusted input: each hostile case of issue 16 is refused in one line.

Every reader (gtp image and JSON snapshot, netfilter image, SCTP carry image and
saved association, criu-ext manifest and session file) is tried with the files a
hostile user would give it, through its command line where it has one. Pure file
handling: runs on the host.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import zlib

import pytest
from click.testing import CliRunner
from test_gtp_image import sample  # tests/unit is on sys.path (rootdir-less modules)
from test_sctp_carry_image import item

from criu_ext import sctp_carry
from criu_ext.plugin import PluginError
from criu_ext.plugins import netfilter
from criu_ext.session import Session, read_manifest
from gtp_util import image, natrule
from gtp_util.cli import restore_main
from gtp_util.model import NatRule
from gtp_util.proto import gtp_image_pb2 as pb
from procns import files
from sctp_repair.cli import main as sctp_repair_main

BIN = os.path.dirname(sys.executable)


def gtp_restore(path: str):
    """gtp-restore's verdict on a file: (exit status, stderr). The netns does not exist:
    a snapshot that loads ends in status 4, one refused at load in 3."""
    r = CliRunner().invoke(restore_main, [path, '--netns', '/nonexistent/netns'])
    return r.exit_code, r.stderr


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


# --- files that are not regular files, links, sizes --------------------------------

def test_fifo_device_and_links_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    t0 = time.monotonic()
    for path in (str(fifo), '/dev/zero'):
        code, err = gtp_restore(path)
        assert code == 3 and one_line(err) and 'not a regular file' in err, err
    r = CliRunner().invoke(sctp_repair_main, ['show', str(fifo)])
    assert r.exit_code == 1 and one_line(r.stderr) and 'FIFO' in r.stderr, r.stderr
    with pytest.raises(sctp_carry.CarryError, match='FIFO'):
        sctp_carry.read_image(str(fifo))
    os.mkfifo(tmp_path / 'criu-ext.json')
    with pytest.raises(PluginError, match='FIFO'):
        read_manifest(str(tmp_path))
    assert time.monotonic() - t0 < 10  # nothing blocked on the FIFOs
    secret = tmp_path / 'secret'
    secret.write_text('{"pools": ["10.0.0.0/8"], "rules": []}')
    os.symlink(secret, tmp_path / 'link')
    code, err = gtp_restore(str(tmp_path / 'link'))
    assert code == 3 and 'symbolic link' in err
    with pytest.raises(files.UnsafeFile, match='more than the 10'):
        files.read_bytes(str(secret), 10)


def test_show_refuses_links_fifos_and_bad_manifests_in_one_line_each(tmp_path):
    from criu_ext.show_cmd import show
    secret = tmp_path / 'elsewhere.json'
    secret.write_text(json.dumps({'pools': ['10.99.0.0/16'], 'rules': []}))
    d = tmp_path / 'img'
    d.mkdir()
    os.symlink(secret, d / netfilter.IMAGE)  # "printed another file's content"
    os.symlink(tmp_path / 'nothing', d / 'criu-ext-gtp.img')  # dangling
    (d / 'criu-ext.json').write_text('{"format": 1, "dump": {"plugins": [7]}}')
    r = CliRunner().invoke(show, [str(d)])
    assert r.exit_code == 3, r.output
    errs = r.stderr.strip().splitlines()
    assert len(errs) == 3, errs
    assert any('criu-ext.json is malformed' in e for e in errs)
    assert any('plugin netfilter' in e and 'symbolic link' in e for e in errs)
    assert any('plugin gtp' in e and 'symbolic link' in e for e in errs)
    assert '10.99.0.0' not in r.output


# --- the gtp image and JSON snapshot -------------------------------------------------

def _bomb() -> bytes:
    """594 bytes, valid CRC, announcing 64 Mi PDP contexts: 64 entries of 1 Mi each,
    every column absent (all zeros)."""
    parts = [image._MAGICS.pack(image.IMG_SERVICE_MAGIC, image.GTP_MAGIC),
             image._entry(pb.gtp_head_entry(version=2, n_devices=1))]
    dev = pb.gtp_device_entry(name='gtp0', ifindex=1, n_contexts=64 << 20, role=0,
                              hashsize=1024, restart_count=0, mtu=1452, up=True,
                              sock1=pb.gtp_socket_entry(kind='kernel'),
                              sock0=pb.gtp_socket_entry(kind='none'))
    parts.append(image._entry(dev))
    parts += [image._entry(pb.gtp_pdp_columns_entry(count=1 << 20))] * 64
    body = b''.join(parts)
    tail = pb.gtp_tail_entry(entries=66, n_contexts=64 << 20, crc32=zlib.crc32(body))
    return body + image._entry(tail)


def test_image_announcing_64_mi_contexts_fails_fast_in_little_memory(tmp_path):
    path = tmp_path / 'bomb.img'
    blob = _bomb()
    path.write_bytes(blob)
    assert len(blob) < 700
    limit = 512 << 20  # the old code grew to 1.9 GB before failing

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    t0 = time.monotonic()
    r = subprocess.run([os.path.join(BIN, 'gtp-restore'), str(path), '--netns', '/nonexistent'],
                       capture_output=True, text=True, preexec_fn=cap, timeout=60)
    assert r.returncode == 3 and one_line(r.stderr), r.stderr
    assert 'announces 1048576 PDP contexts' in r.stderr
    assert time.monotonic() - t0 < 30


def _reframed(mutate) -> bytes:
    """A sample image whose first device entry was changed by ``mutate`` (CRC redone)."""
    data = image.dumps(sample(n=2, devices=1))
    parts, off = [data[:8]], 8
    while off < len(data):
        (n,) = image._U32.unpack_from(data, off)
        parts.append(data[off:off + 4 + n])
        off += 4 + n
    dev = pb.gtp_device_entry()
    dev.ParseFromString(parts[2][4:])
    mutate(dev)
    raw = dev.SerializeToString()
    parts[2] = image._U32.pack(len(raw)) + raw
    body = b''.join(parts[:-1])
    tail = pb.gtp_tail_entry()
    tail.ParseFromString(parts[-1][4:])
    tail.crc32 = zlib.crc32(body)
    return body + image._entry(tail)


def test_gtp_image_with_invalid_utf8_or_bad_names_is_refused(tmp_path):
    def bad_utf8(dev):  # proto2 strings come back as bytes when not UTF-8
        dev.ClearField('name')
        dev.MergeFromString(b'\x0a\x04gt\xffp')
    cases = {'utf8': bad_utf8,
             'slash': lambda d: setattr(d, 'name', 'gtp/0'),
             'long': lambda d: setattr(d, 'name', 'g' * 16),
             'colon': lambda d: setattr(d, 'name', 'gtp:0'),
             'addr': lambda d: setattr(d.sock1, 'addr', '0.0.0.0\nx')}
    for what, mutate in cases.items():
        f = tmp_path / what
        f.write_bytes(_reframed(mutate))
        code, err = gtp_restore(str(f))
        assert code == 3 and one_line(err), (what, err)


def _json_snapshot(**change) -> str:
    d = sample(n=1, devices=1).to_dict()
    for path, value in change.items():
        obj = d
        keys = path.split('__')
        for k in keys[:-1]:
            obj = obj[int(k)] if k.isdigit() else obj[k]
        last = keys[-1]
        obj[int(last) if last.isdigit() else last] = value
    return json.dumps(d)


@pytest.mark.parametrize('what, text, message', [
    ('version 300', _json_snapshot(devices__0__contexts__0__version=300), 'malformed'),
    ('negative TEI', _json_snapshot(devices__0__contexts__0__i_tei=-1), 'malformed'),
    ('name is a list', _json_snapshot(devices__0__name=['gtp0']), 'not a string'),
    ('route dev is a list', _json_snapshot(routes__0__dev=['gtp0']), 'not a string'),
    ('unknown key', _json_snapshot(routes__0__evil=1), 'malformed'),
    ('sysctl elsewhere', _json_snapshot(sysctls={'kernel.core_pattern': '|/tmp/x'}),
     'not one gtp_util records'),
    ('nft splice', _json_snapshot(nat_rules=[{
        'backend': 'nft', 'family': 2, 'table': 'inet sgw', 'chain': 'post',
        'rule': 'masquerade; add table ip evil', 'chain_spec': ''}]), 'accepted NAT forms'),
    ('iptables filter', _json_snapshot(nat_rules=[{
        'backend': 'iptables-nft', 'family': 2, 'table': 'filter', 'chain': 'INPUT',
        'rule': '-p tcp --dport 22 -j ACCEPT', 'chain_spec': ''}]), 'only the nat table'),
    ('deep nesting', '{"devices": ' + '[' * 100000 + ']' * 100000 + '}', 'deeper than'),
    ('devices not a list', '{"devices": 5}', 'malformed'),
])
def test_json_snapshots_of_the_wrong_shape_give_one_line(tmp_path, what, text, message):
    f = tmp_path / 'snap.json'
    f.write_text(text)
    code, err = gtp_restore(str(f))
    assert code == 3 and one_line(err) and message in err, (what, err)
    assert 'Traceback' not in err


def test_json_snapshot_with_invalid_utf8_gives_one_line(tmp_path):
    f = tmp_path / 'snap.json'
    f.write_bytes(b'{"netns": "\xff"}')
    code, err = gtp_restore(str(f))
    assert code == 3 and one_line(err) and 'UTF-8' in err, err


# --- NAT rules: no splicing into nft or iptables ------------------------------------------

@pytest.mark.parametrize('rule', [
    NatRule('nft', 2, 'inet sgw', 'post', 'ip saddr 10.0.0.0/8 masquerade\nadd table ip x'),
    NatRule('nft', 2, 'inet sgw', 'post', 'ip saddr 10.0.0.0/8 masquerade; add table ip x'),
    NatRule('nft', 2, 'inet sgw', 'post } ; add table ip x ; chain', 'masquerade'),
    NatRule('nft', 2, 'inet sgw; add table ip x', 'post', 'masquerade'),
    NatRule('nft', 2, 'inet sgw', 'post', 'masquerade',
            'type nat hook postrouting priority srcnat; }; add table ip x {'),
    NatRule('nft', 2, 'inet sgw', 'post', 'oifname "a\\" ; add table ip x" masquerade'),
    NatRule('iptables-nft', 2, 'filter', 'INPUT', '-p tcp --dport 22 -j ACCEPT'),
    NatRule('iptables-nft', 2, 'nat', 'POSTROUTING', '-s 10.0.0.0/8 -j ACCEPT'),
    NatRule('iptables-nft', 2, 'nat', 'POSTROUTING', '-j MASQUERADE --random -A INPUT'),
    NatRule('iptables-legacy', 2, 'nat', 'POSTROUTING', '-o a/b -j MASQUERADE'),
    NatRule('iptables-nft', 2, 'nat', 'PREROUTING', '-j MASQUERADE'),
    NatRule('evil', 2, 'nat', 'POSTROUTING', '-j MASQUERADE'),
])
def test_nat_rules_outside_the_accepted_forms_are_refused(rule):
    with pytest.raises(ValueError):
        natrule.parse_rule(rule)


def test_accepted_nat_rules_are_rebuilt_from_fields():
    m = natrule.parse_rule(NatRule('iptables-nft', 2, 'nat', 'POSTROUTING',
                                   '-o sgi0 -s 10.128.0.0/16 -j MASQUERADE'))
    assert m.iptables_args() == ['-s', '10.128.0.0/16', '-o', 'sgi0', '-j', 'MASQUERADE']
    n = natrule.parse_rule(NatRule('nft', 2, 'ip nat', 'POSTROUTING',
                                   'oifname "sgi0" ip saddr 10.128.0.0/16 counter packets 3 '
                                   'bytes 9 snat to 192.0.2.1',
                                   'type nat hook postrouting priority srcnat; policy accept;'))
    assert n.nft_text() == 'ip saddr 10.128.0.0/16 oifname "sgi0" counter snat to 192.0.2.1'
    assert n.nft_expr()[-1] == {'snat': {'addr': '192.0.2.1'}}
    assert natrule.parse_nft_expr(n.nft_expr(), socket.AF_INET) == n


# --- the netfilter, SCTP and manifest images -----------------------------------------------

def test_netfilter_image_fields_are_checked(tmp_path):
    path = tmp_path / netfilter.IMAGE
    for data, message in [
        ({'pools': ['10.0.0.0/8\nx']}, 'not a prefix'),
        ({'rules': [{'backend': 'nft', 'family': 2, 'table': 'ip nat', 'chain': 'x',
                     'rule': 'masquerade }', 'chain_spec': ''}]}, 'accepted NAT forms'),
        ({'nft_chains': {'ip nat POSTROUTING; add table ip x': []}}, 'nft chain'),
        ({'nft_chains': {'ip nat POSTROUTING': ['a\nb']}}, 'control characters'),
        ([1], 'not a JSON object'),
    ]:
        path.write_text(json.dumps(data))
        with pytest.raises(PluginError, match=message) as exc:
            netfilter.read_image(str(path))
        assert '\n' not in str(exc.value)


def _sctp_image(tmp_path, **change) -> str:
    d = item().to_dict()
    d.update(change)
    path = tmp_path / 'criu-ext-sctp.json'
    path.write_text(json.dumps({'format': 1, 'root_vpid': 1, 'tree_vpids': [10],
                                'sockets': [d]}))
    return str(path)


@pytest.mark.parametrize('change, message', [
    ({'role': 'wizard'}, 'role'),
    ({'peer': ['10.0.0.11\nadd table ip x', 1]}, 'corrupt'),
    ({'fd': -3}, 'fd'),
    ({'assoc': '00ff'}, 'corrupt'),
    ({'setup': dict(item().setup.to_dict(), options=[[0, 1, '01']])}, 'not one carried'),
    ({'setup': dict(item().setup.to_dict(), local_addrs=[['10.0.0.1;x', 1]])}, 'corrupt'),
])
def test_sctp_image_with_unknown_role_or_bad_fields_is_a_carry_error(tmp_path, change, message):
    with pytest.raises(sctp_carry.CarryError, match=message) as exc:
        sctp_carry.read_image(_sctp_image(tmp_path, **change))
    assert '\n' not in str(exc.value)


def test_sctp_plugin_show_and_restore_turn_an_unknown_role_into_a_plugin_error(tmp_path):
    from criu_ext.plugins.sctp import SctpPlugin
    _sctp_image(tmp_path, role='wizard')
    with pytest.raises(sctp_carry.CarryError):
        SctpPlugin().show(str(tmp_path))


def test_sctp_repair_show_of_a_non_protobuf_file_gives_one_line(tmp_path):
    for what, blob in {'text': b'hello world, not protobuf\n', 'empty': b'',
                       'range': bytes.fromhex('180100') + b'\x12\x0810.0.0.1'}.items():
        f = tmp_path / what
        f.write_bytes(blob)
        r = CliRunner().invoke(sctp_repair_main, ['show', str(f)])
        assert r.exit_code == 1 and one_line(r.stderr), (what, r.stderr)


def test_manifest_of_the_wrong_shape_is_refused_in_one_line(tmp_path):
    for text in ('[]', '{"format": "1"}', '{"format": 1, "dump": []}',
                 '{"format": 1, "dump": {"timings": [{"phase": 1}]}}',
                 '{"format": 1, "restore": {"plugins": [{"name": ["x"]}]}}'):
        (tmp_path / 'criu-ext.json').write_text(text)
        with pytest.raises(PluginError, match='malformed') as exc:
            read_manifest(str(tmp_path))
        assert '\n' not in str(exc.value)


# --- writes that cannot be redirected ------------------------------------------------------

def test_planted_links_never_redirect_a_write(tmp_path):
    victim = tmp_path / 'victim'
    victim.write_text('precious')
    d = tmp_path / 'img'
    d.mkdir()
    for name in ('criu-ext.json.tmp', 'gtp.img.tmp', f'gtp.img.tmp{os.getpid()}',
                 'criu-ext-sctp.json.tmp'):
        os.symlink(victim, d / name)
    os.symlink(victim, d / 'gtp.img')  # a link at the target itself is replaced
    image.save(sample(n=1, devices=1), str(d / 'gtp.img'))
    assert not os.path.islink(d / 'gtp.img') and image.load(str(d / 'gtp.img'))
    s = Session('dump', str(d), [], 'script')
    s.write_manifest()
    sctp_carry.vpid_of = lambda pid: pid  # the image writer asks /proc otherwise
    try:
        sctp_carry.write_image(str(d / 'criu-ext-sctp.json'), 1, [1], [item()])
    finally:
        import importlib
        importlib.reload(sctp_carry)
    assert victim.read_text() == 'precious'
    # an existing name is never reused, even one that is no link
    with pytest.raises(FileExistsError):
        os.close(os.open(d / 'criu-ext.json.tmp', os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW))


def test_private_dir_refuses_links_and_open_modes(tmp_path):
    ok = files.private_dir(str(tmp_path / 'run' / 'a'))
    assert os.stat(ok).st_mode & 0o777 == 0o700
    os.chmod(ok, 0o777)
    with pytest.raises(files.UnsafeFile, match='writable by group or others'):
        files.private_dir(ok)
    os.symlink(tmp_path, tmp_path / 'run' / 'b')
    with pytest.raises(files.UnsafeFile, match='symbolic link'):
        files.private_dir(str(tmp_path / 'run' / 'b'))


# --- code named by a session file ----------------------------------------------------------

def test_a_session_file_cannot_choose_the_code_that_runs(tmp_path, monkeypatch):
    monkeypatch.delenv('CRIU_EXT_PLUGINS', raising=False)
    evil = tmp_path / 'evil.py'
    evil.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n"
                    "class P:\n    name = 'gtp'\n")
    for target in (f'{evil}:P', 'os:system', 'criu_ext.plugins.trace:TracePlugin'):
        data = {'action': 'dump', 'images_dir': str(tmp_path), 'mode': 'script',
                'plugins': [{'name': 'gtp', 'target': target}]}
        with pytest.raises(PluginError, match='not registered'):
            Session.from_json(data)
    assert not (tmp_path / 'ran').exists()
    data['plugins'] = [{'name': 'trace', 'target': 'criu_ext.plugins.trace:TracePlugin'}]
    assert [p.name for p in Session.from_json(data).plugins] == ['trace']
    monkeypatch.setenv('CRIU_EXT_PLUGINS', f'{evil}:P')  # the operator's own choice
    data['plugins'] = [{'name': 'gtp', 'target': f'{evil}:P'}]
    assert Session.from_json(data).plugins[0].name == 'gtp'


def test_dump_with_a_log_in_a_missing_directory_gives_one_line(tmp_path):
    from criu_ext.cli import main
    r = CliRunner().invoke(main, ['dump', '-t', '999999', '-D', str(tmp_path), '-o',
                                  str(tmp_path / 'missing' / 'dump.log'), '--plugins', 'trace',
                                  '--criu', '/bin/false'])
    assert r.exit_code == 1 and one_line(r.stderr), (r.stderr, r.exception)
    assert 'log directory (-o)' in r.stderr and 'No such file' in r.stderr
