"""Correctness statistics over problems: accuracy and pass@k with intervals, majority vote, paired tests.

    mean, low, high = accuracy_interval([[1, 0, 1], [0, 0, 0]])   # samples per problem
    curve = pass_at_k_curve(n=[4, 4], c=[1, 0], ks=[1, 2, 4])     # value/low/high per k
    ks = k_grid(1024)                                             # 1..16, 24, 32, 48, ..., 768, 1024
    comparison = paired_comparison(rates_a, rates_b, binary=False)  # diff, interval, permutation p

`sharpen analyze RUN_DIR` puts these numbers in RUN_DIR/metrics.json (sharpen.analysis.metrics);
`python -m pytest -q tests/test_analysis.py` checks them against enumeration and coverage rates.

Problems are the unit of resampling everywhere: samples of one problem are not
independent, so every interval is a percentile bootstrap over problems (with one
sample per problem the accuracy interval is the Wilson score interval instead, which
stays sensible at 0% and 100%). pass@k uses the unbiased estimator of Chen et al.
(2021), 1 - C(n-c, k) / C(n, k), computed as a running product so it never overflows.
The resample draws of a problem set are made once per (size, resamples, seed) and reused by
every interval over it, so intervals over many columns cost one matrix product. A paired
comparison's p-value tests the number its interval is about, the mean per-problem difference
(a sign-flip permutation test), so the two cannot disagree the way a rank test and a mean can.
"""

from __future__ import annotations

import functools
from collections import Counter

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


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (k <= n).

    >>> pass_at_k(4, 1, 2)   # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i): a product of terms in (0, 1], no overflow.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_matrix(n: list[int], c: list[int], ks: list[int]) -> np.ndarray:
    """(P, K) per-problem pass@k for each k in `ks` (every k must be <= every n).

    Vectorised over the problems that share a sample count, so 500 problems x 1024 samples
    take milliseconds.
    """
    n, c, ks = np.asarray(n, dtype=np.int64), np.asarray(c, dtype=np.int64), np.asarray(ks, dtype=np.int64)
    bad = np.flatnonzero((c < 0) | (c > n))
    if bad.size:
        p = int(bad[0])
        raise ValueError(f"problem {p}: {c[p]} correct out of {n[p]} samples")
    out = np.empty((n.size, ks.size))
    if n.size == 0 or ks.size == 0:
        return out
    short = np.flatnonzero(n < ks.max())
    if short.size or ks.min() < 1:
        k = int(ks.max()) if short.size else int(ks.min())
        p = int(short[0]) if short.size else 0
        raise ValueError(f"pass@{k} needs at least {k} samples per problem; problem {p} has {n[p]}")
    j = np.arange(int(ks.max()))
    for n_p in np.unique(n):
        rows = np.flatnonzero(n == n_p)
        # ratio_k = C(n-c, k) / C(n, k) = prod_{j<k} (n-c-j) / (n-j); it reaches 0 once j >= n-c.
        terms = np.clip(n_p - c[rows, None] - j, 0, None) / (n_p - j)  # (rows, max k)
        out[rows] = 1.0 - np.cumprod(terms, axis=1)[:, ks - 1]
    return out


def k_grid(n: int, dense: int = 16) -> list[int]:
    """The k of a pass@k curve up to n: every k up to `dense`, then powers of two and 1.5 times them, then n.

    >>> k_grid(4), k_grid(100)
    ([1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 24, 32, 48, 64, 96, 100])
    """
    ks = set(range(1, min(n, dense) + 1))
    power = 1
    while power <= n:
        ks.update(k for k in (power, 3 * power // 2) if dense < k <= n)
        power *= 2
    return sorted(ks | ({n} if n >= 1 else set()))


@functools.lru_cache(maxsize=8)
def _resample_counts(size: int, n_resamples: int, seed: int) -> np.ndarray:
    """(R, P) how often each problem is drawn in each resample; cached, since every interval of a
    problem set with one seed uses the same draws (so the paired and unpaired intervals agree)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(size, np.full(size, 1.0 / size), size=n_resamples).astype(float)
    counts.flags.writeable = False
    return counts


def bootstrap_means(values: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """(R, ...) means of `values` (P, ...) over problems resampled with replacement."""
    values = np.asarray(values, dtype=float)
    size = values.shape[0]
    # A resample is a count per problem: (R, P) @ (P, K) gives every column's mean at once.
    counts = _resample_counts(size, n_resamples, seed)
    return (counts @ values.reshape(size, -1) / size).reshape((n_resamples,) + values.shape[1:])


def interval_entry(values, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """{"value", "low", "high", "problems"}: mean of per-problem values (None and NaN left out), bootstrap interval."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    mean, low, high = mean_interval(values, confidence, n_resamples, seed)
    return {"value": mean, "low": low, "high": high, "problems": len(values)}


def mean_interval(values, confidence: float = 0.95, n_resamples: int = 2000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of per-problem values with a percentile bootstrap over problems."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    means = bootstrap_means(values, n_resamples, seed)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(values.mean()), float(low), float(high)


def pass_at_k_curve(n: list[int], c: list[int], ks: list[int], confidence: float = 0.95,
                    n_resamples: int = 2000, seed: int = 0) -> dict:
    """pass@k (mean over problems) with bootstrap intervals: {"k", "value", "low", "high"} lists.

    The k = 1 entry is exactly `accuracy_interval` of the same problems, so tables agree.
    """
    matrix = pass_at_k_matrix(n, c, ks)
    means = bootstrap_means(matrix, n_resamples, seed)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    curve = {"k": list(ks), "value": matrix.mean(axis=0).tolist(), "low": low.tolist(), "high": high.tolist()}
    if 1 in ks:
        i = ks.index(1)
        scores = [[1.0] * c_p + [0.0] * (n_p - c_p) for n_p, c_p in zip(n, c)]
        curve["value"][i], curve["low"][i], curve["high"][i] = accuracy_interval(
            scores, confidence, n_resamples, seed)
    return curve


def majority_vote_score(answers: list, correct: list[float]) -> float | None:
    """Expected correctness of the most common answer (ties split evenly); None if no sample answered.

    The verdict of an answer is the mean correctness of the samples that gave it.

    >>> majority_vote_score(["4", "4", "5", None], [1, 1, 0, 0])
    1.0
    >>> majority_vote_score(["4", "5"], [1, 0])   # a tie: half the time the vote picks "4"
    0.5
    """
    groups: dict[str, list[float]] = {}
    for answer, ok in zip(answers, correct):
        if answer is not None and str(answer).strip():
            groups.setdefault(str(answer).strip(), []).append(float(ok))
    if not groups:
        return None
    counts = Counter({a: len(v) for a, v in groups.items()})
    top = max(counts.values())
    winners = [a for a, count in counts.items() if count == top]
    return float(np.mean([np.mean(groups[a]) for a in winners]))


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over all the pairs compared)."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


PERMUTATION_FLIPS = 20_000  # Monte Carlo sign flips: the p-value's standard error is <= 0.0035 (0.0015 at p = 0.05)
EXACT_FLIPS_MAX = 20  # up to this many nonzero differences every sign pattern is enumerated (2^20 sums)


def sign_flip_test(d, *, flips: int = PERMUTATION_FLIPS, exact_max: int = EXACT_FLIPS_MAX,
                   seed: int = 0) -> tuple[float, str]:
    """(p, how): two-sided paired permutation test of the mean of per-problem differences d.

    Statistic |sum(d)| (|mean| times P); under the null each problem's difference is as likely
    to have either sign, so the null distribution flips each sign independently. `how` says how p
    was found: "exact" (every sign pattern of the m nonzero differences enumerated, m <= exact_max),
    "binomial" (all nonzero |d| equal: the sum is a binomial count, so the exact McNemar / sign-test
    p) or "monte_carlo" (`flips` seeded random patterns, p = (1 + #{|T*| >= |T|}) / (1 + flips),
    never 0 and valid at any number of flips).

    >>> sign_flip_test([0.5, 0.25, 0.75])   # 1 of 8 sign patterns on each side is as extreme
    (0.25, 'exact')
    >>> sign_flip_test([1.0] * 30 + [-1.0] * 10)[1]
    'binomial'
    """
    d = np.asarray(d, dtype=float)
    size = np.abs(d[d != 0])  # (m,) only nonzero differences can flip
    m = size.size
    if m == 0:
        return 1.0, "exact"
    observed = abs(float(d.sum()))
    tolerance = 1e-9 * float(size.sum())  # sums in another order differ by rounding, not by a case
    if m <= exact_max:
        sums = np.zeros(1)
        for v in size:  # every sign pattern: (2^m,) sums
            sums = np.concatenate([sums + v, sums - v])
        return float(np.mean(np.abs(sums) >= observed - tolerance)), "exact"
    if np.allclose(size, size[0], rtol=1e-9, atol=0.0):
        # sum = size * (2 * positives - m), positives ~ Binomial(m, 1/2): as extreme = as far from m / 2.
        positives = int((d > 0).sum())
        return float(min(1.0, 2 * stats.binom.cdf(min(positives, m - positives), m, 0.5))), "binomial"
    rng = np.random.default_rng(seed)
    extreme = 0
    chunk = max(1, 4_000_000 // m)  # (chunk, m) signs at once: ~32 MB
    for start in range(0, flips, chunk):
        signs = rng.integers(0, 2, size=(min(chunk, flips - start), m), dtype=np.int8) * 2 - 1
        extreme += int(np.sum(np.abs(signs @ size) >= observed - tolerance))
    return (1 + extreme) / (1 + flips), "monte_carlo"


def paired_comparison(rates_a, rates_b, *, binary: bool, any_a=None, any_b=None, confidence: float = 0.95,
                      n_resamples: int = 2000, seed: int = 0, flips: int = PERMUTATION_FLIPS) -> dict:
    """Compare two methods on the same problems (row i of each is the same problem).

    rates_*: per-problem pass rates; binary=True means one 0/1 sample per problem. The difference
    is b - a: `diff` is the mean per-problem difference with a paired bootstrap interval, and
    `p_value` tests that same mean with the paired sign-flip permutation test (sign_flip_test:
    `test` "permutation", `permutation` says exact, binomial or monte_carlo). Secondary tests, of
    other quantities, beside it: `wilcoxon_p` (signed-rank test on the rate differences: it
    tests where the differences' median-like centre lies, and can miss a mean carried by a few
    large gains) or, with binary=True, `mcnemar_p` (exact McNemar: a binomial test on the
    discordant problems; equal to the permutation p there). any_*: per-problem "some sample is
    correct" flags (default rates > 0).
    """
    a, b = np.asarray(rates_a, dtype=float), np.asarray(rates_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired comparison needs two equal-length non-empty rate lists, got {a.shape} and {b.shape}")
    d = b - a
    means = bootstrap_means(d, n_resamples, seed)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    any_a = np.asarray(a > 0 if any_a is None else any_a, dtype=bool)
    any_b = np.asarray(b > 0 if any_b is None else any_b, dtype=bool)
    out = {"problems": int(a.size), "diff": float(d.mean()), "low": float(low), "high": float(high),
           "a_better": int((d < 0).sum()), "b_better": int((d > 0).sum()), "ties": int((d == 0).sum()),
           "only_a_solves": int((any_a & ~any_b).sum()), "only_b_solves": int((any_b & ~any_a).sum())}
    p, how = sign_flip_test(d, flips=flips, seed=seed)
    out.update(test="permutation", p_value=p, permutation=how)
    if how == "monte_carlo":
        out["flips"] = flips
    if binary:
        only_a, only_b = out["a_better"], out["b_better"]
        out["mcnemar_p"] = float(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    elif not np.any(d != 0):
        out["wilcoxon_p"] = 1.0  # no problem differs: nothing to test
    else:
        out["wilcoxon_p"] = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    return out


def first_and_last_fifth(values) -> tuple[float, float] | None:
    """(mean of the first fifth, mean of the last fifth) of a series, at least one value each; None if empty.

    How GRPO's reward curve is summarised, in its metrics.json and in the report.

    >>> first_and_last_fifth([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    (0.0, 1.0)
    >>> first_and_last_fifth([0.5]), first_and_last_fifth([])
    ((0.5, 0.5), None)
    """
    values = list(values)
    if not values:
        return None
    k = max(1, len(values) // 5)
    return sum(values[:k]) / k, sum(values[-k:]) / k
