"""The protobuf in the virtualenv works with pycriu's and our generated code (host tier).

pycriu's *_pb2 modules come from Debian's protoc 3.21; pyproject.toml pins protobuf
to the 4.21 line for them. A newer protobuf from PyPI would refuse or misread
them, so this checks the pin against the real modules with a round trip.
"""

from __future__ import annotations

import io

import google.protobuf
import pytest


def test_protobuf_is_the_pinned_line():
    major, minor = (int(x) for x in google.protobuf.__version__.split(".")[:2])
    assert (major, minor) == (4, 21), google.protobuf.__version__


def test_pycriu_images_round_trip():
    images = pytest.importorskip("pycriu.images", reason="Debian's criu package is not installed")
    img = {"magic": "INVENTORY", "entries": [{"img_version": 2, "fdinfo_per_id": True,
                                                "root_ids": {"vm_id": 1, "files_id": 2, "fs_id": 3,
                                                             "sighand_id": 4, "pid_ns_id": 5,
                                                             "net_ns_id": 6}}]}
    buf = io.BytesIO()
    images.dump(img, buf)
    buf.seek(0)
    back = images.load(buf)
    assert back["magic"] == "INVENTORY"
    assert back["entries"][0]["root_ids"]["net_ns_id"] == 6


def test_our_generated_modules_import():
    from gtp_util.proto import gtp_image_pb2
    from sctp_repair import assoc_state_pb2

    assert gtp_image_pb2.DESCRIPTOR.name.endswith(".proto")
    assert assoc_state_pb2.DESCRIPTOR.name.endswith(".proto")
