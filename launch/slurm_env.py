"""The torch.distributed environment (env:// init) of one task, derived from Slurm's or submitit's.

`hetron train` runs as one rank of an existing world when RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
and LOCAL_RANK are set; srun and submitit set only SLURM_* / SUBMITIT_* variables, so each task
exports these first. The derivation is a pure function of the task's coordinates.
"""
from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pretrain.errors import HetronError

_PORT_RANGE = (20000, 59999)


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    backend: str  # "nccl" on GPUs, "gloo" on CPUs

    def as_environ(self) -> dict[str, str]:
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }

    def describe(self) -> str:
        return (f"rank {self.rank}/{self.world_size} (local {self.local_rank}) {self.backend} "
                f"master {self.master_addr}:{self.master_port}")


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list -> host names: 'gpu[01-03,7],login' -> gpu01 gpu02 gpu03 gpu7 login."""
    hosts: list[str] = []
    for group in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,\[]*", nodelist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", group)
        if not match:
            hosts.append(group)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            if not first.isdigit() or (last and not last.isdigit()):
                raise HetronError(f"cannot parse Slurm node list {nodelist!r}: bad range {part!r}")
            for number in range(int(first), int(last or first) + 1):
                hosts.append(f"{prefix}{number:0{len(first)}d}{suffix}")
    if not hosts:
        raise HetronError(f"cannot parse Slurm node list {nodelist!r}: no hosts")
    return hosts


def master_port_for(job_id: str, restart_count: int) -> int:
    """Same on every task of a job; differs per requeue so a restarted job never meets its old socket."""
    return random.Random(f"{job_id}/{restart_count}").randint(*_PORT_RANGE)


def derive_distributed_env(
    *,
    global_rank: int,
    local_rank: int,
    num_tasks: int,
    num_nodes: int,
    hostnames: list[str],
    job_id: str,
    restart_count: int,
    cuda_available: bool,
) -> DistributedEnv:
    if not 0 <= global_rank < num_tasks:
        raise HetronError(f"task rank {global_rank} is outside a world of {num_tasks} tasks")
    return DistributedEnv(
        rank=global_rank,
        world_size=num_tasks,
        local_rank=local_rank,
        local_world_size=max(1, num_tasks // max(1, num_nodes)),
        master_addr=hostnames[0],
        master_port=master_port_for(job_id, restart_count),
        backend="nccl" if cuda_available else "gloo",
    )


def distributed_env_from_slurm(environ: Mapping[str, str], cuda_available: bool) -> DistributedEnv:
    """For a task started by srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST, ...)."""
    missing = [k for k in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS") if k not in environ]
    if missing:
        raise HetronError(f"not inside a Slurm task: {', '.join(missing)} not set (run through srun)")
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "localhost"
    return derive_distributed_env(
        global_rank=int(environ["SLURM_PROCID"]),
        local_rank=int(environ.get("SLURM_LOCALID", 0)),
        num_tasks=int(environ["SLURM_NTASKS"]),
        num_nodes=int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_JOB_NUM_NODES") or 1),
        hostnames=expand_nodelist(nodelist),
        job_id=environ["SLURM_JOB_ID"],
        restart_count=int(environ.get("SLURM_RESTART_COUNT", 0)),
        cuda_available=cuda_available,
    )


def distributed_env_from_submitit(cuda_available: bool) -> DistributedEnv:
    """For a task run by submitit (Slurm or local executor): submitit knows both environments."""
    import submitit

    job = submitit.JobEnvironment()
    # The local executor's hostname may not resolve inside containers; its tasks share this machine.
    hostnames = job.hostnames if job.cluster == "slurm" else ["127.0.0.1"]
    return derive_distributed_env(
        global_rank=job.global_rank,
        local_rank=job.local_rank,
        num_tasks=job.num_tasks,
        num_nodes=job.num_nodes,
        hostnames=hostnames,
        job_id=str(job.job_id),
        restart_count=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        cuda_available=cuda_available,
    )
