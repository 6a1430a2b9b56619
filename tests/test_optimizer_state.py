"""What hetron sets on megatron-core's optimizer: LR and weight decay by group (norm gains and
biases are not decayed), the step count where each optimizer keeps it, and resume refusing a
changed LR schedule."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from pretrain.optimizer_state import apply_lr_and_weight_decay, keeps_step_per_parameter, set_step_count, step_count


class GroupStepAdam:
    """The shape of Apex's / Transformer Engine's fused Adam as far as hetron touches it: a
    torch-like optimizer from another module whose step count lives in each param group."""

    __module__ = "apex.optimizers.fused_adam"

    def __init__(self, params):
        self.param_groups = [{"params": list(params)}]
        self.state = {}


def test_step_count_goes_where_the_optimizer_keeps_it():
    w = torch.nn.Parameter(torch.ones(3))
    adam = torch.optim.Adam([w])
    w.grad = torch.ones(3)
    adam.step()
    assert keeps_step_per_parameter(adam)
    set_step_count(adam, 17)
    assert float(adam.state[w]["step"]) == 17 and "step" not in adam.param_groups[0]
    fused = GroupStepAdam([w])
    assert not keeps_step_per_parameter(fused)
    set_step_count(fused, 17)  # set even though the group had no count yet: no restart at 1
    assert fused.param_groups[0]["step"] == 17 and fused.state == {}

    class Wrapped:
        chained_optimizers = [type("M", (), {"optimizer": adam})(), type("M", (), {"optimizer": fused})()]
    assert step_count(Wrapped()) == 17


def test_lr_and_weight_decay_follow_megatrons_multipliers():
    class Megatronish:
        param_groups = [{"wd_mult": 1.0, "lr_mult": 1.0}, {"wd_mult": 0.0, "lr_mult": 1.0}, {"lr_mult": 0.5}]
    opt = Megatronish()
    apply_lr_and_weight_decay(opt, 3e-4, 0.1)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(3e-4, 0.1), (3e-4, 0.0), (1.5e-4, 0.1)]


def decay_harness(out: Path, overrides: list[str]) -> int:
    """One rank: a megatron optimizer step with LR 0.01, weight decay 0.1 and all-zero gradients."""
    from pretrain.algorithms import build_algorithms
    from pretrain.bootstrap import load_prepared
    from pretrain.config import load_config
    from pretrain.distributed import init_distributed, shutdown
    from pretrain.trainer import Trainer

    cfg = load_config(None, ["resume=never", "train.weight_decay=0.1", *overrides])
    info = init_distributed(1, 1, "gloo", threads=1)
    try:
        arch, shards, manifest = load_prepared(cfg)
        trainer = Trainer(cfg, info, arch, shards, manifest, build_algorithms(cfg))
        trainer.build()
        module = trainer.model_chunks[0].module
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        for chunk in trainer.model_chunks:
            chunk.zero_grad_buffer()
        trainer._set_lr(0.01)
        trainer.optimizer.step()
        after = {n: p.detach().clone() for n, p in module.named_parameters()}
        torch.save({"before": before, "after": after}, out)
    finally:
        shutdown()
    return 0


@pytest.mark.slow
@pytest.mark.parametrize("distributed_optimizer", ["true", "false"])
def test_zero_gradient_step_decays_matrices_not_norms_or_biases(tmp_path, small_shards, distributed_optimizer):
    from conftest import TINY

    from launch.local import spawn_ranks

    out = tmp_path / "decay.pt"
    code = spawn_ranks("tests.test_optimizer_state", [str(out), f"run.dir={tmp_path / 'run'}", f"data.shards={small_shards}",
                                                     f"parallel.distributed_optimizer={distributed_optimizer}",
                                                     *[a for a in TINY if "=" in a]], 1, tmp_path / "logs")
    assert code == 0, [p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*")]
    result = torch.load(out)
    norms = [n for n in result["before"] if "layernorm" in n or "final_norm" in n or n.endswith("bias")]
    matrices = [n for n, t in result["before"].items() if t.dim() == 2]
    assert norms and matrices
    for n in norms:
        assert torch.equal(result["after"][n], result["before"][n]), n
    for n in matrices:  # AdamW's decoupled decay: p <- p (1 - lr wd)
        torch.testing.assert_close(result["after"][n], result["before"][n] * (1 - 0.01 * 0.1), rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_resume_with_another_schedule_is_refused_unless_overridden(tmp_path, small_shards):
    from conftest import TINY, error_lines, run_hetron

    run = tmp_path / "run"
    common = ["train", f"run.dir={run}", f"data.shards={small_shards}", *TINY, "launch.nproc=1", "checkpoint.every=2"]
    first = run_hetron([*common, "train.steps=2"])
    assert first.returncode == 0, first.stderr[-2000:]
    refused = run_hetron([*common, "train.steps=4"])
    lines = error_lines(refused.stderr)
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert "schedule.total_steps: 2 -> 4" in lines[0] and "checkpoint.override_schedule=true" in lines[0]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # nothing of the refused run was written
    taken = run_hetron([*common, "train.steps=4", "checkpoint.override_schedule=true"])
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert "resumed from" in taken.stdout


if __name__ == "__main__":
    sys.exit(decay_harness(Path(sys.argv[1]), sys.argv[2:]))
