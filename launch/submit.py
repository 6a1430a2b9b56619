"""Submit `hetron train` to Slurm (or submitit's local executor): check the request against the config and
the cluster, lay out run folders (one per sweep point), submit one job or a job array, remember each job."""
from __future__ import annotations

import itertools
import os
import re
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from launch.cluster import (
    ResourceRequest,
    check_request,
    default_task_resources,
    parse_slurm_time,
    query_partitions,
    resolve_partition,
)
from launch.job import TrainingJob
from launch.job_record import JobRecord, save_record
from launch.program import RunPlan, TrainingProgram
from launch.run_config import TrainArgs, split_train_args
from pretrain.errors import ConfigError, HetronError

SIGNAL_DELAY_S = 90  # submitit signals USR2 this long before the time limit, to checkpoint and requeue
STARTUP_S = 60  # imports, data preparation, model build before the first step: a rough allowance
# Training throughput per task (tokens/s) by preset, used only without --seconds-per-step: tiny as
# measured here (2 gloo tasks on 2 busy CPU cores: ~900 tokens/s together), the others ballparks for
# one GPU each. They only guard against a time limit that cannot reach a single checkpoint; pass the
# step time of a real run (step_s in its metrics.jsonl) to make the check tight.
TOKENS_PER_S_PER_TASK = {"tiny": 450.0, "125m": 50_000.0, "1b": 8_000.0, "7b": 1_500.0}

@dataclass
class SubmitOptions:
    train_args: list[str] = field(default_factory=list)  # [CONFIG.yaml] key=value ...
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # default: one per GPU; on CPUs, the config's launch.nproc
    cpus_per_task: int | None = None  # default: the node's cores / tasks per node
    partition: str | None = None
    time: str = "60"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    mem: str | None = None
    sbatch: list[str] = field(default_factory=list)  # extra sbatch options, KEY=VALUE
    max_requeues: int = 3
    seconds_per_step: float | None = None
    sweep: list[str] = field(default_factory=list)  # key=v1,v2,...; several: their product
    array_parallelism: int | None = None  # most sweep runs running at once (default: all)
    job_name: str = "hetron"
    local: bool = False


@dataclass(frozen=True)
class PlannedRun:
    run_dir: Path
    train_args: TrainArgs
    sweep_point: dict[str, str]

    @property
    def checkpoint_dir(self) -> Path:
        return self.train_args.load().checkpoint_dir


@dataclass(frozen=True)
class Submission:
    job_id: str
    run_dir: Path
    stdout: Path
    stderr: Path
    sweep_point: dict[str, str]
    job: submitit.Job


def parse_sweep(specs: list[str]) -> list[dict[str, str]]:
    """['a=1,2', 'b=x,y'] -> [{a:1,b:x}, {a:1,b:y}, {a:2,b:x}, {a:2,b:y}]; no specs -> [{}]."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        split = [v for v in values.split(",") if v]
        if not sep or not key or not split:
            raise ConfigError(f"--sweep {spec!r}: expected key=value1,value2,...")
        axes.append([(key, v) for v in split])
    return [dict(point) for point in itertools.product(*axes)]


def sweep_folder_name(point: dict[str, str]) -> str:
    return ",".join(f"{k}={re.sub(r'[^A-Za-z0-9._+-]', '_', v)}" for k, v in point.items())


def plan_runs(train_args: TrainArgs, run_root: Path, sweep: list[str]) -> list[PlannedRun]:
    runs = []
    for point in parse_sweep(sweep):
        run_dir = run_root / sweep_folder_name(point) if point else run_root
        runs.append(PlannedRun(run_dir, train_args.with_overrides({**point, "run.dir": str(run_dir)}), point))
    return runs


def estimated_seconds_per_step(plan: RunPlan, tasks: int) -> float:
    per_task = TOKENS_PER_S_PER_TASK.get(plan.preset, min(TOKENS_PER_S_PER_TASK.values()))
    return plan.global_batch_tokens / (per_task * tasks)


def check_time_limit(time_min: int, plan: RunPlan, seconds_per_step: float | None, tasks: int) -> None:
    every = plan.checkpoint_every
    if seconds_per_step:
        per_step, source = seconds_per_step, "--seconds-per-step"
    else:
        per_step = estimated_seconds_per_step(plan, tasks)
        source = (f"estimated: data.global_batch_tokens={plan.global_batch_tokens} at ~"
                  f"{TOKENS_PER_S_PER_TASK.get(plan.preset, 0):g} tokens/s x {tasks} task(s)")
    needed_s = STARTUP_S + min(every, plan.steps) * per_step
    usable_s = time_min * 60 - SIGNAL_DELAY_S
    if usable_s < needed_s:
        raise ConfigError(
            f"--time {time_min} min is shorter than one checkpoint interval: {STARTUP_S} s start-up + "
            f"checkpoint.every={every} x {per_step:.3g} s/step ({source}) = {needed_s:.0f} s, but only "
            f"{max(usable_s, 0)} s run before the requeue signal; raise --time, lower checkpoint.every "
            f"or give --seconds-per-step")


def _slurm_parameters(options: SubmitOptions, tasks_per_node: int, time_min: int, cpus_per_task: int,
                      mem: str | None) -> dict:
    extra = {}
    for option in options.sbatch:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ConfigError(f"--sbatch {option!r}: expected KEY=VALUE (e.g. --sbatch exclusive=user)")
        extra[key.lstrip("-")] = value
    wanted = {
        "job_name": options.job_name, "partition": options.partition, "nodes": options.nodes,
        "ntasks_per_node": tasks_per_node, "cpus_per_task": cpus_per_task, "time": time_min,
        "gpus_per_node": options.gpus_per_node or None, "account": options.account, "qos": options.qos,
        "constraint": options.constraint, "mem": mem, "signal_delay_s": SIGNAL_DELAY_S,
        "additional_parameters": extra or None, "array_parallelism": options.array_parallelism,
    }
    return {k: v for k, v in wanted.items() if v is not None}


# Filesystems that every node of a cluster can mount (a shard cache there is visible to the job).
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "glusterfs", "fuse.glusterfs",
                       "fuse.ceph", "wekafs", "panfs", "cifs", "smb3", "orangefs", "pvfs2", "fuse.sshfs",
                       "fuse.juicefs", "virtiofs", "9p"}


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path.resolve()


def mount_of(path: Path, mounts_file: str = "/proc/mounts") -> tuple[str, str]:
    """(mount point, filesystem type) of the filesystem holding `path` (or its nearest existing parent)."""
    target = str(_existing(path))
    best = ("/", "unknown")
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best


def shared_path_problem(path: Path, run_folder: Path) -> str | None:
    """None when a job that can read `run_folder` (it must: submitit's pickles live there) can also read
    `path`: the same filesystem, or a network filesystem; otherwise why it may not."""
    if os.stat(_existing(path)).st_dev == os.stat(_existing(run_folder)).st_dev:
        return None
    point, fstype = mount_of(path)
    if fstype in NETWORK_FILESYSTEMS:
        return None
    return f"on {fstype} mounted at {point}, a filesystem of this host and not the run folder's ({run_folder})"


def _only_this_host(part) -> bool:
    here = {"localhost", socket.gethostname(), socket.getfqdn()}
    return bool(part.nodes) and all(n.name in here for n in part.nodes)


def check_data_visible(run: PlannedRun, run_root: Path, job_runs_here: bool) -> None:
    """The job's ranks read the shards that `hetron submit` prepares here: they must see the folder."""
    if job_runs_here:
        return
    shards = run.train_args.load().shards
    problem = shared_path_problem(shards, run_root)
    if problem:
        raise HetronError(f"the shards {shards} are {problem}: the job's nodes may not see them; put data.shards "
                          f"or the shard cache (HETRON_CACHE) on a shared filesystem, e.g. beside run.dir")


@dataclass(frozen=True)
class PreparedSubmission:
    runs: list[PlannedRun]
    folder: Path  # submitit's: pickles and logs
    local: bool
    tasks_per_node: int
    gpus_per_node: int
    time_min: int
    max_requeues: int
    slurm_parameters: dict

    def executor(self) -> submitit.Executor:
        if self.local:
            executor = submitit.LocalExecutor(self.folder, max_num_timeout=self.max_requeues)
            executor.update_parameters(timeout_min=self.time_min, tasks_per_node=self.tasks_per_node, nodes=1,
                                       gpus_per_node=self.gpus_per_node, signal_delay_s=SIGNAL_DELAY_S)
            return executor
        executor = submitit.SlurmExecutor(self.folder, max_num_timeout=self.max_requeues)
        executor.update_parameters(**self.slurm_parameters)
        return executor

    def sbatch_script(self) -> str:
        """The sbatch file submitit will write (for a sweep: the array's); needs no Slurm here."""
        from submitit.slurm.slurm import _make_sbatch_string

        # The command submitit's SlurmExecutor runs in each task.
        command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(self.folder))])
        map_count = {"map_count": len(self.runs)} if len(self.runs) > 1 else {}
        return _make_sbatch_string(command=command, folder=self.folder, **self.slurm_parameters, **map_count)


def prepare(options: SubmitOptions, program: TrainingProgram, cluster_optional: bool = False) -> PreparedSubmission:
    """Every check that can fail, done before anything is written or submitted; `program` is what the
    job runs (pretrain.train_program.TRAIN for `hetron train`).

    cluster_optional (for --dry-run): without a reachable Slurm, skip the checks against the cluster.
    """
    for name in ("nodes", "cpus_per_task"):
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(options, name)}: must be at least 1")
    if options.array_parallelism is not None and options.array_parallelism < 1:
        raise ConfigError(f"--array-parallelism {options.array_parallelism}: must be at least 1")
    if options.gpus_per_node < 0 or options.max_requeues < 0:
        raise ConfigError("--gpus-per-node and --max-requeues must not be negative")
    if options.local and options.nodes != 1:
        raise ConfigError(f"--nodes {options.nodes}: --local runs on this machine only (--nodes 1)")
    try:
        time_min = parse_slurm_time(options.time)
    except ValueError as exc:
        raise ConfigError(f"--time: {exc}") from None
    if time_min is None or time_min < 1:
        raise ConfigError(f"--time {options.time}: give a finite limit of at least 1 minute")

    train_args = split_train_args(options.train_args, program)
    plan = train_args.load()
    run_root = plan.run_dir.resolve()
    if plan.run_dir_is_default:  # unset: a fresh folder, so a new job never resumes an old one
        run_root = Path("runs", f"{options.job_name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    runs = plan_runs(train_args, run_root, options.sweep)
    tasks_per_node = options.tasks_per_node or options.gpus_per_node or plan.nproc
    for run in runs:  # every sweep point must be a valid config on its own
        check_time_limit(time_min, run.train_args.load(), options.seconds_per_step, tasks_per_node * options.nodes)

    if options.gpus_per_node and tasks_per_node != options.gpus_per_node:
        raise ConfigError(f"--tasks-per-node {tasks_per_node} with --gpus-per-node {options.gpus_per_node}: "
                          "hetron runs one task per GPU")
    cpus_per_task, mem = options.cpus_per_task, options.mem
    partitions = None
    if options.local:
        cpus_per_task = cpus_per_task or max(1, (os.cpu_count() or 1) // tasks_per_node)
    else:
        try:
            partitions = query_partitions()
        except HetronError as exc:
            if not cluster_optional:
                raise
            print(f"hetron submit: not checked against a cluster: {exc}", file=sys.stderr)
        if partitions is None:
            cpus_per_task = cpus_per_task or 1
        else:
            part = resolve_partition(partitions, options.partition)
            defaults = default_task_resources(part, tasks_per_node, options.gpus_per_node, cpus_per_task)
            cpus_per_task = defaults.cpus_per_task
            if mem is None and defaults.mem_mb:
                mem = f"{defaults.mem_mb}M"
            check_request(partitions, ResourceRequest(
                partition=options.partition, nodes=options.nodes, tasks_per_node=tasks_per_node,
                gpus_per_node=options.gpus_per_node, cpus_per_task=cpus_per_task, time_min=time_min))
    job_runs_here = options.local or (partitions is not None and _only_this_host(
        resolve_partition(partitions, options.partition)))
    for run in runs:
        check_data_visible(run, run_root, job_runs_here)

    # A sweep's runs share one submitit folder (one array); it sits beside their run folders.
    folder = run_root / ("slurm" if not options.local else "local")
    slurm_parameters = {} if options.local else _slurm_parameters(options, tasks_per_node, time_min,
                                                                   cpus_per_task, mem)
    return PreparedSubmission(runs, folder, options.local, tasks_per_node, options.gpus_per_node, time_min,
                              options.max_requeues, slurm_parameters)


def submit(prepared: PreparedSubmission) -> list[Submission]:
    from data.shard_cache import cache_root

    for run in prepared.runs:
        try:
            run.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HetronError(f"run.dir {run.run_dir}: cannot create it ({exc.strerror})") from None
    # Here, before any rank starts: under Slurm the ranks only load the shards (a first run on a new
    # corpus would otherwise tokenize on rank 0 while the others time out in a barrier).
    for run in prepared.runs:
        run.train_args.prepare()
    # The job resolves the shard cache as this host did, whatever its nodes' home directories are.
    environ = {"HETRON_CACHE": str(cache_root().absolute())}
    callables = [TrainingJob(run.train_args.program, run.train_args.argv(), str(run.run_dir), str(run.checkpoint_dir),
                             prepared.max_requeues, environ) for run in prepared.runs]
    executor = prepared.executor()
    with executor.batch():  # several runs on Slurm: one job array
        jobs = [executor.submit(c) for c in callables]
    cluster = "local" if prepared.local else "slurm"
    submissions = []
    for run, job in zip(prepared.runs, jobs):
        record = JobRecord(job_id=str(job.job_id), cluster=cluster, submitit_folder=str(prepared.folder),
                           run_dir=str(run.run_dir), train_argv=run.train_args.argv(), sweep_point=run.sweep_point)
        save_record(record)
        stdout, stderr = record.log_paths()
        submissions.append(Submission(str(job.job_id), run.run_dir, stdout, stderr, run.sweep_point, job))
    return submissions


def print_submissions(submissions: list[Submission]) -> None:
    out = sys.stdout
    for s in submissions:
        point = f" [{sweep_folder_name(s.sweep_point)}]" if s.sweep_point else ""
        print(f"submitted job {s.job_id}{point}", file=out)
        print(f"  run folder: {s.run_dir}", file=out)
        print(f"  logs:       {s.stdout}", file=out)
        print(f"              {s.stderr}", file=out)
    if submissions:
        print(f"status: hetron status {submissions[0].job_id.split('_')[0]}", file=out)
