"""sctp_repair's layouts and state model, without a kernel (what the kernel does with
them: tests/repair/test_move.py, test_errors.py, test_lksctp.py in the VM)."""

from __future__ import annotations

import ctypes
import errno
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from sctp_repair import abi, cli, queues, repair
from sctp_repair.queues import Message
from sctp_repair.state import AssocState, Stream

REPO = Path(__file__).resolve().parents[2]


def sample() -> AssocState:
    return AssocState(
        local_addr="10.0.0.1", local_port=36412, peer_addr="fd00::2", peer_port=5000,
        my_vtag=0xDEADBEEF, peer_vtag=0x01020304, my_initial_tsn=100, peer_initial_tsn=7,
        next_tsn=4000000000, ctsn_ack_point=3999999999, adv_peer_ack_point=3999999999,
        peer_ctsn=77, peer_rwnd=106496, rwnd=106496, addip_serial=100, peer_addip_serial=6,
        strreset_outseq=100, strreset_inseq=7, peer_caps=int(abi.Cap.PRSCTP | abi.Cap.ECN),
        rto_initial=3000, rto_min=1000, rto_max=60000, rto=1000, srtt=12, rttvar=3,
        hbinterval=30000, sackdelay=200, max_retrans=10, pathmaxrxt=5, pathmtu=1500,
        out_streams=[Stream(5), Stream(0), Stream(65535)],
        in_streams=[Stream(9), Stream(1)])


def test_layout_matches_kernel_headers():
    assert ctypes.sizeof(abi.SctpRepairAssoc) == abi.SCTP_REPAIR_ASSOC_SIZE_VER0 == 368
    assert ctypes.sizeof(abi.SctpStatus) == 176
    assert ctypes.sizeof(abi.SctpPaddrinfo) == 152
    assert abi.SctpRepairAssoc.sra_peer_vtag.offset == 268
    assert abi.SctpStatus.sstat_primary.offset == 24
    assert abi.REPAIR_STREAMS_HDR.size == 8 and abi.REPAIR_STREAM.size == 8


def test_notification_types_follow_enum_sctp_sn_type():
    # SCTP_DATA_IO_EVENT takes the base value; SCTP_ASSOC_CHANGE comes after it.
    assert abi.SCTP_ASSOC_CHANGE == 0x8001
    assert abi.SCTP_PEER_ADDR_CHANGE == 0x8002
    assert abi.SCTP_SHUTDOWN_EVENT == 0x8005


def test_option_numbers_follow_the_last_stock_one():
    assert abi.SCTP_PLPMTUD_PROBE_INTERVAL == 133
    assert (abi.SCTP_REPAIR, abi.SCTP_REPAIR_ASSOC, abi.SCTP_REPAIR_STREAMS) == (134, 135, 136)
    assert abi.SCTP_REPAIR_RCVQ == 137 and abi.SCTP_REPAIR_ON_RCVQ == 2
    # struct sctp_repair_rcvq and struct sctp_repair_msg: no padding, 16 and 24 bytes
    assert (abi.REPAIR_QUEUE_HDR.size, abi.REPAIR_MSG.size) == (16, 24)
    assert abi.SCTP_REPAIR_SNDQ == 138 and abi.SCTP_REPAIR_ON_QUEUES == 3


@pytest.mark.parametrize("addr", ["10.1.2.3", "fd00::17", "::ffff:10.0.0.1"])
def test_sockaddr_round_trip(addr):
    assert abi.sockaddr_to_tuple(abi.tuple_to_sockaddr(addr, 2905)) == (addr, 2905)


def test_kernel_struct_round_trip():
    st = sample()
    sra, streams = st.to_kernel()
    assert sra.sra_size == 368
    assert sra.sra_outstreams == 3 and sra.sra_instreams == 2
    assert len(streams) == 8 + 5 * 8
    back = AssocState.from_kernel(abi.SctpRepairAssoc.from_buffer_copy(bytes(sra)), streams)
    assert back == st


def test_kernel_stream_counts_must_agree():
    sra, streams = sample().to_kernel()
    sra.sra_instreams = 1
    with pytest.raises(ValueError, match="stream counts"):
        AssocState.from_kernel(sra, streams)


def test_protobuf_round_trip():
    st = sample()
    assert AssocState.from_bytes(st.to_bytes()) == st
    assert st.to_proto().out_streams[2].mid == 65535
    st.family, st.peer_paths = socket.AF_INET6, ["fd00::3", "::ffff:10.0.0.9"]
    assert AssocState.from_bytes(st.to_bytes()) == st


@pytest.mark.parametrize("change, message", [
    ({"family": 1}, "family 1 is neither"),
    ({"peer_paths": ["10.0.0.9", "10.0.0.9; reboot"]}, "peer path .* is not an IP"),
    ({"peer_paths": ["10.0.0.1"] * 65}, "65 peer paths, at most 64"),
])
def test_saved_family_and_peer_paths_are_checked(change, message):
    st = sample()
    for name, value in change.items():
        setattr(st, name, value)
    with pytest.raises(ValueError, match=message):
        AssocState.from_bytes(st.to_bytes())


def test_family_is_the_saved_sockets():
    st = sample()
    assert repair.family_of(st) == socket.AF_INET          # older states: from the address
    st.local_addr = "::ffff:10.0.0.1"                       # an IPv6 socket, IPv4 peer
    assert repair.family_of(st) == socket.AF_INET6
    st.local_addr, st.family = "10.0.0.1", socket.AF_INET6  # mapping turned off
    assert repair.family_of(st) == socket.AF_INET6


def test_connectx_addresses_are_packed_back_to_back():
    raw = repair._packed_addrs(["10.0.0.2", "fd00::2"], 5000)
    assert len(raw) == 16 + 28
    assert struct.unpack_from("=H", raw, 0)[0] == socket.AF_INET
    assert struct.unpack_from("=H", raw, 16)[0] == socket.AF_INET6
    assert struct.unpack_from("!H", raw, 18)[0] == 5000


def test_show_prints_a_saved_state(tmp_path):
    path = tmp_path / "a.state"
    path.write_bytes(sample().to_bytes())
    result = CliRunner().invoke(cli.main, ["show", str(path)])
    assert result.exit_code == 0, result.output
    assert "[10.0.0.1]:36412" in result.output
    assert "peer   [fd00::2]:5000\n" in result.output
    assert "PRSCTP,ECN" in result.output
    assert "out 2: next 65535" in result.output
    result = CliRunner().invoke(cli.main, ["show", "--json", str(path)])
    assert '"peer_vtag": 16909060' in result.output


@pytest.mark.skipif(shutil.which("protoc") is None, reason="protoc not installed")
def test_generated_module_is_up_to_date(tmp_path):
    subprocess.run(["protoc", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    "sctp_repair/assoc_state.proto"], cwd=REPO, check=True)
    for name in ("sctp_repair/assoc_state_pb2.py", "sctp_repair/assoc_state_pb2.pyi"):
        assert (tmp_path / name).read_text() == (REPO / name).read_text(), name


class _StockSocket:
    """An SCTP socket of a kernel without repair mode."""

    def __init__(self, *args):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def getsockopt(self, level, opt, size):
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")


def test_probe_on_a_stock_kernel_says_repair_mode_is_missing(monkeypatch):
    monkeypatch.setattr(repair.socket, "socket", _StockSocket)
    result = repair.probe()
    assert result.sctp and not result.repair
    assert "no SCTP repair mode" in result.detail
    out = CliRunner().invoke(cli.main, ["probe"])
    assert out.exit_code == 1 and "no SCTP repair mode" in out.output


def test_probe_without_sctp_says_so(monkeypatch):
    def no_sctp(*args):
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")
    monkeypatch.setattr(repair.socket, "socket", no_sctp)
    result = repair.probe()
    assert not result.sctp and not result.repair
    assert "no SCTP" in result.detail and "missing" in result.detail


def test_dump_refuses_on_a_kernel_without_repair_mode(monkeypatch, tmp_path):
    monkeypatch.setattr(repair.socket, "socket", _StockSocket)
    out = CliRunner().invoke(cli.main, ["dump", "--pid", "1", "--fd", "3", "-o",
                                        str(tmp_path / "x")])
    assert out.exit_code == 1 and "no SCTP repair mode" in out.output


def _with_unread() -> AssocState:
    st = sample()
    st.unread = [Message(b"one", 0, 7, 0x12345678, st.peer_ctsn - 1),
                 Message(b"x" * 40000, 1, 8, 0, st.peer_ctsn, unordered=True),
                 Message(b"y" * 40001, 1, 9, 0, st.peer_ctsn)]
    return st


def _with_send_queue() -> AssocState:
    st = sample()
    st.ctsn_ack_point = 0xFFFFFFFE  # the TSNs in flight wrap around
    st.adv_peer_ack_point = st.ctsn_ack_point
    st.next_tsn = 2
    st.in_flight = [Message(b"a" * 1400, 2, 17, 5, 0xFFFFFFFF, last=False),
                    Message(b"b" * 300, 2, 17, 5, 0, first=False),
                    Message(b"c", 0, 3, 6, 1, unordered=True)]
    st.unsent = [Message(b"later" * 30000, 1, 0, 9, 0)]
    return st


def test_receive_queue_goes_through_the_kernel_layout_in_writes_it_takes():
    st = _with_unread()
    writes = queues.to_kernel(st.unread, queues.RCVQ)
    assert len(writes) == 2  # 40,000 + 40,001 bytes do not fit one 69,632-byte write
    assert all(len(w) <= abi.SCTP_REPAIR_QUEUE_WRITE_MAX for w in writes)
    back = [m for w in writes for m in queues.from_kernel(w, queues.RCVQ)[0]]
    assert back == st.unread
    size, count, msg_size, _ = abi.REPAIR_QUEUE_HDR.unpack_from(writes[0], 0)
    assert (size, count, msg_size) == (len(writes[0]), 2, 24)
    assert len(writes[0]) % 4 == 0  # each item padded to 4 bytes
    assert queues.to_kernel([], queues.RCVQ) == []


def test_send_queue_keeps_fragment_flags_and_tells_unsent_messages_apart():
    st = _with_send_queue()
    raw = queues.to_kernel(st.in_flight, queues.SNDQ)[0]
    flags = [abi.REPAIR_MSG.unpack_from(raw, off)[5] for off in (16, 16 + 24 + 1400)]
    assert flags == [abi.SCTP_REPAIR_MSG_FIRST, abi.SCTP_REPAIR_MSG_LAST]
    # what the kernel reads: the chunks in flight, then a message marked unsent
    unsent = abi.REPAIR_MSG.pack(5, 0, 0, 9, 1, abi.SCTP_REPAIR_MSG_UNSENT, 0) + b"hello\0\0\0"
    size = len(raw) + len(unsent)
    read = abi.REPAIR_QUEUE_HDR.pack(size, 4, 24, 0) + raw[16:] + unsent
    in_flight, not_sent = queues.from_kernel(read, queues.SNDQ)
    assert in_flight == st.in_flight
    assert not_sent == [Message(b"hello", 1, 0, 9, 0)]
    assert AssocState.from_bytes(st.to_bytes()) == st


@pytest.mark.parametrize("cut", [3, 16 + 10, -1])
def test_a_malformed_receive_queue_read_is_refused(cut):
    raw = queues.to_kernel(_with_unread().unread[:1], queues.RCVQ)[0]
    with pytest.raises(ValueError, match="SCTP_REPAIR_RCVQ"):
        queues.from_kernel(raw[:cut], queues.RCVQ)


def test_unread_messages_survive_the_image_format():
    st = _with_unread()
    back = AssocState.from_bytes(st.to_bytes())
    assert back.unread == st.unread
    assert st.to_dict()["unread"][0]["data"] == b"one".hex()


@pytest.mark.parametrize("change, message", [
    (lambda m: setattr(m, "stream", 2), "on stream 2"),
    (lambda m: setattr(m, "data", b""), "not 1 to 65536 bytes"),
    (lambda m: setattr(m, "data", b"z" * 65537), "not 1 to 65536 bytes"),
    (lambda m: setattr(m, "mid", 0x10000), "sequence number"),
    (lambda m: setattr(m, "tsn", 1 << 32), "tsn"),
])
def test_unread_messages_are_checked_as_untrusted_input(change, message):
    st = _with_unread()
    change(st.unread[0])
    with pytest.raises(ValueError, match=message):
        AssocState.from_bytes(st.to_bytes()) if message != "tsn" else st.check()


@pytest.mark.parametrize("change, message", [
    (lambda st: st.in_flight.pop(), "2 chunks in flight, but the state has 3"),
    (lambda st: setattr(st.in_flight[1], "tsn", 5), "chunk 1 in flight has TSN 5"),
    (lambda st: setattr(st.in_flight[0], "stream", 3), "on stream 3"),
    (lambda st: setattr(st.unsent[0], "stream", 3), "on stream 3"),
    (lambda st: setattr(st.in_flight[2], "mid", 0x10000), "sequence number"),
    (lambda st: setattr(st, "peer_caps", int(abi.Cap.INTL)), "I-DATA"),
])
def test_a_carried_send_queue_is_checked_against_the_state(change, message):
    st = _with_send_queue()
    change(st)
    with pytest.raises(ValueError, match=message):
        AssocState.from_bytes(st.to_bytes())


def test_an_unread_message_too_long_to_carry_is_waited_for_not_a_lasting_refusal():
    err = repair._opt_error(OSError(errno.EMSGSIZE, "Message too long"), "SCTP_REPAIR_RCVQ")
    assert isinstance(err, repair.QueuesNotEmpty)  # save(wait=) retries, the owner reads it
    assert "65536 bytes" in str(err)
