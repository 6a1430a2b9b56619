"""The fit behind `hetron calibrate` (pretrain/calibrate_cli.py measures the times on real ranks): the
cost model's constants from forward+backward times of sequences of several lengths on several
sequence-parallel group sizes.

Fit (parallel.cost_model's form): a one-sequence micro-batch on a group of d ranks takes
T(L, d) + beta = (a1 L^2 + a2 L) / d + L * c_d + beta, where c_d (ms per token of all-to-all) gives the
group's effective bandwidth. a1, a2, beta by non-negative least squares on d = 1; each c_d then by
least squares on the residuals of size d.
"""
from __future__ import annotations

import numpy as np

from pretrain.errors import HetronError


def fit_cost_model(times: dict[tuple[int, int], float], layers: int, hidden: int, bytes_per_element: int,
                   capacity_tokens: int):
    """times[(d, L)] = measured ms of one sequence of length L on a group of d ranks -> CostModel."""
    from scipy.optimize import nnls

    from parallel.cost_model import CostModel

    ones = sorted((L, t) for (d, L), t in times.items() if d == 1)
    if len(ones) < 3:
        raise HetronError("calibration needs at least 3 lengths measured on groups of 1")
    A = np.array([[L * L, L, 1.0] for L, _ in ones])
    (a1, a2, beta), _ = nnls(A, np.array([t for _, t in ones]))
    bandwidth = {}
    for d in sorted({d for d, _ in times if d > 1}):
        rows = [(L, t - beta - (a1 * L * L + a2 * L) / d) for (dd, L), t in times.items() if dd == d]
        Ls = np.array([L for L, _ in rows], dtype=float)
        c_d = max(float(np.dot(Ls, [r for _, r in rows]) / np.dot(Ls, Ls)), 1e-9)
        megabytes_per_token = 4 * 2 * layers * hidden * bytes_per_element / 2**20 / d
        bandwidth[d] = megabytes_per_token / c_d
    # with groups of 1 only there is no all-to-all to measure: the model keeps its default bandwidths
    measured = {"bandwidth_gbps": bandwidth} if bandwidth else {}
    return CostModel(a1=float(a1), a2=float(a2), beta=float(beta), layers=layers, hidden=hidden, calibrated=True,
                     source="hetron calibrate",
                     capacity_tokens=capacity_tokens, bytes_per_element=bytes_per_element, **measured)
