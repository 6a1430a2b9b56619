"""`hetron plan-bench`: the per-step planner against the baselines on real sequence lengths.

Lengths are preprocessed as FlexSP does (pad to a multiple of 2N, drop lengths > cap - 2N, global
batches in file order). Every policy plans every batch; each plan is validated and its iteration time
simulated under the same cost model. Prints per policy: total simulated time, speedup vs static and
vs per-sequence, gap to the batch LP bound and to the work floor, on how many batches the MILP ran
and improved the greedy, planning wall ms and CPU ms per batch (median, max).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

from parallel import native, simulate
from parallel.cost_model import CostModel
from parallel.planner import build_problem, plan_step
from parallel.planner.batch_bound import batch_lower_bound
from parallel.planner.budget import step_budget_s
from parallel.planner.fast_path import fast_plan
from parallel.planner.step import DEFAULT_TIME_BUDGET_S, wait_for_solver
from pretrain.arg_parser import OneLineErrorParser
from pretrain.errors import HetronError


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = OneLineErrorParser(prog="hetron plan-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", required=True, help="text file, one sequence length per line")
    p.add_argument("--gpus", type=int, required=True, help="data-parallel ranks N")
    p.add_argument("--model", default="7b", help="cost-model preset: 7b, 13b, 30b (default 7b)")
    p.add_argument("--cost-model", help="cost-model JSON file (from calibration); overrides --model")
    p.add_argument("--capacity", type=int, help="activation tokens per rank (default: the preset's)")
    p.add_argument("--max-context", "--cap", dest="cap", type=int, default=196608,
                   help="longest sequence kept, in tokens (default 196608; --cap: its old name)")
    p.add_argument("--batches", type=int, default=20, help="global batches to plan (default 20)")
    p.add_argument("--batch-size", type=int, default=512, help="sequences per global batch (default 512)")
    p.add_argument("--budget-ms", type=float, default=0.0,
                   help="plan_step time budget per batch; 0 (default): as the trainer's default, half the previous "
                        f"batch's simulated step within 0.05..5 s ({1000 * DEFAULT_TIME_BUDGET_S:g} ms for the first)")
    p.add_argument("--solver", default="highs", choices=["highs", "cbc", "none"], help="plan_step's MILP solver")
    p.add_argument("--milp-seconds", type=float, default=10.0,
                   help="time limit per micro-batch of the FlexSP MILP baseline; 0 skips it (default 10)")
    p.add_argument("--milp-extra-micro-batches", type=int, default=0,
                   help="MILP baseline tries the memory-minimum micro-batch count up to +this (FlexSP: 3)")
    p.add_argument("--static-degree", type=int, help="static SP degree (default: minSP(cap - 2N))")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--plans-out", help="write every plan (and each batch's lengths) here as JSON")
    p.add_argument("--gantt", help="draw batch --gantt-batch under hetron and static to this PNG")
    p.add_argument("--gantt-batch", type=int, default=0)
    return p.parse_args(argv)


def load_batches(path: str, num_ranks: int, cap: int, batch_size: int, batches: int) -> tuple[list[list[int]], dict]:
    file = Path(path)
    if not file.is_file():
        raise HetronError(f"lengths file not found: {file}")
    try:
        raw = np.loadtxt(file, dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise HetronError(f"lengths file {file}: expected one integer per line ({exc})") from None
    if raw.size and raw.min() <= 0:
        raise HetronError(f"lengths file {file}: line {int(np.argmax(raw <= 0)) + 1} is not a positive length")
    quantum = 2 * num_ranks
    padded = -(-raw // quantum) * quantum
    kept = padded[padded <= cap - quantum]
    usable = min(batches, len(kept) // batch_size)
    if usable < 1:
        raise HetronError(f"lengths file {file}: {len(kept)} sequences after preprocessing, fewer than one batch "
                          f"of {batch_size}")
    stats = {"sequences_in_file": int(raw.size), "dropped_over_cap": int(raw.size - kept.size), "batches": usable}
    return [kept[b * batch_size:(b + 1) * batch_size].tolist() for b in range(usable)], stats


def run_policies(batches, num_ranks, cost_model, args, static_degree, progress=None):
    last_step_s = [None]  # the previous batch's simulated step, for --budget-ms 0

    def hetron(lengths):
        budget = args.budget_ms / 1000 if args.budget_ms > 0 else step_budget_s(last_step_s[0])
        return plan_step(lengths, num_ranks, cost_model, time_budget_s=budget, solver=args.solver)

    policies = {
        "hetron": hetron,
        "greedy": lambda b: plan_step(b, num_ranks, cost_model, solver="none"),
        f"static-d{static_degree}": lambda b: simulate.static_plan(b, num_ranks, cost_model, static_degree),
        "batch-adaptive": lambda b: simulate.batch_adaptive_plan(b, num_ranks, cost_model),
        "per-sequence": lambda b: simulate.per_sequence_plan(b, num_ranks, cost_model),
    }
    if args.milp_seconds > 0:
        policies[f"milp-{args.milp_seconds:g}s"] = lambda b: simulate.milp_plan(
            b, num_ranks, cost_model, time_limit_s=args.milp_seconds,
            extra_micro_batches=args.milp_extra_micro_batches)
    results = {name: {"per_batch_ms": [], "planning_ms": [], "planning_cpu_ms": [], "plans": []} for name in policies}
    bounds = {"work_floor_ms": [], "lp_bound_ms": []}
    task = progress.add_task("planning", total=len(batches) * len(policies)) if progress else None
    for lengths in batches:
        problem = build_problem(lengths, num_ranks, cost_model)
        bounds["work_floor_ms"].append(problem.lower_bound_ms())
        bounds["lp_bound_ms"].append(batch_lower_bound(problem, fast_plan(problem).total_ms).bound_ms)
        for name, policy in policies.items():
            if progress:
                progress.update(task, description=f"{name:>15}")
            start, cpu_start = time.perf_counter(), time.process_time()
            plan = policy(lengths)
            elapsed = 1000 * (time.perf_counter() - start)
            # a late solver finishes here, as it would during the step; its CPU counts for this plan
            wait_for_solver(60.0)
            results[name]["planning_cpu_ms"].append(1000 * (time.process_time() - cpu_start))
            plan.validate(lengths, cost_model)
            results[name]["per_batch_ms"].append(simulate.iteration_time_ms(plan, lengths, cost_model))
            results[name]["planning_ms"].append(elapsed)
            results[name]["plans"].append(plan)
            if progress:
                progress.advance(task)
        last_step_s[0] = results["hetron"]["per_batch_ms"][-1] / 1000
    return results, bounds


def summarise(results, bounds, static_name) -> dict:
    lp_bound, floor = sum(bounds["lp_bound_ms"]), sum(bounds["work_floor_ms"])
    static_total = sum(results[static_name]["per_batch_ms"])
    per_seq_total = sum(results["per-sequence"]["per_batch_ms"])
    greedy = results["greedy"]["per_batch_ms"]
    out = {}
    for name, r in results.items():
        total = sum(r["per_batch_ms"])
        ran = [b for b, p in enumerate(r["plans"]) if p.milp_ran]
        out[name] = {
            "total_ms": total,
            "speedup_vs_static": static_total / total,
            "speedup_vs_per_sequence": per_seq_total / total,
            "gap_to_lp_bound": total / lp_bound - 1,
            "gap_to_work_floor": total / floor - 1,
            "milp_ran_batches": len(ran),
            "milp_improved_batches": sum(1 for p in r["plans"] if p.milp_improved),
            "late_batches": sum(1 for p in r["plans"] if p.late),
            "saved_vs_greedy_on_milp_batches_ms": sum(greedy[b] - r["per_batch_ms"][b] for b in ran),
            "better_than_greedy_batches": sum(1 for a, g in zip(r["per_batch_ms"], greedy) if a < g - 1e-9),
            "saved_vs_greedy_ms": sum(greedy) - total,
            "methods": dict(Counter(p.method for p in r["plans"] if p.method)),
            "planning_ms_median": statistics.median(r["planning_ms"]),
            "planning_ms_max": max(r["planning_ms"]),
            "planning_cpu_ms_median": statistics.median(r["planning_cpu_ms"]),
            "planning_cpu_ms_max": max(r["planning_cpu_ms"]),
            "per_batch_ms": r["per_batch_ms"],
            "planning_ms": r["planning_ms"],
            "planning_cpu_ms": r["planning_cpu_ms"],
            "statuses": sorted({p.solver_status.split(":")[0] for p in r["plans"]}),
        }
    return out


def print_table(summary: dict, bounds: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    lp_bound, floor = sum(bounds["lp_bound_ms"]), sum(bounds["work_floor_ms"])
    table = Table(title=title)
    for col in ("policy", "total s", "vs static", "vs per-seq", "gap to LP bound", "gap to floor",
                "milp ran / improved", "plan ms median", "plan ms max", "cpu ms median", "cpu ms max"):
        table.add_column(col, justify="right" if col != "policy" else "left")
    for name, s in summary.items():
        milp = f"{s['milp_ran_batches']} / {s['milp_improved_batches']}" if name == "hetron" else ""
        table.add_row(name, f"{s['total_ms'] / 1000:.2f}", f"{s['speedup_vs_static']:.3f}x",
                      f"{s['speedup_vs_per_sequence']:.3f}x", f"{100 * s['gap_to_lp_bound']:.2f}%",
                      f"{100 * s['gap_to_work_floor']:.2f}%", milp,
                      f"{s['planning_ms_median']:.1f}", f"{s['planning_ms_max']:.1f}",
                      f"{s['planning_cpu_ms_median']:.1f}", f"{s['planning_cpu_ms_max']:.1f}")
    table.add_row("LP bound", f"{lp_bound / 1000:.2f}", "", "", "0.00%", f"{100 * (lp_bound / floor - 1):.2f}%",
                  "", "", "", "", "")
    table.add_row("work floor", f"{floor / 1000:.2f}", "", "", "", "0.00%", "", "", "", "", "")
    Console(width=170).print(table)
    h = summary["hetron"]
    print(f"hetron: faster than its greedy on {h['better_than_greedy_batches']} of {len(h['per_batch_ms'])} batches "
          f"({h['saved_vs_greedy_ms']:.1f} ms of simulated time saved); whose plan: "
          + ", ".join(f"{m} {n}" for m, n in sorted(h["methods"].items()))
          + f"; the MILP ran on {h['milp_ran_batches']} batches and improved {h['milp_improved_batches']} "
          f"({h['saved_vs_greedy_on_milp_batches_ms']:.1f} ms saved on them); the solver was late on "
          f"{h['late_batches']}")
    print(f"plan ms = wall clock of one batch's planning; cpu ms = process CPU time of it, a late solver's "
          f"remainder included (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.gpus < 1:
        raise HetronError(f"--gpus must be >= 1, got {args.gpus}")
    cost_model = CostModel.load(args.cost_model) if args.cost_model else CostModel.preset(args.model)
    if args.capacity:
        cost_model = CostModel(**{**cost_model.__dict__, "capacity_tokens": args.capacity})
    room = (1 << (args.gpus.bit_length() - 1)) * cost_model.capacity_tokens
    if args.cap - 2 * args.gpus > room:
        raise HetronError(f"--max-context {args.cap}: sequences that long do not fit on {args.gpus} ranks of "
                          f"{cost_model.capacity_tokens} tokens; use --max-context <= {room + 2 * args.gpus} or more --gpus")
    batches, stats = load_batches(args.lengths, args.gpus, args.cap, args.batch_size, args.batches)
    if args.gantt and not 0 <= args.gantt_batch < len(batches):
        raise HetronError(f"--gantt-batch {args.gantt_batch} outside 0..{len(batches) - 1}")
    static_degree = args.static_degree or min(cost_model.min_sp(args.cap - 2 * args.gpus), args.gpus)
    static_name = f"static-d{static_degree}"

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        results, bounds = run_policies(batches, args.gpus, cost_model, args, static_degree, progress)
    summary = summarise(results, bounds, static_name)
    title = (f"{Path(args.lengths).name}: N={args.gpus}, {args.model if not args.cost_model else args.cost_model}, "
             f"cap {args.cap}, {len(batches)} batches x {args.batch_size}, kernels: {native.BACKEND}")
    print_table(summary, bounds, title)
    config = {"lengths": args.lengths, "gpus": args.gpus, "model": args.model, "cost_model": cost_model.to_dict(),
              "cap": args.cap, "batch_size": args.batch_size, "budget_ms": args.budget_ms, "solver": args.solver,
              "milp_seconds": args.milp_seconds, "static_degree": static_degree, "kernels": native.BACKEND, **stats}
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config, "lp_bound_ms": sum(bounds["lp_bound_ms"]),
                                               "work_floor_ms": sum(bounds["work_floor_ms"]),
                                               "per_batch": bounds, "policies": summary}, indent=1))
    if args.plans_out:
        Path(args.plans_out).write_text(json.dumps({
            "config": config,
            "batches": [{"batch": b, "lengths": lengths, "lp_bound_ms": bounds["lp_bound_ms"][b],
                         "work_floor_ms": bounds["work_floor_ms"][b],
                         "plans": {name: r["plans"][b].to_dict() for name, r in results.items()}}
                        for b, lengths in enumerate(batches)]}))
    if args.gantt:
        from parallel.plan_gantt import draw_plans

        k = args.gantt_batch
        draw_plans([(name, results[name]["plans"][k]) for name in ("hetron", static_name)], batches[k],
                   cost_model, args.gantt)
    return 0
