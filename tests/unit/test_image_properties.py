"""Property tests: generated and mutated images for every reader.

Whatever the bytes, each reader either returns checked values or raises its own
error with one line; through the command lines that is one line on stderr and the
documented exit status (gtp-restore 3, sctp-repair show 1, criu-ext show 3).
Memory stays bounded because counts are checked against the bytes that hold them
(test_untrusted_images.py runs the worst case under RLIMIT_AS). Example counts are
modest and derandomized: the host tier stays fast and the same on every run.
"""

from __future__ import annotations

import json
import os
import tempfile

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gtp_image import sample  # tests/unit is on sys.path (rootdir-less modules)
from test_sctp_carry_image import item

from criu_ext import sctp_carry
from criu_ext.plugin import PluginError
from criu_ext.plugins import netfilter
from criu_ext.session import read_manifest
from criu_ext.show_cmd import show
from gtp_util import image
from gtp_util.cli import restore_main
from gtp_util.errors import BadImage
from gtp_util.format import from_json
from sctp_repair.cli import main as sctp_repair_main
from sctp_repair.state import AssocState

SETTINGS = settings(max_examples=40, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
FEW = settings(SETTINGS, max_examples=10)  # through a command line: slower per example

IMAGE = image.dumps(sample(n=3, devices=2))
SNAPSHOT = json.loads(json.dumps(sample(n=2, devices=1).to_dict()))
SCTP = {'format': 1, 'root_vpid': 10, 'tree_vpids': [10],
        'sockets': [item().to_dict(), item('listener').to_dict()]}
NETFILTER = {'pools': ['10.128.0.0/16'],
             'rules': [{'backend': 'iptables-nft', 'family': 2, 'table': 'nat',
                        'chain': 'POSTROUTING', 'rule': '-s 10.128.0.0/16 -o sgi0 -j MASQUERADE',
                        'chain_spec': ''}],
             'nft_chains': {'ip nat POSTROUTING': ['oifname "sgi0" ip saddr 10.128.0.0/16 '
                                                   'counter masquerade']}}
MANIFEST = {'format': 1, 'dump': {'mode': 'script', 'init_pid': 5, 'rolled_back': False,
                                  'phases': ['pre-dump'],
                                  'plugins': [{'name': 'gtp', 'target': 'x:y', 'order': 100,
                                               'images': [{'name': 'criu-ext-gtp.img',
                                                           'size': 10}]}],
                                  'timings': [{'phase': 'pre-dump', 'plugin': 'gtp',
                                               'seconds': 0.1, 'ok': True}]}}


@st.composite
def mutated(draw, data: bytes):
    """``data`` with a few bytes flipped, cut, or inserted."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(['flip', 'cut', 'insert', 'truncate']))
        at = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == 'flip' and buf:
            buf[at] ^= draw(st.integers(1, 255))
        elif op == 'cut':
            del buf[at:at + draw(st.integers(1, 16))]
        elif op == 'insert':
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del buf[at:]
    return bytes(buf)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=3),
    max_leaves=8)


@st.composite
def json_mutated(draw, doc):
    """``doc`` with one value somewhere replaced by an arbitrary JSON value."""
    doc = json.loads(json.dumps(doc))
    node, path = doc, []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                   else list(range(len(node)))))
        path.append((node, key))
        node = node[key]
    if not path:
        return draw(json_values)
    parent, key = path[-1]
    parent[key] = draw(json_values)
    return doc


# --- library readers: many examples, in process -------------------------------------------

@SETTINGS
@given(mutated(IMAGE))
def test_gtp_image_reader(blob):
    try:
        image.loads(blob)
    except BadImage as e:
        assert '\n' not in str(e)


@SETTINGS
@given(json_mutated(SNAPSHOT))
def test_json_snapshot_reader(doc):
    try:
        from_json(json.dumps(doc))
    except BadImage as e:
        assert '\n' not in str(e)


def _in_file(name: str, doc, reader):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, name)
        with open(path, 'w', encoding='utf-8') as f:
            f.write(doc if isinstance(doc, str) else json.dumps(doc))
        return reader(path, d)


@SETTINGS
@given(json_mutated(SCTP))
def test_sctp_carry_image_reader(doc):
    try:
        _in_file('criu-ext-sctp.json', doc, lambda p, d: sctp_carry.read_image(p))
    except sctp_carry.CarryError as e:
        assert '\n' not in str(e)


@SETTINGS
@given(json_mutated(NETFILTER))
def test_netfilter_image_reader(doc):
    try:
        _in_file(netfilter.IMAGE, doc, lambda p, d: netfilter.read_image(p))
    except PluginError as e:
        assert '\n' not in str(e)


@SETTINGS
@given(json_mutated(MANIFEST))
def test_manifest_reader(doc):
    try:
        _in_file('criu-ext.json', doc, lambda p, d: read_manifest(d))
    except PluginError as e:
        assert '\n' not in str(e)


@SETTINGS
@given(mutated(item().assoc.to_bytes()) | st.binary(max_size=64))
def test_saved_association_reader(blob):
    try:
        AssocState.from_bytes(blob)
    except ValueError as e:
        assert '\n' not in str(e)


# --- through the command lines: one line on stderr, the documented status --------------------

def _stderr_lines(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


@FEW
@given(mutated(IMAGE) | json_mutated(SNAPSHOT).map(lambda d: json.dumps(d).encode()))
def test_gtp_restore_cli(blob):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'gtp.img')
        with open(path, 'wb') as f:
            f.write(blob)
        r = CliRunner().invoke(restore_main, [path, '--netns', '/nonexistent/netns'])
    # 3: refused at load; 4: it loaded, and the namespace does not exist
    assert r.exit_code in (3, 4), (r.exit_code, r.stderr, r.exception)
    assert len(_stderr_lines(r)) == 1, r.stderr


@FEW
@given(mutated(item().assoc.to_bytes()))
def test_sctp_repair_show_cli(blob):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'assoc.pb')
        with open(path, 'wb') as f:
            f.write(blob)
        r = CliRunner().invoke(sctp_repair_main, ['show', path])
    assert r.exit_code in (0, 1), (r.exit_code, r.stderr, r.exception)
    assert r.exit_code == 0 or len(_stderr_lines(r)) == 1, r.stderr


@FEW
@given(json_mutated(MANIFEST), json_mutated(SCTP), json_mutated(NETFILTER))
def test_criu_ext_show_cli(manifest, sctp, nf):
    with tempfile.TemporaryDirectory() as d:
        for name, doc in (('criu-ext.json', manifest), ('criu-ext-sctp.json', sctp),
                          (netfilter.IMAGE, nf)):
            with open(os.path.join(d, name), 'w', encoding='utf-8') as f:
                json.dump(doc, f)
        r = CliRunner().invoke(show, [d])
    assert r.exit_code in (0, 3), (r.exit_code, r.stderr, r.exception)
    assert len(_stderr_lines(r)) <= 3, r.stderr  # at most one line per refused file
    assert all(ln.startswith('criu-ext show: ') for ln in _stderr_lines(r)), r.stderr
