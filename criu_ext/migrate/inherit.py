"""The staged GTP sockets put at the task's descriptors by CRIU's restore itself.

With ``migrate --stage`` the destination's gtp devices are bound to UDP sockets
it holds, and the restored task must get those very sockets at the descriptors
its own had. CRIU 3.17 offers ``--inherit-fd`` for that, but consults it only for
files it reopens by path and for unix sockets (``open_unix_sk``), never for inet
sockets. So, before the restore, the final dump's images here say what CRIU can
take from us: the task's GTP socket's file entry (``files.img``) becomes an
external, unbound datagram unix socket (``usk``, ``uflags`` USK_EXTERN: no fake
queuer is made for it) under an inode number no socket of the images has, the
descriptors that point at it (``fdinfo-*.img``) say so too, and ``--inherit-fd
fd[OURS]:socket:[THAT INODE]`` hands CRIU our socket. CRIU installs it at the
task's descriptor with its flags (close-on-exec) and its owner as the image says,
in its own restore: no ptrace of the task, nothing in the freeze after it.

The images come from another host: each is read as a bounded regular file, its
entries parsed into protobuf messages (CRIU's own schema, pycriu), and what is
changed is checked first: exactly one file entry for each socket, a UDP socket on
the port the stage bound, referred to by at least one descriptor. Anything else
refuses the restore: before CRIU starts for ``files.img``, at ``pre-restore`` for
the descriptors, which the receiver rewrites while CRIU starts (``Rewrite``: CRIU
reads them only after that notification is answered). The files are rewritten in
place, opened with O_NOFOLLOW (never through a link).
"""

from __future__ import annotations

import os
import socket
import struct

from procns.files import MiB, read_bytes

MAX_IMAGE = 16 * MiB  # files.img, fdinfo-*.img: a task's descriptors, not its memory
MAX_ENTRY = 1 * MiB
USK_EXTERN = 1 << 0  # criu/sk-unix.c
TCP_CLOSE = 7
FAKE_INO_BASE = 0x7FFF0000  # inode numbers of the stand-ins: above any real socket's
_SOCKET_TYPES = (4, 5)  # file entry types INETSK, UNIXSK (fdinfo.proto)


class InheritError(Exception):
    """The images cannot be made to hand our sockets to the task; one line says why."""


def warm(workdir: str) -> None:
    """One rewrite of images made up here (in a directory made in ``workdir``, removed
    after), so that the real one, in the freeze, runs warm: pycriu's schema imported
    (all of it, tens of milliseconds in the emulated VM) and the first use of each
    message class and code path paid (28 ms cold, 7 warm in the emulated VM)."""
    import shutil
    import tempfile

    import pycriu.images.fdinfo_pb2 as fdinfo_pb2  # type: ignore[import-untyped]
    import pycriu.images.magic as magic  # type: ignore[import-untyped]
    import pycriu.images.sk_unix_pb2  # type: ignore[import-untyped]  # noqa: F401

    d = tempfile.mkdtemp(prefix="warm-", dir=workdir)
    try:
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.INETSK, id=1)
        i = e.isk
        i.id = i.ino = 1
        i.family, i.type, i.proto, i.state = socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, 7
        i.src_port, i.dst_port, i.flags, i.backlog = 2152, 0, 2, 0
        i.fown.uid = i.fown.euid = i.fown.signum = i.fown.pid_type = i.fown.pid = 0
        i.opts.so_sndbuf = i.opts.so_rcvbuf = 0
        i.opts.so_snd_tmo_sec = i.opts.so_snd_tmo_usec = 0
        i.opts.so_rcv_tmo_sec = i.opts.so_rcv_tmo_usec = 0
        common = magic.by_name["IMG_COMMON"]
        write_image(os.path.join(d, "files.img"),
                    struct.pack("<II", common, magic.by_name["FILES"]), [e])
        write_image(os.path.join(d, "fdinfo-1.img"),
                    struct.pack("<II", common, magic.by_name["FDINFO"]),
                    [fdinfo_pb2.fdinfo_entry(id=1, flags=0, type=fdinfo_pb2.INETSK, fd=3)])
        as_inherited(d, {1: 2152})
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _common_magics() -> tuple[int, int]:
    import pycriu.images.magic as magic

    return magic.by_name["IMG_COMMON"], magic.by_name["IMG_SERVICE"]


_U32 = struct.Struct("<I")


def _spans(path: str, data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """The header's length and the (start, end) of each entry of a CRIU protobuf image:
    its magic(s), then size-prefixed entries. Only offsets: no entry is copied."""
    if len(data) < 4:
        raise InheritError(f"{path}: truncated")
    off = 8 if _U32.unpack_from(data)[0] in _common_magics() else 4
    head, spans, end, unpack = off, [], len(data), _U32.unpack_from
    while off < end:
        if off + 4 > end:
            raise InheritError(f"{path}: truncated entry size at byte {off}")
        n = unpack(data, off)[0]
        off += 4
        if n > MAX_ENTRY or off + n > end:
            raise InheritError(f"{path}: entry of {n} bytes at byte {off} runs past the file")
        spans.append((off, off + n))
        off += n
    return head, spans


def _split(path: str) -> tuple[bytes, list[bytes]]:
    """(header, entries' bytes) of a CRIU protobuf image."""
    data = read_bytes(path, MAX_IMAGE)
    head, spans = _spans(path, data)
    return data[:head], [data[a:b] for a, b in spans]


def _parse(path: str, cls, raw: bytes):
    from google.protobuf.message import DecodeError

    entry = cls()
    try:
        entry.ParseFromString(raw)
    except DecodeError as exc:
        raise InheritError(f"{path}: corrupt entry: {exc}") from None
    return entry


def read_image(path: str, cls) -> tuple[bytes, list]:
    """(header, entries of ``cls``) of a CRIU protobuf image."""
    head, raws = _split(path)
    return head, [_parse(path, cls, r) for r in raws]


def _write(path: str, head: bytes, raws: list[bytes]) -> None:
    out = bytearray(head)
    for b in raws:
        out += _U32.pack(len(b)) + b
    _replace(path, out)


def _replace(path: str, out: bytes | bytearray) -> None:
    """Replace the image at ``path`` in place (never through a link): it is one of the
    images we received into our own directory, and a write cut short only fails the
    restore that reads it; a temporary and a rename cost twice as much in the freeze."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        view = memoryview(out)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_image(path: str, head: bytes, entries: list) -> None:
    _write(path, head, [e.SerializeToString() for e in entries])


def stand_ins(sockets) -> dict[int, int]:
    """The inode each socket of ``sockets`` (source inodes, in order) is given by
    :func:`as_inherited` when no unix socket of the images has it already: what the
    restore's request can be encoded with before the images arrive."""
    return {inode: FAKE_INO_BASE + i for i, inode in enumerate(sockets)}


def _is_fdinfo(name: str) -> bool:
    return name.startswith("fdinfo-") and name.endswith(".img")


class Rewrite:
    """The final dump's images in ``images_dir`` made to hand the task each socket of
    ``sockets`` (the source's inode -> its UDP port) through ``--inherit-fd``, in two
    steps, each checked before it writes: :meth:`files` (``files.img``, which CRIU
    reads before anything else: before its request) and :meth:`descriptors`
    (``fdinfo-*.img``, which CRIU reads once it forked the root task, after
    ``pre-restore``: while it starts). Made, it has checked the socket entries
    (InheritError) and knows ``keys``: source inode -> (the key to give with our
    socket's descriptor, its SO_REUSEADDR as dumped).

    """

    def __init__(self, images_dir: str, sockets: dict[int, int]) -> None:
        import pycriu.images.fdinfo_pb2 as fdinfo_pb2
        import pycriu.images.sk_unix_pb2 as sk_unix_pb2

        self.images_dir = images_dir
        self.files_path = files_path = os.path.join(images_dir, "files.img")
        data = read_bytes(files_path, MAX_IMAGE)
        head, spans = _spans(files_path, data)
        # only the sockets' entries are parsed: CRIU writes a file entry's type (field 1)
        # first, and the task's mapped libraries and open files are most of them. An
        # entry written otherwise is not looked at: were it the GTP socket, it is not found.
        files = {(a, b): _parse(files_path, fdinfo_pb2.file_entry, data[a:b]) for a, b in spans
                 if b - a > 1 and data[a] == 8 and data[a + 1] in _SOCKET_TYPES}
        taken = {e.usk.ino for e in files.values() if e.type == fdinfo_pb2.UNIXSK}
        fakes = (FAKE_INO_BASE + i for i in range(1 << 16) if FAKE_INO_BASE + i not in taken)
        self.keys: dict[int, tuple[str, bool]] = {}
        self.changed: dict[int, int] = {}  # file id -> stand-in inode
        new: dict[tuple[int, int], bytes] = {}  # span -> the entry that replaces it
        for inode, port in sockets.items():
            found = [(at, e) for at, e in files.items()
                     if e.type == fdinfo_pb2.INETSK and e.isk.ino == inode]
            if len(found) != 1:
                raise InheritError(f"{files_path}: {len(found)} socket(s) of inode {inode}, "
                                   "the task's GTP socket, where the stage said one")
            at, e = found[0]
            isk = e.isk
            if isk.proto != socket.IPPROTO_UDP or isk.src_port != port:
                raise InheritError(f"{files_path}: socket {inode} is protocol {isk.proto} "
                                   f"port {isk.src_port}, not the stage's UDP port {port}")
            ino = next(fakes)
            usk = sk_unix_pb2.unix_sk_entry(id=e.id, ino=ino, type=socket.SOCK_DGRAM,
                                            state=TCP_CLOSE, flags=isk.flags, uflags=USK_EXTERN,
                                            backlog=0, peer=0, name=b"")
            usk.fown.CopyFrom(isk.fown)
            usk.opts.CopyFrom(isk.opts)
            if isk.HasField("ns_id"):
                usk.ns_id = isk.ns_id
            e.type = fdinfo_pb2.UNIXSK
            e.ClearField("isk")
            e.usk.CopyFrom(usk)
            new[at] = e.SerializeToString()
            self.changed[e.id] = ino
            self.keys[inode] = (f"socket:[{ino}]", bool(usk.opts.reuseaddr))
        out, last = bytearray(data[:head]), head
        for (a, b), entry in sorted(new.items()):
            out += data[last:a - 4]
            out += _U32.pack(len(entry))
            out += entry
            last = b
        out += data[last:]
        self._files = out

    def files(self) -> None:
        """Write ``files.img``: the sockets' entries replaced by their stand-ins."""
        _replace(self.files_path, self._files)

    def _descriptors(self) -> list[tuple[str, bytes, list]]:
        """The ``fdinfo-*.img`` to write: each descriptor of a changed entry said to be
        a unix socket; InheritError when one is not an inet socket's or a socket has
        none."""
        import pycriu.images.fdinfo_pb2 as fdinfo_pb2

        rewrites = []
        used: set[int] = set()
        names = sorted(n for n in os.listdir(self.images_dir) if _is_fdinfo(n))
        for path in (os.path.join(self.images_dir, n) for n in names):
            fhead, fds = read_image(path, fdinfo_pb2.fdinfo_entry)
            hit = [d for d in fds if d.id in self.changed]
            for d in hit:
                if d.type != fdinfo_pb2.INETSK:
                    raise InheritError(f"{path}: descriptor {d.fd} of file {d.id} is type "
                                       f"{d.type}, its file entry an inet socket")
                d.type = fdinfo_pb2.UNIXSK
                used.add(d.id)
            if hit:
                rewrites.append((path, fhead, fds))
        if used != set(self.changed):
            raise InheritError(f"{self.images_dir}: no descriptor of the task holds the GTP "
                               f"socket(s) {sorted(set(self.changed) - used)}")
        return rewrites

    def descriptors(self) -> None:
        """Check and write the ``fdinfo-*.img`` that refer to the sockets."""
        for path, fhead, fds in self._descriptors():
            write_image(path, fhead, fds)


def as_inherited(images_dir: str, sockets: dict[int, int]) -> dict[int, tuple[str, bool]]:
    """Both steps of :class:`Rewrite` at once, everything checked before anything is
    written: InheritError, with nothing written, when the images do not hold what the
    stage said. Returns the keys."""
    r = Rewrite(images_dir, sockets)
    rewrites = r._descriptors()
    r.files()
    for path, fhead, fds in rewrites:
        write_image(path, fhead, fds)
    return r.keys
