"""Accuracy at equal compute: does a sampler beat majority voting over cheap samples that cost the same?

    from sharpen.analysis.equal_compute import equal_compute_rows, majority_curve
    maj = majority_curve(outcomes["base"], kmax=16)        # (P, 16): expected majority vote at k = 1..16
    rows = equal_compute_rows(outcomes, training={"grpo": {...}}, records=groups)

For a sampler instance S and a reference R (every instance of a method that decodes the base
model token by token: Method.equal_compute_reference, i.e. base and low_temp), on their
shared problems: C_S and C_R are the mean forward tokens per completion (records'
cost.forward_tokens). S's cost already holds its prompt once (power_mh and power_smc prefill
it once per chain or run), and R's k samples of one prompt can share it too (one prefill, a
shared KV-cache prefix), so k reference samples cost prompt_R + k * (C_R - prompt_R) and
k = (C_S - prompt_R) / (C_R - prompt_R) is the number that spend what one completion of S
spends. prompt_R is the mean prompt length in tokens of R's records: plain decoding prefills
the prompt and then feeds every sampled token but the last, so a record's forward_tokens is
prompt + num_tokens - 1 (sharpen.sampling.generate) and its prompt is forward_tokens -
num_tokens + 1, no tokenizer needed (prompt_tokens). `k_prompt_per_sample` = C_S / C_R is
the older accounting that charges every reference sample its own prefill (a smaller k, which
favours S); it is kept beside k, and is what k falls back to, with a `cost_note`, when R's
records do not give their prompt length. The row then sets S's accuracy against R's
majority-vote accuracy and oracle pass@k at that k. A fractional k is interpolated linearly
between floor(k) and ceil(k); k below 1 is shown at k = 1 (the reference then spends more);
a k above R's samples per problem is marked and not extrapolated.

Majority vote at k is the expected vote of a uniformly random k-subset of a problem's n
samples (a k-subset of i.i.d. samples is itself a draw of k samples, so this is unbiased),
estimated by the first k samples of SUBSETS seeded random permutations (the same
permutations for every k, so neighbouring k share their draws); at k = n it is exactly
stats.majority_vote_score. As there, the vote counts extracted answers only (a sample
without one does not vote), ties are split evenly, a subset with no answer scores 0, and an
answer's verdict is the mean correctness of the samples that gave it. pass@k is the
unbiased estimator. The difference S - R(majority) gets a paired bootstrap interval over
problems, and `beats_voting` is yes (interval above 0), no (below 0) or inconclusive.

A method with a training cost (RUN_DIR/<name>/cost.json, i.e. GRPO) gets a second row in
which its training compute, spread over its evaluation problems, is added to C_S:
C_S + T / P, and k = (C_S + T / P - prompt_R) / (C_R - prompt_R) as above. One completion
per problem is what its accuracy measures, and the training is paid once for the P problems
it answers. T counts forward tokens: the rollouts' generation
(trained_tokens / num_iterations: prompt + completion of every rollout) plus the policy's
forward passes in the loss (trained_tokens); backward passes (about two forwards each) and a
reference model's forward are left out, so T is a lower bound. Without trained_tokens the
rollout tokens alone are used (a lower bound too, and the row says so).
"""

from __future__ import annotations

import math

import numpy as np

from .outcomes import Outcomes, shared_problems
from .stats import bootstrap_means

SUBSETS = 64  # random k-subsets per problem for the majority vote; its noise is part of the bootstrap's spread
CHUNK_ELEMENTS = 8_000_000  # subsets x samples handled at once: fewer Python steps, ~100 MB at most


def _classes(answers: list[str | None], correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) class id of each sample's answer (-1: none) and (m,) verdict of each class."""
    ids: dict[str, int] = {}
    cls = np.array([-1 if a is None else ids.setdefault(a, len(ids)) for a in answers], dtype=np.int64)
    verdict = np.zeros(max(len(ids), 1))
    for j in range(len(ids)):
        verdict[j] = correct[cls == j].mean()
    return cls, verdict


def majority_curve(o: Outcomes, kmax: int, rows=None, subsets: int = SUBSETS, seed: int = 0) -> np.ndarray:
    """(P, kmax) expected majority-vote accuracy at k = 1..kmax of the problems `rows` (kmax <= their n).

    One pass over the positions of each permutation keeps, per subset, the largest answer
    count, how many answers share it and the sum of their verdicts, so every k costs O(subsets).
    """
    rows = np.arange(len(o.pids)) if rows is None else np.asarray(rows)
    out = np.zeros((rows.size, kmax))
    rng = np.random.default_rng(seed)
    for n_p in np.unique(o.n[rows]):
        group = np.flatnonzero(o.n[rows] == n_p)
        if n_p < kmax:
            raise ValueError(f"majority vote at k={kmax} needs {kmax} samples per problem; some have {n_p}")
        per_chunk = max(1, CHUNK_ELEMENTS // (subsets * int(n_p)))
        for start in range(0, group.size, per_chunk):
            chunk = group[start:start + per_chunk]
            out[chunk] = _majority_chunk([o.answers[rows[i]] for i in chunk], [o.correct[rows[i]] for i in chunk],
                                         int(n_p), kmax, subsets, rng)
    return out


def _majority_chunk(answers, correct, n: int, kmax: int, subsets: int, rng) -> np.ndarray:
    """(len(answers), kmax) for problems with n samples each."""
    P = len(answers)
    coded = [_classes(a, c) for a, c in zip(answers, correct)]
    m = max(v.size for _, v in coded)
    cls = np.stack([c for c, _ in coded])  # (P, n)
    verdict = np.zeros((P, m))
    for i, (_, v) in enumerate(coded):
        verdict[i, :v.size] = v
    N = P * subsets
    problem = np.repeat(np.arange(P), subsets)  # (N,) which problem each subset belongs to
    order = rng.permuted(np.broadcast_to(np.arange(n, dtype=np.int32), (N, n)), axis=1)[:, :kmax]  # (N, kmax)
    drawn = cls[problem[:, None], order]  # (N, kmax) class of the t-th draw, -1: no answer
    counts = np.zeros((N, m), dtype=np.int32)
    top = np.zeros(N, dtype=np.int32)
    tied = np.zeros(N, dtype=np.int32)
    tied_verdict = np.zeros(N)
    out = np.empty((P, kmax))
    for t in range(kmax):
        label = drawn[:, t]
        r = np.flatnonzero(label >= 0)
        cl = label[r]
        counts[r, cl] += 1  # one draw per subset per step: no repeated index
        now = counts[r, cl]
        v = verdict[problem[r], cl]
        lead, join = now > top[r], now == top[r]
        top[r[lead]], tied[r[lead]], tied_verdict[r[lead]] = now[lead], 1, v[lead]
        tied[r[join]] += 1
        tied_verdict[r[join]] += v[join]
        score = np.where(top > 0, tied_verdict / np.maximum(tied, 1), 0.0)
        out[:, t] = score.reshape(P, subsets).mean(1)
    return out


def interpolate(values: np.ndarray, k: float) -> np.ndarray:
    """Column k of values (P, K) for k = 1..K, linear between floor(k) and ceil(k).

    >>> interpolate(np.array([[0.2, 0.4, 0.8]]), 2.25).round(6).tolist()
    [0.5]
    """
    k = max(1.0, k)
    lo, hi = math.floor(k), math.ceil(k)
    w = k - lo
    return (1 - w) * values[:, lo - 1] + w * values[:, hi - 1]


def training_forward_tokens(training: dict | None) -> tuple[float | None, str | None]:
    """(forward tokens of training, note) from a cost.json dict; (None, None) without one.

    >>> training_forward_tokens({"trained_tokens": 3000, "num_iterations": 1, "rollout_tokens": 900})
    (6000.0, None)
    >>> training_forward_tokens({"rollout_tokens": 900})
    (900.0, 'rollout tokens only (no trained_tokens in cost.json)')
    >>> training_forward_tokens({"forward_tokens": 5000, "fine_tune_tokens": 1200})
    (5000.0, None)
    """
    if not training:
        return None, None
    if training.get("forward_tokens"):  # counted by the stage itself (power_distill: teacher sampling + fine-tuning)
        return float(training["forward_tokens"]), None
    trained = training.get("trained_tokens")
    if trained:
        iterations = max(float(training.get("num_iterations") or 1), 1.0)
        return float(trained) * (1 + 1 / iterations), None
    if training.get("rollout_tokens"):
        return float(training["rollout_tokens"]), "rollout tokens only (no trained_tokens in cost.json)"
    return None, None


def _entry(values: np.ndarray, confidence, n_resamples, seed) -> dict:
    means = bootstrap_means(values, n_resamples, seed)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"value": float(values.mean()), "low": float(low), "high": float(high)}


def _verdict(diff: dict) -> str:
    if diff["low"] > 0:
        return "yes"
    return "no" if diff["high"] < 0 else "inconclusive"


class MajorityCache:
    """majority_curve per (reference, problems), kept for the rows that share them.

    A curve's first k columns do not depend on how far it goes (the permutations are drawn
    whole, then cut), so a longer curve serves every shorter request with the same numbers.
    """

    def __init__(self, seed: int = 0):
        self.seed, self.curves = seed, {}

    def get(self, reference: Outcomes, rows: np.ndarray, kmax: int) -> np.ndarray:
        key = (reference.name, rows.tobytes())
        if key not in self.curves or self.curves[key].shape[1] < kmax:
            self.curves[key] = majority_curve(reference, kmax, rows, seed=self.seed)
        return self.curves[key][:, :kmax]


def prompt_tokens(groups: dict[str, list[dict]]) -> list[np.ndarray]:
    """Per problem, (n_p,) prompt tokens of each record of a plain-decoding method; NaN where not known.

    forward_tokens - num_tokens + 1 (num_tokens, else the length of completion_ids); a value
    below 1 or above forward_tokens is not a plain-decoding record's and reads NaN.

    >>> prompt_tokens({"p": [{"cost": {"forward_tokens": 12}, "num_tokens": 5}, {"completion_ids": [7]}]})
    [array([ 8., nan])]
    """
    out = []
    for group in groups.values():
        values = []
        for r in group:
            cost = r.get("cost")
            forward = cost.get("forward_tokens") if isinstance(cost, dict) else None
            tokens = r.get("num_tokens")
            tokens = len(r.get("completion_ids") or []) if tokens is None else tokens
            prompt = np.nan if forward is None else float(forward) - tokens + 1
            values.append(prompt if 1 <= prompt <= (forward or 0) else np.nan)
        out.append(np.array(values, dtype=float))
    return out


def equal_compute_row(method: Outcomes, reference: Outcomes, *, reference_prompts: list[np.ndarray] | None = None,
                      extra_per_problem: float = 0.0, confidence: float = 0.95, n_resamples: int = 2000,
                      seed: int = 0, cache: MajorityCache | None = None) -> dict:
    """One row: `method` against `reference` voting at equal forward tokens; `extra_per_problem`
    (training compute / evaluation problems) is added to the method's cost per completion.

    reference_prompts: prompt_tokens of the reference's records (row i: problem reference.pids[i]);
    without them, or with a record whose prompt is not known, each reference sample is charged
    its own prompt (k = k_prompt_per_sample) and `cost_note` says so.
    """
    ia, ib = shared_problems(method, reference)
    row = {"method": method.name, "reference": reference.name, "problems": int(ia.size),
           "training": extra_per_problem > 0, "status": "ok"}
    if ia.size == 0:
        return {**row, "status": "no shared problem"}
    c_method, missing_m = method.mean_forward(ia)
    c_ref, missing_r = reference.mean_forward(ib)
    n_ref = int(reference.n[ib].min())
    row.update(reference_samples=n_ref, accuracy=_entry(method.rates[ia], confidence, n_resamples, seed))
    for name, c, missing in ((method.name, c_method, missing_m), (reference.name, c_ref, missing_r)):
        if c is None:
            what = f"{missing} record(s)" if missing else "records"
            return {**row, "status": f"no forward tokens in {name}'s {what} (cost.forward_tokens): not computed"}
    cost = c_method + extra_per_problem
    prompt = np.concatenate([reference_prompts[i] for i in ib]).mean() if reference_prompts is not None else np.nan
    row.update(forward_per_completion=cost, reference_forward_per_completion=c_ref,
               k_prompt_per_sample=cost / c_ref)
    if np.isfinite(prompt):
        # k samples of one prompt: prompt + k * (C_R - prompt) forward tokens = C_S.
        completion = c_ref - prompt
        row.update(reference_prompt_tokens=float(prompt), reference_completion_forward=completion)
        if completion <= 0:
            return {**row, "status": f"{reference.name}'s samples cost no forward token beyond the prompt: "
                                     f"k unbounded, not computed"}
        k = (cost - prompt) / completion
    else:
        k = cost / c_ref
        row["cost_note"] = (f"prompt length of {reference.name}'s records unknown: each reference sample is charged "
                            f"its own prompt (k too small, favours {method.name})")
    row["k"] = k
    if extra_per_problem:
        row["training_forward_per_problem"] = extra_per_problem
    if k > n_ref:
        return {**row, "status": f"k > n: k = {k:.3g} exceeds the {n_ref} samples of {reference.name} "
                                 f"(not extrapolated)"}
    if k < 1:
        row["status"] = "k < 1: shown at k = 1 (the reference spends more)"
    kmax = max(1, math.ceil(k))
    row["pass_at_k"] = _entry(interpolate(reference.pass_matrix(range(1, kmax + 1), ib), k), confidence,
                              n_resamples, seed)
    if not reference.answered():
        row["status"] = f"{reference.name}'s records carry no extracted answer: no majority vote"
        return row
    votes = interpolate((cache or MajorityCache(seed)).get(reference, ib, kmax), k)
    row["majority_vote"] = _entry(votes, confidence, n_resamples, seed)
    row["difference"] = _entry(method.rates[ia] - votes, confidence, n_resamples, seed)
    row["beats_voting"] = _verdict(row["difference"])
    return row


def equal_compute_rows(outcomes: dict[str, Outcomes], training: dict[str, dict] | None = None,
                       records: dict[str, dict[str, list[dict]]] | None = None, confidence: float = 0.95,
                       n_resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Every method against every reference (Method.equal_compute_reference) at equal compute, plus training rows.

    records: {name: {problem_id: records}}, the records behind `outcomes` (MethodRecords.by_problem()),
    read for the references' prompt lengths; without them each reference sample is charged its prompt.
    Instances of the base distribution itself get no row of their own; instances of a method this process
    has not registered (a plug-in not installed here) are compared but never serve as a reference.
    """
    training = training or {}
    references = [o for o in outcomes.values() if o.trait("equal_compute_reference")]
    prompts = {r.name: prompt_tokens(records[r.name]) for r in references if records and r.name in records}
    kwargs = dict(confidence=confidence, n_resamples=n_resamples, seed=seed, cache=MajorityCache(seed))
    work = []  # (method, reference, training forward tokens, note) in table order
    for method in outcomes.values():
        if method.trait("samples_base_distribution"):
            continue
        tokens, note = training_forward_tokens(training.get(method.name))
        for reference in references:
            if reference.name != method.name:
                work.append((method, reference, 0.0, None))
                if tokens:
                    work.append((method, reference, tokens, note))
    # The costliest rows first: each reference's majority curve is then computed once, at its longest.
    order = sorted(range(len(work)), key=lambda i: -_rough_k(*work[i][:3]))
    rows: list[dict | None] = [None] * len(work)
    for i in order:
        method, reference, tokens, note = work[i]
        extra = tokens / len(method.pids) if tokens else 0.0
        row = equal_compute_row(method, reference, reference_prompts=prompts.get(reference.name),
                                extra_per_problem=extra, **kwargs)
        if tokens:
            row["training_forward_tokens"] = tokens
            if note:
                row["training_note"] = note
        rows[i] = row
    return rows  # type: ignore[return-value]


def _rough_k(method: Outcomes, reference: Outcomes, tokens: float) -> float:
    """k of a row before it is computed (0 when a cost is missing): only orders the work. The prompt-per-sample
    k is enough for that: for one reference it grows with the method's cost as k does."""
    ia, ib = shared_problems(method, reference)
    c_method, c_ref = method.mean_forward(ia)[0], reference.mean_forward(ib)[0]
    if not ia.size or c_method is None or not c_ref:
        return 0.0
    return (c_method + (tokens / len(method.pids) if tokens else 0.0)) / c_ref
