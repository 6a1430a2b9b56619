"""The training loop of one rank: megatron-core GPTModel + DDP + optimizer, global batches by token
budget, per-token loss over the whole global batch, LR schedule, eval, metrics and checkpoints."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from data.loader import GlobalBatchLoader, eval_batches
from data.mixture import StagedBatchLoader, init_history, stage_eval_sets
from data.packing import micro_batches_for_rank
from data.prepare import Manifest
from data.sample_store import sample_lengths
from parallel.plan_execution import (
    PlannedBatches,
    align_groups,
    allowed_group_sizes,
    plan_statistics,
    rank_micro_batches,
)
from parallel.ulysses import SequenceParallelGroups
from pretrain import checkpoint as ckpt
from pretrain import preemption
from pretrain.algorithm import Algorithm
from pretrain.architecture import Architecture, count_parameters
from pretrain.config import Config
from pretrain.distributed import RankInfo, rng_state, seed_everything, set_rng_state
from pretrain.errors import HetronError
from pretrain.metrics import MetricsWriter, start_wandb
from pretrain.model import build_gpt_model
from pretrain.optimizer_state import apply_lr_and_weight_decay
from pretrain.stages import StagePlan
from pretrain.step import SampleLosses, make_forward_step


def changed_keys(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) of every leaf where two nested dicts/lists differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += changed_keys(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in changed_keys(a, b, f"{prefix}[{i}]")]
    return [] if old == new else [(prefix, old, new)]


@dataclass
class StepResult:
    step: int
    loss: float
    tokens: int
    grad_norm: float
    lr: float
    seconds: float
    sample_losses: SampleLosses


class Trainer:
    def __init__(self, cfg: Config, info: RankInfo, arch: Architecture, shards: Path, manifest: Manifest,
                 algorithms: list[Algorithm] = ()):
        self.cfg = cfg
        self.info = info
        self.arch = arch
        self.shards = shards
        self.manifest = manifest
        self.algorithms = list(algorithms)
        self.bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and torch.cuda.is_available())
        self.step = 0
        self.tokens_seen = 0
        self.run_dir = Path(cfg.run.dir)
        self.model_chunks = None
        self.optimizer = None
        self.stage_plan = StagePlan.of(cfg.stages) if cfg.stages else None
        self.staged_loader: StagedBatchLoader | None = None
        if self.stage_plan is not None:
            from data.stage_data import stage_sources

            sources = stage_sources(cfg, shards, manifest, arch.seq_length, prepare=False)
            self.staged_loader = StagedBatchLoader(self.stage_plan, sources, cfg.data.global_batch_tokens,
                                                   seed=cfg.seed, shuffle=cfg.data.shuffle,
                                                   replay_fraction=cfg.replay.fraction)
            self.loader = self.staged_loader
        else:
            self.loader = GlobalBatchLoader(shards / "train", cfg.data.global_batch_tokens, seed=cfg.seed,
                                            shuffle=cfg.data.shuffle)
        if cfg.train.eval_every and cfg.train.eval_batches and not manifest.splits.get("eval", {}).get("samples"):
            raise HetronError(f"the shards in {shards} hold no held-out samples, so no eval loss can be computed; "
                              "re-run `hetron prepare --force` or set train.eval_every=0")
        self._eval: dict[str, list] = {}
        self.eval_metrics: dict[str, float] = {}
        self.metrics_writer: MetricsWriter | None = None
        self.sp_groups = None
        self.last_plan = None
        self.last_batch = None
        self.last_step_s: float | None = None  # the planner's budget follows the last step's time
        self.last_sample_losses: torch.Tensor | None = None
        self.last_weights: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------- set-up

    def build(self) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        seed_everything(self.cfg.seed)
        model = build_gpt_model(
            self.cfg, self.arch, self.manifest.vocab_size, bf16=self.bf16,
            pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
        )
        model.to(self.info.device)
        for algo in self.algorithms:
            algo.before_wrap(self, model)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=self.cfg.parallel.overlap_grad_reduce,
            use_distributed_optimizer=self.cfg.parallel.distributed_optimizer,
        )
        ddp = DistributedDataParallel(model.config, ddp_config, model)
        model.config.finalize_model_grads_func = finalize_model_grads
        if self.cfg.parallel.overlap_grad_reduce:
            model.config.no_sync_func = ddp.no_sync
            model.config.grad_sync_func = ddp.start_grad_sync
        self.model_chunks = [ddp]
        t = self.cfg.train
        opt_config = OptimizerConfig(
            optimizer="adam", lr=self.cfg.schedule.peak_lr, weight_decay=t.weight_decay,
            adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, adam_eps=t.adam_eps, clip_grad=t.grad_clip,
            bf16=self.bf16, params_dtype=torch.bfloat16 if self.bf16 else torch.float32,
            use_distributed_optimizer=self.cfg.parallel.distributed_optimizer,
        )
        self.optimizer_config = opt_config
        self.optimizer = get_megatron_optimizer(opt_config, self.model_chunks)
        if self.cfg.sp.mode != "off":
            self._setup_sequence_parallel()
        for algo in self.algorithms:
            algo.after_build(self)

    @property
    def model_config(self):
        return self.model_chunks[0].config

    # ------------------------------------------------------------------------------ checkpoints

    def lr_at(self, step: int) -> float:
        """The LR of a global step: the run's schedule, or the stage's, evaluated at step - stage start."""
        return self.stage_plan.lr(step) if self.stage_plan is not None else self.cfg.schedule.lr(step)

    def components_state(self) -> dict:
        # The train split and its shuffle let a later init_from run rebuild which samples this run saw.
        return {"loader": self.loader.state_dict(), "train_split": str((self.shards / "train").resolve()),
                "train_shuffle": self.cfg.data.shuffle,
                "algorithms": {a.name: a.state_dict() for a in self.algorithms}}

    def save(self) -> Path:
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "world_size": self.info.world_size,
                 "dp_size": self.info.dp_size, "schedule": self.cfg.schedule.to_dict(),
                 "tokenizer_fingerprint": self.manifest.tokenizer_fingerprint,
                 "architecture": self.arch.__dict__,
                 # what `hetron export-hf` needs beyond the architecture (pretrain/hf/exporter.py)
                 "model": dataclasses.asdict(self.cfg.model), "vocab_size": self.manifest.vocab_size,
                 "tokenizer": str((self.shards / "tokenizer.json").resolve()),
                 "stages": self.stage_plan.describe() if self.stage_plan is not None else None,
                 "lr_schedule": self.schedule_record()}
        return ckpt.save_checkpoint(self.cfg.checkpoint_dir, self.step, self.model_chunks, self.optimizer, state,
                                    self.components_state(), rng_state(), self.info.rank, self.cfg.checkpoint.keep,
                                    rank_states={a.name: a.rank_state_dict() for a in self.algorithms})

    def initialize_from(self, path: Path) -> Path:
        """A new run from an earlier run's weights (and optimizer state unless init_optimizer=reset), at
        step 0 with this run's data and schedule; the earlier run's stages feed replay and eval."""
        if str(path).startswith("hf:"):
            from pretrain.hf.load import load_hf_weights, reload_optimizer_params

            load_hf_weights(Path(str(path)[3:]), self.model_chunks)
            reload_optimizer_params(self.optimizer)
            self.init_optimizer_note = "fresh: Hugging Face weights carry no optimizer state"
            return path
        path = Path(path)
        if not (path / ckpt.STATE_FILE).is_file():
            found = ckpt.newest_checkpoint(path) or ckpt.newest_checkpoint(path / "checkpoints")
            if found is None:
                raise HetronError(f"init_from={path}: no complete checkpoint there (nor under its checkpoints/)")
            path = found
        state, components = ckpt.read_trainer_state(path)
        if state.get("tokenizer_fingerprint") != self.manifest.tokenizer_fingerprint:
            raise HetronError(f"init_from={path} was trained with another tokenizer than the shards in {self.shards}")
        # `hetron import-hf` writes weights only: no optimizer state, no data history
        weights_only = bool(state.get("weights_only"))
        keep = self.cfg.init_optimizer == "keep" and not weights_only
        self.init_optimizer_note = ("kept from it" if keep else "fresh: the checkpoint holds weights only" if weights_only
                                    else "fresh (init_optimizer=reset)")
        ckpt.load_model_and_optimizer(path, self.model_chunks, self.optimizer if keep else None, self.info.rank)
        if not keep:
            from pretrain.hf.load import reload_optimizer_params

            reload_optimizer_params(self.optimizer)
        if weights_only and self.cfg.replay.fraction > 0 and len(self.cfg.stages) < 2:
            raise HetronError(f"init_from={path} holds imported weights only, no hetron data to replay; "
                              "set replay.fraction=0 or add a stage before")
        if self.staged_loader is not None and not weights_only:
            self.staged_loader.set_history(init_history(components, replay=self.cfg.replay.fraction > 0))
        return path

    def resume_path(self) -> Path | None:
        mode = self.cfg.resume
        if mode == "never":
            return None
        if mode in ("auto", "latest"):
            found = ckpt.newest_checkpoint(self.cfg.checkpoint_dir)
            if found is None and mode == "latest":
                raise HetronError(f"resume requested but no complete checkpoint in {self.cfg.checkpoint_dir}")
            return found
        return Path(mode)

    def schedule_record(self) -> dict:
        """Everything that decides the LR of a step: the run's schedule, or every stage's."""
        if self.stage_plan is None:
            return {"schedule": self.cfg.schedule.to_dict()}
        return {"stages": [{"name": s.name, "steps": s.steps, "schedule": s.schedule.to_dict() if s.schedule else None}
                           for s in self.stage_plan.spans]}

    def check_schedule_unchanged(self, path: Path, state: dict) -> None:
        """A resumed run continues the checkpoint's LR schedule (as megatron's scheduler insists):
        a changed one is refused, naming the keys, unless checkpoint.override_schedule is set."""
        saved = state.get("lr_schedule")
        if saved is None or self.cfg.checkpoint.override_schedule:
            return
        changed = changed_keys(saved, self.schedule_record())
        if changed:
            shown = ", ".join(f"{k}: {a} -> {b}" for k, a, b in changed[:4]) + (", ..." if len(changed) > 4 else "")
            raise HetronError(f"checkpoint {path} continues another LR schedule than this config ({shown}); "
                              "restore those values to resume it, or set checkpoint.override_schedule=true to "
                              f"switch to the new schedule at step {state.get('step')}")

    def load(self, path: Path) -> None:
        state, components = ckpt.read_trainer_state(path)
        if state.get("tokenizer_fingerprint") != self.manifest.tokenizer_fingerprint:
            raise HetronError(f"checkpoint {path} was trained with another tokenizer than the shards in {self.shards}")
        self.check_schedule_unchanged(path, state)
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.loader.load_state_dict(components["loader"])
        for algo in self.algorithms:
            algo.load_state_dict(components["algorithms"].get(algo.name, {}))
            algo.load_rank_states(self, ckpt.rank_state_files(path, algo.name))
            algo.before_checkpoint_load(self)
        rng = ckpt.load_model_and_optimizer(path, self.model_chunks, self.optimizer, self.info.rank)
        # RNG streams continue exactly only at the same world size; otherwise reseed deterministically.
        if rng is not None and state.get("world_size") == self.info.world_size:
            set_rng_state(rng)
        else:
            seed_everything(self.cfg.seed + self.step)

    # ------------------------------------------------------------------------------------- step

    def _set_lr(self, lr: float) -> None:
        apply_lr_and_weight_decay(self.optimizer, lr, self.cfg.train.weight_decay)

    def run_micro_batches(self, micro_batches, *, forward_only: bool, record: SampleLosses,
                          sample_coefficients: torch.Tensor | None = None) -> tuple[float, int]:
        """forward(-backward) of this rank's micro-batches through megatron's schedule; returns the
        global (mean token loss, tokens)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        seq_length = max(mb.tokens.shape[1] for mb in micro_batches)
        get_forward_backward_func()(
            forward_step_func=make_forward_step(record, self.info.device, self.sp_groups, sample_coefficients),
            data_iterator=iter(micro_batches),
            model=self.model_chunks, num_microbatches=len(micro_batches), seq_length=seq_length,
            micro_batch_size=1, forward_only=forward_only,
        )
        return self._global_loss(record)

    def _global_loss(self, record: SampleLosses) -> tuple[float, int]:
        # Loss sums live on the last pipeline stage; every tensor-parallel rank holds the same copy.
        totals = record.totals(self.info.device).clone()
        if not self.info.is_last_stage:
            totals.zero_()
        dist.all_reduce(totals)
        loss_sum, count = totals.tolist()
        return loss_sum / max(count, 1.0), int(round(count / self.cfg.parallel.tensor))

    def global_sample_sums(self, record: SampleLosses, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of token losses, token count) of every sample of the global batch, float64, the same
        on every rank: this rank's partial sums (a shard, under sequence parallelism) reduced over
        all ranks. Only the last pipeline stage holds losses; tensor-parallel ranks hold copies."""
        gathered = record.per_sample(num_samples, self.info.device)
        if not self.info.is_last_stage:
            gathered.zero_()
        dist.all_reduce(gathered)
        gathered = gathered.cpu() / self.cfg.parallel.tensor
        if bool((gathered[:, 1] == 0).any()):
            missing = int((gathered[:, 1] == 0).nonzero()[0])
            raise HetronError(f"sample {missing} of the global batch has no tokens on any rank")
        return gathered[:, 0], gathered[:, 1]

    def run_weighted_micro_batches(self, micro_batches, num_samples: int, record: SampleLosses,
                                   weigh) -> tuple[float, int, torch.Tensor, torch.Tensor]:
        """Two passes through megatron's schedule: forward-only for the mean loss of every sample
        of the global batch, `weigh` turns them into weights, then the ordinary forward-backward
        (gradient accumulation, one micro-batch's activations at a time) with every token's loss
        scaled by its sample's coefficient for reweight.objective. Returns (mean token loss,
        tokens, per-sample losses, weights)."""
        from pretrain.reweighting import token_coefficients

        if self.cfg.reweight.scope == "microbatch":
            return self._run_micro_batch_weighted(micro_batches, num_samples, record, weigh)
        probe = SampleLosses()
        with torch.no_grad():
            self.run_micro_batches(micro_batches, forward_only=True, record=probe)
        sums, counts = self.global_sample_sums(probe, num_samples)
        losses = (sums / counts).float()
        weights = weigh(losses)
        coefficients = token_coefficients(weights, counts, self.cfg.reweight.objective)
        loss, tokens = self.run_micro_batches(micro_batches, forward_only=False, record=record,
                                              sample_coefficients=coefficients)
        return loss, tokens, losses, weights

    def _run_micro_batch_weighted(self, micro_batches, num_samples: int, record: SampleLosses,
                                  weigh) -> tuple[float, int, torch.Tensor, torch.Tensor]:
        """reweight.scope=microbatch: one ordinary pass, each micro-batch weighed over its samples of
        every data-parallel rank (pretrain.micro_batch_weights)."""
        from megatron.core import parallel_state as ps

        from pretrain.micro_batch_weights import MicroBatchWeights

        weights = MicroBatchWeights(num_samples, weigh, self.cfg.reweight.objective, ps.get_data_parallel_group(),
                                    self.info.device)
        loss, tokens = self.run_micro_batches(micro_batches, forward_only=False, record=record,
                                              sample_coefficients=weights)
        losses, effective = weights.step_view(self.info.is_last_stage, self.info.dp_size * self.cfg.parallel.tensor,
                                              self.info.device)
        return loss, tokens, losses, effective

    def micro_batches(self, samples, plan=None):
        """This rank's micro-batches of a global batch: packed for plain data parallelism, or the
        rank's shards of a sequence-parallel plan (the loader's plan, made a step ahead; eval
        batches are planned here with the deterministic fast path)."""
        if self.cfg.sp.mode == "off":
            capacity = self.cfg.train.micro_batch_tokens or self.arch.seq_length
            return micro_batches_for_rank(samples, capacity, self.info.dp_rank, self.info.dp_size,
                                          self.manifest.pad_id, fixed_shape=self.cfg.parallel.pipeline > 1)
        lengths = sample_lengths(samples)
        plan = align_groups(plan or self._make_plan(lengths, solver="none"))
        plan.validate(lengths, self.sp_cost_model)
        return rank_micro_batches(plan, samples, self.info.dp_rank, self.manifest.pad_id)

    def _setup_sequence_parallel(self) -> None:
        from parallel.cost_model import CostModel

        sp = self.cfg.sp
        tc = self.model_config
        tp = self.cfg.parallel.tensor
        self.sp_sizes = allowed_group_sizes(tc.num_attention_heads // tp, tc.num_query_groups // tp, self.info.dp_size)
        if sp.mode == "static" and sp.degree not in self.sp_sizes:
            raise HetronError(f"sp.degree={sp.degree} is not a usable group size here; usable: {self.sp_sizes} "
                              f"(powers of two <= {self.info.dp_size} data-parallel ranks dividing the head counts)")
        capacity = sp.tokens_per_rank or self.arch.seq_length
        if Path(sp.cost_model).suffix == ".json":
            self.sp_cost_model = CostModel.load(sp.cost_model)
            self.sp_cost_model = replace(self.sp_cost_model, capacity_tokens=capacity)
        elif sp.cost_model == "auto":
            self.sp_cost_model = CostModel.scaled_to(self.arch.num_layers, self.arch.hidden_size, capacity_tokens=capacity)
        else:
            self.sp_cost_model = CostModel.preset(sp.cost_model, capacity_tokens=capacity)
        if self.info.is_main and not self.sp_cost_model.calibrated:
            print(f"hetron: sp.cost_model={sp.cost_model}: {self.sp_cost_model.source}, not measured here; plans use "
                  "its relative costs and sp_predicted_ms_uncalibrated is no step-time prediction. Measure this "
                  "model with `hetron calibrate` and set sp.cost_model=FILE.json", flush=True)
        self.sp_groups = SequenceParallelGroups(self.sp_sizes, timeout=timedelta(seconds=self.cfg.launch.timeout_s))
        self.loader = PlannedBatches(self.loader, self._make_plan, is_main=self.info.is_main)

    def _make_plan(self, lengths, solver: str | None = None):
        from parallel.planner import plan_step
        from parallel.planner.budget import step_budget_s
        from parallel.simulate import static_plan

        sp = self.cfg.sp
        if sp.mode == "static":
            return static_plan(lengths, self.info.dp_size, self.sp_cost_model, sp.degree)
        budget = sp.time_budget_s or step_budget_s(self.last_step_s, fraction=sp.budget_fraction,
                                                   min_s=sp.budget_min_s, max_s=sp.budget_max_s)
        return plan_step(lengths, self.info.dp_size, self.sp_cost_model, time_budget_s=budget,
                         solver=solver or sp.solver, allowed_sizes=self.sp_sizes)

    def train_step(self) -> StepResult:
        start = time.perf_counter()
        samples = self.loader.next_batch()
        plan = getattr(self.loader, "plan", None)
        self.last_plan = plan
        self.last_batch = samples
        lengths = sample_lengths(samples)
        for algo in self.algorithms:
            algo.on_step_start(self, self.step, lengths)
        lr = self.lr_at(self.step)
        self._set_lr(lr)
        for chunk in self.model_chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        record = SampleLosses()
        weigher = next((a for a in self.algorithms if a.weighs_step(self, self.step)), None)
        self.last_sample_losses = self.last_weights = None
        if weigher is not None:
            loss, tokens, self.last_sample_losses, self.last_weights = self.run_weighted_micro_batches(
                self.micro_batches(samples, plan), len(samples), record,
                lambda losses: weigher.sample_weights(self, self.step, losses))
        else:
            loss, tokens = self.run_micro_batches(self.micro_batches(samples, plan), forward_only=False, record=record)
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            raise HetronError(f"optimizer step {self.step} failed (non-finite gradients)")
        if not math.isfinite(loss):
            raise HetronError(f"loss became {loss} at step {self.step}; lower schedule.peak_lr or check the data")
        self.step += 1
        self.tokens_seen += tokens
        self.last_step_s = time.perf_counter() - start
        return StepResult(self.step, loss, tokens, float(grad_norm or 0.0), lr, self.last_step_s, record)

    def eval_sets(self) -> dict[str, list[str]]:
        """Metric key -> eval split folders; in a staged run every earlier stage is evaluated too."""
        if self.staged_loader is None:
            return {"eval_loss": [str(self.shards / "eval")]}
        span, _ = self.stage_plan.locate(max(self.step - 1, 0))  # the stage of the step just taken
        return stage_eval_sets(self.staged_loader.earlier_records()[: len(self.staged_loader.history) + span.index],
                               span.name, self.staged_loader.sources[span.index])

    def evaluate(self) -> float | None:
        """Held-out loss of the current data (returned) and of every eval set (self.eval_metrics)."""
        if self.cfg.train.eval_batches == 0:
            return None
        sets = self.eval_sets()
        for chunk in self.model_chunks:
            chunk.eval()
        sums: dict[str, tuple[float, int]] = {}
        with torch.no_grad():
            for split in dict.fromkeys(s for splits in sets.values() for s in splits):
                if split not in self._eval:
                    self._eval[split] = eval_batches(Path(split), self.cfg.data.global_batch_tokens,
                                                     self.cfg.train.eval_batches)
                total, count = 0.0, 0
                for samples in self._eval[split]:
                    record = SampleLosses()
                    loss, tokens = self.run_micro_batches(self.micro_batches(samples), forward_only=True, record=record)
                    total += loss * tokens
                    count += tokens
                sums[split] = (total, count)
        for chunk in self.model_chunks:
            chunk.train()
        self.eval_metrics = {key: sum(sums[s][0] for s in splits) / max(sum(sums[s][1] for s in splits), 1)
                             for key, splits in sets.items()}
        return self.eval_metrics["eval_loss"]

    def read_metrics(self) -> dict:
        """What the last step's batch cost in reads: the most any rank read (samples, stored tokens,
        bytes; a collective) and the whole batch's samples and tokens, which every rank read before
        data.sample_store."""
        batch = self.last_batch
        if not hasattr(batch, "read_bytes"):
            return {}
        most = torch.tensor([batch.read_samples, batch.read_tokens, batch.read_bytes], dtype=torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return {"data_read_samples": int(most[0]), "data_read_tokens": int(most[1]), "data_read_bytes": int(most[2]),
                "data_batch_samples": len(batch), "data_batch_tokens": batch.tokens}

    # ------------------------------------------------------------------------------------- loop

    def fit(self, progress=None) -> dict:
        cfg = self.cfg
        writer = None
        if self.info.is_main:
            wandb_run = (start_wandb(self.run_dir, cfg.run.wandb_mode, cfg.run.wandb_project, cfg.to_dict())
                         if cfg.run.wandb else None)
            writer = MetricsWriter(self.run_dir, cfg.run.tensorboard, resume_step=self.step, wandb_run=wandb_run)
        self.metrics_writer = writer
        for algo in self.algorithms:
            algo.on_train_start(self)
        n_params = count_parameters(self.arch, self.manifest.vocab_size, cfg.model.tie_embeddings)
        eval_loss, last = None, None
        rates = []
        preempted = False
        try:
            while self.step < cfg.train.steps:
                result = self.train_step()
                last = result
                rates.append(result.tokens / result.seconds)
                metrics = {"step": result.step, "loss": result.loss, "lr": result.lr, "tokens": self.tokens_seen,
                           "tokens_per_s": result.tokens / result.seconds, "step_s": result.seconds,
                           "grad_norm": result.grad_norm, "batch_tokens": result.tokens}
                if self.last_plan is not None:
                    metrics.update(plan_statistics(self.last_plan, calibrated=self.sp_cost_model.calibrated))
                    metrics["sp_plan_wait_ms"] = getattr(self.loader, "plan_wait_ms", 0.0)
                for algo in self.algorithms:
                    algo.on_step_end(self, result.step, metrics)
                at_end = result.step == cfg.train.steps
                if cfg.train.eval_every and (result.step % cfg.train.eval_every == 0 or at_end):
                    eval_loss = self.evaluate()
                    if eval_loss is not None:
                        metrics["eval_loss"] = eval_loss
                        metrics.update(self.eval_metrics)
                log_now = result.step % cfg.run.log_every == 0 or at_end or "eval_loss" in metrics
                if log_now:  # the same on every rank
                    metrics.update(self.read_metrics())
                if writer and log_now:
                    writer.log(metrics)
                if progress is not None:
                    progress(metrics)
                preempted = not at_end and preemption.stop_agreed(self.info.device)
                if result.step % cfg.checkpoint.every == 0 or at_end or preempted:
                    self.save()
                if preempted:
                    break
        finally:
            if writer:
                writer.close()
        if last is None:
            return {"step": self.step, "message": "nothing to do: the run had already reached train.steps"}
        return {"step": self.step, "final_loss": last.loss, "eval_loss": eval_loss, "tokens": self.tokens_seen,
                "tokens_per_s": sorted(rates)[len(rates) // 2], "parameters": n_params, "preempted": bool(preempted)}
