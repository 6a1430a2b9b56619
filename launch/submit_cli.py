"""`hetron submit [CONFIG.yaml] [key=value ...] [options]`: run a program (`hetron train`, handed in by
pretrain/submit_cli.py) as a Slurm job through submitit."""
from __future__ import annotations

import argparse
import sys

from launch.program import TrainingProgram
from launch.submit import SubmitOptions, prepare, print_submissions, submit
from pretrain.arg_parser import OneLineErrorParser
from pretrain.errors import HetronError


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="hetron submit",
        description="Submit `hetron train` to Slurm through submitit: one task per GPU (on CPUs: launch.nproc "
                    "tasks per node), requeued on preemption/time-out, resuming from the newest checkpoint.")
    p.add_argument("train_args", nargs="*", metavar="[CONFIG.yaml] key=value",
                   help="what `hetron train` gets (run.dir is the run folder; a sweep puts one folder per run in it)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--tasks-per-node", type=int, help="default: --gpus-per-node, or launch.nproc on CPUs")
    p.add_argument("--cpus-per-task", type=int,
                   help="default: the node's cores / tasks per node (then --mem defaults to that share of its memory)")
    p.add_argument("--partition", help="default: the cluster's default partition")
    p.add_argument("--time", default="60", help="time limit per run, Slurm format (minutes, H:M:S, D-H:M:S)")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--mem", help="memory per node, e.g. 64G (default: the node's memory in proportion to the CPUs asked for)")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option (repeatable), e.g. --sbatch exclusive=user")
    p.add_argument("--max-requeues", type=int, default=3,
                   help="preemptions/time-outs the job may be requeued after (default 3)")
    p.add_argument("--seconds-per-step", type=float,
                   help="measured training step time, to check --time against checkpoint.every")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="one run per value, as a job array, each in run.dir/KEY=VALUE (repeatable: product)")
    p.add_argument("--array-parallelism", type=int, help="most sweep runs running at once (default: all)")
    p.add_argument("--job-name", default="hetron")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script; submit nothing")
    p.add_argument("--local", action="store_true",
                   help="run the same job on this machine with submitit's local executor (waits for it)")
    p.add_argument("--wait", action="store_true", help="wait for the job(s) to end; exit 1 if any failed")
    return p


def main(argv: list[str], program: TrainingProgram) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run and args.local:
        raise HetronError("--dry-run prints an sbatch script: it does not combine with --local")
    options = SubmitOptions(
        train_args=args.train_args, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task, partition=args.partition,
        time=args.time, account=args.account, qos=args.qos, constraint=args.constraint, mem=args.mem,
        sbatch=args.sbatch, max_requeues=args.max_requeues, seconds_per_step=args.seconds_per_step,
        sweep=args.sweep, array_parallelism=args.array_parallelism, job_name=args.job_name, local=args.local)
    prepared = prepare(options, program, cluster_optional=args.dry_run)
    if args.dry_run:
        for run in prepared.runs:  # on stderr: stdout is the sbatch file alone
            print(f"run folder {run.run_dir}: hetron train {' '.join(run.train_args.argv())}", file=sys.stderr)
        print(prepared.sbatch_script())
        return 0
    submissions = submit(prepared)
    print_submissions(submissions)
    sys.stdout.flush()
    if not (args.wait or args.local):
        return 0
    failed = 0
    for s in submissions:
        s.job.wait()
        error = s.job.exception()  # from the result rank 0 wrote; sacct may not have caught up yet
        failed += error is not None
        print(f"job {s.job_id}: " + ("completed" if error is None else f"failed (details: hetron status {s.job_id})"))
    return 1 if failed else 0
