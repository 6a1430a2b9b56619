"""What the Slurm cluster offers (partitions, nodes, CPUs, GPUs, time limits), asked of scontrol, and the
up-front check of a job's request against it, so a bad request fails before sbatch with one clear line."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

from pretrain.errors import HetronError

_UNLIMITED = {"UNLIMITED", "INFINITE", "NONE"}


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    gpus: int
    state: str
    partitions: tuple[str, ...]
    memory_mb: int = 0  # RealMemory; 0: unknown


@dataclass(frozen=True)
class Partition:
    name: str
    state: str
    is_default: bool
    max_time_min: int | None  # None: unlimited
    nodes: tuple[Node, ...] = field(default=())


@dataclass(frozen=True)
class ResourceRequest:
    partition: str | None  # None: the cluster's default partition
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    time_min: int


def parse_slurm_time(text: str) -> int | None:
    """Slurm's time formats -> whole minutes (rounded up, as Slurm does); None for unlimited.

    'M', 'M:S', 'H:M:S', 'D-H', 'D-H:M', 'D-H:M:S'.
    """
    text = text.strip()
    if text.upper() in _UNLIMITED:
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ValueError(f"not a Slurm time: {text!r} (use minutes, H:M:S or D-H:M:S)")
    days, first, second, third = match.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
    elif third is not None:  # H:M:S
        hours, minutes, seconds = int(first), int(second), int(third)
    else:  # M or M:S
        hours, minutes, seconds = 0, int(first), int(second or 0)
    total_s = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    return -(-total_s // 60)


def parse_key_values(line: str) -> dict[str, str]:
    """One line of `scontrol show ... --oneliner`; values with spaces (OS=...) keep only their first word."""
    return dict(re.findall(r"(\w+)=(\S*)", line))


def gpu_count(gres: str) -> int:
    """'gpu:2', 'gpu:a100:4(S:0-1),gpu:v100:2', '(null)' -> number of GPUs."""
    return sum(int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def _scontrol(*args: str) -> list[str]:
    if shutil.which("scontrol") is None:
        raise HetronError("no Slurm here: scontrol is not on PATH (use --local to run without Slurm)")
    proc = subprocess.run(["scontrol", *args, "--oneliner"], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise HetronError(f"Slurm is not reachable: scontrol {' '.join(args)}: {reason}")
    return [line for line in proc.stdout.splitlines() if line.strip()]


def query_partitions() -> dict[str, Partition]:
    nodes = []
    for line in _scontrol("show", "node"):
        kv = parse_key_values(line)
        nodes.append(Node(
            name=kv["NodeName"],
            cpus=int(kv.get("CPUTot", 0)),
            gpus=gpu_count(kv.get("Gres", "")),
            state=kv.get("State", "UNKNOWN"),
            partitions=tuple(p for p in kv.get("Partitions", "").split(",") if p),
            memory_mb=int(kv.get("RealMemory", 0) or 0),
        ))
    partitions = {}
    for line in _scontrol("show", "partition"):
        kv = parse_key_values(line)
        name = kv["PartitionName"]
        partitions[name] = Partition(
            name=name,
            state=kv.get("State", "UP"),
            is_default=kv.get("Default") == "YES",
            max_time_min=parse_slurm_time(kv.get("MaxTime", "UNLIMITED")),
            nodes=tuple(n for n in nodes if name in n.partitions),
        )
    return partitions


def resolve_partition(partitions: dict[str, Partition], name: str | None) -> Partition:
    if name is None:
        defaults = [p for p in partitions.values() if p.is_default]
        if not defaults:
            raise HetronError(f"--partition is required: this cluster has no default partition "
                              f"(partitions: {', '.join(sorted(partitions))})")
        return defaults[0]
    if name not in partitions:
        raise HetronError(f"--partition {name}: no such partition (partitions: {', '.join(sorted(partitions))})")
    return partitions[name]


def check_request(partitions: dict[str, Partition], request: ResourceRequest) -> Partition:
    """The partition the job will run in; raises HetronError naming the first option the cluster can't meet."""
    part = resolve_partition(partitions, request.partition)
    where = f"partition {part.name}"
    if part.state != "UP":
        raise HetronError(f"{where} is {part.state}, not UP: jobs would never start")
    if request.nodes > len(part.nodes):
        raise HetronError(f"--nodes {request.nodes}: {where} has only {len(part.nodes)} node(s)")
    with_gpus = [n for n in part.nodes if n.gpus >= request.gpus_per_node]
    if request.nodes > len(with_gpus):
        most = max((n.gpus for n in part.nodes), default=0)
        raise HetronError(f"--gpus-per-node {request.gpus_per_node} on {request.nodes} node(s): {where} has "
                          f"{len(with_gpus)} node(s) with that many GPUs (most on one node: {most})")
    cpus_wanted = request.tasks_per_node * request.cpus_per_task
    with_cpus = [n for n in with_gpus if n.cpus >= cpus_wanted]
    if request.nodes > len(with_cpus):
        most = max((n.cpus for n in with_gpus), default=0)
        raise HetronError(f"{request.tasks_per_node} task(s) x {request.cpus_per_task} CPU(s) per node: {where} "
                          f"has {len(with_cpus)} node(s) with {cpus_wanted} CPUs (most on one node: {most})")
    if part.max_time_min is not None and request.time_min > part.max_time_min:
        raise HetronError(f"--time {request.time_min} min: {where} allows at most {part.max_time_min} min")
    return part


@dataclass(frozen=True)
class TaskResources:
    cpus_per_task: int
    mem_mb: int | None  # per node; None: no request (memory unknown)


def default_task_resources(part: Partition, tasks_per_node: int, gpus_per_node: int,
                           cpus_per_task: int | None) -> TaskResources:
    """What a job of `tasks_per_node` tasks gets per node unless told otherwise: the cores of the
    smallest node it can run on split over its tasks (Slurm's default is one core per task, which
    leaves a GPU's data loading and host work on a single core), and memory in proportion to the
    cores asked for (Slurm's default without --mem depends on the site's DefMemPerCPU, often none)."""
    nodes = [n for n in part.nodes if n.gpus >= gpus_per_node] or list(part.nodes)
    smallest = min(nodes, key=lambda n: n.cpus, default=None)
    if cpus_per_task is None:
        cpus_per_task = max(1, smallest.cpus // max(1, tasks_per_node)) if smallest and smallest.cpus else 1
    if smallest is None or not smallest.cpus or not smallest.memory_mb:
        return TaskResources(cpus_per_task, None)
    share = min(1.0, tasks_per_node * cpus_per_task / smallest.cpus)
    return TaskResources(cpus_per_task, int(min(n.memory_mb for n in nodes if n.memory_mb) * share))
