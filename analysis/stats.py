"""Accuracy with a 95% interval from per-problem scores.

    mean, low, high = accuracy_interval([[1, 0, 1], [0, 0, 0]])   # samples per problem

Samples of one problem are not independent, so with several samples per problem the
interval is a percentile bootstrap over problems; with one sample per problem it is
the Wilson score interval, which stays sensible at 0% and 100%.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def accuracy_interval(scores_per_problem: list[list[float]], confidence: float = 0.95,
                      n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(accuracy, low, high): accuracy is the mean over problems of the per-problem mean score."""
    rates = np.array([np.mean(s) for s in scores_per_problem if len(s)], dtype=float)
    if rates.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(rates.mean())
    if all(len(s) == 1 for s in scores_per_problem):
        ci = stats.binomtest(int(round(rates.sum())), rates.size).proportion_ci(confidence, method="wilson")
        return mean, float(ci.low), float(ci.high)
    rng = np.random.default_rng(seed)
    means = rates[rng.integers(0, rates.size, size=(n_resamples, rates.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return mean, float(low), float(high)
