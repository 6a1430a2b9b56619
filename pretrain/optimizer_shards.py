"""One rank's slices of megatron's optimizer state: where they are, copying them to host memory, moving
them to the ranks that hold them after a rebuild (pretrain.shard_exchange plans the moves), and
freeing the storage of a DDP wrapper or optimizer that was replaced."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from pretrain.shard_exchange import EMPTY, Interval, plan_exchange


def sub_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def main_slices(optimizer) -> dict:
    """model param -> (inner torch optimizer, main param, start, end): the part [start, end) of the
    flattened model parameter whose optimizer state this rank holds, in megatron's distributed
    optimizer (a shard), its float16 optimizer (an fp32 master copy) or its fp32 optimizer."""
    out = {}
    for opt in sub_optimizers(optimizer):
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


@dataclass
class StatePieces:
    """Some parameters' optimizer state as this rank holds it: per name, the flat element range
    [lo, hi) of the parameter and one 1-D tensor of hi - lo elements per key ('exp_avg',
    'exp_avg_sq', 'param' for an fp32 master copy)."""

    ranges: dict[str, Interval] = field(default_factory=dict)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def nbytes(self, names: Iterable[str] | None = None) -> int:
        names = self.tensors if names is None else names
        return sum(t.numel() * t.element_size() for n in names for t in self.tensors.get(n, {}).values())

    def take(self, names: Iterable[str]) -> StatePieces:
        """The pieces of `names`, removed from this one."""
        names = list(names)
        return StatePieces({n: self.ranges.pop(n) for n in names}, {n: self.tensors.pop(n) for n in names})

    def merge(self, other: StatePieces) -> StatePieces:
        return StatePieces({**self.ranges, **other.ranges}, {**self.tensors, **other.tensors})


def optimizer_pieces(optimizer, params: Mapping[str, torch.nn.Parameter], keys: Sequence[str]) -> StatePieces:
    """Views (no copies) of the optimizer's slices of `params`; a parameter this rank holds no part
    of has the EMPTY range."""
    slices = main_slices(optimizer)
    pieces = StatePieces()
    for name, param in params.items():
        found = slices.get(param)
        if found is None or found[3] <= found[2]:
            pieces.ranges[name], pieces.tensors[name] = EMPTY, {}
            continue
        inner, main, start, end = found
        entry = {}
        for key in keys:
            src = main.data if key == "param" else inner.state.get(main, {}).get(key)
            if src is None:
                raise RuntimeError(f"optimizer holds no {key!r} for {name}; create its state first")
            entry[key] = src.view(-1)
        pieces.ranges[name], pieces.tensors[name] = (start, end), entry
    return pieces


def to_host(pieces: StatePieces) -> StatePieces:
    """Copies in host memory, pinned where there is a GPU (so the copies back overlap nothing and
    run at full PCIe bandwidth)."""
    pin = torch.cuda.is_available()
    out = StatePieces(dict(pieces.ranges))
    for name, entry in pieces.tensors.items():
        out.tensors[name] = {}
        for key, t in entry.items():
            host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
            host.copy_(t, non_blocking=pin)
            out.tensors[name][key] = host
    if pin:
        torch.cuda.synchronize()
    return out


def _all_ranges(ranges: dict[str, Interval], group) -> list[dict[str, Interval]]:
    if group is None or dist.get_world_size(group) == 1:
        return [ranges]
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, ranges, group=group)
    return gathered


def comm_device(group=None) -> torch.device:
    """Where a collective over `group` (None: the default group) takes its tensors."""
    if dist.is_initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def exchange_into(sources: StatePieces, targets: StatePieces, names: Sequence[str], keys: Sequence[str],
                  group) -> int:
    """Fill `targets` (this rank's new slices) from `sources` (its old slices and host copies) over the
    data-parallel `group`, every rank passing the same `names` in the same order; returns the bytes
    this rank sent. Only the elements that change rank travel, once each, in one all-to-all."""
    held = _all_ranges({n: sources.ranges.get(n, EMPTY) for n in names}, group)
    want = _all_ranges({n: targets.ranges.get(n, EMPTY) for n in names}, group)
    me = dist.get_rank(group) if len(held) > 1 else 0
    plan = plan_exchange(held, want, names, me)

    def source(seg, key):
        lo = sources.ranges[seg.name][0]
        return sources.tensors[seg.name][key][seg.lo - lo:seg.hi - lo]

    def target(seg, key):
        lo = targets.ranges[seg.name][0]
        return targets.tensors[seg.name][key][seg.lo - lo:seg.hi - lo]

    for seg in plan.sends[me]:
        for key in keys:
            target(seg, key).copy_(source(seg, key), non_blocking=True)
    if not plan.collective:
        return 0
    device = comm_device(group)
    width = len(keys)
    send_counts = [0 if d == me else width * sum(s.numel for s in segs) for d, segs in enumerate(plan.sends)]
    recv_counts = [0 if s == me else width * sum(seg.numel for seg in segs) for s, segs in enumerate(plan.recvs)]
    outgoing = [source(seg, key).to(device, torch.float32) for d, segs in enumerate(plan.sends) if d != me
                for seg in segs for key in keys]
    send = torch.cat(outgoing) if outgoing else torch.empty(0, device=device)
    recv = torch.empty(sum(recv_counts), dtype=torch.float32, device=device)
    dist.all_to_all_single(recv, send, recv_counts, send_counts, group=group)
    offset = 0
    for s, segs in enumerate(plan.recvs):
        if s == me:
            continue
        for seg in segs:
            for key in keys:
                target(seg, key).copy_(recv[offset:offset + seg.numel])
                offset += seg.numel
    return send.numel() * send.element_size()


def free_storages(tensors: Iterable[torch.Tensor], keep: Iterable[torch.Tensor]) -> int:
    """Release the memory of `tensors` now (their storages shrunk to nothing, whatever still refers
    to them, reference cycles included), except storages that a tensor of `keep` uses; returns the
    bytes freed. Only for tensors of a replaced wrapper or optimizer that nothing will read again."""
    kept = {t.untyped_storage().data_ptr() for t in keep if isinstance(t, torch.Tensor)}
    freed = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.is_meta:
            continue
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in kept:
            freed += storage.nbytes()
            storage.resize_(0)
    return freed


def optimizer_tensors(optimizer) -> list[torch.Tensor]:
    """Every tensor an optimizer holds: its parameters (fp32 master copies or shards) and state."""
    out = []
    for opt in sub_optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for group in inner.param_groups:
            out.extend(group["params"])
        for state in inner.state.values():
            out.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return out
