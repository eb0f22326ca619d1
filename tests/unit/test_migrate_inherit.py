"""migrate/inherit.py against images built here with CRIU's schema (pycriu): pure logic,
no CRIU. That CRIU 3.17 restores a task with our socket from such images is
tests/vm/test_migrate_staged.py's (the staged SPGW's gtp0 bound to the task's own
socket after each move)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

pytest.importorskip("pycriu.images.fdinfo_pb2")

import pycriu.images.fdinfo_pb2 as fdinfo_pb2  # noqa: E402
import pycriu.images.magic as magic  # noqa: E402

from criu_ext.migrate.inherit import (  # noqa: E402
    FAKE_INO_BASE,
    USK_EXTERN,
    InheritError,
    as_inherited,
    read_image,
    stand_ins,
    write_image,
)

HEAD = struct.pack("<II", magic.by_name["IMG_COMMON"], magic.by_name["FILES"])
FD_HEAD = struct.pack("<II", magic.by_name["IMG_COMMON"], magic.by_name["FDINFO"])
GTPU_INO, OTHER_INO = 4242, 4343


def _files() -> list:
    reg = fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=1)
    reg.reg.id, reg.reg.flags, reg.reg.pos, reg.reg.name = 1, 0, 0, "/usr/bin/spgw"
    reg.reg.fown.uid = reg.reg.fown.euid = reg.reg.fown.signum = 0
    reg.reg.fown.pid_type = reg.reg.fown.pid = 0
    out = [reg]
    for fid, ino, proto, port in ((2, GTPU_INO, socket.IPPROTO_UDP, 2152),
                                  (3, OTHER_INO, socket.IPPROTO_TCP, 36412)):
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.INETSK, id=fid)
        i = e.isk
        i.id, i.ino, i.family, i.proto, i.state = fid, ino, socket.AF_INET, proto, 7
        i.type = socket.SOCK_DGRAM if proto == socket.IPPROTO_UDP else socket.SOCK_STREAM
        i.src_port, i.dst_port, i.flags, i.backlog = port, 0, 2, 0
        i.src_addr.append(0x0100000A)
        i.fown.uid = i.fown.euid = i.fown.signum = i.fown.pid_type = i.fown.pid = 0
        i.opts.so_sndbuf, i.opts.so_rcvbuf = 212992, 212992
        i.opts.so_snd_tmo_sec = i.opts.so_snd_tmo_usec = 0
        i.opts.so_rcv_tmo_sec = i.opts.so_rcv_tmo_usec = 0
        i.opts.reuseaddr = fid == 2
        i.ns_id = 7
        out.append(e)
    return out


@pytest.fixture
def images(tmp_path: Path) -> Path:
    write_image(str(tmp_path / "files.img"), HEAD, _files())
    fds = [fdinfo_pb2.fdinfo_entry(id=1, flags=0, type=fdinfo_pb2.REG, fd=3),
           fdinfo_pb2.fdinfo_entry(id=2, flags=0o2000000, type=fdinfo_pb2.INETSK, fd=9),
           fdinfo_pb2.fdinfo_entry(id=3, flags=0, type=fdinfo_pb2.INETSK, fd=10)]
    write_image(str(tmp_path / "fdinfo-2.img"), FD_HEAD, fds)
    other = [fdinfo_pb2.fdinfo_entry(id=2, flags=0, type=fdinfo_pb2.INETSK, fd=4)]
    write_image(str(tmp_path / "fdinfo-5.img"), FD_HEAD, other)  # a child shares it
    return tmp_path


def test_the_gtp_socket_becomes_an_external_unix_socket_the_restore_inherits(images):
    keys = as_inherited(str(images), {GTPU_INO: 2152})
    assert keys == {GTPU_INO: (f"socket:[{FAKE_INO_BASE}]", True)}
    head, files = read_image(str(images / "files.img"), fdinfo_pb2.file_entry)
    assert head == HEAD
    by_id = {e.id: e for e in files}
    usk = by_id[2].usk
    assert by_id[2].type == fdinfo_pb2.UNIXSK and not by_id[2].HasField("isk")
    assert (usk.id, usk.ino, usk.type, usk.state, usk.uflags, usk.peer, usk.name) == \
        (2, FAKE_INO_BASE, socket.SOCK_DGRAM, 7, USK_EXTERN, 0, b"")
    assert usk.opts.so_sndbuf == 212992 and usk.ns_id == 7 and usk.flags == 2
    assert by_id[3].type == fdinfo_pb2.INETSK and by_id[3].isk.ino == OTHER_INO  # untouched
    assert by_id[1] == _files()[0]
    _, fds = read_image(str(images / "fdinfo-2.img"), fdinfo_pb2.fdinfo_entry)
    assert [(d.fd, d.type, d.flags) for d in fds] == [
        (3, fdinfo_pb2.REG, 0), (9, fdinfo_pb2.UNIXSK, 0o2000000), (10, fdinfo_pb2.INETSK, 0)]
    _, fds = read_image(str(images / "fdinfo-5.img"), fdinfo_pb2.fdinfo_entry)
    assert [(d.fd, d.type) for d in fds] == [(4, fdinfo_pb2.UNIXSK)]


def test_the_stand_ins_are_those_the_request_is_encoded_with_ahead(images):
    keys = as_inherited(str(images), {GTPU_INO: 2152})
    assert keys[GTPU_INO][0] == f"socket:[{stand_ins([GTPU_INO])[GTPU_INO]}]"


def test_a_stand_in_inode_is_one_no_unix_socket_of_the_images_has(images):
    _, files = read_image(str(images / "files.img"), fdinfo_pb2.file_entry)
    taken = fdinfo_pb2.file_entry(type=fdinfo_pb2.UNIXSK, id=9)
    taken.usk.id, taken.usk.ino, taken.usk.type, taken.usk.state = 9, FAKE_INO_BASE, 2, 7
    taken.usk.flags = taken.usk.uflags = taken.usk.backlog = taken.usk.peer = 0
    taken.usk.name = b""
    taken.usk.fown.uid = taken.usk.fown.euid = taken.usk.fown.signum = 0
    taken.usk.fown.pid_type = taken.usk.fown.pid = 0
    taken.usk.opts.so_sndbuf = taken.usk.opts.so_rcvbuf = 0
    taken.usk.opts.so_snd_tmo_sec = taken.usk.opts.so_snd_tmo_usec = 0
    taken.usk.opts.so_rcv_tmo_sec = taken.usk.opts.so_rcv_tmo_usec = 0
    write_image(str(images / "files.img"), HEAD, [*files, taken])
    assert as_inherited(str(images), {GTPU_INO: 2152})[GTPU_INO][0] == \
        f"socket:[{FAKE_INO_BASE + 1}]"


@pytest.mark.parametrize("sockets, match", [
    ({999: 2152}, "0 socket"),
    ({GTPU_INO: 2153}, "port 2152, not the stage's UDP port 2153"),
    ({OTHER_INO: 36412}, "protocol 6"),
])
def test_images_that_do_not_hold_what_the_stage_said_are_refused_untouched(images, sockets,
                                                                           match):
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    with pytest.raises(InheritError, match=match):
        as_inherited(str(images), sockets)
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_a_socket_no_descriptor_holds_is_refused_untouched(images):
    write_image(str(images / "fdinfo-2.img"), FD_HEAD, [])
    write_image(str(images / "fdinfo-5.img"), FD_HEAD, [])
    before = (images / "files.img").read_bytes()
    with pytest.raises(InheritError, match="no descriptor of the task holds"):
        as_inherited(str(images), {GTPU_INO: 2152})
    assert (images / "files.img").read_bytes() == before


@pytest.mark.parametrize("cut", [2, 9, -3])
def test_truncated_or_corrupt_images_are_one_line(images, cut):
    data = (images / "files.img").read_bytes()
    (images / "files.img").write_bytes(data[:cut] if cut > 0 else data[:cut] + b"\xff\xff\xff")
    with pytest.raises(InheritError, match="files.img"):
        as_inherited(str(images), {GTPU_INO: 2152})


def test_an_image_that_is_a_link_is_not_read(images):
    (images / "real.img").write_bytes((images / "files.img").read_bytes())
    (images / "files.img").unlink()
    (images / "files.img").symlink_to(images / "real.img")
    with pytest.raises(OSError):
        as_inherited(str(images), {GTPU_INO: 2152})


def test_the_warm_run_leaves_nothing_behind(tmp_path):
    from criu_ext.migrate.inherit import warm

    warm(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_the_rewriter_process_does_what_as_inherited_does(images, tmp_path_factory):
    """The receiver's process beside the transfer (rewriter.py): the same images, the
    same keys; a refusal comes back as the one-line InheritError."""
    from criu_ext.migrate.rewriter import Rewriter

    twin = tmp_path_factory.mktemp("twin")
    for p in images.iterdir():
        (twin / p.name).write_bytes(p.read_bytes())
    r = Rewriter(str(tmp_path_factory.mktemp("warm")))
    try:
        r.submit(str(twin), {GTPU_INO: 2152})
        assert r.result(60) == as_inherited(str(images), {GTPU_INO: 2152})
        for p in images.iterdir():
            assert (twin / p.name).read_bytes() == p.read_bytes(), p.name
        r.submit(str(twin), {GTPU_INO: 2152})  # rewritten already: no inet socket left
        with pytest.raises(InheritError, match="0 socket"):
            r.result(60)
    finally:
        r.close()
