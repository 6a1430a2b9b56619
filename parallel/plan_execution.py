"""Turn a sequence-parallel plan into this rank's micro-batches, and plan one step ahead.

A plan (parallel.plan) partitions the data-parallel ranks of every micro-batch into groups and gives
each group documents of the global batch. Each group packs its documents into one sequence, padded
so it splits evenly, and each member rank takes its contiguous 1/d shard.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import replace

import numpy as np

from data.packing import MicroBatch, build_micro_batch
from data.sample_store import sample_lengths
from parallel.plan import MicroBatchPlan, SequenceParallelPlan, SPGroup
from pretrain.errors import HetronError


def allowed_group_sizes(heads_per_tp_rank: int, kv_heads_per_tp_rank: int, dp_size: int) -> list[int]:
    """Group sizes Ulysses can run: powers of two dividing both query and key/value head counts."""
    sizes, d = [], 1
    while d <= dp_size:
        if heads_per_tp_rank % d == 0 and kv_heads_per_tp_rank % d == 0:
            sizes.append(d)
        d *= 2
    return sizes


def align_groups(plan: SequenceParallelPlan) -> SequenceParallelPlan:
    """Lay every micro-batch's groups out largest first, so each starts at a multiple of its size
    (the ranges parallel.ulysses creates process groups for). Costs are unchanged: groups of one
    size are interchangeable."""
    micro_batches = []
    for mb in plan.micro_batches:
        start, groups = 0, []
        for g in sorted(mb.groups, key=lambda g: (-g.size, g.start)):
            groups.append(SPGroup(start, g.size, g.sequences))
            start += g.size
        if start != plan.num_ranks:
            raise HetronError(f"plan micro-batch covers {start} ranks, not {plan.num_ranks}")
        micro_batches.append(MicroBatchPlan(tuple(groups)))
    return replace(plan, micro_batches=tuple(micro_batches))


def rank_micro_batches(plan: SequenceParallelPlan, samples: list[np.ndarray], dp_rank: int, pad_id: int,
                       pad_to_multiple: int = 8) -> list[MicroBatch]:
    """This data-parallel rank's shard of every micro-batch of the (aligned) plan."""
    out = []
    for mb in plan.micro_batches:
        group = next(g for g in mb.groups if g.start <= dp_rank < g.start + g.size)
        ids = sorted(group.sequences)
        packed = build_micro_batch([samples[i] for i in ids], ids, pad_id, pad_to_multiple * group.size)
        out.append(packed.shard(dp_rank - group.start, group.start, group.size) if group.size > 1 else packed)
    return out


def batch_fingerprint(lengths: list[int], plan_json: str) -> int:
    digest = hashlib.sha256(json.dumps(lengths).encode() + plan_json.encode()).digest()
    return int.from_bytes(digest[:7], "little")


def plan_statistics(plan: SequenceParallelPlan, *, calibrated: bool = True) -> dict:
    """Metrics of a plan; the predicted time is named uncalibrated unless the cost model was
    measured on this hardware (`hetron calibrate`)."""
    sizes = [g.size for mb in plan.micro_batches for g in mb.groups if g.sequences]
    out = {
        "sp_micro_batches": len(plan.micro_batches),
        "sp_groups": len(sizes),
        "sp_max_group": max(sizes) if sizes else 1,
        "sp_mean_group": float(np.mean(sizes)) if sizes else 1.0,
        "sp_plan_ms": plan.solve_ms,
        "sp_predicted_ms" if calibrated else "sp_predicted_ms_uncalibrated": plan.predicted_ms,
    }
    if plan.bound_ms > 0:  # the planner's own figures (static plans have none)
        out.update({"sp_bound_ms": plan.bound_ms, "sp_gap": plan.predicted_ms / plan.bound_ms - 1,
                    "sp_method": plan.method, "sp_solver_late": int(plan.late), "sp_milp_ran": plan.milp_ran,
                    "sp_milp_improved": plan.milp_improved})
    return out


class PlannedBatches:
    """Wraps a global-batch loader: returns each batch with its plan, and plans batch i+1 in a
    background thread on rank 0 while step i runs; rank 0 then broadcasts the plan so every rank
    executes the identical one. state_dict() is the loader position after the last returned batch
    (the prefetched batch is not consumed, so a resumed run re-reads and re-plans it)."""

    def __init__(self, loader, make_plan, *, is_main: bool):
        self.loader = loader
        self.make_plan = make_plan  # lengths -> SequenceParallelPlan (may raise HetronError)
        self.is_main = is_main
        self._pending = None
        self._state_after_last = loader.state_dict()
        self.plan: SequenceParallelPlan | None = None
        self.plan_wait_ms = 0.0  # how long the last step waited for its plan (planning is bounded, so ~0)

    def _fetch(self):
        samples = self.loader.next_batch()
        state_after = self.loader.state_dict()
        lengths = sample_lengths(samples)
        result: dict = {}
        thread = None
        if self.is_main:
            def work():
                try:
                    result["plan"] = self.make_plan(lengths).to_json()
                except HetronError as exc:
                    result["error"] = str(exc)
                except Exception as exc:  # noqa: BLE001 - reported on every rank instead of hanging them
                    result["error"] = f"planner failed: {exc!r}"

            thread = threading.Thread(target=work, name="hetron-planner", daemon=True)
            thread.start()
        return samples, lengths, state_after, thread, result

    def next_batch(self) -> list[np.ndarray]:
        import torch.distributed as dist

        if self._pending is None:
            self._pending = self._fetch()
        samples, lengths, state_after, thread, result = self._pending
        waited = time.perf_counter()
        if thread is not None:
            thread.join()
        self.plan_wait_ms = 1000 * (time.perf_counter() - waited)
        message = [result.get("plan"), result.get("error")]
        dist.broadcast_object_list(message, src=0)
        plan_json, error = message
        if error:
            raise HetronError(error)
        check_ranks_agree(lengths, plan_json)
        self.plan = SequenceParallelPlan.from_json(plan_json)
        self._state_after_last = state_after
        self._pending = self._fetch()
        return samples

    def state_dict(self) -> dict:
        return self._state_after_last

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._state_after_last = state
        self._pending = None


def check_ranks_agree(lengths: list[int], plan_json: str) -> None:
    """Every rank must run the same plan on the same batch; a mismatch would hang in the first
    all-to-all, so it is detected here, identically on every rank."""
    import torch.distributed as dist

    mine = batch_fingerprint(lengths, plan_json)
    everyone: list[int] = [0] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    differing = [r for r, fp in enumerate(everyone) if fp != everyone[0]]
    if differing:
        raise HetronError(f"ranks {differing} hold another global batch or plan than rank 0; "
                          "check that every rank reads the same shards and config")
