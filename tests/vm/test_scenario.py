"""The main job at a small size: an SPGW (4 UEs) and an HSS migrated from host A to B in the VM.

What the peers saw must prove the migrations were seamless: every UE answered
again through its own tunnel (no reply ever came back with a wrong TEID), the
HSS client's checks of the server's own counters found nothing lost or
repeated, and each migration has its timings, image size and downtime.
"""

from __future__ import annotations

import json

import pytest

from scenario.report import summarize, table
from scenario.run import run

pytestmark = pytest.mark.vm


def test_spgw_and_hss_migrate_without_their_peers_noticing(tmp_path):
    results = run(tmp_path, ues=4, repeat=1, subscribers=2000, functions=["spgw", "hss", "mme"])
    spgw, hss, mme = results["spgw"], results["hss"], results["mme"]

    assert spgw["peers"]["wrong_teid"] == 0
    assert spgw["peers"]["ues_answered"] == 4
    assert hss["peers"]["errors"] == []
    for fn in (spgw, hss):
        assert [(r["from"], r["to"]) for r in fn["runs"]] == [("a", "b")]
        for r in fn["runs"]:
            assert r["checkpoint_s"] > 0 and r["restore_s"] > 0 and r["transfer_s"] > 0
            assert r["image_bytes"] > 1_000_000
            # the peers saw a gap, and service came back after it
            assert r["downtime_s"] is not None and r["downtime_s"] > 0
    assert all(r["ues_recovered"] == 4 and r["srt_s"] > 0 for r in spgw["runs"])
    assert mme["runs"] == [] and "not migrated" in mme["note"]

    timeline = json.loads((tmp_path / "timeline.json").read_text())
    assert set(timeline) == {"spgw", "hss"}
    print(table("spgw", summarize(spgw["runs"]), spgw["note"]))
    print(table("hss", summarize(hss["runs"]), hss["note"]))


@pytest.mark.xfail(strict=True, raises=RuntimeError,
                   reason="known bug: a gateway that was itself restored by CRIU is not "
                          "answered after its next migration (B -> A); under investigation")
def test_spgw_migrates_back(tmp_path):
    results = run(tmp_path, ues=4, repeat=2, subscribers=2000, functions=["spgw"])
    assert results["spgw"]["peers"]["ues_answered"] == 4
