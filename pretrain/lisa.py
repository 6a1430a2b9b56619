"""LISA: layerwise importance sampled training (Pan et al., NeurIPS 2024, arXiv 2403.17919), with the
memory saving made real on megatron-core.

Every `interval` steps, `layers` transformer layers are sampled uniformly (seeded by the run seed
and the interval index, so every rank draws the same set and a resumed run draws it again); the
embedding, the output head and the final norm always train; every other layer is frozen for the
interval. With pipeline parallelism every stage samples `layers` of its own layers.

Megatron's DDP allocates its gradient buffers, and its optimizer its state, when they are built,
so freezing parameters alone frees nothing. At every switch we therefore rebuild megatron's
DistributedDataParallel and optimizer over the same GPTModel (megatron-core unmodified): the new
gradient buffers and optimizer state cover only the trainable parameters. The optimizer state of
parameters that stay trainable is carried over exactly (gathered over the data-parallel group,
since the distributed optimizer's shards move when the buffers change); the state of departing
layers is dropped (`state: reset`) or kept in host memory and restored when the layer returns
(`state: offload`). One Adam step count is shared by all parameters (as megatron's fused Adam and
its checkpoint format have it), so a layer entering with reset moments uses the run's bias
correction.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.distributed as dist

from pretrain.algorithm import Algorithm
from pretrain.config import LisaConfig
from pretrain.errors import HetronError
from pretrain.optimizer_state import set_step_count, step_count

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


def _sub_optimizers(optimizer):
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _main_slices(optimizer) -> dict:
    """model param -> (inner torch optimizer, main param, start, end): the part [start, end) of the
    flattened model parameter whose optimizer state this rank holds, in megatron's distributed
    optimizer (a shard), its float16 optimizer (an fp32 master copy) or its fp32 optimizer."""
    out = {}
    for opt in _sub_optimizers(optimizer):
        inner = opt.optimizer
        if hasattr(opt, "model_param_group_index_map"):  # DistributedOptimizer
            for model_param, (gi, go) in opt.model_param_group_index_map.items():
                rng = opt._get_model_param_range_map(model_param)["param"]
                out[model_param] = (inner, inner.param_groups[gi]["params"][go], rng.start, rng.end)
        elif hasattr(opt, "float16_groups"):  # Float16OptimizerWithFloat16Params
            for models, mains in zip(opt.float16_groups, opt.fp32_from_float16_groups):
                for model_param, main in zip(models, mains):
                    out[model_param] = (inner, main, 0, model_param.numel())
            for group in opt.fp32_from_fp32_groups:
                for p in group:
                    out[p] = (inner, p, 0, p.numel())
        else:  # FP32Optimizer
            for group in inner.param_groups:
                for p in group["params"]:
                    out[p] = (inner, p, 0, p.numel())
    return out


def init_optimizer_state(optimizer, step: int) -> None:
    """Create every parameter's Adam state now (zero moments) with the run's step count, where the
    optimizer keeps it (pretrain.optimizer_state), as megatron's checkpoint loader also needs; fresh
    moments equal what torch Adam would create lazily."""
    for opt in _sub_optimizers(optimizer):
        init = getattr(opt, "init_state_fn", None)
        if init is not None:
            init(opt.optimizer, getattr(opt, "config", None))
        set_step_count(opt.optimizer, step)


def _grad_buffer_of(ddp, param):
    for buffer in list(ddp.buffers) + list(getattr(ddp, "expert_parallel_buffers", [])):
        if param in buffer.param_index_map:
            return buffer
    return None


def export_param_states(ddp, optimizer, named: list[tuple[str, torch.nn.Parameter]], keys: tuple[str, ...]) -> dict:
    """{name: {key: full fp32 tensor on the host}} for the parameters `named` (trainable ones, the
    same list on every rank). With the distributed optimizer each data-parallel rank holds a slice
    of a parameter's state: the slices are summed over the buffer's data-parallel group (one
    parameter at a time, so the device holds at most one parameter's full state extra)."""
    slices = _main_slices(optimizer)
    out = {}
    for name, param in named:
        found = slices.get(param)
        buffer = _grad_buffer_of(ddp, param)
        group = buffer.data_parallel_group if buffer is not None else None
        distributed = group is not None and ddp.ddp_config.use_distributed_optimizer and dist.get_world_size(group) > 1
        entry = {}
        for key in keys:
            full = torch.zeros(param.numel(), dtype=torch.float32, device=param.device)
            if found is not None:
                inner, main, start, end = found
                src = main if key == "param" else inner.state.get(main, {}).get(key)
                if src is not None:
                    full[start:end] = src.detach().reshape(-1).float()
            if distributed:
                dist.all_reduce(full, group=group)
            entry[key] = full.view(param.shape).cpu()
        out[name] = entry
    return out


def import_param_states(optimizer, named: dict, states: dict) -> list[str]:
    """Copy host states {name: {key: full tensor}} into the optimizer's slices; returns the names
    restored."""
    slices = _main_slices(optimizer)
    restored = []
    for name, param in named.items():
        if name not in states or param not in slices:
            continue
        inner, main, start, end = slices[param]
        for key, full in states[name].items():
            part = full.reshape(-1)[start:end]
            dst = main if key == "param" else inner.state[main].get(key)
            if dst is not None:
                dst.data.copy_(part.to(dst.device, dst.dtype).view(dst.shape))
        restored.append(name)
    return restored


def state_keys(trainer) -> tuple[str, ...]:
    cfg = trainer.optimizer_config
    return ("exp_avg", "exp_avg_sq") + (("param",) if (cfg.bf16 or cfg.fp16) else ())


# ---------------------------------------------------------------------------- rebuild (shell)


def _release(ddp) -> None:
    """Drop what ties the old DDP wrapper to the module: its gradient-accumulation hooks (else a
    second wrapper would register a second hook on the same accumulator), parameter views into its
    buffers (param.data with the distributed optimizer, param.main_grad always)."""
    for param in ddp.module.parameters():
        if hasattr(param, "main_grad"):
            del param.main_grad
        param.grad = None
        if param.storage_offset() != 0 or param.untyped_storage().nbytes() != param.numel() * param.element_size():
            param.data = param.data.clone()  # leave the old contiguous buffer; megatron needs a base tensor
    ddp.grad_accs.clear()
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


class LisaLayerSampling(Algorithm):
    name = "lisa"

    def __init__(self, cfg: LisaConfig, seed: int):
        self.cfg = cfg
        self.seed = seed
        self.interval = -1  # index of the interval whose layers are active now
        self.active: tuple[int, ...] = ()  # local layer indices of this pipeline stage
        self.offloaded: dict[str, dict[str, torch.Tensor]] = {}  # state: offload, host copies by name
        self.switches = 0
        self.last_switch_s: float | None = None
        self._loaded_offload: dict | None = None

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
        building them runs collectives)."""
        start = time.perf_counter()
        module = self._module(trainer)
        active = self.layers_for(module, interval_index)
        named = dict(module.named_parameters())
        keys = state_keys(trainer)
        step = step_count(trainer.optimizer)
        if carry:
            current = [(n, p) for n, p in named.items() if p.requires_grad]
            carried = export_param_states(trainer.model_chunks[0], trainer.optimizer, current, keys)
        else:
            carried = {}
        want = {n: trainable(n, active) for n in named}
        if rebuild:
            rebuild_ddp_and_optimizer(trainer, want)
        init_optimizer_state(trainer.optimizer, step)
        if self.cfg.state == "offload":
            for n in carried:
                if not want[n]:
                    self.offloaded[n] = carried[n]  # departing: keep on the host
            restore = {n: self.offloaded.pop(n) for n in list(self.offloaded) if want[n]}
            carried = {**carried, **restore}
        import_param_states(trainer.optimizer, {n: p for n, p in named.items() if want[n]}, carried)
        del carried
        self.active, self.interval = active, interval_index
        self.switches += 1
        self.last_switch_s = time.perf_counter() - start

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
        if self._loaded_offload is not None:
            tp, pp = self._coordinates()
            self.offloaded = self._loaded_offload.get(f"tp{tp}_pp{pp}", {})
            self._loaded_offload = None

    def on_step_start(self, trainer, step: int, batch_lengths: list[int]) -> None:
        interval_index = step // self.cfg.interval
        if interval_index != self.interval:
            self.switch(trainer, interval_index)

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        metrics["lisa_active_layers"] = self.global_layers(trainer)
        metrics["lisa_offload_host_bytes"] = sum(t.numel() * t.element_size()
                                                 for entry in self.offloaded.values() for t in entry.values())
        if self.last_switch_s is not None:
            metrics["lisa_switch_s"] = self.last_switch_s
            self.last_switch_s = None

    # ------------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        tp, pp = self._coordinates()
        stores = {f"tp{tp}_pp{pp}": self.offloaded}
        if self.cfg.state == "offload" and dist.is_initialized():
            from megatron.core import parallel_state as ps

            if ps.get_tensor_model_parallel_world_size() * ps.get_pipeline_model_parallel_world_size() > 1:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, stores)
                stores = {k: v for part in gathered for k, v in part.items()}
        return {"interval": self.interval, "active": list(self.active), "switches": self.switches,
                "layers": self.cfg.layers, "every": self.cfg.interval, "policy": self.cfg.state,
                "offloaded": stores if self.cfg.state == "offload" else {}}

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
        self._loaded_offload = state.get("offloaded", {}) if self.cfg.state == "offload" else None

