"""Did each sampler reach p^alpha? A weighted method's importance-sampling estimate, and every sampler against it.

    from sharpen.analysis.metrics import compute_metrics
    metrics = compute_metrics(run)                # run holds a weighted method (Method.weighted), e.g. power_is
    metrics["methods"]["power_is"]["accuracy"]    # estimated accuracy under p^alpha: {value, low, high, problems}
    metrics["methods"]["power_is"]["ess"]         # effective sample size over problems: {median, min, share_below_5}
    metrics["target"][0]                          # {"estimate": "power_is", "method": "power_mh", "difference": ...,
                                                  #  "verdict": "reached" | "within tolerance" | "missed" | "cannot tell (...)"}

`sharpen analyze RUN_DIR` writes them to metrics.json and report.md ("Did the samplers reach p^alpha?");
`python -m pytest -q tests/test_target.py` checks them on synthetic weighted records.

A weighted method's records are draws x_1..x_n of a proposal q, each with its importance_log_weight
lw_i = alpha log p(x_i) - log q(x_i). Per problem, with w_i = exp(lw_i - max lw),

    estimate = sum_i w_i c_i / sum_i w_i   (c_i the record's `correct`),   ESS = (sum w)^2 / sum w^2:

the self-normalised estimate of the problem's accuracy under p^alpha (consistent, with an O(1/n)
bias) and how many exact draws of p^alpha it is worth. The method's accuracy is the mean of the
estimates over problems with a percentile bootstrap interval over problems; its base-model scores
(log-likelihood, confidence, self-certainty from RUN_DIR/scores/) are weighted the same way. The
records describe q, not p^alpha: pass@k, majority vote, diversity, entropy, support, coverage,
crossover, boundary and equal compute are not reported for a weighted method (`not_reported` says
why), and its Outcomes.rates are its estimates, so the paired comparisons compare estimates.

The `target` rows: for each weighted method W and each method M that samples the base model, is
not weighted and has W's alpha (or samples p itself: base, the *reference*, no alpha), on the
problems both have, the per-problem difference accuracy(M) - estimate(W), its mean with a
percentile bootstrap over problems (the two resampled together), and a verdict:

- "cannot tell (ESS too low)": W's median ESS on those problems is below MIN_ESS;
- "reached": the interval holds 0 and lies within +-tolerance (AnalysisConfig.target_tolerance);
- "within tolerance": the interval excludes 0 but lies within +-tolerance: a difference the samples
  resolve, smaller than the margin the study set (the testbed's power_mh at 8 samples per problem:
  +0.002 [0.0015, 0.0026]): not p^alpha exactly, and not a miss at the study's resolution;
- "missed": the interval excludes 0 and reaches beyond +-tolerance;
- "cannot tell (interval too wide)": neither.

A high MH acceptance rate is no evidence of reaching p^alpha: a chain that accepts most proposals
may still sit far from its target, and only this comparison measures where samples end up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sharpen.sampling.methods import find_method

from .stats import interval_entry, mean_interval

if TYPE_CHECKING:
    from .metrics import MetricInputs  # a type only: metrics imports this module
    from .runs import MethodRecords  # a type only

WEIGHT_FIELD = "importance_log_weight"  # a weighted method's record field: alpha log p(x) - log q(x)
MIN_ESS = 5  # below this median ESS, an estimate rests on too few effective draws to judge a sampler by
NOT_REPORTED = ("its records are draws of the proposal, not of p^alpha: this number would describe the proposal; "
                "its accuracy and base-model scores are self-normalised importance-sampling estimates instead")
NOT_REPORTED_KEYS = ("pass_at_k", "majority_vote", "diversity", "entropy", "support")  # None in a weighted block
NOT_COMPARED = ("coverage", "crossover", "boundary", "equal_compute")  # rows left out for a weighted method


def importance_weights(log_weights) -> np.ndarray:
    """One problem's self-normalised weights: w_i = exp(lw_i - max lw) / sum w (no overflow at any scale).

    >>> importance_weights([0.0, np.log(3.0)]).round(6).tolist()
    [0.25, 0.75]
    >>> importance_weights([-5000.0, -5000.0]).tolist()
    [0.5, 0.5]
    """
    lw = np.asarray(log_weights, dtype=float)
    w = np.exp(lw - lw.max())
    return w / w.sum()


def effective_sample_size(weights) -> float:
    """(sum w)^2 / sum w^2: n for equal weights, 1 when one draw carries all the weight.

    >>> effective_sample_size([1, 1, 1, 1]), effective_sample_size([0.5, 0.0, 0.0]), effective_sample_size([3, 1])
    (4.0, 1.0, 1.6)
    """
    w = np.asarray(weights, dtype=float)
    return float(w.sum() ** 2 / (w ** 2).sum())


def ess_summary(ess) -> dict:
    """{median, min, share_below_5, problems} of per-problem ESS values.

    >>> ess_summary([1.0, 4.0, 8.0, 10.0])
    {'median': 6.0, 'min': 1.0, 'share_below_5': 0.5, 'problems': 4}
    """
    ess = np.asarray(ess, dtype=float)
    return {"median": float(np.median(ess)), "min": float(ess.min()), "share_below_5": float(np.mean(ess < MIN_ESS)),
            "problems": int(ess.size)}


def verdict(difference: dict, ess_median: float, tolerance: float) -> str:
    """Whether a sampler reached p^alpha, from the interval of accuracy - estimate and the estimate's median ESS.

    >>> verdict({"low": -0.02, "high": 0.03}, 12.0, 0.05), verdict({"low": 0.01, "high": 0.2}, 12.0, 0.05)
    ('reached', 'missed')
    >>> verdict({"low": -0.02, "high": 0.03}, 3.0, 0.05), verdict({"low": -0.2, "high": 0.1}, 12.0, 0.05)
    ('cannot tell (ESS too low)', 'cannot tell (interval too wide)')
    >>> verdict({"low": 0.0015, "high": 0.0026}, 12.0, 0.05)   # resolved, but inside the tolerance
    'within tolerance'
    """
    if ess_median < MIN_ESS:
        return "cannot tell (ESS too low)"
    inside = -tolerance <= difference["low"] and difference["high"] <= tolerance
    if difference["low"] > 0 or difference["high"] < 0:
        return "within tolerance" if inside else "missed"
    return "reached" if inside else "cannot tell (interval too wide)"


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value whose cumulative weight reaches q of the total."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, q * cumulative[-1])])


def weighted_base_scores(method: MethodRecords, groups: dict[str, list[dict]], weights: list[np.ndarray],
                         score_names, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict | None:
    """metrics' base_scores block under p^alpha: per problem the weighted mean of each score over the scored
    records (weights renormalised over them), its mean over problems with an interval; median, std and the
    means over correct / incorrect records with every problem's weights summing to 1. None without scores."""
    per_group = [[(r, s, w) for r, w in zip(g, ws) if (s := method.score_of(r)) is not None]
                 for g, ws in zip(groups.values(), weights)]
    scored = [item for group in per_group for item in group]
    if not scored:
        return None
    out = {"model": sorted({str(s.get("model")) for _, s, _ in scored}), "scored": len(scored),
           "unscored": sum(len(g) for g in groups.values()) - len(scored), "weighted": True}
    for name in score_names:
        per_problem, values, pooled, correct = [], [], [], []
        for group in per_group:
            kept = [(s[name], w, bool(r["correct"])) for r, s, w in group if s.get(name) is not None]
            w = np.array([x[1] for x in kept], dtype=float)
            if not kept or w.sum() <= 0:
                per_problem.append(None)
                continue
            v, w = np.array([x[0] for x in kept], dtype=float), w / w.sum()
            per_problem.append(float(w @ v))
            values.append(v)
            pooled.append(w)
            correct.append(np.array([x[2] for x in kept]))
        entry = {**interval_entry(per_problem, confidence, n_resamples, seed), "median": None, "std": None,
                 "samples": int(sum(v.size for v in values)), "mean_correct": None, "mean_incorrect": None}
        if values:
            v, w, ok = np.concatenate(values), np.concatenate(pooled), np.concatenate(correct)
            mean = float(w @ v / w.sum())
            entry.update(median=_weighted_quantile(v, w, 0.5), std=float(np.sqrt(w @ (v - mean) ** 2 / w.sum())))
            for key, mask in (("mean_correct", ok), ("mean_incorrect", ~ok)):
                if w[mask].sum() > 0:
                    entry[key] = float(w[mask] @ v[mask] / w[mask].sum())
        out[name] = entry
    diffs = [abs(float(r["base_logprob_mean"]) - float(s["logprob_mean"])) for r, s, _ in scored
             if r.get("base_logprob_mean") is not None and s.get("logprob_mean") is not None]
    out["sampler_logprob_mean_abs_diff"] = float(np.mean(diffs)) if diffs else None  # a record check: unweighted
    return out


def weighted_extractions(groups: dict[str, list[dict]], weights: list[np.ndarray], confidence: float = 0.95,
                         n_resamples: int = 2000, seed: int = 0) -> dict | None:
    """metrics' extractions block with each extraction's accuracy estimated under p^alpha; None without verdicts."""
    names = sorted({k for g in groups.values() for r in g for k in (r.get("verdicts") or {})})
    if not names:
        return None
    records = [r for g in groups.values() for r in g if r.get("verdicts")]
    out = {"disagreements": sum(len(set(r["verdicts"].values())) > 1 for r in records), "records": len(records)}
    for name in names:
        rates = [float(w @ np.array([bool((r.get("verdicts") or {}).get(name)) for r in g], dtype=float))
                 for g, w in zip(groups.values(), weights)]
        out[name] = interval_entry(rates, confidence, n_resamples, seed)
    return out


def weighted_block(name: str, inputs: MetricInputs, score_names) -> dict:
    """A weighted method's block in metrics["methods"]: accuracy, base_scores and extractions as estimates under
    p^alpha, `ess`, `estimates` (per problem: estimate, ESS), None for what the draws cannot say (NOT_REPORTED)."""
    o, method, groups = inputs.outcomes[name], inputs.run.methods[name], inputs.groups[name]
    ess = np.array([effective_sample_size(w) for w in o.weights])
    rates = o.rates
    out = {"weighted": True, "accuracy": interval_entry(rates.tolist(), **inputs.interval), "ess": ess_summary(ess),
           "estimates": {pid: {"estimate": float(e), "ess": float(s)} for pid, e, s in zip(o.pids, rates, ess)},
           "base_scores": weighted_base_scores(method, groups, o.weights, score_names, **inputs.interval),
           "extractions": weighted_extractions(groups, o.weights, **inputs.interval),
           **{key: None for key in NOT_REPORTED_KEYS},
           "not_reported": {key: NOT_REPORTED for key in NOT_REPORTED_KEYS + NOT_COMPARED}}
    if out["ess"]["median"] < MIN_ESS:
        inputs.warnings.append(f"{name}: median effective sample size {out['ess']['median']:.1f} < {MIN_ESS}: its "
                               f"estimate of p^alpha rests on a few completions per problem (more samples, or a "
                               f"proposal closer to p^alpha)")
    scores = out["base_scores"]
    if scores and scores["unscored"]:
        inputs.warnings.append(f"{name}: {scores['unscored']} record(s) have no base-model scores; its weighted "
                               f"likelihood and confidence use the other {scores['scored']}")
    return out


def _alpha(method: MethodRecords) -> float | None:
    value = (method.settings or {}).get("alpha")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _compared(w_name: str, w_alpha: float | None, m_name: str, inputs: MetricInputs) -> tuple[str | None, str | None]:
    """(role, None) when M is held against W's estimate: "reference" (p itself) or "sampler"; (None, why) when not;
    (None, None) when M does not sample the base model (nothing to say)."""
    o = inputs.outcomes[m_name]
    method = find_method(o.kind)
    if method is None:
        return None, f"method {o.kind} is not registered here: which model it samples is unknown"
    if method.model != "base":
        return None, None
    m_alpha = _alpha(inputs.run.methods[m_name])
    if m_alpha is None:
        if o.trait("samples_base_distribution"):
            return "reference", None
        return None, "its settings record no alpha"
    if w_alpha is None:
        return None, f"{w_name}'s settings record no alpha"
    if abs(m_alpha - w_alpha) > 1e-9 * max(1.0, abs(w_alpha)):
        return None, f"its alpha {m_alpha:g} is not {w_name}'s {w_alpha:g}"
    return "sampler", None


def reached_target(inputs: MetricInputs, metrics: dict) -> dict:
    """metrics.json's `target`: each sampler of the base model against each weighted method's estimate of p^alpha."""
    rows = []
    tolerance = inputs.target_tolerance
    for w_name, w in inputs.outcomes.items():
        if not w.weighted:
            continue
        w_alpha = _alpha(inputs.run.methods[w_name])
        ess = np.array([effective_sample_size(x) for x in w.weights])
        for m_name, m in inputs.outcomes.items():
            if m.weighted:
                continue
            role, why_not = _compared(w_name, w_alpha, m_name, inputs)
            row = {"estimate": w_name, "method": m_name, "alpha": w_alpha}
            if role is None:
                if why_not:
                    rows.append({**row, "verdict": None, "skipped": why_not})
                continue
            shared = [pid for pid in w.pids if pid in m._rows]
            if not shared:
                rows.append({**row, "role": role, "problems": 0, "verdict": None, "skipped": "no shared problem"})
                continue
            iw, im = w.rows(shared), m.rows(shared)
            d = m.rates[im] - w.rates[iw]  # (P,) per problem: the pair is resampled together
            value, low, high = mean_interval(d, **inputs.interval)
            difference = {"value": value, "low": low, "high": high}
            ess_median = float(np.median(ess[iw]))
            rows.append({**row, "role": role, "problems": len(shared),
                         "accuracy": interval_entry(m.rates[im].tolist(), **inputs.interval),
                         "estimated_accuracy": interval_entry(w.rates[iw].tolist(), **inputs.interval),
                         "difference": difference, "ess_median": ess_median, "tolerance": tolerance,
                         "verdict": verdict(difference, ess_median, tolerance)})
    return {"target": rows}
