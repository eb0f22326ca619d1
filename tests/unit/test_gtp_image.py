"""Image framing: round trip, and every way a file can be bad."""

import struct
import zlib
from pathlib import Path

import pytest

from gtp_util import image
from gtp_util.errors import BadImage
from gtp_util.model import (
    Address,
    Device,
    NatRule,
    PdpContext,
    PdpTable,
    Route,
    Snapshot,
    SocketRef,
)


def sample(n=5, devices=2) -> Snapshot:
    devs = []
    for d in range(devices):
        t = PdpTable()
        for i in range(n):
            t.append_v1(0x0A000002, 0x0A800001 + i + d * 1000, 100 + i, 5000 + i)
        t.append(PdpContext(0, 0x0A000003, 0x0AA00001 + d, tid=1 << 40, flow=7))
        devs.append(Device(f'gtp{d}', 10 + d, role=d % 2, hashsize=2048, restart_count=4,
                           mtu=1400, up=True, addresses=[Address(2, '10.1.0.1', 24)],
                           sock1=SocketRef(kind='task', pid=42, fd=3 + d, family=2,
                                           addr='0.0.0.0', port=2152, inode=99),
                           contexts=t))
    return Snapshot(devices=devs, routes=[Route(2, '10.128.0.0', 16, 'gtp0', table=100)],
                    nat_rules=[NatRule('iptables-nft', 2, 'nat', 'POSTROUTING',
                                       '-s 10.128.0.0/16 -o sgi0 -j MASQUERADE')],
                    sysctls={'net.ipv4.ip_forward': '1'}, netns='/run/netns/x', kernel='6.1',
                    created=1.5)


def test_round_trip_keeps_everything():
    snap = sample()
    back = image.loads(image.dumps(snap))
    assert back.to_dict() == snap.to_dict()
    assert back.devices[1].contexts == snap.devices[1].contexts


def test_large_table_is_split_in_chunks_and_comes_back():
    snap = sample(n=image.CHUNK + 10, devices=1)
    back = image.loads(image.dumps(snap))
    assert back.devices[0].contexts == snap.devices[0].contexts


def test_empty_snapshot_round_trips():
    assert image.loads(image.dumps(Snapshot())).devices == []


def test_file_starts_with_criu_service_magic_and_our_type():
    data = image.dumps(sample())
    assert struct.unpack_from('<II', data) == (image.IMG_SERVICE_MAGIC, image.GTP_MAGIC)


@pytest.mark.parametrize('cut', [0, 3, 8, 11, 20, -1, -5])
def test_truncated(cut):
    data = image.dumps(sample())
    with pytest.raises(BadImage, match='truncated|too short|tail'):
        image.loads(data[:cut] if cut >= 0 else data[:cut])


def test_every_single_byte_flip_after_the_magic_is_caught():
    data = image.dumps(sample(n=2, devices=1))
    for i in range(8, len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x5A
        with pytest.raises(BadImage):
            image.loads(bytes(bad))


def test_wrong_magic_and_foreign_files():
    data = image.dumps(sample())
    with pytest.raises(BadImage, match='wrong magic'):
        image.loads(b'\0' * 4 + data[4:])
    with pytest.raises(BadImage, match='another type'):
        image.loads(data[:4] + b'\x01\x02\x03\x04' + data[8:])
    with pytest.raises(BadImage, match='wrong magic'):
        image.loads(b'#!/bin/sh\necho hello\n')


def test_newer_format_version_is_refused():
    from gtp_util.proto import gtp_image_pb2 as pb
    data = image.dumps(sample())
    size = struct.unpack_from('<I', data, 8)[0]
    head = pb.gtp_head_entry()
    head.ParseFromString(data[12:12 + size])
    head.version = image.FORMAT_VERSION + 1
    hb = head.SerializeToString()
    with pytest.raises(BadImage, match=f'version {image.FORMAT_VERSION + 1} is not supported'):
        image.loads(image.reframe(data, hb))


def test_format_1_image_is_still_read():
    # written by the format-1 writer (packed varint columns), kept as a fixture
    data = (Path(__file__).parent / 'data' / 'gtp-format1.img').read_bytes()
    snap = sample(n=3, devices=2)
    back = image.loads(data)
    assert back.to_dict() == snap.to_dict()
    assert back.devices[1].contexts == snap.devices[1].contexts


def _columns(data: bytes):
    """(offset of the first context entry, its parsed message) in a one-device image."""
    from gtp_util.proto import gtp_image_pb2 as pb
    off = 8
    for _ in range(2):  # head, device
        off += 4 + struct.unpack_from('<I', data, off)[0]
    size = struct.unpack_from('<I', data, off)[0]
    e = pb.gtp_pdp_columns_entry()
    e.ParseFromString(data[off + 4:off + 4 + size])
    return off, size, e


def test_format_2_stores_raw_little_endian_columns_and_omits_zero_ones():
    snap = sample(n=4, devices=1)
    _, _, e = _columns(image.dumps(snap))
    assert e.count == 5
    assert e.i_tei == struct.pack('<5I', 100, 101, 102, 103, 0)
    assert e.version == bytes([1, 1, 1, 1, 0])
    assert e.tid == struct.pack('<5Q', 0, 0, 0, 0, 1 << 40)
    t = PdpTable()
    t.append_v1(1, 2, 3, 4)
    snap.devices[0].contexts = t
    _, _, e = _columns(image.dumps(snap))
    assert not e.HasField('tid') and not e.HasField('flow') and e.HasField('o_tei')
    assert image.loads(image.dumps(snap)).devices[0].contexts == t


def _recrc(data: bytes, off: int, size: int, entry: bytes) -> bytes:
    """``data`` with the entry at ``off`` replaced and a tail that matches again."""
    from gtp_util.proto import gtp_image_pb2 as pb
    body = data[:off] + struct.pack('<I', len(entry)) + entry
    rest = data[off + 4 + size:]
    tail = pb.gtp_tail_entry()
    tail.ParseFromString(rest[4:])
    tail.crc32 = zlib.crc32(body)
    return body + image._entry(tail)


@pytest.mark.parametrize('change, message', [
    (lambda e: setattr(e, 'ms', e.ms[:-1]), 'column ms holds 19 bytes, 5 contexts need 20'),
    (lambda e: setattr(e, 'version', b'\x01\x01\x07\x01\x00'), 'unknown GTP version'),
    (lambda e: setattr(e, 'count', 0), 'announces 0 PDP contexts'),
    (lambda e: e.v6.add(row=9, peer6='::1'), 'IPv6 addresses for row 9 of 5'),
])
def test_bad_context_columns_are_refused_with_one_line(change, message):
    data = image.dumps(sample(n=4, devices=1))
    off, size, e = _columns(data)
    change(e)
    with pytest.raises(BadImage, match=message) as exc:
        image.loads(_recrc(data, off, size, e.SerializeToString()))
    assert '\n' not in str(exc.value)


def test_load_and_save_paths(tmp_path):
    snap = sample()
    path = image.save(snap, str(tmp_path))
    assert path.endswith('/gtp.img')
    assert image.load(str(tmp_path)).to_dict() == snap.to_dict()
    with pytest.raises(BadImage, match='no such file'):
        image.load(str(tmp_path / 'missing.img'))


def test_generated_code_matches_the_proto_file(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path
    if shutil.which('protoc') is None:
        pytest.skip('protoc (Debian protobuf-compiler) is not installed')
    src = Path(image.__file__).parent / 'proto'
    subprocess.run(['protoc', f'-I{src}', f'--python_out={tmp_path}', f'--pyi_out={tmp_path}',
                    'gtp_image.proto'], check=True)
    for name in ('gtp_image_pb2.py', 'gtp_image_pb2.pyi'):
        assert (tmp_path / name).read_text() == (src / name).read_text(), name


def test_streamed_file_equals_dumps(tmp_path):
    snap = sample(n=1000)
    path = image.save(snap, str(tmp_path / 'a.img'))
    assert open(path, 'rb').read() == image.dumps(snap)
