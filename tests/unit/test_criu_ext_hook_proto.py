"""Pure logic of the action-script channel (host tier): request and answer framing, the
plan file, and the run directory's checks and no-follow file I/O. The processes that
speak it are tested in test_criu_ext_hook.py (host) and tests/vm/test_criu_framework.py."""

from __future__ import annotations

import os

import pytest

from criu_ext import hook_proto as proto
from criu_ext import rundir


def test_request_round_trip():
    req = proto.Request(4321, "network-lock", 77)
    line = proto.encode_request(req)
    assert line == b"4321 network-lock 77\n"
    assert proto.parse_request(line) == req
    assert proto.parse_request(b"5 post-restore -") == proto.Request(5, "post-restore", None)


@pytest.mark.parametrize("line,says", [
    (b"1 network-lock", "2 fields"),
    (b"1 network-lock 2 3", "4 fields"),
    (b"x network-lock 2", "client PID"),
    (b"- network-lock 2", "without a client PID"),
    (b"1 post-dumpp 2", "unknown CRTOOLS_SCRIPT_ACTION"),
    (b"1 status-ready 2", "not for the session process"),
    (b"1 network-lock 0", "out of range"),
    (b"1 network-lock 99999999", "not a PID"),
    (b"1 network-lock +5", "not a PID"),
    (b"1 network-lock \xd9\xa3", "not ASCII"),
])
def test_bad_requests_are_refused(line, says):
    with pytest.raises(proto.ProtocolError, match=says):
        proto.parse_request(line)


def test_pid_parsing():
    assert proto.parse_pid(None) is None and proto.parse_pid("") is None
    assert proto.parse_pid("4194303") == 4194303
    for bad in ("4194304", "-3", " 5", "5 ", "0x10", "\u0663"):  # last: an Arabic-Indic 3
        with pytest.raises(proto.ProtocolError):
            proto.parse_pid(bad)


def test_answer_framing():
    msg = proto.encode_message(9, "criu-ext: gtp: saved 1 device(s)")
    assert msg == b"9 criu-ext: gtp: saved 1 device(s)\n"
    assert proto.parse_response(msg, 9) == ("message", "criu-ext: gtp: saved 1 device(s)")
    assert proto.parse_response(msg, 10) is None  # another client's (stale) line
    assert proto.parse_response(proto.encode_status(9, 1), 9) == ("status", 1)
    # a message always carries the prefix and never a control character or a second line
    raw = proto.encode_message(9, "bad\x1b[31m\rtext")
    assert raw == b"9 criu-ext: bad?[31m?text\n" and raw.count(b"\n") == 1
    # a message that looks like a status is still a message (the prefix comes first)
    assert proto.parse_response(proto.encode_message(9, "=rc 0"), 9) == ("message",
                                                                          "criu-ext: =rc 0")
    with pytest.raises(proto.ProtocolError):
        proto.parse_response(b"9 =rc 300", 9)
    with pytest.raises(ValueError):
        proto.encode_status(9, 256)


def test_long_messages_stay_below_one_atomic_write():
    line = proto.encode_message(4194303, "x" * 10000 + "\u00e9" * 3000)
    assert len(line) <= proto.MAX_LINE and line.endswith(b"...\n")
    assert proto.MAX_LINE <= 4096  # PIPE_BUF: one write() never interleaves with another


def test_line_buffer_joins_pieces_and_drops_overlong_lines():
    buf = proto.LineBuffer(limit=10)
    assert buf.feed(b"1 net") == []
    assert buf.feed(b"work\n2 a\n3") == [b"1 network", b"2 a"]
    assert buf.feed(b"x" * 20) == []  # over the limit without a newline: skipped ...
    assert buf.feed(b"yy\n4 b\n") == [b"4 b"]  # ... up to its end
    assert buf.feed(b"12345678901\n5\n") == [b"5"]
    assert buf.dropped == 2


def test_plan_round_trip_and_corruption():
    text = proto.format_plan(["pre-dump", "network-lock", "network-unlock"])
    assert text == "pre-dump\nnetwork-lock\nnetwork-unlock\n"
    assert proto.parse_plan(text) == ["pre-dump", "network-lock", "network-unlock"]
    assert proto.parse_plan("") == []
    for bad in ("network-lock\nrm -rf /\n", "network-lock \n", "\n"):
        with pytest.raises(proto.ProtocolError, match="not a phase"):
            proto.parse_plan(bad)


def test_run_directory_checks(tmp_path):
    base = rundir.ensure_base(str(tmp_path / "run"))
    assert os.stat(base).st_mode & 0o777 == 0o700
    s = rundir.fresh_session(base, 1234)
    assert os.stat(s).st_mode & 0o777 == 0o700
    assert rundir.existing_session(base, 1234) == s
    assert rundir.existing_session(base, 99) is None
    os.chmod(s, 0o770)
    with pytest.raises(rundir.RunDirError, match="writable by group or others"):
        rundir.existing_session(base, 1234)
    os.rmdir(s)
    os.symlink(str(tmp_path), s)
    with pytest.raises(rundir.RunDirError, match="symbolic link, not a directory"):
        rundir.existing_session(base, 1234)


def test_files_never_follow_links(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    path = str(tmp_path / "session.json")
    os.symlink(victim, path + ".tmp")  # a planted temporary: removed, not written through
    rundir.write_file(path, b"{}")
    assert victim.read_bytes() == b"keep"
    assert rundir.read_file(path) == b"{}" and os.stat(path).st_mode & 0o777 == 0o600
    link = str(tmp_path / "link")
    os.symlink(victim, link)
    with pytest.raises(rundir.RunDirError, match="symbolic link"):
        rundir.read_file(link)
    rundir.write_file(link, b"new")  # the link itself is replaced, its target untouched
    assert victim.read_bytes() == b"keep" and not os.path.islink(link)
    with pytest.raises(rundir.RunDirError, match="more than"):
        rundir.read_file(path, limit=1)
    os.mkfifo(str(tmp_path / "fifo"))
    with pytest.raises(rundir.RunDirError, match="not a regular file"):
        rundir.read_file(str(tmp_path / "fifo"))
