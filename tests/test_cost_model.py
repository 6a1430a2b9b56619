"""The cost model is FlexSP's formula with FlexSP's constants; files round-trip and bad files fail clearly."""
import json
import math

import pytest

from parallel.cost_model import CostModel
from pretrain.errors import HetronError


def test_seq_time_matches_flexsp_formula_by_hand():
    cm = CostModel.preset("7b")
    length, d = 32768, 16
    compute = (5.128e-6 * length**2 + 0.18396 * length) / d
    volume_mb = 4 * 2 * 32 * 4096 * length * 2 / 2**20 / d
    assert cm.seq_time_ms(length, d) == pytest.approx(compute + volume_mb / 10.33, rel=1e-12)
    # no all-to-all on a single rank
    assert cm.seq_time_ms(1000, 1) == pytest.approx(5.128e-6 * 1e6 + 183.96, rel=1e-12)


def test_group_time_adds_beta_once():
    cm = CostModel.preset("13b")
    lengths = [1000, 2000, 4000]
    assert cm.group_time_ms(lengths, 4) == pytest.approx(sum(cm.seq_time_ms(x, 4) for x in lengths) + 1132.56)
    assert cm.group_time_ms([], 4) == pytest.approx(1132.56)


@pytest.mark.parametrize("length,expected", [(1, 1), (6000, 1), (6001, 2), (12000, 2), (12001, 4),
                                             (196480, 64), (192000, 32), (384001, 128)])
def test_min_sp_is_next_power_of_two_of_ranks_needed(length, expected):
    assert CostModel.preset("7b").min_sp(length) == expected


def test_bandwidth_table_and_sizes_past_it():
    cm = CostModel.preset("7b")
    assert cm.bandwidth(8) == 96.5 and cm.bandwidth(16) == 10.33
    assert cm.bandwidth(256) == cm.bandwidth(64) == 4.87
    assert cm.comm_ms_per_token(1) == 0.0


def test_presets_have_flexsp_constants():
    assert CostModel.preset("30b").a1 == 15.4262e-6 and CostModel.preset("30b").layers == 60
    assert CostModel.preset("7B").beta == 629.36
    with pytest.raises(HetronError, match="unknown cost-model preset '70b'"):
        CostModel.preset("70b")


def test_save_load_round_trip(tmp_path):
    cm = CostModel.preset("7b", capacity_tokens=5000)
    path = tmp_path / "cost.json"
    cm.save(path)
    again = CostModel.load(path)
    assert again == cm
    assert again.seq_time_ms(5000, 8) == cm.seq_time_ms(5000, 8)


def test_missing_and_malformed_files_are_clear_errors(tmp_path):
    with pytest.raises(HetronError, match="not found"):
        CostModel.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HetronError, match="not valid JSON"):
        CostModel.load(bad)
    raw = CostModel.preset("7b").to_dict()
    del raw["beta"]
    bad.write_text(json.dumps(raw))
    with pytest.raises(HetronError, match=r"missing keys \['beta'\]"):
        CostModel.load(bad)
    raw = CostModel.preset("7b").to_dict()
    raw["bandwidth_gbps"] = {"3": 10.0}
    bad.write_text(json.dumps(raw))
    with pytest.raises(HetronError, match="power-of-two"):
        CostModel.load(bad)


def test_time_falls_with_degree_for_long_sequences():
    cm = CostModel.preset("7b")
    times = [cm.seq_time_ms(131072, d) for d in (32, 64)]
    assert times[1] < times[0] and all(math.isfinite(t) for t in times)


def test_cost_model_is_hashable_for_caches():
    assert hash(CostModel.preset("7b")) == hash(CostModel.preset("7b"))


def test_scaled_model_is_the_preset_at_its_own_architecture_and_scales_by_flops():
    seven = CostModel.preset("7b")
    same = CostModel.scaled_to(32, 4096)
    assert (same.a1, same.a2, same.beta) == pytest.approx((seven.a1, seven.a2, seven.beta))
    small = CostModel.scaled_to(16, 2048)  # half the layers, half the width
    assert small.a1 == pytest.approx(seven.a1 / 4) and small.a2 == pytest.approx(seven.a2 / 8)
    assert small.beta == pytest.approx(seven.beta / 8)
    assert not small.calibrated and not seven.calibrated and "scaled" in small.source


def test_only_calibrated_files_count_as_calibrated(tmp_path):
    path = tmp_path / "cm.json"
    raw = CostModel.preset("7b").to_dict()
    for key in ("calibrated", "source"):
        del raw[key]  # as files from before these keys existed, all written by `hetron calibrate`
    path.write_text(json.dumps(raw))
    assert CostModel.load(path).calibrated
    CostModel.scaled_to(2, 64).save(path)
    assert not CostModel.load(path).calibrated


def test_uncalibrated_predictions_are_named_so():
    from parallel.plan import MicroBatchPlan, SequenceParallelPlan, SPGroup
    from parallel.plan_execution import plan_statistics

    plan = SequenceParallelPlan(2, (MicroBatchPlan((SPGroup(0, 2, (0,)),)),), 12.5, 1.0, "test")
    assert plan_statistics(plan, calibrated=False)["sp_predicted_ms_uncalibrated"] == 12.5
    assert "sp_predicted_ms" not in plan_statistics(plan, calibrated=False)
    assert plan_statistics(plan)["sp_predicted_ms"] == 12.5


@pytest.mark.parametrize("preset", ["7b", "13b"])
def test_a_preset_for_another_architecture_is_refused_in_one_line(tmp_path, preset):
    from conftest import error_lines, run_hetron

    proc = run_hetron(["train", f"run.dir={tmp_path}", "model.preset=tiny", "sp.mode=adaptive",
                       f"sp.cost_model={preset}"])
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"sp.cost_model={preset}" in lines[0] and "hetron calibrate" in lines[0] and "sp.cost_model=auto" in lines[0]
