"""Local search over the micro-batch split, in the solver's shadow: the greedy fixes which sequences
run together in a micro-batch once; this moves one of the LONGEST sequences to another micro-batch
(with up to MAX_BACK short ones the other way, to keep memory), re-packs the two micro-batches with
the greedy packer and keeps the move if the batch gets faster, until the deadline. Seeded, so the
moves tried are the same on every run; how many are tried depends on the time given."""
from __future__ import annotations

import random
import time

import numpy as np

from parallel.planner.fast_path import FastPlan, PackedMicroBatch, pack, polish
from parallel.planner.problem import PlanningProblem

LONGEST = 12  # the sequences whose micro-batch is searched over
SHORT_TOKENS = 3000  # sequences at most this long may be moved back
MAX_BACK = 30


def search_splits(problem: PlanningProblem, plan: FastPlan, deadline: float, seed: int = 0) -> FastPlan | None:
    """A faster plan than `plan` with other micro-batch contents, or None."""
    if len(plan.micro_batches) < 2:
        return None
    cache: dict[tuple[int, ...], PackedMicroBatch | None] = {}

    def packed(members: list[int]) -> PackedMicroBatch | None:
        key = tuple(sorted(members))
        if key not in cache:
            cache[key] = pack(problem, np.asarray(key, dtype=np.int64)) if key else None
        return cache[key]

    def cost(mb: PackedMicroBatch | None) -> float:
        return np.inf if mb is None else mb.span_ms + problem.beta

    for mb in plan.micro_batches:  # start from the greedy's own packing of its micro-batches
        cache[tuple(sorted(mb.members))] = mb
    current = [list(mb.members) for mb in plan.micro_batches]
    spans = [cost(packed(m)) for m in current]
    longest = [int(i) for i in np.lexsort((np.arange(problem.size), -problem.lengths))[:LONGEST]]
    where = {i: k for k, m in enumerate(current) for i in m}
    rng = random.Random(seed)
    while time.perf_counter() < deadline:
        i = rng.choice(longest)
        src, dst = where[i], rng.randrange(len(current))
        if src == dst:
            continue
        a, b = [x for x in current[src] if x != i], current[dst] + [i]
        for _ in range(rng.randrange(MAX_BACK + 1)):
            j = rng.choice(b)
            if j != i and problem.lengths[j] <= SHORT_TOKENS:
                b.remove(j)
                a.append(j)
        if not a:
            continue
        new_a, new_b = cost(packed(a)), cost(packed(b))
        if new_a + new_b < spans[src] + spans[dst] - 1e-9:
            current[src], current[dst], spans[src], spans[dst] = a, b, new_a, new_b
            for x in a:
                where[x] = src
            for x in b:
                where[x] = dst
    if sum(spans) >= plan.total_ms * (1 - 1e-9):
        return None
    found = polish(problem, FastPlan(tuple(packed(m) for m in current), float(sum(spans)), "split-search"))
    return found if found.total_ms < plan.total_ms * (1 - 1e-9) else None
