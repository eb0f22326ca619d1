"""The main job's MME at a small size, on the repair-mode kernel: migrated from host A to B
and back, its base stations notice nothing.

Each base station checks its own numbered requests and answers (no gap, no
duplicate), and records every SCTP notification after COMM_UP: none may come.
The MME checks each base station's numbers from its side.
"""

from __future__ import annotations

import pytest

from scenario.report import summarize, table
from scenario.run import run

pytestmark = pytest.mark.repair


def check_base_stations(verdict: dict) -> None:
    """Neither side saw a lost or repeated message; no base station got a notification
    after COMM_UP (no restart, no address change, no abort)."""
    assert verdict["mme"] == {"errors": [], "sequence_errors": {}}
    enbs = {k: v for k, v in verdict.items() if k != "mme"}
    assert len(enbs) == 3
    for name, v in enbs.items():
        assert v["errors"] == [] and v["sequence_errors"] == [], (name, v)
        assert v["notifications"] == ["ASSOC_CHANGE:COMM_UP"], (name, v)
        assert v["acks"] > 20


def test_mme_migrates_there_and_back_with_its_base_stations_attached(tmp_path):
    results = run(tmp_path, ues=4, repeat=1, subscribers=2000, functions=["mme"], moves=2)
    mme = results["mme"]
    assert [(r["from"], r["to"]) for r in mme["runs"]] == [("a", "b"), ("b", "a")]
    check_base_stations(mme["peers"][0])
    for r in mme["runs"]:
        assert r["checkpoint_s"] > 0 and r["restore_s"] > 0 and r["transfer_s"] > 0
        assert r["downtime_s"] is not None and r["downtime_s"] > 0
    print(table("mme", summarize(mme["runs"]), mme["note"]))


def test_mme_in_a_podman_container_keeps_its_base_stations(tmp_path):
    """``--engine podman``: the MME in a Podman container (runc, netns given by path) moves
    by checkpoint --export / restore --import through criu-ext-criu from host A to B; the
    sctp plugin carries its associations into the netns made afresh there (the move
    back from a restored netns is the criu-ext engine's test above)."""
    results = run(tmp_path, ues=4, repeat=1, subscribers=2000, functions=["mme"],
                  engines=("podman",))
    mme = results["mme@podman"]
    assert [(r["from"], r["to"]) for r in mme["runs"]] == [("a", "b")]
    check_base_stations(mme["peers"][0])
    for r in mme["runs"]:
        assert r["checkpoint_s"] > 0 and r["restore_s"] > 0 and r["plugin_frozen_s"] > 0
        assert r["downtime_s"] is not None and r["downtime_s"] > 0
    print(table("mme@podman", summarize(mme["runs"]), mme["note"]))
