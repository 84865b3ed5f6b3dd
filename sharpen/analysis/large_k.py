"""pass@k at large k: coverage at the largest shared n, and the k at which base overtakes a sharpened method.

    from sharpen.analysis.large_k import coverage, crossover
    entries = coverage(outcomes)                  # {name: {"value", "low", "high", "k", "problems"}}
    entry = crossover(outcomes["base"], outcomes["grpo"])   # {"status", "value", "low", "high", ...}

`sharpen analyze RUN_DIR` puts them in metrics.json (methods.<name>.coverage, crossover) and
report.md ("Coverage and crossover").

Both compare methods on the problems they share. Coverage is pass@N on the problems every
method has, N the smallest samples-per-problem among them, so every method is measured
at the same k on the same problems. The crossover is the first k at which base's pass@k
catches up with (>=) the method's, after having been below it (Yue et al. 2025's
"base overtakes RL at large k"); it is searched on CROSSOVER_DENSE integers and then a
geometric grid (CROSSOVER_PER_OCTAVE points per doubling) up to the smaller n of the two.
Its interval resamples problems: each resample gives a k, or "none up to n" (ordered above
every k), or "base never below" (ordered below every k, written 0), and the percentile
interval is read off those ordered draws, so a draw that never crosses widens it.
"""

from __future__ import annotations

import numpy as np

from .outcomes import Outcomes, shared_problems
from .stats import bootstrap_means

CROSSOVER_DENSE = 128  # every k up to here
CROSSOVER_PER_OCTAVE = 16  # then k = 2^(i/16), 4.4% apart
TOLERANCE = 1e-12  # pass@k from different n can differ by rounding where both are 1: that is a tie
NEVER_BELOW, NONE = 0, float("inf")  # how the two non-k outcomes of a draw are ordered among the k


def crossover_grid(n: int) -> np.ndarray:
    """k searched for a crossover up to n.

    >>> crossover_grid(5).tolist(), crossover_grid(200)[-6:].tolist()
    ([1, 2, 3, 4, 5], [166, 173, 181, 189, 197, 200])
    """
    ks = set(range(1, min(n, CROSSOVER_DENSE) + 1))
    if n > CROSSOVER_DENSE:
        steps = np.arange(np.log2(CROSSOVER_DENSE), np.log2(n), 1.0 / CROSSOVER_PER_OCTAVE)
        ks.update(int(k) for k in np.round(2.0 ** steps) if k <= n)
        ks.add(n)
    return np.array(sorted(ks), dtype=np.int64)


def first_crossover(diff: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Per row of diff (..., K) = base - method pass@k at ks: the crossover k, NEVER_BELOW or NONE.

    >>> first_crossover(np.array([[-.1, -.05, 0.02], [0.1, -0.1, 0.0], [0.0, 0.1, 0.2], [-.1, -.1, -.1]]),
    ...                 np.array([1, 2, 4])).tolist()
    [4.0, 4.0, 0.0, inf]
    """
    below = diff < -TOLERANCE
    K = diff.shape[-1]
    has_below = below.any(-1)
    first_below = np.argmax(below, axis=-1)
    after = (~below) & (np.arange(K) > first_below[..., None])
    has_after = after.any(-1)
    k = ks[np.argmax(after, axis=-1)].astype(float)
    return np.where(~has_below, float(NEVER_BELOW), np.where(has_after, k, NONE))


def _label(value: float) -> str:
    if value == NEVER_BELOW:
        return "base never below"
    return "none up to n" if value == NONE else "crossover"


def crossover(base: Outcomes, method: Outcomes, confidence: float = 0.95, n_resamples: int = 2000,
              seed: int = 0) -> dict:
    """The first k at which base's pass@k >= the method's after being below, on their shared problems.

    value/low/high: a k, 0 (base never below, i.e. already >= at k = 1) or None (no crossover
    up to max_k); `status` names the point estimate's case; `draws_*` the share of resamples
    in each case.
    """
    ia, ib = shared_problems(base, method)
    entry = {"a": base.name, "b": method.name, "problems": int(ia.size)}
    if ia.size == 0:
        return {**entry, "status": "no shared problem", "value": None, "low": None, "high": None}
    n = int(min(base.n[ia].min(), method.n[ib].min()))
    ks = crossover_grid(n)
    diff = base.pass_matrix(ks, ia) - method.pass_matrix(ks, ib)  # (P, K)
    point = float(first_crossover(diff.mean(0), ks))
    draws = first_crossover(bootstrap_means(diff, n_resamples, seed), ks)  # (R,)
    low = float(np.quantile(draws, (1 - confidence) / 2, method="lower"))
    high = float(np.quantile(draws, (1 + confidence) / 2, method="higher"))
    as_k = lambda v: None if v == NONE else int(v)  # noqa: E731
    return {**entry, "max_k": n, "grid_points": int(ks.size), "status": _label(point),
            "value": as_k(point), "low": as_k(low), "high": as_k(high),
            "low_status": _label(low), "high_status": _label(high),
            "draws_crossover": float(np.mean((draws != NONE) & (draws != NEVER_BELOW))),
            "draws_none": float(np.mean(draws == NONE)), "draws_never_below": float(np.mean(draws == NEVER_BELOW))}


def coverage(outcomes: dict[str, Outcomes], confidence: float = 0.95, n_resamples: int = 2000,
             seed: int = 0) -> tuple[dict[str, dict], str | None]:
    """({name: pass@N entry}, None) on the problems every method has, N their smallest sample count;
    ({}, reason) when no problem is shared by all."""
    names = list(outcomes)
    common = [p for p in outcomes[names[0]].pids if all(p in o._rows for o in outcomes.values())]
    if not common:
        return {}, "no problem is shared by every method: coverage is not computed"
    rows = {name: o.rows(common) for name, o in outcomes.items()}
    k = int(min(o.n[rows[name]].min() for name, o in outcomes.items()))
    out = {}
    for name, o in outcomes.items():
        values = o.pass_matrix([k], rows[name])[:, 0]
        means = bootstrap_means(values, n_resamples, seed)
        low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
        out[name] = {"value": float(values.mean()), "low": float(low), "high": float(high), "k": k,
                     "problems": len(common)}
    return out, None
