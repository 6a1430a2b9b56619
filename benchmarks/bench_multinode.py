"""Latencies of a job across the two namespaced nodes of the local Slurm (scripts/slurm-local.sh
start-cluster), each against the same job on one node (partition debug, `localhost`) measured in the
same run:

- submit to first step: `hetron submit` returning to the first line of metrics.jsonl;
- requeue to resume: Slurm's preemption signal to the first step of the requeued attempt;
- rank death to job end: SIGKILL of the last rank to the job leaving the queue.

and the cluster's bring-up time (`start-cluster` when it already runs: the idempotent path `make test`
takes; with --cold, after a `stop`, which stops every Slurm daemon: not while others use this Slurm).

    .venv/bin/python benchmarks/bench_multinode.py [--repeats N] [--cold] [--quick]

Prints RATIO lines (two nodes / one node). Needs root and the local cluster; without them it says why
and skips (exit 0). --quick: one repeat (the default), for `make bench`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch.status_cli import slurm_state
from launch.submit import SubmitOptions, prepare, submit
from pretrain.rank_hosts import read_table
from pretrain.train_program import TRAIN

SCRIPT = REPO / "scripts" / "slurm-local.sh"
JOB = ["model.preset=tiny", "data.global_batch_tokens=1024", "train.eval_every=0", "run.plot=false",
       "run.tensorboard=false", "launch.nproc=2", "checkpoint.every=1000", "train.steps=200",
       "schedule.total_steps=200"]
ENDED = {"COMPLETED", "FAILED", "NODE_FAIL", "CANCELLED", "TIMEOUT"}
LAYOUTS = {"two nodes x 2 tasks": {"nodes": 2, "partition": "multi"},
           "one node x 4 tasks": {"nodes": 1, "partition": "debug", "tasks_per_node": 4}}


def wait(condition, timeout_s: float = 300) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout_s:
            raise SystemExit(f"bench_multinode: timed out after {timeout_s} s")
        time.sleep(0.1)
    return time.monotonic() - began


def steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def one_job(layout: dict, run_dir: Path) -> dict[str, float]:
    began = time.monotonic()
    sub = submit(prepare(SubmitOptions(train_args=[*JOB, f"run.dir={run_dir}"], time="10", **layout), TRAIN))[0]
    try:
        wait(lambda: steps(run_dir) >= 1)
        first_step = time.monotonic() - began
        wait(lambda: steps(run_dir) >= 3)
        signalled = time.monotonic()
        before = steps(run_dir)
        resumed_log = run_dir / "slurm"
        sub.job._interrupt()  # USR2 to every task: checkpoint, requeue
        wait(lambda: "resumed from" in "".join(p.read_text(errors="replace") for p in resumed_log.glob("*_0_log.out")))
        wait(lambda: steps(run_dir) > before)
        resume = time.monotonic() - signalled
        wait(lambda: len(read_table(run_dir)) == 4 and steps(run_dir) > before + 1)
        last = read_table(run_dir)[-1]
        killed = time.monotonic()
        os.kill(last.pid, signal.SIGKILL)  # ranks.json's pid: one pid namespace here, only the network differs
        wait(lambda: (s := slurm_state(sub.job_id)) is not None and s.state in ENDED)
        death = time.monotonic() - killed
    finally:
        subprocess.run(["scancel", sub.job_id], check=False)
    return {"submit_to_first_step_s": first_step, "requeue_to_resume_s": resume, "rank_death_to_end_s": death}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="measure bring-up after stopping every daemon")
    parser.add_argument("--quick", action="store_true", help="one repeat (make bench)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    if os.geteuid() != 0:
        print("bench_multinode: skipped: needs root (the local cluster's namespaces)")
        return 0
    if args.cold:
        subprocess.run([str(SCRIPT), "stop"], check=True, capture_output=True)
    began = time.monotonic()
    started = subprocess.run([str(SCRIPT), "start-cluster"], capture_output=True, text=True, check=False)
    bring_up = time.monotonic() - began
    if started.returncode != 0:
        print(f"bench_multinode: skipped: the two-node cluster did not start: {started.stderr.strip()[-300:]}")
        return 0
    print(f"cluster bring-up ({'cold' if args.cold else 'already running'}): {bring_up:.1f} s")

    os.environ.setdefault("HETRON_HOME", tempfile.mkdtemp(prefix="bench-multinode-home-"))
    results: dict[str, list[dict[str, float]]] = {name: [] for name in LAYOUTS}
    with tempfile.TemporaryDirectory(prefix="bench-multinode-") as tmp:
        for repeat in range(args.repeats):
            for name, layout in LAYOUTS.items():
                run = one_job(layout, Path(tmp) / f"{name.split()[0]}-{repeat}")
                results[name].append(run)
                print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in run.items()), flush=True)
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    two, one = medians["two nodes x 2 tasks"], medians["one node x 4 tasks"]
    for key in two:
        print(f"RATIO {key} two-nodes/one-node {two[key] / one[key]:.2f} ({two[key]:.1f} s vs {one[key]:.1f} s)")
    print(json.dumps({"bring_up_s": bring_up, "medians": medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
