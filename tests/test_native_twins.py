"""Every C++ kernel equals its pure-Python twin on random inputs, and the DPs are optimal (brute force)."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallel.planner import kernels_py

native = pytest.importorskip("parallel._native", reason="C++ extension not built; nothing to compare")

SIZES = [1, 2, 4, 8, 16]
lengths_st = st.lists(st.integers(1, 40000), min_size=1, max_size=60)


def packing_inputs(lengths, capacity=6000, ranks=16, fixed=False):
    from parallel.cost_model import CostModel
    from parallel.planner.problem import build_problem
    cm = CostModel.preset("7b", capacity_tokens=capacity)
    p = build_problem(lengths, ranks, cm, drop_oversized=True, fixed_degree=fixed)
    return p.times, p.lengths.tolist(), p.lo.tolist(), p.hi.tolist(), list(p.sizes), ranks, capacity


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=40), st.integers(1, 20))
def test_bucket_lengths_cpp_equals_python(lengths, k):
    values, counts = np.unique(lengths, return_counts=True)
    assert native.bucket_lengths(values.tolist(), counts.tolist(), k) == \
        kernels_py.bucket_lengths(values.tolist(), counts.tolist(), k)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=60), st.integers(1, 8))
def test_partition_cpp_equals_python(tokens, m):
    assert native.partition_microbatches(tokens, m) == kernels_py.partition_microbatches(tokens, m)


@settings(max_examples=60, deadline=None)
@given(lengths_st, st.booleans(), st.integers(0, 4))
def test_pack_cpp_equals_python(lengths, fixed, min_open):
    args = packing_inputs(lengths, fixed=fixed)
    if not args[1]:
        return
    for densest in (False, True):
        assert native.pack_microbatch(*args, 24, min_open, densest) == \
            kernels_py.pack_microbatch(*args, 24, min_open, densest)


@settings(max_examples=60, deadline=None)
@given(lengths_st, st.floats(50.0, 20000.0))
def test_fill_cpp_equals_python(lengths, limit):
    args = packing_inputs(lengths)
    if not args[1]:
        return
    assert native.fill_microbatch(*args, limit) == kernels_py.fill_microbatch(*args, limit)


def brute_force_buckets(values, counts, k):
    best = None
    u = len(values)
    for cuts in itertools.combinations(range(1, u), min(k, u) - 1):
        ends = list(cuts) + [u]
        start, pad = 0, 0
        for end in ends:
            pad += sum((values[end - 1] - values[j]) * counts[j] for j in range(start, end))
            start = end
        best = pad if best is None else min(best, pad)
    return best


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=9), st.integers(1, 4))
def test_bucketing_dp_is_optimal(lengths, k):
    values, counts = np.unique(lengths, return_counts=True)
    ends, pad = kernels_py.bucket_lengths(values.tolist(), counts.tolist(), k)
    assert pad == brute_force_buckets(values.tolist(), counts.tolist(), k)
    assert ends[-1] == len(values) and len(ends) == min(k, len(values)) and ends == sorted(ends)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=1, max_size=9), st.integers(1, 4))
def test_partition_dp_is_optimal(tokens, m):
    ends, worst = kernels_py.partition_microbatches(tokens, m)
    n, m = len(tokens), min(m, len(tokens))
    brute = min(max(sum(tokens[a:b]) for a, b in zip((0,) + cuts, cuts + (n,)))
                for cuts in itertools.combinations(range(1, n), m - 1))
    assert worst == brute
    assert len(ends) == m and ends[-1] == n
    starts = [0] + ends[:-1]
    assert max(sum(tokens[a:b]) for a, b in zip(starts, ends)) == worst


@settings(max_examples=40, deadline=None)
@given(lengths_st, st.integers(0, 4))
def test_packer_output_is_a_valid_micro_batch(lengths, min_open):
    times, tokens, lo, hi, sizes, ranks, cap = packing_inputs(lengths)
    if not tokens:
        return
    groups, assign, span = kernels_py.pack_microbatch(times, tokens, lo, hi, sizes, ranks, cap, 24, min_open)
    if span < 0:  # infeasible is allowed only when memory really is short
        assert sum(tokens) > ranks * cap * 0.5
        return
    assert sum(sizes[s] for s in groups) <= ranks
    load = [0.0] * len(groups)
    used_tokens = [0] * len(groups)
    for i, g in enumerate(assign):
        assert lo[i] <= groups[g] <= hi[i]
        load[g] += times[i][groups[g]]
        used_tokens[g] += tokens[i]
    assert all(t <= sizes[s] * cap for t, s in zip(used_tokens, groups))
    assert span == pytest.approx(max(load))



def exhaustive_partition(tokens, m):
    """The textbook O(m n^2) DP, smallest cut on ties: the reference the binary-search DP must equal."""
    n, m = len(tokens), min(m, len(tokens))
    pre = [0]
    for t in tokens:
        pre.append(pre[-1] + t)
    big = pre[-1] + 1
    best = [[big] * (n + 1) for _ in range(m + 1)]
    cut = [[0] * (n + 1) for _ in range(m + 1)]
    best[0][0] = 0
    for k in range(1, m + 1):
        for j in range(k, n - (m - k) + 1):
            for i in range(k - 1, j):
                cost = max(best[k - 1][i], pre[j] - pre[i])
                if best[k - 1][i] < big and cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    ends, j = [], n
    for k in range(m, 0, -1):
        ends.append(j)
        j = cut[k][j]
    return ends[::-1], best[m][n]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.just(1), st.integers(1, 5), st.integers(1, 1000)), min_size=1, max_size=40),
       st.integers(1, 10))
def test_partition_dp_equals_the_exhaustive_dp_including_ties(tokens, m):
    assert kernels_py.partition_microbatches(tokens, m) == exhaustive_partition(tokens, m)
