"""Pure-Python twins of the C++ kernels in csrc/planner_kernels.cpp. Same inputs, same outputs, same
tie-breaking, same floating-point operation order, so tests can demand exact equality.

- bucket_lengths: FlexSP's bucketing DP (<= K buckets over sorted distinct lengths, least padding).
- partition_microbatches: contiguous split of a sorted batch into m chunks minimising the largest
  chunk's tokens (FlexSP's "sequence blaster" linear-partition DP).
- pack_microbatch: the greedy packer of one micro-batch into power-of-two SP groups (see below).
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def bucket_lengths(values: Sequence[int], counts: Sequence[int], max_buckets: int) -> tuple[list[int], int]:
    """values: sorted distinct lengths; counts: how many of each. Returns (bucket end indices into
    values, exclusive, ascending; total padding in tokens when each length is padded to the longest
    of its bucket)."""
    u = len(values)
    if u == 0:
        return [], 0
    k_max = max(1, min(max_buckets, u))
    cnt = [0] * (u + 1)
    tok = [0] * (u + 1)
    for j in range(u):
        cnt[j + 1] = cnt[j] + counts[j]
        tok[j + 1] = tok[j] + values[j] * counts[j]
    inf = float("inf")
    # best[k][j]: least padding covering values[:j] with k buckets; cut[k][j]: start of the last bucket
    best = [[inf] * (u + 1) for _ in range(k_max + 1)]
    cut = [[0] * (u + 1) for _ in range(k_max + 1)]
    best[0][0] = 0
    for k in range(1, k_max + 1):
        for j in range(k, u + 1):
            top = values[j - 1]
            for i in range(k - 1, j):
                if best[k - 1][i] == inf:
                    continue
                cost = best[k - 1][i] + top * (cnt[j] - cnt[i]) - (tok[j] - tok[i])
                if cost < best[k][j]:
                    best[k][j] = cost
                    cut[k][j] = i
    ends = []
    j = u
    for k in range(k_max, 0, -1):
        ends.append(j)
        j = cut[k][j]
    ends.reverse()
    return ends, int(best[k_max][u])


def partition_microbatches(tokens: Sequence[int], num_chunks: int) -> tuple[list[int], int]:
    """Split tokens (in order, each > 0) into num_chunks non-empty contiguous chunks minimising the
    largest chunk sum. Returns (chunk end indices, exclusive; the largest chunk sum).

    DP over (chunks, prefix): best[k][j] = min_i max(best[k-1][i], S[j] - S[i]). best[k-1][i] never
    falls as i grows and S[j] - S[i] strictly falls, so the minimum sits where they cross: binary
    search for the first i with best[k-1][i] >= S[j] - S[i] and compare it with i - 1 (the smaller
    index wins ties, as an exhaustive scan would). O(m n log n)."""
    n = len(tokens)
    m = min(max(1, num_chunks), n)
    if n == 0:
        return [], 0
    pre = [0] * (n + 1)
    for j in range(n):
        pre[j + 1] = pre[j] + tokens[j]
    big = pre[n] + 1
    best = [[big] * (n + 1) for _ in range(m + 1)]
    cut = [[0] * (n + 1) for _ in range(m + 1)]
    best[0][0] = 0
    for k in range(1, m + 1):
        prev = best[k - 1]
        for j in range(k, n - (m - k) + 1):
            low, high = k - 1, j  # first i in [k-1, j) with prev[i] >= pre[j] - pre[i], or j
            while low < high:
                mid = (low + high) // 2
                if prev[mid] >= pre[j] - pre[mid]:
                    high = mid
                else:
                    low = mid + 1
            choice, value = -1, big
            for i in (low - 1, low):
                if k - 1 <= i < j:
                    cost = max(prev[i], pre[j] - pre[i])
                    if cost < value:
                        choice, value = i, cost
            best[k][j] = value
            cut[k][j] = choice
    ends = []
    j = n
    for k in range(m, 0, -1):
        ends.append(j)
        j = cut[k][j]
    ends.reverse()
    return ends, best[m][n]


def _first_fit(order, times, tokens, lo, hi, sizes, num_ranks, capacity, min_open, densest, limit):
    """Place sequences (longest first) into the smallest fitting open group (fullest on ties), else
    open a new group (of at least size index min_open, where the sequence allows) that runs the
    sequence within `limit` ms: the smallest such, or with `densest` the one that would run the most
    copies of the sequence per rank within the limit. None if ranks run out."""
    g_size: list[int] = []
    g_load: list[float] = []
    g_tok: list[int] = []
    assign = [0] * len(order)
    used = 0
    for i in order:
        row = times[i]
        lo_i, hi_i, tok_i = lo[i], hi[i], tokens[i]
        best = -1
        best_size = 0
        best_load = 0.0
        for g in range(len(g_size)):
            s = g_size[g]
            if s < lo_i or s > hi_i:
                continue
            load = g_load[g] + row[s]
            if load > limit or g_tok[g] + tok_i > sizes[s] * capacity:
                continue
            if best < 0 or sizes[s] < best_size or (sizes[s] == best_size and load > best_load):
                best, best_size, best_load = g, sizes[s], load
        if best >= 0:
            g_load[best] = best_load
            g_tok[best] += tok_i
            assign[i] = best
            continue
        opened = -1
        best_ratio = math.inf
        for s in range(min(max(lo_i, min_open), hi_i), hi_i + 1):
            if row[s] <= limit:
                if not densest:
                    opened = s
                    break
                ratio = sizes[s] / math.floor(limit / row[s])  # ranks per copy of this sequence
                if ratio < best_ratio:
                    opened, best_ratio = s, ratio
        if opened < 0 or used + sizes[opened] > num_ranks:
            return None
        used += sizes[opened]
        assign[i] = len(g_size)
        g_size.append(opened)
        g_load.append(row[opened])
        g_tok.append(tok_i)
    return g_size, g_load, assign, used


def _rebalance(order, times, tokens, lo, hi, sizes, capacity, g_size):
    """LPT over a fixed set of groups: each sequence (longest first) to the group where it finishes
    earliest. None if some sequence fits no group."""
    g_load = [0.0] * len(g_size)
    g_tok = [0] * len(g_size)
    assign = [0] * len(order)
    for i in order:
        row = times[i]
        best = -1
        best_load = 0.0
        for g in range(len(g_size)):
            s = g_size[g]
            if s < lo[i] or s > hi[i] or g_tok[g] + tokens[i] > sizes[s] * capacity:
                continue
            load = g_load[g] + row[s]
            if best < 0 or load < best_load:
                best, best_load = g, load
        if best < 0:
            return None
        g_load[best] = best_load
        g_tok[best] += tokens[i]
        assign[i] = best
    return g_load, assign


def pack_microbatch(times, tokens, lo, hi, sizes, num_ranks: int, capacity: int,
                    iterations: int = 24, min_open: int = 0,
                    densest: bool = False) -> tuple[list[int], list[int], float]:
    """Pack one micro-batch. times[i][s]: ms of sequence i on a group of sizes[s] ranks (sizes
    ascending); sequence i may use size indices lo[i]..hi[i] (lo from its memory need). Binary
    search on the makespan M with first-fit packing (feasible iff the groups fit in num_ranks), then
    ranks left over become extra groups and an LPT pass over all groups is kept if it is better.
    min_open > 0 makes new groups at least sizes[min_open] ranks: pooling memory in a larger group
    (intra-node, cheap all-to-all) beats memory fragmentation over many small groups when the
    micro-batch is memory-bound. densest opens the group size that fits the most copies of the
    sequence per rank (better when many equal lengths would each leave a group part-empty).
    Returns (size index of each group, group of each sequence, makespan ms); ([], [], -1.0) if the
    packer found no feasible packing."""
    times = [list(map(float, row)) for row in times]
    tokens = [int(t) for t in tokens]
    lo = [int(x) for x in lo]
    hi = [int(x) for x in hi]
    sizes = [int(s) for s in sizes]
    n = len(tokens)
    if n == 0:
        return [], [], 0.0
    order = sorted(range(n), key=lambda i: (-tokens[i], i))
    area = 0.0
    longest = 0.0
    total = 0.0
    for i in range(n):
        best_area = math.inf
        best_time = math.inf
        for s in range(lo[i], hi[i] + 1):
            best_area = min(best_area, sizes[s] * times[i][s])
            best_time = min(best_time, times[i][s])
        area += best_area
        longest = max(longest, best_time)
        total += times[i][lo[i]]
    low = max(area / num_ranks, longest)
    args = (order, times, tokens, lo, hi, sizes, num_ranks, capacity, int(min_open), bool(densest))
    found = _first_fit(*args, low)
    best_span = -1.0
    best = None
    if found is not None:
        best, high = found, low
    else:
        high = low
        while True:
            high = min(high * 2.0, total) if high < total else total
            found = _first_fit(*args, high)
            if found is not None:
                best = found
                break
            if high >= total:
                return [], [], -1.0
            low = high
        for _ in range(iterations):
            mid = (low + high) / 2.0
            found = _first_fit(*args, mid)
            if found is None:
                low = mid
            else:
                high = mid
                best = found
    g_size, g_load, assign, used = best
    best_span = max(g_load)
    g_size = list(g_size)
    spare = num_ranks - used
    for s in range(len(sizes) - 1, -1, -1):
        while sizes[s] <= spare:
            g_size.append(s)
            spare -= sizes[s]
    if len(g_size) > len(best[0]):
        lpt = _rebalance(order, times, tokens, lo, hi, sizes, capacity, g_size)
        if lpt is not None and max(lpt[0]) < best_span:
            return g_size, lpt[1], max(lpt[0])
    return list(best[0]), assign, best_span


def fill_microbatch(times, tokens, lo, hi, sizes, num_ranks: int, capacity: int,
                    limit: float) -> tuple[list[int], list[int], float]:
    """Fill one micro-batch up to a makespan limit: like the packer's first-fit pass (longest first,
    smallest fitting open group, else open the smallest group that runs it within the limit), but a
    sequence that fits nowhere is left for a later micro-batch (group -1) instead of failing.
    Returns (size index of each group, group of each sequence or -1, makespan ms)."""
    times = [list(map(float, row)) for row in times]
    tokens = [int(t) for t in tokens]
    n = len(tokens)
    order = sorted(range(n), key=lambda i: (-tokens[i], i))
    g_size: list[int] = []
    g_load: list[float] = []
    g_tok: list[int] = []
    assign = [-1] * n
    used = 0
    for i in order:
        row = times[i]
        lo_i, hi_i, tok_i = int(lo[i]), int(hi[i]), tokens[i]
        best = -1
        best_size = 0
        best_load = 0.0
        for g in range(len(g_size)):
            s = g_size[g]
            if s < lo_i or s > hi_i:
                continue
            load = g_load[g] + row[s]
            if load > limit or g_tok[g] + tok_i > sizes[s] * capacity:
                continue
            if best < 0 or sizes[s] < best_size or (sizes[s] == best_size and load > best_load):
                best, best_size, best_load = g, sizes[s], load
        if best >= 0:
            g_load[best] = best_load
            g_tok[best] += tok_i
            assign[i] = best
            continue
        for s in range(lo_i, hi_i + 1):
            if row[s] <= limit:
                if used + sizes[s] <= num_ranks:
                    used += sizes[s]
                    assign[i] = len(g_size)
                    g_size.append(s)
                    g_load.append(row[s])
                    g_tok.append(tok_i)
                break
    return g_size, assign, (max(g_load) if g_load else 0.0)
