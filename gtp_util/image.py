"""Snapshot <-> image file, in CRIU's framing (see gtp_util/proto/gtp_image.proto).

The loader checks everything before it returns: magics, format version, that every
entry is complete and parses, the entry order, the counts announced by the head and
device entries, and the CRC-32 in the tail. Any problem raises :class:`BadImage` with
one line that says what is wrong.

Format version 2 (written) keeps the PDP contexts as raw columns: one bytes field
per column of :class:`~gtp_util.model.PdpTable`, little-endian, so saving and loading
100,000 contexts is a few ``array.tobytes``/``frombytes`` calls, not per-context
work. Format version 1 images (packed varint columns) are still read.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from array import array

from google.protobuf.message import DecodeError

from procns.files import MiB, UnsafeFile, atomic_file, read_bytes

from .errors import BadImage
from .fields import check_snapshot
from .model import Address, Device, NatRule, Route, Snapshot, SocketRef
from .proto import gtp_image_pb2 as pb

IMG_SERVICE_MAGIC = 0x55105940  # CRIU's magic for images that are not per-object
IMG_COMMON_MAGIC = 0x54564319
GTP_MAGIC = 0x47545055
FORMAT_VERSION = 2  # what save() writes
READABLE_VERSIONS = (1, 2)  # what load() reads
CHUNK = 65536  # PDP contexts per context entry
MAX_ROWS = 1 << 20  # a context entry announcing more is corrupt
MAX_ENTRIES = 1 << 16  # entries of one image (head, devices, context chunks, tail)
MAX_IMAGE = 256 * MiB  # a larger file is refused unread (about 9 million contexts)

# The PdpTable columns as a format-2 context entry stores them: (field, array typecode).
_COLUMNS = (('version', 'B'), ('i_tei', 'I'), ('o_tei', 'I'), ('tid', 'Q'), ('flow', 'H'),
            ('peer', 'I'), ('ms', 'I'))
_WIDTH = {'B': 1, 'H': 2, 'I': 4, 'Q': 8}
assert all(array(code).itemsize == _WIDTH[code] for _, code in _COLUMNS)
_BIG = sys.byteorder == 'big'

IMAGE_NAME = 'gtp.img'  # name inside a CRIU image directory

_U32 = struct.Struct('<I')
_MAGICS = struct.Struct('<II')


def _entry(msg) -> bytes:
    data = msg.SerializeToString()
    return _U32.pack(len(data)) + data


def _socket(ref: SocketRef) -> pb.gtp_socket_entry:
    return pb.gtp_socket_entry(kind=ref.kind, pid=ref.pid, fd=ref.fd, family=ref.family,
                               addr=ref.addr, port=ref.port, inode=ref.inode,
                               guessed=ref.guessed)


def _columns_entry(ctx, start: int, stop: int) -> pb.gtp_pdp_columns_entry:
    """Rows ``start:stop`` of a PdpTable as one format-2 context entry."""
    fields = {}
    for name, _code in _COLUMNS:
        part = getattr(ctx, name)[start:stop]
        if _BIG:
            part.byteswap()
        raw = part.tobytes()
        if raw.count(0) != len(raw):  # bytes.count: C speed, no int per value
            fields[name] = raw  # absent: all zeros
    e = pb.gtp_pdp_columns_entry(count=stop - start, **fields)
    for row, (p6, m6) in sorted(ctx.v6.items()):
        if start <= row < stop:
            e.v6.add(row=row - start, peer6=p6, ms6=m6)
    return e


def _parts(snap: Snapshot, counts: dict):
    """Yield the image piece by piece, tail excepted; fills ``counts``."""
    yield _MAGICS.pack(IMG_SERVICE_MAGIC, GTP_MAGIC)
    head = pb.gtp_head_entry(version=FORMAT_VERSION, n_devices=len(snap.devices),
                             netns=snap.netns, kernel=snap.kernel, created=snap.created)
    for k, v in snap.sysctls.items():
        head.sysctls.add(name=k, value=v)
    for r in snap.routes:
        head.routes.add(family=r.family, dst=r.dst, dst_len=r.dst_len, dev=r.dev, table=r.table,
                        type=r.type, scope=r.scope, proto=r.proto, priority=r.priority,
                        prefsrc=r.prefsrc, gateway=r.gateway)
    for n in snap.nat_rules:
        head.nat_rules.add(backend=n.backend, family=n.family, table=n.table, chain=n.chain,
                           rule=n.rule, chain_spec=n.chain_spec)
    yield _entry(head)
    entries = 1
    total = 0
    for dev in snap.devices:
        ctx = dev.contexts
        d = pb.gtp_device_entry(name=dev.name, ifindex=dev.ifindex, role=dev.role,
                                hashsize=dev.hashsize, restart_count=dev.restart_count,
                                mtu=dev.mtu, up=dev.up, sock0=_socket(dev.sock0),
                                sock1=_socket(dev.sock1), n_contexts=len(ctx))
        for a in dev.addresses:
            d.addresses.add(family=a.family, local=a.local, prefixlen=a.prefixlen,
                            address=a.address)
        yield _entry(d)
        entries += 1
        for start in range(0, len(ctx), CHUNK):
            yield _entry(_columns_entry(ctx, start, min(len(ctx), start + CHUNK)))
            entries += 1
        total += len(ctx)
    counts.update(entries=entries, total=total)


def _write(snap: Snapshot, write) -> None:
    counts: dict = {}
    crc = 0
    for part in _parts(snap, counts):
        crc = zlib.crc32(part, crc)
        write(part)
    write(_entry(pb.gtp_tail_entry(entries=counts['entries'], n_contexts=counts['total'],
                                   crc32=crc)))


def dumps(snap: Snapshot) -> bytes:
    """Encode a snapshot as image bytes."""
    out: list[bytes] = []
    _write(snap, out.append)
    return b''.join(out)


def save(snap: Snapshot, path: str) -> str:
    """Write the image to ``path`` (a directory gets ``gtp.img`` inside). Atomic rename.

    Written entry by entry: memory stays flat whatever the number of contexts.
    """
    if os.path.isdir(path):
        path = os.path.join(path, IMAGE_NAME)
    with atomic_file(path, 'wb', 0o644) as f:  # O_EXCL|O_NOFOLLOW: a planted link fails it
        _write(snap, f.write)
    return path


def read_file(path: str) -> tuple[str, bytes]:
    """The bytes of an image file (or ``gtp.img`` of an image directory) and its path.

    Regular files only, at most MAX_IMAGE bytes; anything else is BadImage.
    """
    if os.path.isdir(path):
        path = os.path.join(path, IMAGE_NAME)
    try:
        return path, read_bytes(path, MAX_IMAGE)
    except FileNotFoundError:
        raise BadImage(f"{path}: no such file") from None
    except UnsafeFile as e:
        raise BadImage(str(e)) from None
    except OSError as e:
        raise BadImage(f"{path}: cannot read: {e.strerror}") from None


def load(path: str) -> Snapshot:
    """Read an image file (or ``gtp.img`` of an image directory)."""
    path, data = read_file(path)
    try:
        return loads(data)
    except BadImage as e:
        raise BadImage(f"{path}: {e}") from None


def _parse(cls, data, what: str):
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except DecodeError as e:
        raise BadImage(f"corrupt image: {what} does not parse ({e})") from None
    if not msg.IsInitialized():
        raise BadImage(f"corrupt image: {what} lacks required fields "
                       f"({', '.join(msg.FindInitializationErrors())})")
    return msg


def _socketref(e) -> SocketRef:
    return SocketRef(kind=e.kind, pid=e.pid, fd=e.fd, family=e.family, addr=e.addr,
                     port=e.port, inode=e.inode, guessed=e.guessed)


def reframe(data: bytes, head: bytes) -> bytes:
    """The image ``data`` with its head entry replaced by ``head`` and a new tail (tests)."""
    (size,) = _U32.unpack_from(data, 8)
    body = data[8 + 4 + size:]
    entries = []
    off = 0
    while off < len(body):
        (n,) = _U32.unpack_from(body, off)
        entries.append(body[off:off + 4 + n])
        off += 4 + n
    tail = pb.gtp_tail_entry()
    tail.ParseFromString(entries[-1][4:])
    out = data[:8] + _U32.pack(len(head)) + head + b''.join(entries[:-1])
    tail.crc32 = zlib.crc32(out)
    return out + _entry(tail)


def _unknown_versions(col: array) -> bool:
    raw = col.tobytes()
    return raw.count(0) + raw.count(1) != len(raw)


def _read_columns(data, i: int) -> tuple[list[array], list]:
    """The columns (in :data:`_COLUMNS` order) and IPv6 rows of a format-2 context entry."""
    c = _parse(pb.gtp_pdp_columns_entry, data, f'entry #{i} (PDP contexts)')
    n = c.count
    # Every real entry holds at least one byte per context (the version column of
    # GTPv1 contexts, the TID column of GTPv0 ones): a larger count is a lie that
    # would have us allocate the absent all-zero columns for nothing.
    if not 0 < n <= min(MAX_ROWS, len(data)):
        raise BadImage(f"corrupt image: entry #{i} announces {n} PDP contexts in "
                       f"{len(data)} bytes")
    cols = []
    for name, code in _COLUMNS:
        col = array(code)
        if c.HasField(name):
            raw = getattr(c, name)
            if len(raw) != n * col.itemsize:
                raise BadImage(f"corrupt image: entry #{i} column {name} holds {len(raw)} "
                               f"bytes, {n} contexts need {n * col.itemsize}")
            col.frombytes(raw)
            if _BIG:
                col.byteswap()
        else:
            col = array(code, [0]) * n
        cols.append(col)
    if _unknown_versions(cols[0]):
        raise BadImage(f"corrupt image: entry #{i} has an unknown GTP version")
    v6 = []
    for e in c.v6:
        if e.row >= n:
            raise BadImage(f"corrupt image: entry #{i} has IPv6 addresses for row {e.row} "
                           f"of {n}")
        v6.append((e.row, (e.peer6, e.ms6)))
    return cols, v6


def _read_chunk_v1(data, i: int) -> tuple[list[array], list]:
    """The same from a format-1 context entry (packed varint columns)."""
    c = _parse(pb.gtp_pdp_chunk_entry, data, f'entry #{i} (PDP contexts)')
    n = len(c.version)
    if n == 0 or any(len(col) != n for col in (c.i_tei, c.o_tei, c.tid, c.flow, c.peer, c.ms)):
        raise BadImage(f"corrupt image: entry #{i} has columns of unequal length")
    try:
        cols = [array(code, getattr(c, name)) for name, code in _COLUMNS]
    except OverflowError:
        raise BadImage(f"corrupt image: entry #{i} has a value out of range") from None
    if _unknown_versions(cols[0]):
        raise BadImage(f"corrupt image: entry #{i} has an unknown GTP version")
    return cols, [(e.row, (e.peer6, e.ms6)) for e in c.v6]


def loads(data: bytes) -> Snapshot:
    """Decode image bytes; raises :class:`BadImage` on anything unexpected."""
    if len(data) < 8:
        raise BadImage("not a gtp image: too short to hold the magic (empty or truncated file)")
    m0, m1 = _MAGICS.unpack_from(data)
    if m0 not in (IMG_SERVICE_MAGIC, IMG_COMMON_MAGIC):
        raise BadImage(f"not a gtp image: wrong magic 0x{m0:08x} (not a CRIU-style image)")
    if m1 != GTP_MAGIC:
        raise BadImage(f"not a gtp image: CRIU image of another type (magic 0x{m1:08x})")
    view = memoryview(data)
    entries: list[tuple[int, memoryview]] = []
    off = 8
    while off < len(data):
        if off + 4 > len(data):
            raise BadImage("truncated image: an entry size is cut short")
        (size,) = _U32.unpack_from(data, off)
        if off + 4 + size > len(data):
            raise BadImage(f"truncated image: entry #{len(entries)} needs {size} bytes, "
                           f"{len(data) - off - 4} left")
        if len(entries) >= MAX_ENTRIES:
            raise BadImage(f"corrupt image: more than {MAX_ENTRIES} entries")
        entries.append((off, view[off + 4:off + 4 + size]))
        off += 4 + size
    if not entries:
        raise BadImage("truncated image: no entries after the magic")
    # The tail first: nothing is parsed before the CRC says the bytes are intact
    # (the protobuf runtime would log about garbage in string fields otherwise).
    tail_off, tail_data = entries[-1]
    tail = pb.gtp_tail_entry()
    try:
        tail.ParseFromString(bytes(tail_data))
        ok = tail.IsInitialized() and len(entries) > 1
    except DecodeError:
        ok = False
    if not ok or tail.entries != len(entries) - 1:
        raise BadImage("truncated image: the tail entry is missing")
    if zlib.crc32(view[:tail_off]) != tail.crc32:
        raise BadImage("corrupt image: CRC-32 mismatch")
    head = _parse(pb.gtp_head_entry, entries[0][1], 'the head entry')
    if head.version not in READABLE_VERSIONS:
        raise BadImage(f"image format version {head.version} is not supported "
                       f"(this gtp_util reads versions "
                       f"{', '.join(map(str, READABLE_VERSIONS))})")
    snap = Snapshot(netns=head.netns, kernel=head.kernel, created=head.created)
    snap.sysctls = {s.name: s.value for s in head.sysctls}
    snap.routes = [Route(family=r.family, dst=r.dst, dst_len=r.dst_len, dev=r.dev,
                         table=r.table, type=r.type, scope=r.scope, proto=r.proto,
                         priority=r.priority, prefsrc=r.prefsrc, gateway=r.gateway)
                   for r in head.routes]
    snap.nat_rules = [NatRule(backend=n.backend, family=n.family, table=n.table,
                              chain=n.chain, rule=n.rule, chain_spec=n.chain_spec)
                      for n in head.nat_rules]
    i = 1
    total = 0
    body = entries[1:-1]
    while i - 1 < len(body):
        d = _parse(pb.gtp_device_entry, body[i - 1][1], f'entry #{i} (device)')
        i += 1
        dev = Device(name=d.name, ifindex=d.ifindex, role=d.role, hashsize=d.hashsize,
                     restart_count=d.restart_count, mtu=d.mtu, up=d.up,
                     addresses=[Address(family=a.family, local=a.local, prefixlen=a.prefixlen,
                                        address=a.address) for a in d.addresses],
                     sock0=_socketref(d.sock0), sock1=_socketref(d.sock1))
        tab = dev.contexts
        while len(tab) < d.n_contexts:
            if i - 1 >= len(body):
                raise BadImage(f"corrupt image: device {d.name} announces {d.n_contexts} "
                               f"contexts, the image holds {len(tab)}")
            read = _read_columns if head.version >= 2 else _read_chunk_v1
            cols, v6 = read(body[i - 1][1], i)
            i += 1
            base = len(tab)
            for (name, _code), src in zip(_COLUMNS, cols):
                getattr(tab, name).extend(src)
            for row, addrs in v6:
                tab.v6[base + row] = addrs
        if len(tab) != d.n_contexts:
            raise BadImage(f"corrupt image: device {d.name} has more contexts than announced")
        total += len(tab)
        snap.devices.append(dev)
    if len(snap.devices) != head.n_devices:
        raise BadImage(f"corrupt image: head announces {head.n_devices} devices, "
                       f"found {len(snap.devices)}")
    if total != tail.n_contexts:
        raise BadImage("corrupt image: context count differs from the tail's")
    return check_snapshot(snap)


def warm() -> None:
    """Encode and decode a one-context image: the protobuf runtime sets its message
    classes up on first use, which costs far more than a 10,000-context image."""
    from .model import PdpTable

    table = PdpTable()
    table.append_v1(1, 2, 3, 4)
    loads(dumps(Snapshot(devices=[Device('gtpwarm', 1, sock1=SocketRef(kind='kernel'),
                                         contexts=table)])))


__all__ = ['FORMAT_VERSION', 'GTP_MAGIC', 'IMAGE_NAME', 'READABLE_VERSIONS', 'dumps', 'load',
           'loads', 'save', 'warm']
