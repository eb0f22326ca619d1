"""The declared netlink tables and the fast codec, checked against pyroute2's own encoder."""

import socket

from gtp_util import netlink as nl
from gtp_util.model import PdpContext


def test_attribute_numbers_follow_the_uapi_headers():
    assert nl.GTPA == {
        'GTPA_UNSPEC': 0, 'GTPA_LINK': 1, 'GTPA_VERSION': 2, 'GTPA_TID': 3,
        'GTPA_PEER_ADDRESS': 4, 'GTPA_MS_ADDRESS': 5, 'GTPA_FLOW': 6, 'GTPA_NET_NS_FD': 7,
        'GTPA_I_TEI': 8, 'GTPA_O_TEI': 9, 'GTPA_PAD': 10, 'GTPA_PEER_ADDR6': 11,
        'GTPA_MS_ADDR6': 12, 'GTPA_FAMILY': 13}
    assert [n for n, _ in nl.gtp_link_data.nla_map] == [
        'IFLA_GTP_UNSPEC', 'IFLA_GTP_FD0', 'IFLA_GTP_FD1', 'IFLA_GTP_PDP_HASHSIZE',
        'IFLA_GTP_ROLE', 'IFLA_GTP_CREATE_SOCKETS', 'IFLA_GTP_RESTART_COUNT',
        'IFLA_GTP_LOCAL', 'IFLA_GTP_LOCAL6']


def _pyroute2(family, seq, link, ctx, flags):
    m = nl.gtpmsg()
    m['cmd'] = nl.GTP_CMD_NEWPDP
    m['version'] = 0
    attrs = [['GTPA_VERSION', ctx.version], ['GTPA_LINK', link],
             ['GTPA_PEER_ADDRESS', ctx.peer_addr], ['GTPA_MS_ADDRESS', ctx.ms_addr]]
    if ctx.version == 1:
        attrs += [['GTPA_I_TEI', ctx.i_tei], ['GTPA_O_TEI', ctx.o_tei]]
    else:
        attrs += [['GTPA_TID', ctx.tid], ['GTPA_FLOW', ctx.flow]]
    m['attrs'] = attrs
    m['header'].update(type=family, flags=flags, sequence_number=seq, pid=0)
    m.encode()
    return bytes(m.data)


def test_fast_encoder_is_byte_identical_to_pyroute2():
    for ctx in (PdpContext(1, 0x0A000001, 0x0A800005, 7, 0xFFFFFFFF),
                PdpContext(0, 0xC0A80001, 0x0A800006, tid=0x1122334455667788, flow=65535)):
        assert nl.encode_new_pdp(29, 77, 4, ctx, 0x605) == _pyroute2(29, 77, 4, ctx, 0x605)


def test_dump_decoder_fast_path_and_pyroute2_fallback_agree():
    v1 = PdpContext(1, 0x0A000001, 0x0A800005, 7, 9)
    v0 = PdpContext(0, 0x0A000001, 0x0A800006, tid=123, flow=4)
    buf = nl.encode_new_pdp(29, 1, 4, v1, 2) + nl.encode_new_pdp(29, 1, 5, v0, 2)
    # a reply of another shape (attributes in a different order) takes pyroute2's path
    odd = nl.gtpmsg()
    odd['cmd'] = 0
    odd['attrs'] = [['GTPA_LINK', 4], ['GTPA_VERSION', 1], ['GTPA_I_TEI', 8], ['GTPA_O_TEI', 10],
                    ['GTPA_PEER_ADDRESS', '10.0.0.1'], ['GTPA_MS_ADDRESS', '10.128.0.7']]
    odd['header'].update(type=29, flags=2, sequence_number=1, pid=0)
    odd.encode()
    tables = nl.decode_dump_buffer(buf + bytes(odd.data))
    assert list(tables[4]) == [v1, PdpContext(1, 0x0A000001, 0x0A800007, 8, 10)]
    assert list(tables[5]) == [v0]
    assert nl.decode_pdp(nl.encode_new_pdp(29, 1, 5, v0, 2)) == (5, v0)


def test_link_kind_registration_is_idempotent():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    nl.register_link_kind()
    nl.register_link_kind()
    assert ifinfmsg.ifinfo.data_map['gtp'] is nl.gtp_link_data


def test_no_gtp_kernel_gives_a_clear_error():
    import pytest
    try:
        ch = nl.PdpChannel()
    except nl.GtpUnavailable as e:
        assert 'modprobe gtp' in str(e)
        return
    ch.close()
    pytest.skip('this kernel has gtp')


def test_ntohl_used_for_addresses():
    assert socket.htonl(0x0A000001) == 0x0100000A


def _rows(n):
    from gtp_util.model import PdpTable
    t = PdpTable()
    for i in range(n):
        t.append_v1(0x0A000002 + i % 3, 0x0A800001 + i, 1000 + i, 0xFFFFFF00 + i % 200)
    return t


def test_vector_encoder_matches_per_message_packing():
    from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
    t = _rows(300)
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    vec = nl._VectorV1(31).encode(t, 10, 300, 7, flags, 500, False)
    one_by_one = b''.join(
        nl.encode_new_pdp(31, 500 + i - 10, 7, t[i], flags | (NLM_F_ACK if i == 299 else 0))
        for i in range(10, 300))
    assert bytes(vec) == one_by_one


def test_vector_decoder_matches_per_message_decoding():
    t = _rows(400)
    # dump replies carry NLM_F_MULTI (2)
    buf = b''.join(nl.encode_new_pdp(31, 9, 4, c, 2) for c in t)
    tables = nl.decode_dump_buffer(buf)
    assert tables[4] == t
    chan_fast = nl._VectorV1(31)
    out = {}
    assert chan_fast.decode(bytearray(buf), len(buf), out) == len(buf)
    assert out[4] == t
    # a different link in the run: the vector path declines, the slow path splits it
    mixed = buf + nl.encode_new_pdp(31, 9, 5, t[0], 2)
    assert chan_fast.decode(bytearray(mixed), len(mixed), {}) == 0
