"""criu_ext.migrate's pure parts on the host: the pre-copy policy, the control channel's
framing and checks, the test PKI and mutual TLS (real openssl, real ssl), the report.
The migrations themselves run in the VM (tests/vm/test_migrate.py)."""

from __future__ import annotations

import os
import socket
import ssl
import threading

import pytest

from criu_ext.migrate import wire
from criu_ext.migrate.policy import Policy, next_round
from criu_ext.migrate.report import Report, Round, notify_timeline, summary
from criu_ext.migrate.tls import TlsFiles, make_test_pki

# -- policy ---------------------------------------------------------------------------------

def test_policy_takes_a_first_round_and_goes_on_while_the_dirty_set_shrinks():
    assert next_round([]).again
    assert next_round([10000]).again
    assert next_round([10000, 3000]).again
    assert next_round([10000, 3000, 1000]).again


def test_policy_stops_below_the_threshold():
    d = next_round([10000, 63])
    assert not d.again and "converged" in d.reason
    assert next_round([10000, 64], Policy(min_pages=64)).again


def test_policy_stops_when_the_dirty_set_stops_shrinking_or_grows():
    d = next_round([10000, 2000, 1900])  # 95 % of the previous round: not worth another
    assert not d.again and "stopped shrinking" in d.reason
    d = next_round([10000, 2000, 2300])  # +15 %
    assert not d.again and "grew" in d.reason
    assert next_round([10000, 2000, 1700]).again  # 85 %: still shrinking


def test_policy_bounds_the_rounds():
    pages = [100000 // (2 ** i) for i in range(8)]
    assert all(p >= 64 for p in pages)
    d = next_round(pages, Policy(max_rounds=8))
    assert not d.again and "8 rounds" in d.reason
    assert not next_round([5000], Policy(max_rounds=1)).again


def test_policy_refuses_nonsense():
    with pytest.raises(ValueError):
        Policy(max_rounds=0)
    with pytest.raises(ValueError):
        Policy(grow=0.5)


# -- wire -----------------------------------------------------------------------------------

@pytest.fixture
def pair():
    a, b = socket.socketpair()
    ca, cb = wire.Channel(a), wire.Channel(b)
    yield ca, cb
    ca.close()
    cb.close()


def test_messages_round_trip_and_errors_become_peer_failed(pair):
    a, b = pair
    a.send("hello", version=1, pid=42)
    assert b.recv("hello") == {"op": "hello", "version": 1, "pid": 42}
    a.send("listening", port=1)
    with pytest.raises(wire.ProtocolError, match="expected ready"):
        b.recv("ready")
    a.send("error", phase="restore", reason="plugin gtp failed")
    with pytest.raises(wire.PeerFailed) as exc:
        b.recv("done")
    assert exc.value.phase == "restore" and "gtp" in exc.value.reason
    assert a.sent > 0 and b.received == a.sent


def test_an_oversized_or_malformed_message_is_refused(pair):
    a, b = pair
    a.sock.sendall((wire.MAX_MESSAGE + 1).to_bytes(4, "big"))
    with pytest.raises(wire.ProtocolError, match="refused"):
        b.recv()
    a.sock.sendall((3).to_bytes(4, "big") + b"[1]")
    with pytest.raises(wire.ProtocolError, match="no op"):
        b.recv()


def test_a_closed_channel_says_so(pair):
    a, b = pair
    a.sock.close()
    with pytest.raises(wire.ProtocolError, match="closed"):
        b.recv()


def test_files_arrive_whole_and_bad_names_sizes_and_links_are_refused(pair, tmp_path):
    a, b = pair
    src = tmp_path / "core-1.img"
    src.write_bytes(os.urandom(200_000))
    dst = tmp_path / "dst"
    dst.mkdir()
    t = threading.Thread(target=a.send_file, args=(str(src), "core-1.img"))
    t.start()
    msg = b.recv("file")
    assert b.recv_file(msg, str(dst), 1 << 20) == 200_000
    t.join()
    assert (dst / "core-1.img").read_bytes() == src.read_bytes()
    for name in ("../x", "a/b", "parent", ".hidden", "", "x" * 200):
        with pytest.raises(wire.ProtocolError, match="refused"):
            b.recv_file({"op": "file", "name": name, "size": 1}, str(dst), 10)
    with pytest.raises(wire.ProtocolError, match="budget"):
        b.recv_file({"op": "file", "name": "pages-1.img", "size": 11}, str(dst), 10)
    (tmp_path / "victim").write_text("x")
    os.symlink(tmp_path / "victim", dst / "link.img")
    with pytest.raises(OSError):  # never through a link, never over a file
        b.recv_file({"op": "file", "name": "link.img", "size": 0}, str(dst), 10)
    with pytest.raises(OSError):
        b.recv_file({"op": "file", "name": "core-1.img", "size": 0}, str(dst), 10)
    assert (tmp_path / "victim").read_text() == "x"


# -- TLS --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    good = make_test_pki(str(tmp_path_factory.mktemp("pki")),
                         {"src": ["127.0.0.1"], "dst": ["127.0.0.1", "localhost"]})
    other = make_test_pki(str(tmp_path_factory.mktemp("other")), {"mallory": ["127.0.0.1"]})
    return good, other


def _handshake(server: TlsFiles, client: TlsFiles, name: str = "127.0.0.1"):
    """Mutual TLS over a socketpair: (server's error, client's error), None when fine."""
    a, b = socket.socketpair()
    errors: list = [None, None]

    def serve():
        try:
            with server.server_context().wrap_socket(a, server_side=True) as s:
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors[0] = exc

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client.client_context().wrap_socket(b, server_hostname=name) as c:
            c.settimeout(10)
            if c.recv(2) != b"ok":
                errors[1] = "no data"
    except (ssl.SSLError, OSError) as exc:
        errors[1] = exc
    t.join(10)
    a.close()
    b.close()
    return errors


def test_test_pki_files_and_key_modes(pki):
    good, _ = pki
    for f in good.values():
        f.check()
        assert os.stat(f.key).st_mode & 0o077 == 0
    assert good["src"].criu_args()[:2] == ["--tls", "--tls-cacert"]
    assert good["src"].criu_opts()["tls"] is True


def test_mutual_tls_accepts_our_ca_and_refuses_a_stranger(pki):
    good, other = pki
    assert _handshake(good["dst"], good["src"]) == [None, None]
    # a client with a certificate of another CA: the receiver refuses it
    srv_err, _ = _handshake(good["dst"], TlsFiles(good["src"].cacert, other["mallory"].cert,
                                                  other["mallory"].key))
    assert isinstance(srv_err, ssl.SSLError)
    # a receiver with a certificate of another CA: the source refuses it
    _, cli_err = _handshake(TlsFiles(good["dst"].cacert, other["mallory"].cert,
                                     other["mallory"].key), good["src"])
    assert isinstance(cli_err, ssl.SSLCertVerificationError)
    # the right CA but the wrong name: refused too
    _, cli_err = _handshake(good["dst"], good["src"], name="10.9.9.9")
    assert isinstance(cli_err, ssl.SSLCertVerificationError)


def test_missing_files_are_named(tmp_path):
    f = TlsFiles(str(tmp_path / "ca.pem"), str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    with pytest.raises(Exception, match="--tls-cacert .*ca.pem: not a regular file"):
        f.check()


# -- report -----------------------------------------------------------------------------------

def test_report_json_counts_rounds_pages_and_bytes():
    rep = Report(ok=True, source_pid=1, dest_pid=2, control_bytes=1000)
    rep.rounds = [Round(1, "pre-dump", 1000, 1.0, 0.1), Round(2, "pre-dump", 100, 0.5, 0.1),
                  Round(3, "dump", 10, 2.0, 1.5)]
    rep.times = {"frozen": 2.5, "total": 5.0}
    d = rep.to_json()
    assert d["pre_copy_rounds"] == 2
    assert d["pages_per_round"] == [1000, 100, 10]
    assert d["bytes_sent"] == 1110 * 4096 + 1000
    assert "2 pre-copy round(s), frozen 2.50 s" in summary(rep)


def test_notify_timeline_keeps_typed_entries_and_drops_the_rest():
    got = notify_timeline([
        {"phase": "pre-dump", "at": 1.5, "seconds": 0.01, "ok": True},
        {"phase": "network-lock", "at": "2.25", "seconds": 0},  # numbers as text are read
        {"phase": ["x"], "at": 1.0}, {"phase": "post-dump", "at": "soon"},
        {"phase": "post-dump", "at": -1.0}, {"phase": "p", "at": float("nan")}, "junk",
    ])
    assert got == [{"phase": "pre-dump", "at": 1.5, "seconds": 0.01, "ok": True},
                   {"phase": "network-lock", "at": 2.25, "seconds": 0.0, "ok": True}]
    assert notify_timeline({"phase": "x"}) == [] and notify_timeline(None) == []
    assert len(notify_timeline([{"phase": "p" * 99, "at": 0}] * 100)) == 32
    assert notify_timeline([{"phase": "p" * 99, "at": 0}])[0]["phase"] == "p" * 32


# -- dry-run verdict ----------------------------------------------------------------------------

def test_dry_run_verdict_counts_what_the_tree_needs():
    from criu_ext.check import Finding
    from criu_ext.migrate.checks import evaluate

    found = [Finding("criu check", True, "Looks good."),
             Finding("sctp repair mode", False, "no repair mode", required=False),
             Finding("gtp", True, "ok")]
    assert evaluate(found, [], None)["ok"]  # an optional miss the tree does not need
    v = evaluate(found, ["sctp repair mode"], None)
    assert not v["ok"] and v["problems"] == ["sctp repair mode: no repair mode"]
    v = evaluate(found, ["sctp"], None)
    assert v["problems"] == ["sctp: not probed here"]
    v = evaluate([Finding("criu check", False, "vdso")], [], "nosuchplugin")
    assert not v["ok"] and len(v["problems"]) == 2


# -- make-before-break: the lock pass and the switch's arguments -----------------------------

def test_the_user_plane_pass_marks_gtpu_both_ways_before_criu_s_lock(monkeypatch):
    """pass_user_plane's nftables commands, seen through a stand-in for libnftables
    (fake: records the JSON, runs nothing; the VM test runs them for real)."""
    from criu_ext.migrate import switch

    seen = []
    monkeypatch.setattr("gtp_util.nat.nft_json",
                        lambda netns, cmds, check=True: seen.append((netns, cmds, check)) or (0, "", ""))
    switch.pass_user_plane("/run/netns/x", [2152, 3386, 2152])
    (_, delete, unchecked), (netns, cmds, checked) = seen
    assert not unchecked and checked and netns == "/run/netns/x"
    assert delete == [{"delete": {"table": {"family": "inet", "name": switch.PASS_TABLE}}}]
    chains = [c["add"]["chain"] for c in cmds if "chain" in c["add"]]
    assert [(c["hook"], c["prio"]) for c in chains] == [("prerouting", -150), ("output", -150)]
    rules = [c["add"]["rule"]["expr"] for c in cmds if "rule" in c["add"]]
    assert [r[0]["match"]["left"]["payload"]["field"] for r in rules] == ["dport", "sport"]
    assert all(r[0]["match"]["right"] == {"set": [2152, 3386]} for r in rules)
    assert all(r[1]["mangle"]["value"] == switch.SOCCR_MARK == 0xC114 for r in rules)


@pytest.mark.parametrize("ports", [[], [0], [70000], ["2152"], [True]])
def test_the_user_plane_pass_refuses_ports_that_are_not_ports(ports):
    from criu_ext.migrate import switch

    with pytest.raises(switch.SwitchError):
        switch.pass_user_plane("/run/netns/x", ports)


def test_switch_link_arguments_are_checked_before_anything_runs():
    from click.testing import CliRunner

    from criu_ext.migrate.destination import _link_spec
    from criu_ext.migrate_cmd import migrate, receive

    assert _link_spec("spgw-s1u0@br0") == ("spgw-s1u0", "br0")
    for bad in ("spgw-s1u0", "@br0", "spgw@"):
        with pytest.raises(ValueError):
            _link_spec(bad)
    r = CliRunner().invoke(migrate, ["-t", "1", "--to", "h:1", "--tls-cacert", "c",
                                     "--tls-cert", "c", "--tls-key", "k",
                                     "--switch-link", "x"])
    assert r.exit_code == 2 and "only with --stage" in r.output
    r = CliRunner().invoke(receive, ["--listen", "h:0", "--tls-cacert", "c", "--tls-cert", "c",
                                     "--tls-key", "k", "--switch-link", "x@br0"])
    assert r.exit_code == 2 and "only with --stage-netns" in r.output
    r = CliRunner().invoke(migrate, ["-t", "1", "--to", "h:1", "--tls-cacert", "c",
                                     "--tls-cert", "c", "--tls-key", "k", "--stage"])
    assert r.exit_code == 2 and "--switch-link" in r.output
    r = CliRunner().invoke(receive, ["--listen", "h:0", "--tls-cacert", "c", "--tls-cert", "c",
                                     "--tls-key", "k", "--stage-netns", "/proc/self/ns/net"])
    assert r.exit_code == 2 and "--switch-link" in r.output


# -- pre-copy: the staged user plane's changes sent while CRIU works ------------------------

class _FakeCriu:
    """Pure logic: stands for ``criu swrk`` (a socket that answers when told)."""

    def __init__(self) -> None:
        self.sk, self.criu_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def close(self) -> None:
        self.sk.close()
        self.criu_end.close()


def test_changes_go_over_while_criu_works_and_a_failure_waits_for_criu():
    from criu_ext.migrate.pagesrv import _wait

    criu = _FakeCriu()
    changes_r, changes_w = socket.socketpair()
    calls: list[bytes] = []

    def pump() -> None:
        calls.append(changes_r.recv(64))
        if len(calls) == 2:
            criu.criu_end.send(b"answer")  # CRIU ends its round after the second
        else:
            changes_w.send(b"second")

    try:
        changes_w.send(b"first")
        assert _wait(criu, (changes_r.fileno(), pump), every=0.01) is None
        assert calls == [b"first", b"second"]
        assert criu.sk.recv(16) == b"answer"

        def broken() -> None:  # the channel failed: returned, not raised, once CRIU answered
            changes_r.recv(64)
            threading.Timer(0.05, criu.criu_end.send, (b"done",)).start()
            raise wire.ProtocolError("channel gone")

        changes_w.send(b"third")
        failure = _wait(criu, (changes_r.fileno(), broken), every=0.01)
        assert isinstance(failure, wire.ProtocolError)
        assert criu.sk.recv(16) == b"done"  # CRIU's answer is still there to read
        assert _wait(criu, None) is None  # nothing to follow: nothing waited for here
    finally:
        criu.close()
        changes_r.close()
        changes_w.close()


def test_a_killed_receiver_s_staged_plane_is_looked_for_and_its_directory_removed(tmp_path):
    """remove_stale reads a dead receiver's ``staged`` journal: a namespace that is gone
    (the host removed it) or an image never received leave nothing to do, in one line
    at most, and the directory goes (the devices themselves: tests/vm/test_migrate_staged)."""
    from criu_ext.migrate.destination import STAGED, remove_stale

    lines: list[str] = []

    class Log:
        def info(self, m: str) -> None:
            lines.append(m)

        error = info

    # the links it put in standby are journaled too; absent here, nothing to take off
    journals = (f"{tmp_path / 'gone-netns'}\n", f"{tmp_path}\nno-such-lnk@br0\n",
                f"{tmp_path}\n../etc@br0\n", f"{tmp_path}\nnobridge\n")
    for n, text in enumerate(journals):
        d = tmp_path / f"session-{n}"
        d.mkdir()
        (d / "owner").write_text("999999999\n")  # no such process: its receiver is gone
        (d / STAGED).write_text(text)
    remove_stale(str(tmp_path), Log())
    assert not list(tmp_path.glob("session-*"))
    assert all("\n" not in m for m in lines), lines
    assert sum("unreadable staged journal" in m for m in lines) == 2, lines
    assert sum(m.startswith("removed") for m in lines) == len(journals), lines


def test_the_source_s_ports_go_off_with_the_port_state_alone():
    """switch._port_state: RTM_SETLINK, family AF_BRIDGE, the port's index, and
    IFLA_PROTINFO holding the state as one byte (br_setlink's form without a nest)."""
    import struct

    from criu_ext.migrate.switch import BR_STATE_DISABLED, _port_state

    msg = _port_state(7, BR_STATE_DISABLED)
    length, mtype, flags, _, _ = struct.unpack_from("<IHHII", msg)
    assert (length, mtype, flags) == (len(msg), 19, 0x5) and len(msg) % 4 == 0
    family, _, index, ifflags, change = struct.unpack_from("<BxHiII", msg, 16)
    assert (family, index, ifflags, change) == (socket.AF_BRIDGE, 7, 0, 0)
    alen, atype, state = struct.unpack_from("<HHB", msg, 32)
    assert (alen, atype, state) == (5, 12, 0)


def test_the_destination_s_ports_go_on_with_their_flags_in_one_nest():
    """switch._port_flags: the same RTM_SETLINK with IFLA_PROTINFO nested (NLA_F_NESTED)
    around one u8 attribute per IFLA_BRPORT_* flag; PortsOn's flags undo standby's."""
    import struct

    from criu_ext.migrate.switch import _ACTIVE, _STANDBY, IFLA_BRPORT_LOCKED, _port_flags

    msg = _port_flags(9, _ACTIVE)
    length, mtype, flags, _, _ = struct.unpack_from("<IHHII", msg)
    assert (length, mtype, flags) == (len(msg), 19, 0x5) and len(msg) % 4 == 0
    assert struct.unpack_from("<BxHiII", msg, 16)[::2] == (socket.AF_BRIDGE, 9, 0)
    nlen, ntype = struct.unpack_from("<HH", msg, 32)
    assert (nlen, ntype) == (len(msg) - 32, 12 | 0x8000)
    got = {}
    for off in range(36, len(msg), 8):
        alen, atype, value = struct.unpack_from("<HHB", msg, off)
        assert alen == 5
        got[atype] = value
    assert got == _ACTIVE and got[IFLA_BRPORT_LOCKED] == 0
    assert set(_STANDBY) == set(_ACTIVE) and all(_STANDBY[k] != _ACTIVE[k] for k in _ACTIVE)


def test_receiver_refuses_a_bad_plugin_selection_before_listening(pki, tmp_path):
    from criu_ext.migrate.destination import ReceiveConfig, ReceiveFailed, serve
    from criu_ext.plugin import Log

    good, _ = pki
    heard = []
    cfg = ReceiveConfig(listen=("127.0.0.1", 0), tls=good["dst"], work_dir=str(tmp_path / "w"),
                        plugin_spec="nonesuch")
    with pytest.raises(ReceiveFailed, match="no plugin named 'nonesuch'") as exc:
        serve(cfg, Log(level=0), ready=heard.append)
    assert exc.value.phase == "start" and heard == [] and not (tmp_path / "w").exists()
