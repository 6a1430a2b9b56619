"""Re-price the plans of `hetron plan-bench --plans-out FILE` from the lengths alone, with FlexSP's
cost formula written out here (no hetron code): every sequence in exactly one group, every group
within its memory (tokens <= d x C) and inside the ranks, each micro-batch = its slowest group +
beta. Prints each policy's total next to the file's and the batches whose plan is below the file's
bound (there must be none).

    .venv/bin/python benchmarks/reprice_plans.py n64_plans.json
"""
from __future__ import annotations

import argparse
import json
import sys


def seq_ms(cm: dict, length: int, d: int) -> float:
    compute = (cm["a1"] * length * length + cm["a2"] * length) / d
    if d == 1:
        return compute
    megabytes = 4 * 2 * cm["layers"] * cm["hidden"] * length * cm["bytes_per_element"] / 2**20 / d
    # groups larger than the measured table run at its largest size's bandwidth
    measured = max(int(size) for size in cm["bandwidth_gbps"] if int(size) <= d)
    return compute + megabytes / cm["bandwidth_gbps"][str(measured)]  # MB / (GB/s) = ms


def plan_ms(cm: dict, lengths: list[int], plan: dict, ranks: int) -> float:
    seen, total = [], 0.0
    for mb in plan["micro_batches"]:
        used, slowest = [False] * ranks, 0.0
        for group in mb:
            d, start = group["size"], group["start"]
            assert d & (d - 1) == 0 and 0 <= start and start + d <= ranks, group
            assert not any(used[start:start + d]), f"groups overlap at {group}"
            used[start:start + d] = [True] * d
            tokens = sum(lengths[i] for i in group["sequences"])
            assert tokens <= d * cm["capacity_tokens"], f"group {group} holds {tokens} tokens"
            slowest = max(slowest, sum(seq_ms(cm, lengths[i], d) for i in group["sequences"]))
            seen += group["sequences"]
        total += slowest + cm["beta"]
    assert sorted(seen) == sorted(set(range(len(lengths))) - set(plan.get("dropped", []))), "sequences lost"
    return total


def main(path: str) -> int:
    try:
        with open(path) as handle:
            data = json.load(handle)
        cm, ranks, batches = data["config"]["cost_model"], data["config"]["gpus"], data["batches"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"reprice_plans: {path} is not a plan-bench plans file ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    totals, below = {}, []
    for batch in batches:
        for name, plan in batch["plans"].items():
            try:
                ms = plan_ms(cm, batch["lengths"], plan, ranks)
            except AssertionError as exc:
                print(f"reprice_plans: {path}: batch {batch['batch']}, {name}: invalid plan: {exc}", file=sys.stderr)
                return 1
            totals[name] = totals.get(name, 0.0) + ms
            if ms < batch["lp_bound_ms"] * (1 - 1e-9):
                below.append((batch["batch"], name, ms, batch["lp_bound_ms"]))
    bound = sum(b["lp_bound_ms"] for b in data["batches"])
    for name, total in totals.items():
        print(f"{name:>16}: {total:12.3f} ms  ({100 * (total / bound - 1):.2f}% above the bound)")
    print(f"{'bound':>16}: {bound:12.3f} ms; plans below their batch's bound: {below or 'none'}")
    return 1 if below else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plans", help="a plans file from `hetron plan-bench --plans-out`")
    sys.exit(main(parser.parse_args().plans))
