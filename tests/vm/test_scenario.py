"""The main job at a small size: an SPGW (4 UEs) and an HSS migrated from host A to B in the VM.

What the peers saw must prove the migrations were seamless: every UE answered
again through its own tunnel (no reply ever came back with a wrong TEID), the
HSS client's checks of the server's own counters found nothing lost or
repeated, and each migration has its timings, image size and downtime. The
stock kernel has no SCTP repair mode: the MME is reported as not migrated (the
repair tier moves it, tests/repair/test_scenario_mme.py).
"""

from __future__ import annotations

import json

import pytest

from scenario.report import summarize, table
from scenario.run import run

pytestmark = pytest.mark.vm


def test_spgw_migrates_without_its_ues_noticing(tmp_path):
    """criu-ext migrate's engine. (The HSS's moves through criu-ext migrate are
    tests/vm/test_migrate.py's, through the scenario's Podman engine the next test's.)"""
    results = run(tmp_path, ues=4, repeat=1, subscribers=2000, functions=["spgw", "mme"])
    spgw, mme = results["spgw"], results["mme"]

    assert [p["wrong_teid"] for p in spgw["peers"]] == [0]
    assert [p["ues_answered"] for p in spgw["peers"]] == [4]
    # a UE's TCP download through the masquerade ran across the move: no reset, intact
    [dl] = [p["download"] for p in spgw["peers"]]
    assert dl["pdn_error"] is None and dl["ue_error"] is None, dl
    assert dl["clean_close"] and dl["intact"] and dl["received"] == dl["sent"] > 500_000, dl
    assert [(r["from"], r["to"]) for r in spgw["runs"]] == [("a", "b")]
    for r in spgw["runs"]:
        assert r["checkpoint_s"] > 0 and r["restore_s"] > 0 and r["transfer_s"] > 0
        assert r["image_bytes"] > 1_000_000
        # the peers saw a gap, and service came back after it
        assert r["downtime_s"] is not None and r["downtime_s"] > 0
    assert all(r["ues_recovered"] == 4 and r["srt_s"] > 0 for r in spgw["runs"])
    assert mme["runs"] == [] and "not migrated" in mme["note"]

    timeline = json.loads((tmp_path / "timeline.json").read_text())
    assert set(timeline) == {"spgw"}
    print(table("spgw", summarize(spgw["runs"]), spgw["note"]))


def test_hss_in_a_podman_container_moves_without_its_client_noticing(tmp_path):
    """``--engine podman``: the function runs in a Podman container (runc, netns given by
    path) and moves by checkpoint --export / restore --import through criu-ext-criu into
    a netns made afresh on host B; the HSS keeps its TCP client (``--tcp-established``).
    (A GTP gateway through the same Podman path, 300 PDP contexts and their TEIDs
    checked: tests/vm/test_container_gtp.py; the MME: the repair tier.)"""
    results = run(tmp_path, ues=4, repeat=1, subscribers=2000, functions=["hss"],
                  engines=("podman",))
    hss = results["hss@podman"]
    assert [p["errors"] for p in hss["peers"]] == [[]]
    assert [(r["from"], r["to"]) for r in hss["runs"]] == [("a", "b")]
    for r in hss["runs"]:
        assert r["checkpoint_s"] > 0 and r["restore_s"] > 0
        assert r["image_bytes"] > 1_000_000 and r["downtime_s"] is not None
        assert 0 < r["frozen_s"] < r["total_s"]  # CRIU's, from the archive's stats
        assert r["plugin_frozen_s"] > 0  # criu-ext's plugins ran at the checkpoint
    print(table("hss@podman", summarize(hss["runs"]), hss["note"]))
