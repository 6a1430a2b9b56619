"""LISA layer sampling: seeded sampling, config errors through the CLI, frozen layers bitwise
unchanged, identical active sets on 2 ranks, no memory growth over 20 switches, exact rebuilds and
exact mid-interval resume.

Multi-rank tests run this file as a harness in real gloo ranks (launch.local.spawn_ranks):
    python -m tests.test_lisa OUT_DIR key=value ...
Each rank trains, recording per step the active layers, which layers' weights changed, the memory
ledger and the bytes of every tensor alive in the process, to OUT_DIR/rank_<r>.pt.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from pretrain.errors import ConfigError
from pretrain.config import LisaConfig
from pretrain.lisa import layer_index, sample_layers, trainable

LAYERS = 4  # transformer layers of the test model
SMALL = ["model.num_layers=4", "model.hidden_size=64", "model.num_attention_heads=4", "model.ffn_hidden_size=128",
         "model.seq_length=256", "data.global_batch_tokens=2048", "data.vocab_size=512", "train.eval_every=0",
         "run.tensorboard=false", "run.plot=false"]


# ------------------------------------------------------------------------------------ pure core


def test_sampling_is_a_seeded_uniform_choice_per_interval_and_stage():
    a = [sample_layers(7, i, 12, 2) for i in range(2000)]
    assert a == [sample_layers(7, i, 12, 2) for i in range(2000)]  # reproducible (resume)
    assert all(len(set(s)) == 2 and all(0 <= x < 12 for x in s) and list(s) == sorted(s) for s in a)
    assert len(set(a)) > 50  # the set really changes between intervals
    counts = torch.bincount(torch.tensor([x for s in a for x in s]), minlength=12).float()
    expected = 2000 * 2 / 12
    assert float(((counts - expected) ** 2 / expected).sum()) < 35.0  # chi-square, 11 dof: p ~ 2e-4
    assert sample_layers(8, 0, 12, 2) != sample_layers(7, 0, 12, 2) or sample_layers(8, 1, 12, 2) != a[1]
    assert [sample_layers(7, i, 6, 2, stage=1) for i in range(20)] != [sample_layers(7, i, 6, 2, stage=0) for i in range(20)]
    assert sample_layers(1, 3, 5, 5) == (0, 1, 2, 3, 4)


def test_always_trained_parameters():
    active = (1,)
    assert trainable("embedding.word_embeddings.weight", active)
    assert trainable("output_layer.weight", active)
    assert trainable("decoder.final_layernorm.weight", active)
    assert trainable("decoder.layers.1.mlp.linear_fc1.weight", active)
    assert not trainable("decoder.layers.10.mlp.linear_fc1.weight", active)
    assert layer_index("decoder.layers.10.self_attention.linear_qkv.weight") == 10


@pytest.mark.parametrize("cfg, pipeline, message", [
    (LisaConfig(layers=13), 1, "lisa.layers=13 is larger than the model's 12 layers"),
    (LisaConfig(layers=2, interval=0), 1, "lisa.interval=0 must be >= 1"),
    (LisaConfig(layers=2, state="drop"), 1, "lisa.state='drop' is not one of reset, offload"),
    (LisaConfig(layers=-1), 1, "lisa.layers=-1 must be >= 0"),
    (LisaConfig(layers=7), 2, "larger than the 6 layers of each of the 2 pipeline stages"),
])
def test_config_errors_name_the_key(cfg, pipeline, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        cfg.validate(12, pipeline)
    LisaConfig(layers=0, interval=5).validate(12)  # off is always valid
    LisaConfig(layers=12, interval=1, state="offload").validate(12)


@pytest.mark.parametrize("override, message", [
    ("lisa.layers=13", "lisa.layers=13 is larger than the model's 12 layers"),
    ("lisa.interval=0", "lisa.interval=0 must be >= 1"),
])
def test_bad_lisa_config_through_the_cli(tmp_path, override, message):
    from conftest import error_lines, run_hetron

    proc = run_hetron(["train", f"run.dir={tmp_path / 'run'}", "model.preset=tiny", "lisa.layers=2", override,
                       "--no-progress"], timeout=120)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_memory_ledger_counts_each_storage_once():
    from pretrain.memory_ledger import count_memory

    class Opt:  # the shape of a megatron optimizer: .optimizer is the torch one
        def __init__(self, params):
            self.optimizer = torch.optim.Adam(params)

    lin = torch.nn.Linear(10, 10)
    buf = torch.zeros(110)
    lin.weight.main_grad, lin.bias.main_grad = buf[:100].view(10, 10), buf[100:]
    opt = Opt(list(lin.parameters()))
    (lin(torch.ones(1, 10)).sum()).backward()
    opt.optimizer.step()
    for p in lin.parameters():
        p.grad = None
    ledger = count_memory([lin], opt)
    assert ledger.param_bytes == 110 * 4 and ledger.grad_bytes == 110 * 4
    assert ledger.optim_bytes == 2 * 110 * 4 + 2 * 4  # exp_avg, exp_avg_sq, two step scalars


# ------------------------------------------------------------------------------ 2-rank harness


def _full_states(trainer, keys) -> dict[str, str]:
    """{parameter: digest of its full optimizer state} for the trainable transformer-layer parameters,
    assembled over the data-parallel ranks (test-only: each rank adds its slice into zeros)."""
    import hashlib

    import torch.distributed as dist

    from pretrain.lisa import data_parallel_group
    from pretrain.optimizer_shards import optimizer_pieces

    module = trainer.model_chunks[0].module
    named = {n: p for n, p in module.named_parameters() if p.requires_grad and layer_index(n) is not None}
    pieces = optimizer_pieces(trainer.optimizer, named, keys)
    group = data_parallel_group(trainer.model_chunks[0])
    out = {}
    for name, param in named.items():
        lo, hi = pieces.ranges[name]
        digest = hashlib.sha256()
        for key in keys:
            full = torch.zeros(param.numel())
            if hi > lo:
                full[lo:hi] = pieces.tensors[name][key]
            if dist.get_world_size(group) > 1:
                dist.all_reduce(full, group=group)
            digest.update(full.numpy().tobytes())
        out[name] = digest.hexdigest()
    return out


def _harness(out_dir: Path, overrides: list[str]) -> int:
    import gc

    from pretrain.algorithms import build_algorithms
    from pretrain.bootstrap import load_prepared
    from pretrain.config import load_config
    from pretrain.distributed import init_distributed, shutdown
    from pretrain.lisa import state_keys
    from pretrain.memory_ledger import count_memory
    from pretrain.optimizer_state import step_count
    from pretrain.trainer import Trainer

    gc.disable()  # whatever a switch leaves to the garbage collector stays counted below
    cfg = load_config(None, ["resume=never", *overrides])
    info = init_distributed(cfg.parallel.tensor, cfg.parallel.pipeline, "gloo", threads=1)

    def live_tensor_bytes() -> int:
        # every tensor object alive or awaiting collection, by the bytes its storage still holds
        seen = {}
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and not obj.is_meta:
                s = obj.untyped_storage()
                if s.nbytes():
                    seen[s.data_ptr()] = s.nbytes()
        return sum(seen.values())

    try:
        arch, shards, manifest = load_prepared(cfg)
        trainer = Trainer(cfg, info, arch, shards, manifest, build_algorithms(cfg))
        trainer.build()
        lisa = next(a for a in trainer.algorithms if a.name == "lisa")
        module = trainer.model_chunks[0].module
        keys = state_keys(trainer)
        record = []
        for _ in range(cfg.train.steps):
            switching = trainer.step // lisa.cfg.interval != lisa.interval
            left = _full_states(trainer, keys) if switching else None
            lisa.on_step_start(trainer, trainer.step, [])  # the switch, here so that its state can be read
            arrived = _full_states(trainer, keys) if switching else None
            cost = lisa.last_switch.as_metrics() if switching else None
            before = {n: p.detach().clone() for n, p in module.named_parameters()}
            result = trainer.train_step()
            changed = sorted({layer_index(n) for n, p in module.named_parameters()
                              if layer_index(n) is not None and not torch.equal(before[n], p)})
            always = all(not torch.equal(before[n], p) for n, p in module.named_parameters() if layer_index(n) is None)
            del before
            ledger = count_memory(trainer.model_chunks, trainer.optimizer)
            trainable_numel = sum(p.numel() for p in module.parameters() if p.requires_grad)
            record.append({"step": trainer.step, "loss": result.loss, "active": lisa.global_layers(trainer),
                           "changed": changed, "always_trained_changed": always, "ledger": ledger.as_metrics(),
                           "trainable_numel": trainable_numel, "adam_step": step_count(trainer.optimizer),
                           "left": left, "arrived": arrived, "switch": cost,
                           "live_bytes": live_tensor_bytes() if trainer.step % lisa.cfg.interval == 0 else None,
                           "offload_bytes": lisa.offloaded.nbytes()})
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"record": record, "total_numel": sum(p.numel() for p in module.parameters()),
                    "layer_numel": sum(p.numel() for n, p in module.named_parameters() if layer_index(n) == 0)},
                   out_dir / f"rank_{info.rank}.pt")
    finally:
        shutdown()
    return 0


def _spawn(tmp_path: Path, name: str, shards: Path, extra: list[str], ranks: int = 2) -> list[dict]:
    from launch.local import spawn_ranks

    out = tmp_path / name
    code = spawn_ranks("tests.test_lisa", [str(out), f"run.dir={out / 'run'}", f"data.shards={shards}", *SMALL, *extra],
                       ranks, tmp_path / f"logs-{name}")
    logs = "\n".join(p.read_text()[-3000:] for p in (tmp_path / f"logs-{name}").glob("*"))
    assert code == 0, logs
    return [torch.load(out / f"rank_{r}.pt") for r in range(ranks)]


@pytest.fixture(scope="module")
def switching_run(tmp_path_factory, small_shards):
    """2 ranks, distributed optimizer, gamma=2 of 4 layers, K=2, 42 steps: 21 intervals (20 switches)."""
    tmp = tmp_path_factory.mktemp("lisa-switching")
    return _spawn(tmp, "switching", small_shards, ["lisa.layers=2", "lisa.interval=2", "train.steps=42",
                                                   "schedule.warmup_steps=0"])


@pytest.mark.slow
def test_active_set_switches_every_k_steps_identically_on_both_ranks(switching_run):
    rank0, rank1 = (r["record"] for r in switching_run)
    assert [r["active"] for r in rank0] == [r["active"] for r in rank1]
    for r in rank0:
        interval = (r["step"] - 1) // 2
        assert tuple(r["active"]) == sample_layers(1234, interval, LAYERS, 2), r
    sets = [tuple(r["active"]) for r in rank0]
    assert all(sets[i] == sets[i + 1] for i in range(0, 42, 2))  # constant within an interval
    assert sum(sets[i] != sets[i - 1] for i in range(2, 42, 2)) >= 10  # and it does switch


@pytest.mark.slow
def test_switches_keep_the_runs_adam_step_count(switching_run):
    # a rebuilt optimizer continues the run's bias correction, returning layers included
    for rank in switching_run:
        assert [r["adam_step"] for r in rank["record"]] == [r["step"] for r in rank["record"]]


@pytest.mark.slow
def test_inactive_layers_bitwise_unchanged_active_ones_change(switching_run):
    for rank in switching_run:
        for r in rank["record"]:
            assert r["changed"] == r["active"], r  # exactly the active layers moved this step
            assert r["always_trained_changed"], r  # embedding, head and final norm train every step


@pytest.mark.slow
def test_no_device_memory_growth_over_20_switches(switching_run):
    for rank in switching_run:
        record = rank["record"]
        ledgers = [r["ledger"] for r in record]
        assert all(ledger == ledgers[0] for ledger in ledgers), ledgers  # same bytes after every switch
        numel = record[0]["trainable_numel"]
        assert numel == rank["total_numel"] - 2 * rank["layer_numel"]  # 2 of 4 layers frozen
        # gradient buffer: trainable parameters only (fp32, plus bucket padding)
        assert 4 * numel <= ledgers[0]["mem_grad_bytes"] <= 4 * numel * 1.02 + 4096
        # Adam moments of the trainable parameters, sharded over 2 data-parallel ranks
        assert ledgers[0]["mem_optim_bytes"] <= 2 * 4 * numel / 2 * 1.02 + 8192
        # nothing else accumulates, with the garbage collector off: every tensor alive (or awaiting
        # collection) after each of 20 switches, less the host copies of lisa.state=offload (on a CPU
        # run the same memory)
        sampled = [r for r in record if r["live_bytes"] is not None]
        assert len(sampled) == 21
        device = [r["live_bytes"] - r["offload_bytes"] for r in sampled]
        assert max(device) <= device[0] * 1.01, device
    # the host copies: each rank keeps its own slices, so the two ranks together hold one copy of the
    # Adam moments of the 2 layers frozen at a time (each rank held a full copy before)
    layer_state = 2 * 4 * switching_run[0]["layer_numel"]
    together = [sum(rank["record"][i]["offload_bytes"] for rank in switching_run) for i in range(42)]
    assert max(together) <= 2 * layer_state and together[-1] > 0, together


@pytest.mark.slow
def test_switch_moves_each_ranks_slices_only(switching_run):
    """Per switch, the bytes the two ranks send each other are at most one copy of the trainable state
    (a full-tensor all-reduce sent two; none where the rebuilt buffer puts every staying element on
    the same rank), and what goes to host is one copy of the departing layers."""
    rank0, rank1 = (r["record"] for r in switching_run)
    layer_state = 2 * 4 * switching_run[0]["layer_numel"]
    switches = [(a, b) for a, b in zip(rank0[1:], rank1[1:]) if a["switch"] is not None]
    assert len(switches) == 20
    total = 0
    for a, b in switches:
        trainable_state = 2 * 4 * a["trainable_numel"]
        # seconds are each rank's own; the bytes are summed over the ranks
        assert {k: v for k, v in a["switch"].items() if k != "lisa_switch_s"} == {
            k: v for k, v in b["switch"].items() if k != "lisa_switch_s"}
        sent = a["switch"]["lisa_switch_sent_bytes"]
        assert sent <= trainable_state, (a["switch"], b["switch"])
        total += sent
        departed = len(set(a["active"]) - set(rank0[a["step"] - 2]["active"]))
        assert a["switch"]["lisa_switch_to_host_bytes"] == departed * layer_state
        assert a["switch"]["lisa_switch_s"] > 0
    assert total > 0


@pytest.mark.slow
def test_offload_returns_exactly_the_state_that_left(switching_run):
    """A layer's full optimizer state (assembled over both ranks) when it returns is bitwise the state
    it had when it left, though both ranks' slices of it moved; staying parameters keep theirs."""
    record = switching_run[0]["record"]
    switches = [r for r in record if r["left"] is not None]
    returns = stays = 0
    for k, r in enumerate(switches):
        for name, digest in r["left"].items():
            if name in r["arrived"]:
                assert r["arrived"][name] == digest, name
                stays += 1
                continue
            back = next((later for later in switches[k + 1:] if name in later["arrived"]), None)
            if back is not None:
                assert back["arrived"][name] == digest, (name, r["step"], back["step"])
                returns += 1
    assert returns >= 20 and stays >= 10, (returns, stays)


@pytest.mark.slow
def test_two_ranks_train_as_one(switching_run, tmp_path, small_shards):
    """The switching run on 2 data-parallel ranks (distributed optimizer, slices moved at every
    switch) trains as one rank does with the same global batch."""
    one = _spawn(tmp_path, "one-rank", small_shards, ["lisa.layers=2", "lisa.interval=2", "train.steps=42",
                                                      "schedule.warmup_steps=0"], ranks=1)[0]["record"]
    two = switching_run[0]["record"]
    assert [r["active"] for r in one] == [r["active"] for r in two]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)


@pytest.mark.slow
def test_rebuild_with_all_layers_active_equals_plain_training(tmp_path, small_shards):
    """gamma = all layers, K = 1: DDP and optimizer are rebuilt before every step with the state
    carried over through the 2-rank distributed optimizer; the losses equal plain training bitwise."""
    from conftest import run_hetron

    def losses(name, *extra):
        run = tmp_path / name
        proc = run_hetron(["train", f"run.dir={run}", f"data.shards={small_shards}", *SMALL, "--no-progress",
                           "launch.nproc=2", "train.steps=6", *extra])
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    plain = losses("plain")
    rebuilt = losses("rebuilt", f"lisa.layers={LAYERS}", "lisa.interval=1")
    assert rebuilt == plain


@pytest.mark.slow
def test_resume_mid_interval_is_exact_with_offloaded_state(tmp_path, small_shards):
    from conftest import run_hetron

    common = ["lisa.layers=2", "lisa.interval=3", "lisa.state=offload", "launch.nproc=2", "checkpoint.every=7",
              "schedule.total_steps=14", "--no-progress", f"data.shards={small_shards}", *SMALL]

    def train(name, steps, *extra):
        proc = run_hetron(["train", f"run.dir={tmp_path / name}", f"train.steps={steps}", *common, *extra])
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def rows(name):
        return {r["step"]: r for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())}

    train("full", 14)
    train("split", 7)  # step 7 lies inside the interval of steps 7..9 (1-based)
    shutil.copytree(tmp_path / "split", tmp_path / "one-rank")
    assert "resumed from" in train("split", 14).stdout
    full, split = rows("full"), rows("split")
    assert sorted(split) == list(range(1, 15))
    assert [full[s]["loss"] for s in range(1, 15)] == [split[s]["loss"] for s in range(1, 15)]
    assert [full[s]["lisa_active_layers"] for s in range(1, 15)] == [split[s]["lisa_active_layers"] for s in range(1, 15)]
    # each rank saved its own slices of the offloaded state; one rank resuming assembles both
    saved = sorted(p.name for p in (tmp_path / "split" / "checkpoints").glob("step_*/rank_state/lisa/*.pt"))
    assert saved == ["rank_00000.pt"] * 2 + ["rank_00001.pt"] * 2  # checkpoints of steps 7 and 14
    bad = run_hetron(["train", f"run.dir={tmp_path / 'one-rank'}", "train.steps=14", *common, "parallel.tensor=2"])
    assert bad.returncode == 2 and "saved at tensor x pipeline 1x1" in bad.stderr.strip().splitlines()[-1], bad.stderr
    train("one-rank", 14, "launch.nproc=1")
    one = rows("one-rank")
    assert [one[s]["loss"] for s in range(8, 15)] == pytest.approx([full[s]["loss"] for s in range(8, 15)], rel=1e-5)
    # a plain optimizer: every rank saved a full copy of the offloaded state; one rank takes it once
    plain = ["parallel.distributed_optimizer=false"]
    train("plain", 7, *plain)
    train("plain", 14, *plain, "launch.nproc=1")
    assert rows("plain")[14]["lisa_offload_host_bytes"] > 0
    # offloaded moments really come back: the same run with reset state differs once a layer returns
    train("reset", 14, "lisa.state=reset")
    reset = rows("reset")
    assert [reset[s]["loss"] for s in range(1, 4)] == [full[s]["loss"] for s in range(1, 4)]
    assert [reset[s]["loss"] for s in range(1, 15)] != [full[s]["loss"] for s in range(1, 15)]
    # host bytes of the offloaded state: two Adam moments of every layer seen and now inactive
    assert full[14]["lisa_offload_host_bytes"] > 0 and reset[14]["lisa_offload_host_bytes"] == 0


@pytest.mark.slow
def test_tensor_parallel_trains_as_data_parallel(tmp_path, small_shards):
    """TP2 trains the same layers with the same losses as DP2. (PP2 with offloaded state, resumed
    inside an interval, is in tests/test_composed.py.)"""
    from conftest import run_hetron

    common = ["lisa.layers=1", "lisa.interval=2", "launch.nproc=2", "schedule.total_steps=6", "train.steps=6",
              "--no-progress", f"data.shards={small_shards}", *SMALL]

    def rows(name, *extra):
        proc = run_hetron(["train", f"run.dir={tmp_path / name}", *common, *extra])
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    dp2, tp2 = rows("dp2"), rows("tp2", "parallel.tensor=2")
    assert [r["lisa_active_layers"] for r in dp2] == [r["lisa_active_layers"] for r in tp2]
    assert [r["loss"] for r in tp2] == pytest.approx([r["loss"] for r in dp2], rel=1e-5)
    assert tp2[0]["mem_grad_bytes"] < dp2[0]["mem_grad_bytes"]  # each TP rank holds half the layer weights


if __name__ == "__main__":
    sys.exit(_harness(Path(sys.argv[1]), sys.argv[2:]))
