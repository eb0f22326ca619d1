"""PageServer's start against stand-ins for `criu page-server` (pure process logic: a
fake that says it listens on --status-fd, one that fails first, one that never says)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from criu_ext.migrate.pagesrv import PageServer
from criu_ext.migrate.tls import make_test_pki
from criu_ext.rpc import CriuError

FAKE = textwrap.dedent('''\
    #!{python}
    """Stand-in for `criu page-server ... -o LOG ... --status-fd FD`: $FAKE_PS says how it
    behaves: "ready" writes the byte and serves until told to go (stdin is /dev/null, so
    it waits on a signal), "fail" logs an error and exits 1, "mute" never says anything."""
    import os, signal, sys, time
    argv = sys.argv
    fd = int(argv[argv.index("--status-fd") + 1])
    log = argv[argv.index("-o") + 1]
    how = os.environ["FAKE_PS"]
    if how == "fail":
        with open(log, "w") as f:
            f.write("Error (criu/page-xfer.c:1): cannot bind the port\\n")
        sys.exit(1)
    if how == "ready":
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        os.write(fd, b"\\0")
        os.close(fd)
    time.sleep(60)
''')


@pytest.fixture
def env(tmp_path, monkeypatch):
    path = tmp_path / "criu"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
    tls = make_test_pki(str(tmp_path / "pki"), {"dst": ["127.0.0.1"]})["dst"]
    (tmp_path / "img").mkdir()
    return str(path), tls, str(tmp_path / "img"), monkeypatch


def test_page_server_ready_when_it_says_so(env):
    criu, tls, img, mp = env
    mp.setenv("FAKE_PS", "ready")
    ps = PageServer(img, "127.0.0.1", tls, criu, timeout=30)
    try:
        assert ps.proc.poll() is None and 0 < ps.port < 65536
    finally:
        ps.proc.terminate()
        ps.wait(10)  # ended with status 0


def test_page_server_that_fails_first_names_its_error(env):
    criu, tls, img, mp = env
    mp.setenv("FAKE_PS", "fail")
    with pytest.raises(CriuError, match=r"exited \(1\) before listening: .*cannot bind"):
        PageServer(img, "127.0.0.1", tls, criu, timeout=30)


def test_page_server_that_never_listens_is_killed(env):
    criu, tls, img, mp = env
    mp.setenv("FAKE_PS", "mute")
    with pytest.raises(CriuError, match="not listening after 1 s"):
        PageServer(img, "127.0.0.1", tls, criu, timeout=1)
