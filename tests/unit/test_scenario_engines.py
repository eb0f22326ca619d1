"""scenario.engines' reading of a Podman checkpoint archive (an archive made here)."""

from __future__ import annotations

import io
import json
import tarfile

import pycriu.images
import pytest

from scenario.engines import checkpoint_figures

DUMP_STATS = {"freezing_time": 1000, "frozen_time": 2_500_000, "memdump_time": 10,
              "memwrite_time": 20, "pages_scanned": 100, "pages_skipped_parent": 0,
              "pages_written": 50, "pages_lazy": 0}


def archive(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def stats_image() -> bytes:
    out = io.BytesIO()
    pycriu.images.dump({"magic": "STATS", "entries": [{"dump": DUMP_STATS}]}, out)
    return out.getvalue()


def test_plugins_and_criu_frozen_time_come_from_the_archive(tmp_path):
    manifest = {"dump": {"timings": [{"seconds": 0.25}, {"seconds": 0.5}]}}
    archive(tmp_path / "c.tar", {"checkpoint/criu-ext.json": json.dumps(manifest).encode(),
                                 "checkpoint/stats-dump": stats_image(),
                                 "config.dump": b"{}"})
    assert checkpoint_figures(tmp_path / "c.tar") == (0.75, 2.5)


def test_an_archive_without_criu_ext_says_so(tmp_path):
    archive(tmp_path / "plain.tar", {"checkpoint/stats-dump": stats_image()})
    with pytest.raises(RuntimeError, match="plain.tar: no criu-ext.json"):
        checkpoint_figures(tmp_path / "plain.tar")
