"""gtp-dump / gtp-restore at the command-line edge, on the host (no gtp needed)."""

import pytest
from click.testing import CliRunner

from gtp_util import image
from gtp_util.cli import dump_main, restore_main
from gtp_util.model import Device, PdpContext, PdpTable, Snapshot, SocketRef


@pytest.fixture
def img(tmp_path):
    snap = Snapshot(devices=[Device('gtp0', 3, sock1=SocketRef(kind='kernel'),
                                    sock0=SocketRef(kind='kernel'),
                                    contexts=PdpTable([PdpContext(1, 1, 2, 3, 4)]))])
    return image.save(snap, str(tmp_path / 'x.img'))


def run(cmd, *args):
    return CliRunner().invoke(cmd, list(args))


def test_bad_files_exit_3_with_one_line(tmp_path, img):
    (tmp_path / 'foreign').write_text('hello\n')
    data = open(img, 'rb').read()
    (tmp_path / 'short').write_bytes(data[:-3])
    for f in ('foreign', 'short', 'missing'):
        r = run(restore_main, str(tmp_path / f))
        assert r.exit_code == 3, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_unknown_netns_or_pid_exit_4(img):
    assert run(restore_main, img, '--netns', 'does-not-exist').exit_code == 4
    assert run(restore_main, img, '--pid', '99999999').exit_code == 4
    assert run(dump_main, '--pid', '99999999').exit_code == 4


def test_both_targets_is_a_usage_error(img):
    assert run(restore_main, img, '--netns', 'a', '--pid', '1').exit_code == 2


def test_kernel_without_gtp_exit_6(img, tmp_path):
    import os
    import subprocess

    from gtp_util.netlink import GtpUnavailable, PdpChannel
    try:
        PdpChannel().close()
        pytest.skip('this kernel has gtp')
    except GtpUnavailable:
        pass
    ns = f'gtpcli{os.getpid()}'
    subprocess.run(['ip', 'netns', 'add', ns], check=True)
    try:
        r = run(restore_main, img, '--netns', ns)
        assert r.exit_code == 6 and 'gtp' in r.output
        assert run(restore_main, img, '--netns', ns, '--dry-run').exit_code == 6
    finally:
        subprocess.run(['ip', 'netns', 'del', ns])


def test_dump_of_a_namespace_without_gtp_is_empty():
    r = run(dump_main, '--json')
    assert r.exit_code == 0 and '"devices": []' in r.output
