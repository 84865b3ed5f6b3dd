"""Did each sampler of p^alpha reach its target as configured? Convergence diagnostics from the records.

    from sharpen.analysis.mixing import mixing_diagnostics
    entry = mixing_diagnostics(records_by_problem, settings, seed=0)   # None when no diagnostic applies
    entry["diagnostic"], entry["verdict"]      # "two_starts" / "smc" / "lookahead", e.g. "not mixed"

`sharpen analyze` stores it as metrics.json's methods[<name>]["mixing"] (the METHOD_SECTIONS entry
`mixing` of sharpen.analysis.metrics) and the report shows it under "Mixing diagnostics". Every
sampler here is exact in law as N (steps, particles, rollouts, look-ahead) grows; these say whether
the finite settings of a run got there. Which diagnostic applies is read from what the records
carry, never from the method's name:

- MH chains (records with an `init` field, or whose cost counts `proposals`): **two starts**.
  power_mh with `init: both` grows the chains of even sample indices from the proposal q and odd ones
  from the base model p; MH steps leave p^alpha invariant, so chains that have mixed give the same
  law from either start, and a difference between the starts measures how far they still are from
  it (a high acceptance rate says nothing about that: a chain that accepts small changes near its
  start accepts often and never leaves). Per problem, the two starts' records are compared on
    * answers: Pearson's chi-square statistic of the 2 x m table (start x extracted answer, "no
      answer" one answer), and
    * log-likelihood: T = (mean_base - mean_proposal)^2 / (S^2 (1/n_base + 1/n_proposal)) of the
      records' base_logprob_sum, S^2 the variance of the problem's values (all records, ddof 1);
  each referred to its permutation distribution (PERMUTATIONS relabellings of the starts within the
  problem), giving a per-problem p-value. Across problems, the statistics are summed and the sum is
  referred to the same relabellings made in every problem at once (a stratified permutation test).
  Under "the start does not matter" the labels are exchangeable within each problem, so the test is
  exact for any number of samples per problem; summing pools the evidence of many problems with few
  samples each, where a problem's own p-value cannot go below 1 / C(n, n/2) and Fisher's
  combination of such discrete p-values loses power. p_value = min(1, 2 min(p_answers, p_loglik))
  (Bonferroni over the two tests; p_loglik alone when no record has an answer).
  R-hat (Gelman-Rubin, between the two starts): per problem, the first k records of each start
  (k the smaller count, >= 2) in sample order are two sequences of k values of base_logprob_sum;
  W = mean of their variances (ddof 1), B/k = variance of their two means (ddof 1), V = (k-1)/k W +
  B/k and R-hat = sqrt(V / W). The chains within one start are independent, so the sequences are
  not split in halves (there is no order within a start to check). Per problem it rests on 2k
  values and is noisy: the report gives its median and max. The pooled R-hat, the one the verdict
  uses, is sqrt(sum V_j / sum W_j) over problems, each problem's values divided first by their own
  standard deviation (every problem weighs about equally; sums, not means of ratios, so no problem
  with a tiny W dominates). Verdict: `mixed: false` ("not mixed") when p_value < MIXING_P or the
  pooled R-hat > RHAT_LIMIT (Gelman et al.'s customary 1.1); else "no sign of non-mixing", which is
  not a proof of mixing (both starts may sit in the same wrong place). With one start only the
  entry says that the diagnostic needs `init: both`.
- SMC runs (records whose cost has `log_z`): resamples per run (median), ESS fractions (medians over
  runs of min_ess / N, of the mean ESS / N over the checks, and of the final ESS / N) and the
  spread of log_z over runs of one problem: the median over problems (with >= 2 runs) of the
  per-problem standard deviation of log_z. log Z_hat of independent runs varies by that much;
  above LOG_Z_SD_LIMIT nats (where a log-normal Z_hat's relative variance exp(sd^2) - 1 passes
  1.7: estimates vary by their own size) the particle count is flagged as too small.
- Look-ahead samplers (records whose cost has `lookahead`, or settings with a look-ahead `horizon`
  and `block_size`): the mean look-ahead of a decision (tokens a rollout may draw past the
  candidate) over the mean completion length; "short-sighted" when it is below 1, i.e. the
  look-ahead is shorter than a mean completion and the sampler targets the short-sighted law its
  module describes, not p^alpha.
"""

from __future__ import annotations

import math

import numpy as np

MIXING_P = 0.01  # two starts: "not mixed" when the combined permutation p-value is below this
RHAT_LIMIT = 1.1  # ... or when the pooled R-hat between the starts is above this
PROBLEM_P = 0.05  # the per-problem p-value the share of problems that differ counts
PERMUTATIONS = 2000  # relabellings of the starts (the p-values' resolution is 1 / (PERMUTATIONS + 1))
LOG_Z_SD_LIMIT = 1.0  # SMC: per-problem sd of log Z_hat (nats) above which the particles are too few
STARTS = ("proposal", "base")


def _permutation_p(observed: float, permuted: np.ndarray) -> float:
    """(1 + #{permuted >= observed}) / (1 + count); a relative tolerance keeps float ties as ties."""
    tie = 1e-9 * max(abs(observed), 1.0)
    return float((1 + np.sum(permuted >= observed - tie)) / (1 + permuted.size))


def _answer_statistic(labels: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Pearson chi-square of the (start x answer) table for each row of labels (R, n) in {0, 1}; (R,)."""
    n = labels.shape[1]
    onehot = np.eye(codes.max() + 1)[codes]  # (n, m)
    total = onehot.sum(0)  # (m,) answers' counts: the same under every relabelling
    n_b = labels.sum(1, keepdims=True)  # (R, 1)
    n_a = n - n_b
    c_b = labels @ onehot  # (R, m)
    e_b, e_a = n_b * total / n, n_a * total / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (c_b - e_b) ** 2 / e_b + (total - c_b - e_a) ** 2 / e_a
    return np.nansum(np.where(np.isfinite(terms), terms, 0.0), axis=1)


def _loglik_statistic(labels: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(mean_b - mean_a)^2 / (S^2 (1/n_a + 1/n_b)) for each row of labels (R, n); S^2 the variance of x; (R,)."""
    n = len(x)
    s2 = x.var(ddof=1)
    n_b = labels.sum(1)
    n_a = n - n_b
    if s2 <= 0:
        return np.zeros(labels.shape[0])
    sum_b = labels @ x
    diff = sum_b / n_b - (x.sum() - sum_b) / n_a
    return diff ** 2 / (s2 * (1 / n_a + 1 / n_b))


def _rhat_parts(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    """(V, W) of two sequences of equal length k >= 2: W mean within variance, V = (k-1)/k W + B/k."""
    k = len(a)
    w = (a.var(ddof=1) + b.var(ddof=1)) / 2
    between = (a.mean() - b.mean()) ** 2 / 2  # B/k: variance (ddof 1) of the two means
    return (k - 1) / k * w + between, w


def two_starts(groups: dict[str, list[dict]], *, permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """The two-start diagnostic of MH chains (see the module docstring) from records grouped by problem."""
    records = [r for g in groups.values() for r in g]
    starts = {s: sum(r.get("init") == s for r in records) for s in STARTS}
    out: dict = {"diagnostic": "two_starts", "starts": starts, "records": len(records)}
    if not all(starts.values()):
        only = ", ".join(s for s in STARTS if starts[s]) or "none recorded"
        return out | {"status": f"one start only ({only}): the diagnostic needs init: both", "mixed": None,
                      "verdict": "needs init: both"}
    rng = np.random.default_rng([seed, 0x6D6978])
    answered = any(r.get("extracted_answer") is not None for r in records)
    answers_obs, answers_perm, loglik_obs, loglik_perm = [], [], [], []
    per_problem, v_sum, w_sum, rhats = {}, 0.0, 0.0, []
    for pid, group in groups.items():
        group = [r for r in group if r.get("init") in STARTS]
        labels = np.array([r["init"] == "base" for r in group], dtype=float)
        if labels.sum() == 0 or labels.sum() == len(labels):
            continue  # one start only on this problem
        x = np.array([float(r["base_logprob_sum"]) if r.get("base_logprob_sum") is not None
                      else math.fsum(r.get("token_logprobs") or []) for r in group])
        permuted = rng.permuted(np.tile(labels, (permutations, 1)), axis=1)  # (P, n)
        row = {"n_proposal": int(len(labels) - labels.sum()), "n_base": int(labels.sum())}
        obs, perm = _loglik_statistic(labels[None], x)[0], _loglik_statistic(permuted, x)
        loglik_obs.append(obs)
        loglik_perm.append(perm)
        row["p_loglik"] = _permutation_p(obs, perm)
        if answered:
            names = ["\0" if r.get("extracted_answer") is None else str(r["extracted_answer"]) for r in group]
            codes = np.unique(names, return_inverse=True)[1]
            obs, perm = _answer_statistic(labels[None], codes)[0], _answer_statistic(permuted, codes)
            answers_obs.append(obs)
            answers_perm.append(perm)
            row["p_answers"] = _permutation_p(obs, perm)
        a, b = x[labels == 0], x[labels == 1]
        k = min(len(a), len(b))
        row["rhat"] = None
        if k >= 2:
            v, w = _rhat_parts(a[:k], b[:k])
            if w > 0:
                row["rhat"] = math.sqrt(v / w)
                rhats.append(row["rhat"])
            scale = np.concatenate([a[:k], b[:k]]).var(ddof=1)
            if scale > 0:
                v_sum, w_sum = v_sum + v / scale, w_sum + w / scale
        per_problem[pid] = row
    out["problems"] = len(per_problem)
    if not per_problem:
        return out | {"status": "no problem has records of both starts", "mixed": None,
                      "verdict": "needs both starts on a problem"}

    def combined(observed, permuted, key):
        shares = [row[key] < PROBLEM_P for row in per_problem.values()]
        return {"statistic": float(np.sum(observed)), "p_value": _permutation_p(np.sum(observed), np.sum(permuted, 0)),
                "share_problems_below": float(np.mean(shares))}

    out["loglik"] = combined(loglik_obs, loglik_perm, "p_loglik")
    out["answers"] = combined(answers_obs, answers_perm, "p_answers") if answered else None
    tests = [out["loglik"]["p_value"]] + ([out["answers"]["p_value"]] if answered else [])
    out["p_value"] = min(1.0, len(tests) * min(tests))
    out["rhat"] = {"pooled": math.sqrt(v_sum / w_sum) if w_sum > 0 else None,
                   "median": float(np.median(rhats)) if rhats else None,
                   "max": float(np.max(rhats)) if rhats else None, "problems": len(rhats)}
    pooled = out["rhat"]["pooled"]
    out["mixed"] = not (out["p_value"] < MIXING_P or (pooled is not None and pooled > RHAT_LIMIT))
    out |= {"status": "ok", "verdict": "no sign of non-mixing" if out["mixed"] else "not mixed",
            "thresholds": {"p_value": MIXING_P, "rhat": RHAT_LIMIT, "problem_p": PROBLEM_P},
            "permutations": permutations, "per_problem": per_problem}
    return out


def _median(values) -> float | None:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.median(values)) if values else None


def smc(groups: dict[str, list[dict]]) -> dict:
    """Resampling and ESS figures of SMC runs, and the spread of log_z over runs of one problem."""
    costs = [r["cost"] for g in groups.values() for r in g if "log_z" in (r.get("cost") or {})]

    def fraction(c, key):
        n = c.get("num_particles")
        return c[key] / n if c.get(key) is not None and n else None

    spreads = []
    for g in groups.values():
        log_z = [r["cost"]["log_z"] for r in g if (r.get("cost") or {}).get("log_z") is not None]
        log_z = [v for v in log_z if math.isfinite(v)]
        if len(log_z) >= 2:
            spreads.append(float(np.std(log_z, ddof=1)))
    sd = _median(spreads)
    out = {"diagnostic": "smc", "status": "ok", "runs": len(costs),
           "num_particles": _median(c.get("num_particles") for c in costs),
           "resamples_median": _median(c.get("resamples") for c in costs),
           "min_ess_fraction_median": _median(fraction(c, "min_ess") for c in costs),
           "mean_ess_fraction_median": _median(c.get("mean_ess_fraction") for c in costs),
           "final_ess_fraction_median": _median(c.get("final_ess_fraction") for c in costs),
           "log_z_sd_median": sd, "log_z_sd_problems": len(spreads),
           "few_particles": None if sd is None else sd > LOG_Z_SD_LIMIT,
           "thresholds": {"log_z_sd": LOG_Z_SD_LIMIT}}
    out["verdict"] = {None: "log_z spread needs >= 2 runs per problem", True: "particle count too small",
                      False: "no sign of too few particles"}[out["few_particles"]]
    return out


def _settings_lookahead(settings: dict | None) -> float | None:
    """Mean look-ahead per decision from the settings of a look-ahead sampler (budget caps left out)."""
    settings = settings or {}
    horizon, size = settings.get("horizon"), settings.get("block_size")
    if not isinstance(size, int) or horizon not in ("sliding", "block"):
        return None
    return float(size) if horizon == "sliding" else (size - 1) / 2  # a block's decisions see B-1, ..., 0 tokens


def lookahead(groups: dict[str, list[dict]], settings: dict | None) -> dict | None:
    """The look-ahead of a decision against the completions' mean length; None without a look-ahead."""
    records = [r for g in groups.values() for r in g]
    per_record = [r["cost"]["lookahead"] for r in records if (r.get("cost") or {}).get("lookahead") is not None]
    source, value = "records", float(np.mean(per_record)) if per_record else None
    if value is None:
        source, value = "settings", _settings_lookahead(settings)
    if value is None:
        return None
    length = float(np.mean([len(r["completion_ids"]) for r in records]))
    ratio = value / length if length else None
    short = ratio is not None and ratio < 1
    return {"diagnostic": "lookahead", "status": "ok", "source": source, "lookahead": value,
            "completion_tokens": length, "ratio": ratio, "short_sighted": short,
            "verdict": "short-sighted" if short else "look-ahead covers a mean completion"}


def mixing_diagnostics(groups: dict[str, list[dict]], settings: dict | None = None, *, seed: int = 0,
                       permutations: int = PERMUTATIONS) -> dict | None:
    """The diagnostic the records call for (module docstring), or None (plain sampling: nothing to reach)."""
    records = [r for g in groups.values() for r in g]
    if any("init" in r or "proposals" in (r.get("cost") or {}) for r in records):
        return two_starts(groups, permutations=permutations, seed=seed)
    if any("log_z" in (r.get("cost") or {}) for r in records):
        return smc(groups)
    return lookahead(groups, settings)


def mixing_scalars(entry: dict | None) -> dict[str, float]:
    """The headline numbers of a diagnostic, flat (wandb summaries: mixing/<key>); {} for None.

    >>> mixing_scalars({"diagnostic": "lookahead", "ratio": 0.25, "short_sighted": True, "lookahead": 16.0})
    {'lookahead': 16.0, 'ratio': 0.25, 'short_sighted': 1.0}
    """
    if not entry:
        return {}
    keys = {"two_starts": ("p_value", "mixed"), "smc": (
        "resamples_median", "min_ess_fraction_median", "mean_ess_fraction_median", "final_ess_fraction_median",
        "log_z_sd_median", "few_particles"), "lookahead": ("lookahead", "ratio", "short_sighted")}
    out = {k: entry.get(k) for k in keys.get(entry.get("diagnostic"), ())}
    if entry.get("diagnostic") == "two_starts":
        for test in ("answers", "loglik"):
            part = entry.get(test) or {}
            out[f"{test}_p_value"] = part.get("p_value")
            out[f"{test}_share_problems_below"] = part.get("share_problems_below")
        out |= {f"rhat_{k}": (entry.get("rhat") or {}).get(k) for k in ("pooled", "median", "max")}
    out = {k: float(v) if isinstance(v, bool) else v for k, v in out.items()}
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
