"""kernel-patches/build.sh without building a kernel: key, cache hit, clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "kernel-patches" / "build.sh"
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
# build.sh puts the virtualenv's bin first; the key names virtme-ng's version.
HAS_VNG = (REPO / ".venv" / "bin" / "vng").exists() or shutil.which("vng") is not None


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BUILD), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


COVER = "0000-cover-letter.patch"


def test_series_lists_every_patch_in_order():
    series = (REPO / "kernel-patches" / "series").read_text().split()
    patches = sorted(p.name for p in (REPO / "kernel-patches").glob("0*.patch")
                     if p.name != COVER)
    assert series == patches
    for name in series:
        text = (REPO / "kernel-patches" / name).read_text()
        assert text.startswith("From ") and "\nSigned-off-by: " in text, name


def test_cover_letter_names_every_patch():
    # git am cannot apply a cover letter (it has no diff): it is not in series.
    cover = (REPO / "kernel-patches" / COVER).read_text()
    series = (REPO / "kernel-patches" / "series").read_text().split()
    assert f"[PATCH 0/{len(series)}]" in cover
    assert "*** SUBJECT HERE ***" not in cover and "*** BLURB HERE ***" not in cover
    for name in series:
        subject = next(line for line in (REPO / "kernel-patches" / name).read_text().splitlines()
                       if line.startswith("Subject: "))
        title = subject.split("] ", 1)[1]
        assert title.split()[0] in cover and title[:40] in cover.replace("\n ", " "), name


def test_fragment_lines_are_config_assignments():
    for line in (REPO / "kernel-patches" / "config.fragment").read_text().splitlines():
        if not line.strip() or line.startswith("#") and not line.startswith("# CONFIG_"):
            continue
        assert line.startswith("CONFIG_") and line.endswith("=y") or \
            line.startswith("# CONFIG_") and line.endswith(" is not set"), line


def test_missing_source_is_a_clear_error(tmp_path):
    out = run("--print-key", env={"LINUX_SOURCE_TARBALL": str(tmp_path / "none.tar.xz")})
    assert out.returncode == 1
    assert "run scripts/setup --kernel-build" in out.stderr


@pytest.mark.skipif(not TARBALL.exists() or not HAS_VNG,
                    reason="needs linux-source-6.1 and virtme-ng (scripts/setup --kernel-build)")
def test_cached_key_returns_at_once(tmp_path):
    env = {"CRIU_EXT_CACHE": str(tmp_path)}
    key = run("--print-key", env=env).stdout.strip()
    assert len(key) == 16
    assert run("--print-key", env=env).stdout.strip() == key   # stable
    image = tmp_path / "kernel" / key / "bzImage"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"not really a kernel")
    out = run(env=env)
    assert out.returncode == 0
    assert out.stdout.splitlines()[-1] == str(image)
    assert "cached" in out.stderr
