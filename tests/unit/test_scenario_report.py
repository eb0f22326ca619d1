"""scenario.report: statistics, gap measurement and table layout (pure; made-up runs)."""

import json

from scenario.report import gaps, report_json, summarize, table


def test_gap_is_the_longest_silence_spanning_the_window():
    replies = [0.0, 0.1, 0.2, 0.3, 2.0, 2.1, 2.2]
    assert gaps(replies, 0.35, 1.9) == 2.0 - 0.3
    # a reply inside the window splits the silence
    assert gaps([0.0, 0.3, 1.0, 2.0], 0.35, 1.9) == 1.0
    # no reply after the window: the service never came back
    assert gaps([0.0, 0.3], 0.35, 1.9) is None


def test_summary_ignores_metrics_that_do_not_apply():
    runs = [{"checkpoint_s": 3.0, "srt_s": None}, {"checkpoint_s": 1.0, "srt_s": None},
            {"checkpoint_s": 2.0}]
    s = summarize(runs)
    assert s == {"checkpoint_s": {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}}


def test_table_puts_the_paper_figures_beside_ours():
    runs = [{"checkpoint_s": 2.5, "image_bytes": 12_500_000, "srt_s": 0.8},
            {"checkpoint_s": 3.5, "image_bytes": 13_500_000, "srt_s": 1.2}]
    text = table("spgw", summarize(runs), "200 UEs")
    lines = text.splitlines()
    assert lines[0] == "SPGW (GTP user plane), 2 runs, 200 UEs"
    ckpt = next(line for line in lines if line.strip().startswith("checkpoint"))
    assert ckpt.split() == ["checkpoint", "(s)", "2.500", "3.000", "3.500", "4", "-", "7"]
    size = next(line for line in lines if "image size" in line)
    assert size.split()[3:] == ["12.5", "13.0", "13.5", "100"]
    assert "UE service recovery" in text and "1.4 - 2.3" in text


def test_table_counts_pre_copy_rounds_and_shows_the_frozen_time():
    runs = [{"pre_copy_rounds": 2, "frozen_s": 1.25}, {"pre_copy_rounds": 3, "frozen_s": 1.75}]
    lines = table("hss", summarize(runs)).splitlines()
    rounds = next(line for line in lines if line.strip().startswith("pre-copy rounds"))
    assert rounds.split() == ["pre-copy", "rounds", "2", "2.5", "3", "-"]
    frozen = next(line for line in lines if "frozen" in line)
    assert frozen.split() == ["frozen", "(source)", "(s)", "1.250", "1.500", "1.750", "-"]


def test_a_container_run_has_its_own_heading_and_the_same_paper_figures():
    runs = [{"checkpoint_s": 5.0, "image_bytes": 20_000_000}]
    lines = table("spgw@podman", summarize(runs), "4 UEs").splitlines()
    assert lines[0] == ("SPGW (GTP user plane) in a Podman container, checkpoint --export / "
                        "restore --import, 1 run, 4 UEs")
    ckpt = next(line for line in lines if line.strip().startswith("checkpoint"))
    assert ckpt.split()[-3:] == ["4", "-", "7"]
    doc = json.loads(report_json({"mme@podman": {"runs": runs}}))
    assert doc["mme@podman"]["paper"]["restore_s"] == [2.39, 3.42]


def test_json_carries_runs_summary_and_paper():
    doc = json.loads(report_json({"hss": {"runs": [{"total_s": 4.0}], "note": "x"}}))
    assert doc["hss"]["summary"]["total_s"]["median"] == 4.0
    assert doc["hss"]["paper"]["total_s"] == [15, 33]
    assert doc["hss"]["note"] == "x"


def test_mme_keeps_every_ack_time_its_base_stations_have_shown(tmp_path):
    # a base station's status file (fake: written here) keeps only its latest ack times;
    # the MME's record keeps them all, so a long run keeps its first move's window
    from scenario.functions import Mme

    mme = Mme(None, tmp_path)  # type: ignore[arg-type]  # no fabric needed to read records

    def shown(times):
        (tmp_path / "enb0.json").write_text(json.dumps({"ack_times": {"ack": times}}))
        return list(mme._acks("enb0"))

    assert shown([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert shown([3.0, 4.0, 5.0]) == [1.0, 2.0, 3.0, 4.0, 5.0]  # 1 and 2 fell out there
    (tmp_path / "enb0.json").unlink()
    assert list(mme._acks("enb0")) == [1.0, 2.0, 3.0, 4.0, 5.0]  # an unreadable status adds nothing
    assert gaps(mme._acks("enb0"), 1.5, 4.5) == 1.0
