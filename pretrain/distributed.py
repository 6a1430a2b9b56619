"""Process-group set-up for one rank: torch.distributed from the environment, megatron-core's model
parallel state, the CPU backend when CUDA is absent, and seeding."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from parallel.cpu_backend import enable_cpu_backend


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    dp_rank: int
    dp_size: int
    tp_rank: int
    pp_rank: int
    pp_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def init_distributed(tensor: int, pipeline: int, backend: str = "auto", threads: int = 0,
                     timeout_s: float = 600.0) -> RankInfo:
    """Initialise torch.distributed (env://) and megatron's parallel state for this process.

    timeout_s (launch.timeout_s) bounds every collective of the world and of megatron's groups: a rank
    or node that dies without closing its connections fails the others after this long."""
    from megatron.core import parallel_state as ps

    cuda = torch.cuda.is_available()
    if not cuda:
        enable_cpu_backend()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if threads > 0:
        torch.set_num_threads(threads)
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    # Sites that bind one GPU per task show each task a single device (CUDA_VISIBLE_DEVICES), so the
    # task's GPU is its local rank modulo the devices it sees.
    gpu = local_rank % torch.cuda.device_count() if cuda else 0
    if cuda:
        torch.cuda.set_device(gpu)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    if world % (tensor * pipeline):
        raise ValueError(f"world size {world} is not divisible by parallel.tensor*parallel.pipeline={tensor * pipeline}")
    if not ps.model_parallel_is_initialized():
        # megatron's groups take their own timeout (torch's new_group default is 30 minutes)
        ps.initialize_model_parallel(tensor_model_parallel_size=tensor, pipeline_model_parallel_size=pipeline,
                                     distributed_timeout_minutes=timeout_s / 60)
    return RankInfo(
        rank=rank, world_size=world, local_rank=local_rank,
        dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(), pp_rank=ps.get_pipeline_model_parallel_rank(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        device=torch.device("cuda", gpu) if cuda else torch.device("cpu"),
    )


def seed_everything(seed: int) -> None:
    """Same seed on every rank; megatron's tracker derives the tensor-parallel streams from it."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def rng_state() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def shutdown() -> None:
    from megatron.core import parallel_state as ps

    if dist.is_initialized():
        ps.destroy_model_parallel()
        dist.destroy_process_group()
