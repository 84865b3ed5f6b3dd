"""The reasoning boundary: which problems each side of a pair solves at the largest k both can afford.

    from sharpen.analysis.boundary import boundary
    entry = boundary(outcomes["base"], outcomes["grpo"])
    entry["only_a"], entry["only_b"], entry["both"], entry["neither"], entry["net"]   # {"value", "low", "high"}

`sharpen analyze RUN_DIR` puts one entry per pair in metrics.json (boundary), report.md
("Reasoning boundary") and plots/boundary.png.

For a pair (A, B) on their shared problems, k is the smaller of the two methods' sample
counts (the smallest over those problems). A problem counts as solved by A with the
probability pass@k_A (the unbiased estimator on all of A's samples of it), and the two
methods draw independently, so the expected number solved only by A is
sum_p pass@k_A (1 - pass@k_B); likewise only B, both and neither (they add up to the
number of problems). When both methods have exactly k samples these are the plain set
counts of "some sample correct"; with more samples they are the same counts averaged
over every k-subset, which removes the luck of which k samples were drawn. `net` is
only_b - only_a. Intervals resample problems (percentile bootstrap of the sums).
"""

from __future__ import annotations

import numpy as np

from .outcomes import Outcomes, shared_problems
from .stats import bootstrap_means

PARTS = ("only_a", "only_b", "both", "neither", "net")


def solved_parts(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """(P, 5) per-problem probabilities of only a, only b, both, neither, and only b - only a.

    >>> solved_parts(np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 0.5])).sum(0).tolist()
    [1.25, 1.25, 0.25, 0.25, 0.0]
    """
    only_a, only_b = pa * (1 - pb), pb * (1 - pa)
    return np.stack([only_a, only_b, pa * pb, (1 - pa) * (1 - pb), only_b - only_a], axis=1)


def boundary(a: Outcomes, b: Outcomes, confidence: float = 0.95, n_resamples: int = 2000,
             seed: int = 0) -> dict:
    """Expected counts of problems solved only by a, only by b, by both and by neither at the shared k."""
    ia, ib = shared_problems(a, b)
    entry = {"a": a.name, "b": b.name, "problems": int(ia.size)}
    if ia.size == 0:
        return entry
    k = int(min(a.n[ia].min(), b.n[ib].min()))
    parts = solved_parts(a.pass_matrix([k], ia)[:, 0], b.pass_matrix([k], ib)[:, 0])
    sums = bootstrap_means(parts, n_resamples, seed) * ia.size  # (R, 5)
    low, high = np.quantile(sums, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    totals = parts.sum(0)
    entry["k"] = k
    for i, name in enumerate(PARTS):
        entry[name] = {"value": float(totals[i]), "low": float(low[i]), "high": float(high[i])}
    return entry


def only_matrix(entries: list[dict], names: list[str]) -> np.ndarray:
    """(M, M) expected problems solved by the row method and not the column method (NaN: no shared problem)."""
    index = {n: i for i, n in enumerate(names)}
    out = np.full((len(names), len(names)), np.nan)
    for e in entries:
        if "k" not in e:
            continue
        i, j = index[e["a"]], index[e["b"]]
        out[i, j], out[j, i] = e["only_a"]["value"], e["only_b"]["value"]
    return out
