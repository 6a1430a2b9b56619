"""The plan that moves optimizer-state slices between distributed-optimizer layouts (pure core of LISA's
switch): every wanted element arrives, from the one rank holding it, once; both ends of every pair
agree on what travels; full copies never travel."""
from __future__ import annotations

import numpy as np
import pytest

from pretrain.shard_exchange import EMPTY, equal_chunk, plan_exchange


def buffer_layout(numels: dict[str, int], names: list[str], ranks: int, pad: int) -> list[dict]:
    """Each rank's range of each parameter when `names` are laid out back to back (in reverse, as
    megatron's gradient buffer does), padded to a multiple of ranks * pad, and split into equal shards."""
    offsets, pos = {}, 0
    for name in reversed(names):
        offsets[name] = pos
        pos += numels[name]
    total = -(-pos // (ranks * pad)) * ranks * pad
    shard = total // ranks
    layout = []
    for r in range(ranks):
        lo, hi = r * shard, (r + 1) * shard
        mine = {}
        for name in names:
            a, b = max(lo, offsets[name]), min(hi, offsets[name] + numels[name])
            mine[name] = (a - offsets[name], b - offsets[name]) if a < b else EMPTY
        layout.append(mine)
    return layout


def run_exchange(held, want, names, values):
    """Every rank's plan applied to its own slices of `values`; returns what each rank then holds and
    the numbers of elements each sent."""
    ranks = len(held)
    plans = [plan_exchange(held, want, names, me) for me in range(ranks)]
    for s in range(ranks):
        for d in range(ranks):
            assert plans[s].sends[d] == plans[d].recvs[s]  # both ends agree, in order
    out = [{n: np.full(want[r][n][1] - want[r][n][0], np.nan) for n in names if n in want[r]} for r in range(ranks)]
    for s, plan in enumerate(plans):
        for d, segs in enumerate(plan.sends):
            for seg in segs:
                lo_h, lo_w = held[s][seg.name][0], want[d][seg.name][0]
                src = values[seg.name][held[s][seg.name][0]:held[s][seg.name][1]][seg.lo - lo_h:seg.hi - lo_h]
                out[d][seg.name][seg.lo - lo_w:seg.hi - lo_w] = src
    return out, plans


@pytest.mark.parametrize("ranks", [2, 3, 4, 8])
def test_moves_between_buffer_layouts_deliver_every_element_once(ranks):
    rng = np.random.default_rng(ranks)
    for trial in range(30):
        names = [f"p{i}" for i in range(8)]
        numels = {n: int(rng.integers(1, 200)) for n in names}
        values = {n: rng.standard_normal(numels[n]) for n in names}
        before = [n for n in names if rng.random() < 0.7] or names[:1]
        after = [n for n in names if rng.random() < 0.7] or names[-1:]
        moved = [n for n in names if n in before and n in after]
        if not moved:
            continue
        held = buffer_layout(numels, before, ranks, int(rng.integers(1, 64)))
        want = buffer_layout(numels, after, ranks, int(rng.integers(1, 64)))
        out, plans = run_exchange(held, want, moved, values)
        for r in range(ranks):
            for n in moved:
                lo, hi = want[r][n]
                np.testing.assert_array_equal(out[r][n], values[n][lo:hi])
        # each element leaves its rank at most once, and only if its new rank is another
        remote = sum(max(0, min(h[1], w[1]) - max(h[0], w[0])) for s in range(ranks) for d in range(ranks) if s != d
                     for n in moved for h, w in [(held[s][n], want[d][n])])
        assert sum(p.numel_sent for p in plans) == remote == sum(p.numel_received for p in plans)
        assert sum(p.numel_sent for p in plans) <= sum(numels[n] for n in moved)
        assert len({p.collective for p in plans}) == 1 and (plans[0].collective or remote == 0)


def test_full_copies_are_copied_locally_without_a_collective():
    held = [{"w": (0, 10), "b": (0, 3)} for _ in range(4)]  # the plain optimizer: each rank holds all
    plans = [plan_exchange(held, held, ["w", "b"], me) for me in range(4)]
    assert not any(p.collective for p in plans)
    assert all(p.numel_sent == 0 and p.sends[p.me] == p.recvs[p.me] for p in plans)
    assert [(s.name, s.lo, s.hi) for s in plans[2].sends[2]] == [("w", 0, 10), ("b", 0, 3)]


def test_host_chunks_return_into_a_buffer_layout():
    # offloaded state restored from a checkpoint sits in equal chunks; the rebuilt buffer splits it elsewhere
    numel, ranks = 97, 4
    values = {"w": np.arange(numel, dtype=float)}
    held = [{"w": equal_chunk(numel, r, ranks)} for r in range(ranks)]
    want = buffer_layout({"w": numel}, ["w"], ranks, 16)
    out, _ = run_exchange(held, want, ["w"], values)
    assert np.concatenate([out[r]["w"] for r in range(ranks)]).tolist() == list(range(numel))
    assert [equal_chunk(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert equal_chunk(2, 3, 4) == (2, 2)


def test_overlapping_or_missing_slices_are_refused():
    with pytest.raises(ValueError, match="held twice"):
        plan_exchange([{"w": (0, 6)}, {"w": (4, 10)}], [{"w": (0, 8)}, {"w": (8, 10)}], ["w"], 0)
    with pytest.raises(ValueError, match=r"rank 1 needs w\[5:10\]"):
        plan_exchange([{"w": (0, 4)}, {"w": (4, 8)}], [{"w": (0, 5)}, {"w": (5, 10)}], ["w"], 0)
