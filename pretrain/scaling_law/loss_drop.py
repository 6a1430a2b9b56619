"""The multi-power law's loss-drop sum, evaluated in O(N * (T/b + b)) instead of O(N * T).

    LD(t) / B = sum_{1 <= k <= t} d_k * G(eta_k^-gamma * S_k(t)),   d_k = eta_{k-1} - eta_k,
    S_k(t) = sum_{tau=k..t} eta_tau = cum[t] - cum[k-1],            G(x) = 1 - (C*x + 1)^-beta.

The sum runs over every step from 1, warmup included (its rising LRs are negative d_k): that is the
convention of the authors' reference code, and the one their printed parameters need (with the
warmup left out, those parameters are off by ~0.1 in loss; see BENCHMARKS.md).

Only steps where the LR changes contribute (d_k = 0 on constant stretches). The changes are grouped
into blocks of at most b consecutive steps whose LRs are within MAX_LR_RATIO_IN_BLOCK of each other.
For an evaluation step t, the changes in t's own block and the EXACT_BLOCKS_BEFORE blocks before
it are summed exactly; every older block is summed by a second-order Taylor expansion of G
around the block's |d|-weighted mean x, using block moments of d_k * eta_k^-gamma^p * q_k^r
(q_k: cum[k-1] minus the block's mean, so the moments stay well conditioned). For older blocks
S_k(t) is at least twice a block's own LR area, so the expansion's third-order error is tiny.
With b ~ sqrt(T) the cost of all T steps is O(T^1.5) rather than the naive double sum's O(T^2).

The geometry (which pairs, which areas) does not depend on the law's parameters, so a fit builds
a `LossDropPlan` once and evaluates it (with autograd) at every iteration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class LossDropPlan:
    num_evals: int
    change_lr: torch.Tensor       # eta_k at every step k with d_k != 0
    change_delta: torch.Tensor    # d_k
    pair_eval: torch.Tensor       # exact pairs: evaluation index
    pair_change: torch.Tensor     #   change index
    pair_area: torch.Tensor       #   S_k(t)
    change_block: torch.Tensor    # block of each change
    change_weight: torch.Tensor   # |d_k| / sum over its block of |d|
    change_offset: torch.Tensor   # q_k = cum[k-1] - the block's weighted mean of cum[k-1]
    num_blocks: int
    bpair_eval: torch.Tensor      # blocked pairs: evaluation index
    bpair_block: torch.Tensor     #   block index
    bpair_area: torch.Tensor      #   a = cum[t] - the block's weighted mean of cum[k-1]


def default_block(num_steps: int) -> int:
    return max(16, int(np.sqrt(max(num_steps, 1))))


# a block never spans LRs further apart than this ratio: the expansion is in x = eta^-gamma * S, and
# over a warmup from ~0 the eta^-gamma factor would otherwise vary by orders of magnitude in a block
MAX_LR_RATIO_IN_BLOCK = 1.25
EXACT_BLOCKS_BEFORE = 2


def _ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, value) for the concatenation of range(starts[i], stops[i]) over i."""
    lengths = np.maximum(stops - starts, 0)
    owner = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.cumsum(lengths) - lengths
    values = np.arange(lengths.sum()) - np.repeat(offsets, lengths) + np.repeat(starts, lengths)
    return owner, values


def step_blocks(lrs: np.ndarray, last: int, block: int) -> np.ndarray:
    """Block of every step 1..last (index 0 = step 1): runs of at most `block` steps whose LRs lie
    within MAX_LR_RATIO_IN_BLOCK of each other, numbered from 0."""
    s = np.arange(1, last + 1)
    span = (s - 1) // block
    level = np.floor(np.log(np.maximum(lrs[s], 1e-30)) / np.log(MAX_LR_RATIO_IN_BLOCK))
    new = np.ones(len(s), dtype=bool)
    new[1:] = (span[1:] != span[:-1]) | (level[1:] != level[:-1])
    return np.cumsum(new) - 1


def build_loss_drop_plan(lrs: np.ndarray, steps: np.ndarray, block: int | None = None,
                         exact: bool = False) -> LossDropPlan:
    """Precompute the loss-drop geometry for evaluation at `steps` (indices into lrs).

    exact=True sums every change exactly (O(N * number of changes)); used as the reference."""
    lrs = np.asarray(lrs, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.int64)
    cum = np.cumsum(lrs)
    last = int(steps.max()) if len(steps) else 0
    ks = np.arange(1, last + 1)
    deltas = lrs[ks - 1] - lrs[ks] if len(ks) else np.zeros(0)
    keep = deltas != 0
    prev_cum = cum[ks[keep] - 1] if len(ks) else np.zeros(0)

    if exact:
        blocks_of_steps = np.zeros(last, dtype=np.int64)
    else:
        blocks_of_steps = step_blocks(lrs, last, block or default_block(last))
    change_block = blocks_of_steps[ks[keep] - 1]
    ks, deltas = ks[keep], deltas[keep]
    num_blocks = int(blocks_of_steps[-1]) + 1 if last else 0
    # the eval's own block and EXACT_BLOCKS_BEFORE before it are exact; all older blocks are aggregated
    eval_block = np.where(steps >= 1, blocks_of_steps[np.maximum(steps, 1) - 1], -1)
    exact_from_block = np.maximum(eval_block - EXACT_BLOCKS_BEFORE, 0)
    lo = np.searchsorted(change_block, exact_from_block, side="left")
    hi = np.searchsorted(ks, steps, side="right")
    pair_eval, pair_change = _ranges(lo, hi)
    pair_area = cum[steps[pair_eval]] - prev_cum[pair_change]

    abs_d = np.abs(deltas)
    block_abs = np.bincount(change_block, weights=abs_d, minlength=num_blocks)
    weight = abs_d / block_abs[change_block] if len(ks) else np.zeros(0)
    block_prev_cum = np.bincount(change_block, weights=weight * prev_cum, minlength=num_blocks)
    occupied = np.bincount(change_block, minlength=num_blocks) > 0
    bpair_eval, bpair_block = _ranges(np.zeros_like(steps), np.where(eval_block >= 1, exact_from_block, 0))
    keep_b = occupied[bpair_block] if num_blocks else np.zeros(len(bpair_block), dtype=bool)
    bpair_eval, bpair_block = bpair_eval[keep_b], bpair_block[keep_b]
    bpair_area = cum[steps[bpair_eval]] - block_prev_cum[bpair_block]

    t = lambda a, dt=torch.float64: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    return LossDropPlan(
        num_evals=len(steps), change_lr=t(lrs[ks] if len(ks) else np.zeros(0)), change_delta=t(deltas),
        pair_eval=t(pair_eval, torch.long), pair_change=t(pair_change, torch.long), pair_area=t(pair_area),
        change_block=t(change_block, torch.long), change_weight=t(weight),
        change_offset=t(prev_cum - block_prev_cum[change_block]), num_blocks=num_blocks,
        bpair_eval=t(bpair_eval, torch.long), bpair_block=t(bpair_block, torch.long), bpair_area=t(bpair_area),
    )


def _G(x: torch.Tensor, C: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.pow(C * x + 1.0, -beta)


def _segment_bounds(owner: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Offsets of each owner's run in a sorted owner array (length num_segments + 1)."""
    return torch.searchsorted(owner, torch.arange(num_segments + 1, dtype=owner.dtype))


def _segment_sum(values: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Sums over contiguous runs through a cumulative sum: much cheaper to differentiate than
    index_add, and exact enough in float64 for these magnitudes."""
    c = torch.cat([values.new_zeros((1,) + values.shape[1:]), torch.cumsum(values, 0)])
    return c[bounds[1:]] - c[bounds[:-1]]


def loss_drop_sum(plan: LossDropPlan, C: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """LD(t) / B at every evaluation step of the plan (differentiable in C, beta, gamma)."""
    # eta = 0 would make eta^-gamma infinite; G saturates at 1 there anyway
    u = torch.pow(plan.change_lr.clamp_min(1e-30), -gamma)
    out = torch.zeros(plan.num_evals, dtype=torch.float64)
    if len(plan.pair_eval):
        g = _G(u[plan.pair_change] * plan.pair_area, C, beta)
        out = out + _segment_sum(plan.change_delta[plan.pair_change] * g,
                                 _segment_bounds(plan.pair_eval, plan.num_evals))
    if len(plan.bpair_eval):
        d, q, w = plan.change_delta, plan.change_offset, plan.change_weight
        blocks = _segment_bounds(plan.change_block, plan.num_blocks)
        per_change = torch.stack([w * u, w * u * q, d * u, d * u * q, d * u * u, d * u * u * q, d * u * u * q * q, d], 1)
        moments = _segment_sum(per_change, blocks)[plan.bpair_block]
        u_mean, uq_mean, m_u, m_uq, m_uu, m_uuq, m_uuqq, m_d = moments.unbind(1)
        a = plan.bpair_area
        x0 = u_mean * a - uq_mean                          # expansion point
        sum_dx = a * m_u - m_uq                            # sum d_k x_k
        sum_dxx = a * a * m_uu - 2.0 * a * m_uuq + m_uuqq  # sum d_k x_k^2
        base = C * x0 + 1.0
        p0 = torch.pow(base, -beta)
        g0 = 1.0 - p0
        g1 = C * beta * p0 / base
        g2 = -C * C * beta * (beta + 1.0) * p0 / (base * base)
        first = sum_dx - m_d * x0
        second = sum_dxx - 2.0 * x0 * sum_dx + x0 * x0 * m_d
        out = out + _segment_sum(m_d * g0 + g1 * first + 0.5 * g2 * second,
                                 _segment_bounds(plan.bpair_eval, plan.num_evals))
    return out


def loss_drop_naive(lrs: np.ndarray, steps: np.ndarray, C: float, beta: float, gamma: float) -> np.ndarray:
    """The double sum as written, one evaluation step at a time: O(N * T). Reference for tests and
    the benchmark only."""
    lrs = np.asarray(lrs, dtype=np.float64)
    cum = np.cumsum(lrs)
    out = np.zeros(len(steps))
    for i, t in enumerate(np.asarray(steps)):
        k = np.arange(1, t + 1)
        d = lrs[k - 1] - lrs[k]
        x = np.maximum(lrs[k], 1e-30) ** -gamma * (cum[t] - cum[k - 1])
        out[i] = np.sum(d * (1.0 - (C * x + 1.0) ** -beta))
    return out


def merge_plans(plans: list[LossDropPlan]) -> LossDropPlan:
    """One plan evaluating all the given plans' steps, so a joint fit runs each op once, not per curve."""
    evals = changes = blocks = 0
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "change_lr", "change_delta", "pair_eval", "pair_change", "pair_area", "change_block", "change_weight",
        "change_offset", "bpair_eval", "bpair_block", "bpair_area")}
    for p in plans:
        shifted = {"pair_eval": p.pair_eval + evals, "pair_change": p.pair_change + changes,
                   "change_block": p.change_block + blocks, "bpair_eval": p.bpair_eval + evals,
                   "bpair_block": p.bpair_block + blocks}
        for k in parts:
            parts[k].append(shifted.get(k, getattr(p, k)))
        evals, changes, blocks = evals + p.num_evals, changes + len(p.change_lr), blocks + p.num_blocks
    return LossDropPlan(num_evals=evals, num_blocks=blocks, **{k: torch.cat(v) for k, v in parts.items()})
