"""LISA: layerwise importance sampled training (Pan et al., NeurIPS 2024, arXiv 2403.17919), with the
memory saving made real on megatron-core.

Every `interval` steps, `layers` transformer layers are sampled uniformly (seeded by the run seed
and the interval index, so every rank draws the same set and a resumed run draws it again); the
embedding, the output head and the final norm always train; every other layer is frozen for the
interval. With pipeline parallelism every stage samples `layers` of its own layers.

Megatron's DDP allocates its gradient buffers, and its optimizer its state, when they are built,
so freezing parameters alone frees nothing. At every switch we therefore rebuild megatron's
DistributedDataParallel and optimizer over the same GPTModel (megatron-core unmodified): the new
gradient buffers and optimizer state cover only the trainable parameters, and the old ones are
freed at once. The optimizer state of parameters that stay trainable is carried over exactly: with
the distributed optimizer each rank holds a slice, the slices move when the buffers change, and
each element is sent once from its old rank to its new one (no rank gathers a full tensor). The
state of departing layers is dropped (`state: reset`) or each rank's slice of it is kept in (pinned)
host memory and restored when the layer returns (`state: offload`). One Adam step count is shared by all parameters (as megatron's fused Adam and
its checkpoint format have it), so a layer entering with reset moments uses the run's bias
correction.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pretrain.algorithm import Algorithm
from pretrain.config import LisaConfig
from pretrain.errors import HetronError
from pretrain.optimizer_shards import (
    StatePieces,
    comm_device,
    exchange_into,
    free_storages,
    optimizer_pieces,
    optimizer_tensors,
    sub_optimizers,
    to_host,
)
from pretrain.optimizer_state import set_step_count, step_count
from pretrain.shard_exchange import equal_chunk, overlap

LAYER_PREFIX = "decoder.layers."


# ----------------------------------------------------------------------------------- pure core


def sample_layers(seed: int, interval_index: int, num_layers: int, gamma: int, stage: int = 0) -> tuple[int, ...]:
    """The `gamma` layer indices (0-based, among `num_layers`) that train during interval
    `interval_index`: uniform without replacement, a pure function of its arguments."""
    if not 0 <= gamma <= num_layers:
        raise ValueError(f"cannot sample {gamma} of {num_layers} layers")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(interval_index), int(stage), 0x115A])
    return tuple(sorted(int(i) for i in rng.choice(num_layers, size=gamma, replace=False)))


def layer_index(name: str) -> int | None:
    """The local transformer-layer index of a GPTModel parameter name, or None for parameters that
    always train (embedding, output head, final norm)."""
    if not name.startswith(LAYER_PREFIX):
        return None
    return int(name[len(LAYER_PREFIX):].split(".", 1)[0])


def trainable(name: str, active: tuple[int, ...]) -> bool:
    index = layer_index(name)
    return index is None or index in active


# ------------------------------------------------------------------ optimizer state, per parameter


def init_optimizer_state(optimizer, step: int) -> None:
    """Create every parameter's Adam state now (zero moments) with the run's step count, where the
    optimizer keeps it (pretrain.optimizer_state), as megatron's checkpoint loader also needs; fresh
    moments equal what torch Adam would create lazily."""
    for opt in sub_optimizers(optimizer):
        init = getattr(opt, "init_state_fn", None)
        if init is not None:
            init(opt.optimizer, getattr(opt, "config", None))
        set_step_count(opt.optimizer, step)


def data_parallel_group(ddp):
    """The group over which megatron's distributed optimizer shards this wrapper's state."""
    groups = {id(b.data_parallel_group): b.data_parallel_group for b in ddp.buffers}
    if len(groups) > 1:
        raise HetronError("LISA found gradient buffers sharded over different data-parallel groups; "
                          "it supports one (no expert parallelism)")
    return next(iter(groups.values()), None)


def state_keys(trainer) -> tuple[str, ...]:
    cfg = trainer.optimizer_config
    return ("exp_avg", "exp_avg_sq") + (("param",) if (cfg.bf16 or cfg.fp16) else ())


# ---------------------------------------------------------------------------- rebuild (shell)


def _release(ddp) -> None:
    """Drop what ties the old DDP wrapper to the module: its gradient-accumulation hooks (else a
    second wrapper would register a second hook on the same accumulator), parameter views into its
    buffers (param.data with the distributed optimizer, param.main_grad always); then free its
    buffers at once, not when the garbage collector finds the wrapper's reference cycles."""
    for param in ddp.module.parameters():
        if hasattr(param, "main_grad"):
            del param.main_grad
        param.grad = None
        if param.storage_offset() != 0 or param.untyped_storage().nbytes() != param.numel() * param.element_size():
            param.data = param.data.clone()  # leave the old contiguous buffer; megatron needs a base tensor
    ddp.grad_accs.clear()
    buffers = list(ddp.buffers) + list(getattr(ddp, "expert_parallel_buffers", []))
    free_storages([t for b in buffers for t in (b.grad_data, b.param_data) if t is not None], ddp.module.parameters())
    if getattr(ddp, "use_forward_hook", False):
        ddp.disable_forward_pre_hook()
    config = ddp.module.config
    config.no_sync_func = None
    config.grad_sync_func = None


def rebuild_ddp_and_optimizer(trainer, requires_grad: dict[str, bool]) -> None:
    """Set requires_grad by parameter name and rebuild megatron DDP + optimizer over the same
    GPTModel, so gradient buffers and optimizer state exist for the trainable parameters only.
    Optimizer state is not carried here (see LisaLayerSampling.switch)."""
    from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
    from megatron.core.optimizer import get_megatron_optimizer

    old = trainer.model_chunks[0]
    module = old.module
    ddp_config = dataclasses.replace(old.ddp_config)
    _release(old)
    trainer.model_chunks = None
    trainer.optimizer = None
    del old
    for name, param in module.named_parameters():
        param.requires_grad_(requires_grad[name])
    ddp = DistributedDataParallel(module.config, ddp_config, module)
    module.config.finalize_model_grads_func = finalize_model_grads
    if ddp_config.overlap_grad_reduce:
        module.config.no_sync_func = ddp.no_sync
        module.config.grad_sync_func = ddp.start_grad_sync
    trainer.model_chunks = [ddp]
    trainer.optimizer = get_megatron_optimizer(trainer.optimizer_config, trainer.model_chunks)


# ------------------------------------------------------------------------------------ algorithm


@dataclass
class SwitchCost:
    """What one switch cost: this rank's wall seconds; bytes sent between data-parallel ranks, copied
    to host memory (departing layers) and back (returning layers), summed over all ranks."""

    seconds: float = 0.0
    sent_bytes: int = 0
    to_host_bytes: int = 0
    from_host_bytes: int = 0

    def as_metrics(self) -> dict:
        return {"lisa_switch_s": self.seconds, "lisa_switch_sent_bytes": self.sent_bytes,
                "lisa_switch_to_host_bytes": self.to_host_bytes, "lisa_switch_from_host_bytes": self.from_host_bytes}


def summed_over_ranks(values: list[int]) -> list[int]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    total = torch.tensor(values, dtype=torch.int64, device=comm_device())
    dist.all_reduce(total)
    return [int(v) for v in total.tolist()]


class LisaLayerSampling(Algorithm):
    name = "lisa"

    def __init__(self, cfg: LisaConfig, seed: int):
        self.cfg = cfg
        self.seed = seed
        self.interval = -1  # index of the interval whose layers are active now
        self.active: tuple[int, ...] = ()  # local layer indices of this pipeline stage
        self.offloaded = StatePieces()  # state: offload, this rank's slices of departed layers, on the host
        self.offloaded_bytes_all_ranks = 0
        self.switches = 0
        self.last_switch: SwitchCost | None = None

    # ------------------------------------------------------------------------------ helpers

    @staticmethod
    def _module(trainer):
        return trainer.model_chunks[0].module

    @staticmethod
    def _coordinates() -> tuple[int, int]:
        from megatron.core import parallel_state as ps

        return ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()

    def layers_for(self, module, interval_index: int) -> tuple[int, ...]:
        stage = self._coordinates()[1]
        return sample_layers(self.seed, interval_index, len(module.decoder.layers), self.cfg.layers, stage)

    def global_layers(self, trainer) -> list[int]:
        """The active layers as global 0-based layer numbers (megatron's layer_number - 1)."""
        layers = self._module(trainer).decoder.layers
        return [int(layers[i].layer_number) - 1 for i in self.active]

    def switch(self, trainer, interval_index: int, *, carry: bool = True, rebuild: bool = True) -> None:
        """Make interval `interval_index`'s layers the trainable set and rebuild DDP + optimizer
        (rebuild=False: they were built for that set already; every rank must pass the same, as
        building them runs collectives). carry=False: no optimizer state moves (it is loaded next).

        Each rank handles only its own slices: a departing layer's slices go to host memory as they
        are (state: offload); the slices of parameters that stay, and of returning layers, go straight
        to the ranks that hold them in the rebuilt optimizer (pretrain.shard_exchange)."""
        start = time.perf_counter()
        cost = SwitchCost()
        module = self._module(trainer)
        active = self.layers_for(module, interval_index)
        named = dict(module.named_parameters())
        want = {n: trainable(n, active) for n in named}
        keys = state_keys(trainer)
        step = step_count(trainer.optimizer)
        old_optimizer = trainer.optimizer
        staying = StatePieces()
        if carry:
            current = optimizer_pieces(old_optimizer, {n: p for n, p in named.items() if p.requires_grad}, keys)
            departing = [n for n in current.ranges if not want[n]]
            if self.cfg.state == "offload" and departing:
                leaving = to_host(current.take(departing))
                cost.to_host_bytes = leaving.nbytes()
                self.offloaded = self.offloaded.merge(leaving)
            staying = current.take([n for n in current.ranges if want[n]])
            del current
        if rebuild:
            rebuild_ddp_and_optimizer(trainer, want)
        init_optimizer_state(trainer.optimizer, step)
        if carry:
            returning = self.offloaded.take([n for n in named if want[n] and n in self.offloaded.ranges])
            cost.from_host_bytes = returning.nbytes()
            names = [n for n in named if n in staying.ranges or n in returning.ranges]
            targets = optimizer_pieces(trainer.optimizer, {n: named[n] for n in names}, keys)
            cost.sent_bytes = exchange_into(staying.merge(returning), targets, names, keys,
                                            data_parallel_group(trainer.model_chunks[0]))
            del staying, returning, targets
        if old_optimizer is not trainer.optimizer:
            free_storages(optimizer_tensors(old_optimizer), list(module.parameters()) + optimizer_tensors(trainer.optimizer))
        del old_optimizer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.active, self.interval = active, interval_index
        self.switches += 1
        if carry:
            cost.sent_bytes, cost.to_host_bytes, cost.from_host_bytes, self.offloaded_bytes_all_ranks = summed_over_ranks(
                [cost.sent_bytes, cost.to_host_bytes, cost.from_host_bytes, self.offloaded.nbytes()])
        cost.seconds = time.perf_counter() - start
        self.last_switch = cost

    # -------------------------------------------------------------------------------- hooks

    def before_wrap(self, trainer, model) -> None:
        # freeze before megatron's first DDP and optimizer, so that not even they cover all layers
        active = self.layers_for(model, trainer.step // self.cfg.interval)
        for name, param in model.named_parameters():
            param.requires_grad_(trainable(name, active))

    def after_build(self, trainer) -> None:
        # Checkpoint keys per layer (decoder.layers.<i>.*) instead of one tensor stacked over layers:
        # the optimizer state of a checkpoint covers the active layers only, and a stacked tensor
        # would have to be covered whole.
        config = self._module(trainer).config
        flags = [f for f in ("hetereogenous_dist_checkpoint", "heterogeneous_dist_checkpoint") if hasattr(config, f)]
        if not flags:
            raise HetronError("this megatron-core has no per-layer checkpoint keys (heterogeneous_dist_checkpoint); "
                              "LISA checkpoints need them")
        for flag in flags:
            setattr(config, flag, True)
        self.switch(trainer, trainer.step // self.cfg.interval, carry=False, rebuild=False)  # see before_wrap

    def before_checkpoint_load(self, trainer) -> None:
        # The checkpoint's optimizer holds the saved interval's layers: rebuild for exactly those.
        saved = self.interval
        self.switch(trainer, saved if saved >= 0 else trainer.step // self.cfg.interval, carry=False)

    def on_step_start(self, trainer, step: int, batch_lengths: list[int]) -> None:
        interval_index = step // self.cfg.interval
        if interval_index != self.interval:
            self.switch(trainer, interval_index)

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        metrics["lisa_active_layers"] = self.global_layers(trainer)
        metrics["lisa_offload_host_bytes"] = self.offloaded_bytes_all_ranks
        if self.last_switch is not None:
            metrics.update(self.last_switch.as_metrics())
            self.last_switch = None

    # ------------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {"interval": self.interval, "active": list(self.active), "switches": self.switches,
                "layers": self.cfg.layers, "every": self.cfg.interval, "policy": self.cfg.state}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            raise HetronError("the checkpoint was written without LISA (its optimizer holds every layer); "
                              "resume it with lisa.layers=0, or start LISA from a fresh run")
        saved = (state.get("layers"), state.get("every"))
        if saved != (self.cfg.layers, self.cfg.interval):
            # The checkpoint's optimizer holds the saved run's layer set only.
            raise HetronError(f"the checkpoint was trained with lisa.layers={saved[0]} lisa.interval={saved[1]}; "
                              f"resume with the same values (got {self.cfg.layers}, {self.cfg.interval})")
        self.interval = int(state["interval"])
        self.switches = int(state.get("switches", 0))

    def rank_state_dict(self) -> dict | None:
        # every rank saves its own slices: gathering them would put every offloaded layer's full
        # state in one host's memory
        if self.cfg.state != "offload":
            return None
        from megatron.core import parallel_state as ps

        return {"coordinates": self._coordinates(), "data_parallel": self._data_parallel_rank_and_size(),
                "layout": (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()),
                "ranges": dict(self.offloaded.ranges), "tensors": self.offloaded.tensors}

    @staticmethod
    def _data_parallel_rank_and_size() -> tuple[int, int]:
        # the group megatron's DDP shards over (data_parallel_group above)
        from megatron.core import parallel_state as ps

        return (ps.get_data_parallel_rank(with_context_parallel=True),
                ps.get_data_parallel_world_size(with_context_parallel=True))

    @staticmethod
    def _read_rank_state(path, layout: tuple[int, int]) -> dict:
        saved = torch.load(path, weights_only=False)
        if tuple(saved["layout"]) != layout:
            raise HetronError(f"{path}: LISA's offloaded optimizer state was saved at tensor x pipeline "
                              f"{saved['layout'][0]}x{saved['layout'][1]}; resume at that layout "
                              f"(not {layout[0]}x{layout[1]}) or with lisa.state=reset")
        return saved

    def load_rank_states(self, trainer, files: list) -> None:
        """This rank's slices of the offloaded state. At the saved layout, its own file holds them as
        they are; otherwise they are taken from every saved rank's file of the same tensor/pipeline
        coordinates, whatever the saved data-parallel size: a distributed optimizer's rank takes its
        equal chunk of each parameter, a plain one the whole parameter."""
        if self.cfg.state != "offload" or not files:
            return
        from megatron.core import parallel_state as ps

        layout = (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size())
        ddp = trainer.model_chunks[0]
        rank, size = self._data_parallel_rank_and_size()
        own = next((p for p in files if p.name == f"rank_{dist.get_rank():05d}.pt"), None)
        if own is not None:
            saved = self._read_rank_state(own, layout)
            if tuple(saved["coordinates"]) == self._coordinates() and tuple(saved.get("data_parallel", ())) == (rank, size):
                self.offloaded = StatePieces(dict(saved["ranges"]), saved["tensors"])
                self.offloaded_bytes_all_ranks = summed_over_ranks([self.offloaded.nbytes()])[0]
                return
        distributed = ddp.ddp_config.use_distributed_optimizer and size > 1
        named = dict(self._module(trainer).named_parameters())
        pieces, covered = StatePieces(), {}
        for path in files:
            saved = self._read_rank_state(path, layout)
            if tuple(saved["coordinates"]) != self._coordinates():
                continue
            for name, (lo, hi) in saved["ranges"].items():
                numel = named[name].numel()
                mine = equal_chunk(numel, rank, size) if distributed else (0, numel)
                if name not in pieces.ranges:
                    pieces.ranges[name], pieces.tensors[name] = mine, {}
                    covered[name] = torch.zeros(mine[1] - mine[0], dtype=torch.bool)
                a, b = overlap((lo, hi), mine)
                for key, t in saved["tensors"][name].items():
                    if key not in pieces.tensors[name]:
                        pieces.tensors[name][key] = torch.empty(mine[1] - mine[0], dtype=t.dtype,
                                                                pin_memory=torch.cuda.is_available())
                    pieces.tensors[name][key][a - mine[0]:b - mine[0]] = t[a - lo:b - lo]
                covered[name][a - mine[0]:b - mine[0]] = True  # plain optimizers saved full copies: counted once
        short = [n for n, mask in covered.items() if not bool(mask.all())]
        if short:
            raise HetronError(f"LISA's offloaded optimizer state in {files[0].parent} misses part of {short[0]} "
                              f"(a rank's file is absent)")
        self.offloaded = pieces
        self.offloaded_bytes_all_ranks = summed_over_ranks([pieces.nbytes()])[0]
