"""`hetron plan-bench` end to end on a small file: table, JSON, plans that an outside check accepts, PNG."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from parallel.cost_model import CostModel
from parallel.plan import SequenceParallelPlan
from pretrain import cli

REPRICE = Path(__file__).resolve().parents[1] / "benchmarks" / "reprice_plans.py"


def write_lengths(path, count=200, seed=0):
    rng = random.Random(seed)
    lengths = [max(1, int(rng.lognormvariate(6.0, 1.4))) for _ in range(count)]
    lengths[7] = 40000
    lengths[50] = 10**6  # longer than the cap: dropped by the preprocessing
    path.write_text("\n".join(map(str, lengths)) + "\n")


def test_plan_bench_writes_summary_plans_and_gantt(tmp_path, capsys):
    lengths = tmp_path / "lengths.txt"
    write_lengths(lengths)
    out, plans, png = tmp_path / "s.json", tmp_path / "plans.json", tmp_path / "g.png"
    rc = cli.main(["plan-bench", "--lengths", str(lengths), "--gpus", "8", "--cap", "48000", "--batches", "2",
                   "--batch-size", "64", "--milp-seconds", "0.5", "--json", str(out), "--plans-out", str(plans),
                   "--gantt", str(png)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "hetron" in printed and "static-d8" in printed and "LP bound" in printed and "work floor" in printed
    assert "the MILP ran on" in printed and "whose plan" in printed
    summary = json.loads(out.read_text())
    policies = summary["policies"]
    assert set(policies) == {"hetron", "greedy", "static-d8", "batch-adaptive", "per-sequence", "milp-0.5s"}
    assert summary["config"]["dropped_over_cap"] == 1
    assert summary["lp_bound_ms"] >= summary["work_floor_ms"]
    for p in policies.values():
        assert p["total_ms"] >= summary["lp_bound_ms"] * (1 - 1e-12)
        assert abs(p["speedup_vs_static"] - policies["static-d8"]["total_ms"] / p["total_ms"]) < 1e-9
        assert p["gap_to_lp_bound"] == pytest.approx(p["total_ms"] / summary["lp_bound_ms"] - 1)
        assert len(p["planning_cpu_ms"]) == 2 and all(c >= 0 for c in p["planning_cpu_ms"])
    hetron = policies["hetron"]
    assert 0 <= hetron["milp_improved_batches"] <= hetron["milp_ran_batches"] <= 2
    assert hetron["total_ms"] <= policies["greedy"]["total_ms"] + 1e-9
    cm = CostModel.preset("7b")
    for batch in json.loads(plans.read_text())["batches"]:
        assert len(batch["lengths"]) == 64 and all(x % 16 == 0 for x in batch["lengths"])
        for plan in batch["plans"].values():
            parsed = SequenceParallelPlan.from_dict(plan)
            parsed.validate(batch["lengths"], cm)
            # re-priced from the lengths alone, no plan beats the batch's LP bound
            assert parsed.time_ms(batch["lengths"], cm) >= batch["lp_bound_ms"] * (1 - 1e-12)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the outside check: FlexSP's formula written out in benchmarks/reprice_plans.py, no hetron code
    proc = subprocess.run([sys.executable, str(REPRICE), str(plans)], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "plans below their batch's bound: none" in proc.stdout, proc.stdout + proc.stderr
    repriced = {line.split(":")[0].strip(): float(line.split(":")[1].split()[0])
                for line in proc.stdout.splitlines() if line.strip().split(":")[0] in policies}
    assert repriced == {name: pytest.approx(p["total_ms"], rel=1e-6) for name, p in policies.items()}


def test_reprice_refuses_a_plan_that_loses_a_sequence(tmp_path):
    lengths = tmp_path / "lengths.txt"
    write_lengths(lengths)
    plans = tmp_path / "plans.json"
    assert cli.main(["plan-bench", "--lengths", str(lengths), "--gpus", "8", "--cap", "48000", "--batches", "1",
                     "--batch-size", "64", "--milp-seconds", "0", "--solver", "none", "--plans-out", str(plans)]) == 0
    data = json.loads(plans.read_text())
    groups = data["batches"][0]["plans"]["hetron"]["micro_batches"][0]
    next(g for g in groups if g["sequences"])["sequences"].pop()
    plans.write_text(json.dumps(data))
    proc = subprocess.run([sys.executable, str(REPRICE), str(plans)], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "batch 0, hetron: invalid plan: sequences lost" in proc.stderr
    assert "Traceback" not in proc.stderr
    plans.write_text("{not json")
    proc = subprocess.run([sys.executable, str(REPRICE), str(plans)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "is not a plan-bench plans file" in proc.stderr and "Traceback" not in proc.stderr


def test_plan_bench_bad_file_is_one_line_error(tmp_path, capsys):
    small = ["--gpus", "8", "--cap", "48000"]
    assert cli.main(["plan-bench", "--lengths", str(tmp_path / "missing.txt"), *small]) == 2
    assert "lengths file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("12\nabc\n")
    assert cli.main(["plan-bench", "--lengths", str(bad), *small]) == 2
    assert "expected one integer per line" in capsys.readouterr().err
    bad.write_text("12\n13\n")
    assert cli.main(["plan-bench", "--lengths", str(bad), *small, "--batch-size", "64"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err
    assert cli.main(["plan-bench", "--lengths", str(bad), "--gpus", "8", "--max-context", "65536"]) == 2
    assert "use --max-context <= 48016" in capsys.readouterr().err
