"""Checking a job's request against what the cluster offers (pure; the real-cluster query is in test_slurm.py)."""
from __future__ import annotations

import pytest

from launch.cluster import (
    Node,
    Partition,
    ResourceRequest,
    TaskResources,
    check_request,
    default_task_resources,
    gpu_count,
    parse_key_values,
    parse_slurm_time,
)
from pretrain.errors import HetronError


@pytest.mark.parametrize("text, minutes", [
    ("30", 30), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440), ("1-02:03", 1563), ("1-00:00:01", 1441),
    ("UNLIMITED", None), ("infinite", None),
])
def test_slurm_time_formats(text, minutes):
    assert parse_slurm_time(text) == minutes


@pytest.mark.parametrize("text", ["abc", "1:2:3:4", "-5", "1h"])
def test_malformed_time_is_refused(text):
    with pytest.raises(ValueError, match="not a Slurm time"):
        parse_slurm_time(text)


@pytest.mark.parametrize("gres, gpus", [("gpu:2", 2), ("gpu:a100:4(S:0-1),gpu:v100:2", 6), ("(null)", 0), ("", 0),
                                        ("shard:8,gpu:h100:8", 8)])
def test_gpu_count_from_gres(gres, gpus):
    assert gpu_count(gres) == gpus


def test_scontrol_oneliner_keeps_the_values_it_needs():
    line = ("NodeName=gpu01 Arch=x86_64 CPUTot=64 Gres=gpu:8 OS=Linux 6.1 #1 SMP State=IDLE+DRAIN "
            "Partitions=batch,debug")
    kv = parse_key_values(line)
    assert (kv["NodeName"], kv["CPUTot"], kv["Gres"], kv["State"], kv["Partitions"]) == (
        "gpu01", "64", "gpu:8", "IDLE+DRAIN", "batch,debug")


def cluster() -> dict[str, Partition]:
    big = tuple(Node(f"g{i}", cpus=64, gpus=8, state="IDLE", partitions=("gpu",)) for i in range(2))
    small = (Node("c1", cpus=4, gpus=0, state="IDLE", partitions=("cpu",)),)
    return {
        "gpu": Partition("gpu", "UP", is_default=False, max_time_min=24 * 60, nodes=big),
        "cpu": Partition("cpu", "UP", is_default=True, max_time_min=None, nodes=small),
        "old": Partition("old", "DOWN", is_default=False, max_time_min=None, nodes=small),
    }


def request(**changes) -> ResourceRequest:
    fields = {"partition": "gpu", "nodes": 2, "tasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 8,
              "time_min": 600, **changes}
    return ResourceRequest(**fields)


def test_a_request_that_fits_names_its_partition():
    assert check_request(cluster(), request()).name == "gpu"
    assert check_request(cluster(), request(partition=None, nodes=1, tasks_per_node=2, gpus_per_node=0,
                                            cpus_per_task=1)).name == "cpu"


@pytest.mark.parametrize("changes, message", [
    ({"partition": "gpux"}, r"--partition gpux: no such partition \(partitions: cpu, gpu, old\)"),
    ({"partition": "old"}, "partition old is DOWN"),
    ({"nodes": 3}, "--nodes 3: partition gpu has only 2 node"),
    ({"gpus_per_node": 16}, r"--gpus-per-node 16 on 2 node\(s\): partition gpu has 0 node\(s\) with that many"),
    ({"cpus_per_task": 9}, r"8 task\(s\) x 9 CPU\(s\) per node: partition gpu has 0 node\(s\) with 72 CPUs"),
    ({"time_min": 24 * 60 + 1}, "--time 1441 min: partition gpu allows at most 1440 min"),
])
def test_a_request_the_cluster_cannot_meet_names_the_option(changes, message):
    with pytest.raises(HetronError, match=message):
        check_request(cluster(), request(**changes))


def test_by_default_tasks_share_the_cores_and_memory_of_the_smallest_node_they_can_run_on():
    nodes = (Node("g1", cpus=96, gpus=8, state="IDLE", partitions=("gpu",), memory_mb=512_000),
             Node("g2", cpus=64, gpus=8, state="IDLE", partitions=("gpu",), memory_mb=256_000),
             Node("c1", cpus=8, gpus=0, state="IDLE", partitions=("gpu",), memory_mb=32_000))
    part = Partition("gpu", "UP", is_default=True, max_time_min=None, nodes=nodes)
    # 8 GPU tasks: the CPU-only node can't take them; the smaller GPU node decides
    assert default_task_resources(part, tasks_per_node=8, gpus_per_node=8, cpus_per_task=None) == \
        TaskResources(cpus_per_task=8, mem_mb=256_000)
    # CPUs given: memory in proportion (4 tasks x 4 CPUs of 64)
    assert default_task_resources(part, tasks_per_node=4, gpus_per_node=8, cpus_per_task=4) == \
        TaskResources(cpus_per_task=4, mem_mb=64_000)
    # memory unknown: no request
    bare = Partition("cpu", "UP", is_default=True, max_time_min=None,
                     nodes=(Node("n", cpus=6, gpus=0, state="IDLE", partitions=("cpu",)),))
    assert default_task_resources(bare, tasks_per_node=4, gpus_per_node=0, cpus_per_task=None) == \
        TaskResources(cpus_per_task=1, mem_mb=None)
