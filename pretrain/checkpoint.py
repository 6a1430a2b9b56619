"""Checkpoints: model and optimizer through megatron-core dist_checkpointing (fully reshardable, so a
run resumes at another data-, tensor- or pipeline-parallel size), plus the trainer state (step,
schedule position, data-loader position, every component's state) and each rank's RNG states.

A checkpoint is written to `.tmp-step_N` and renamed to `step_N` only when every rank has finished
and the trainer state is on disk, so a process killed mid-write leaves the previous checkpoint as
the newest complete one and the partial folder is ignored (and cleaned up by the next save).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.errors import HetronError
from pretrain.optimizer_state import inner_optimizers, keeps_step_per_parameter

STATE_FILE = "hetron_state.json"
COMPONENTS_FILE = "components.pt"
RNG_DIR = "rng"
RANK_STATE_DIR = "rank_state"  # rank_state/<algorithm>/rank_<r>.pt: Algorithm.rank_state_dict() of each rank
_STEP_DIR = re.compile(r"^step_(\d+)$")


def fault_point(name: str, step: int) -> None:
    """Fault injection for tests: HETRON_FAULT=NAME:STEP kills this process here, as a node failure
    or OOM-killer would (no cleanup, no exception handlers)."""
    if os.environ.get("HETRON_FAULT") == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def newest_checkpoint(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def unwrap(chunk):
    """The GPTModel inside megatron's DDP wrapper (whose state-dict keys carry a 'module.' prefix)."""
    return getattr(chunk, "module", chunk)


def _sharded_state(model_chunks, optimizer, *, is_loading: bool):
    model_sd = unwrap(model_chunks[0]).sharded_state_dict()
    state = {"model": model_sd}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata={"distrib_optim_sharding_type": "fully_reshardable"}
        )
    return state


def save_checkpoint(root: Path, step: int, model_chunks, optimizer, trainer_state: dict, components: dict,
                    rng: dict, rank: int, keep: int, rank_states: dict | None = None) -> Path:
    from megatron.core import dist_checkpointing

    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    dist_checkpointing.save(_sharded_state(model_chunks, optimizer, is_loading=False), str(tmp))
    fault_point("kill-in-checkpoint", step)
    (tmp / RNG_DIR).mkdir(exist_ok=True)
    torch.save(rng, tmp / RNG_DIR / f"rank_{rank:05d}.pt")
    for name, rank_state in (rank_states or {}).items():
        if rank_state is not None:
            (tmp / RANK_STATE_DIR / name).mkdir(parents=True, exist_ok=True)
            torch.save(rank_state, tmp / RANK_STATE_DIR / name / f"rank_{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        torch.save(components, tmp / COMPONENTS_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def rank_state_files(path: Path, name: str) -> list[Path]:
    """Every rank's saved rank_state_dict of algorithm `name` in checkpoint `path`, by rank."""
    return sorted((path / RANK_STATE_DIR / name).glob("rank_*.pt"))


def read_trainer_state(path: Path) -> tuple[dict, dict]:
    """(trainer state, components) of a complete checkpoint; a clear error if it is not one."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise HetronError(f"{path} is not a complete hetron checkpoint ({STATE_FILE} missing)")
    try:
        trainer_state = json.loads(state_file.read_text())
    except json.JSONDecodeError as exc:
        raise HetronError(f"{state_file} is corrupt ({exc.msg})") from None
    return trainer_state, torch.load(path / COMPONENTS_FILE, weights_only=False)


def load_model_and_optimizer(path: Path, model_chunks, optimizer, rank: int) -> dict | None:
    """Loads model and optimizer tensors in place; returns this rank's RNG state (None if absent)."""
    from megatron.core import dist_checkpointing

    if optimizer is not None:
        _initialise_optimizer_state(optimizer)
    loaded = dist_checkpointing.load(_sharded_state(model_chunks, optimizer, is_loading=True), str(path))
    unwrap(model_chunks[0]).load_state_dict(loaded["model"])
    if optimizer is not None:
        _load_optimizer_state(optimizer, loaded["optimizer"], path)
    rng_file = path / RNG_DIR / f"rank_{rank:05d}.pt"
    return torch.load(rng_file, weights_only=False) if rng_file.is_file() else None


def _initialise_optimizer_state(optimizer) -> None:
    """The fully reshardable optimizer format loads into existing state tensors: create them.

    megatron-core's init_state_fn leaves out torch Adam's per-parameter 'step' (it expects Apex/TE
    optimizers that keep the step per group), and DistributedOptimizer.state_dict() then fails; add
    it for torch.optim optimizers only (TE's FusedAdam refuses unknown per-parameter keys)."""
    for opt, inner in inner_optimizers(optimizer):
        init = getattr(opt, "init_state_fn", None)
        if init is None:
            continue
        init(inner, getattr(opt, "config", None))
        if keeps_step_per_parameter(inner):
            for state in inner.state.values():
                state.setdefault("step", torch.tensor(0.0))


def _load_optimizer_state(optimizer, state, path: Path) -> None:
    """optimizer.load_state_dict, working around megatron-core 0.16's fully reshardable load with
    torch Adam (no Apex/TE): load_state_dict puts 'step' into every parameter's state and then
    load_parameter_state_from_fully_reshardable expects a checkpoint tensor for every state key,
    'step' included, which the format never stores. We load the parameter state with 'step' set
    aside, then put it back (one tensor per parameter); with Apex/TE optimizers megatron's own path
    runs unchanged."""
    opts = getattr(optimizer, "chained_optimizers", [optimizer])
    if len(opts) == 1:
        states = [state]
    else:
        states = [v for _, v in sorted(state.items())] if isinstance(state, dict) else list(state)
    for opt, st in zip(opts, states):
        inner = getattr(opt, "optimizer", None)
        if isinstance(st, dict) and "param_state_sharding_type" in st and not hasattr(opt, "load_parameter_state_from_fully_reshardable"):
            raise HetronError(f"{path} holds distributed-optimizer state, which parallel.distributed_optimizer=false "
                              "cannot load; set parallel.distributed_optimizer=true, or init_optimizer=reset to keep "
                              "only the weights")
        if not (isinstance(st, dict) and st.get("param_state_sharding_type") == "fully_reshardable"
                and keeps_step_per_parameter(inner)):
            opt.load_state_dict(st)
            continue
        st = dict(st)
        param_state = st.pop("param_state")
        st.pop("param_state_sharding_type")
        opt.load_state_dict(st)
        steps = {p: s.pop("step") for p, s in inner.state.items() if "step" in s}
        opt.load_parameter_state_from_fully_reshardable(param_state)
        # megatron hands every parameter the same 'step' tensor; torch Adam increments it in place
        # once per parameter, so each parameter needs its own copy.
        for p, step in steps.items():
            inner.state[p]["step"] = step.clone()
    if len(opts) > 1 and hasattr(optimizer, "_synchronize_steps"):
        optimizer._synchronize_steps()
