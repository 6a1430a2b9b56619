"""The torch.distributed environment each Slurm task derives for `hetron train` (pure; no Slurm needed)."""
from __future__ import annotations

import pytest

from launch.slurm_env import (
    derive_distributed_env,
    distributed_env_from_slurm,
    expand_nodelist,
    master_port_for,
)
from pretrain.errors import HetronError


@pytest.mark.parametrize("nodelist, hosts", [
    ("localhost", ["localhost"]),
    ("gpu[01-03,7]", ["gpu01", "gpu02", "gpu03", "gpu7"]),
    ("a[8-10]b,login", ["a8b", "a9b", "a10b", "login"]),
    ("n[1,3],m[009-011]", ["n1", "n3", "m009", "m010", "m011"]),
])
def test_nodelist_expands_like_slurm(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_malformed_nodelist_is_named():
    with pytest.raises(HetronError, match=r"gpu\[a-b\]"):
        expand_nodelist("gpu[a-b]")


def slurm_task(procid: int, localid: int, **extra: str) -> dict[str, str]:
    env = {"SLURM_JOB_ID": "417", "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid), "SLURM_NTASKS": "4",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[07-08]"}
    return {**env, **extra}


def test_every_task_of_a_two_node_job_agrees_on_the_world():
    envs = [distributed_env_from_slurm(slurm_task(rank, rank % 2), cuda_available=False) for rank in range(4)]
    assert [e.rank for e in envs] == [0, 1, 2, 3]
    assert [e.local_rank for e in envs] == [0, 1, 0, 1]
    assert {(e.master_addr, e.master_port, e.world_size, e.local_world_size) for e in envs} == {
        ("node07", envs[0].master_port, 4, 2)}
    assert envs[3].as_environ() == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                    "MASTER_ADDR": "node07", "MASTER_PORT": str(envs[0].master_port)}


def test_nccl_on_gpus_gloo_on_cpus():
    assert distributed_env_from_slurm(slurm_task(0, 0), cuda_available=True).backend == "nccl"
    assert distributed_env_from_slurm(slurm_task(0, 0), cuda_available=False).backend == "gloo"


def test_a_requeued_job_gets_a_new_port_that_all_its_tasks_share():
    first = distributed_env_from_slurm(slurm_task(0, 0), cuda_available=False)
    requeued = [distributed_env_from_slurm(slurm_task(r, r % 2, SLURM_RESTART_COUNT="1"), cuda_available=False)
                for r in range(4)]
    assert len({e.master_port for e in requeued}) == 1
    assert requeued[0].master_port != first.master_port
    assert 20000 <= master_port_for("417", 1) < 60000


def test_outside_slurm_the_missing_variables_are_named():
    with pytest.raises(HetronError, match="SLURM_PROCID, SLURM_NTASKS"):
        distributed_env_from_slurm({"SLURM_JOB_ID": "1"}, cuda_available=False)


def test_rank_outside_the_world_is_refused():
    with pytest.raises(HetronError, match="rank 2 is outside a world of 2"):
        derive_distributed_env(global_rank=2, local_rank=0, num_tasks=2, num_nodes=1, hostnames=["h"], job_id="1",
                               restart_count=0, cuda_available=False)
