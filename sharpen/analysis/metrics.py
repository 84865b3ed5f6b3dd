"""Every number of a run's report, computed from its records and stored scores: the content of metrics.json.

    from sharpen.analysis.runs import attach_scores, load_run
    run = load_run("runs/demo"); attach_scores(run, None)
    metrics = compute_metrics(run)
    metrics["methods"]["base"]["pass_at_k"]    # {"k": [...], "value": [...], "low": [...], "high": [...]}
    metrics["paired"][0]                       # low_temp - base: difference, interval, permutation p-value

`sharpen analyze RUN_DIR` calls it and writes the result to RUN_DIR/metrics.json
(sharpen.analysis.pipeline). metrics.json is METRIC_SECTIONS in order: each section is a
function `section(inputs, metrics) -> dict` returning the top-level keys it adds, from the
shared MetricInputs (the records grouped by problem, their Outcomes, sample counts, the
interval settings) and the blocks made before it; a section appends what it finds wrong to
inputs.warnings. Each method's block is METHOD_SECTIONS in order, `section(name, inputs) ->
dict`. To add an analysis: one function in METHOD_SECTIONS (per method) or METRIC_SECTIONS
(across methods), then one in sharpen.analysis.report.REPORT_SECTIONS to show it.

Per method instance: accuracy, pass@k up to the method's own samples-per-problem (the
smallest over its problems; every k up to 16, then powers of two and 1.5 times them, then n:
stats.k_grid), majority vote, base-model scores (from RUN_DIR/scores/<name>.jsonl, see
sharpen.analysis.scoring), diversity (over the first settings.diversity_samples_per_problem samples:
the run's smallest n of at least 2, at most DIVERSITY_MAX_SAMPLES) and cost (the sum of the
records' wall-time shares, and the elapsed sampling time of the sessions in
<name>.sessions.jsonl). Then every pair of methods
on the problems both have (`paired`): diff, the mean per-problem pass-rate difference b - a,
with its paired bootstrap interval; p_value from the paired sign-flip permutation test of that
same mean (test "permutation": exact up to 20 differing problems, else 20000 seeded flips),
p_holm over the pairs, and wilcoxon_p (mcnemar_p with one sample per problem) as a secondary
test of another quantity (sharpen.analysis.stats.paired_comparison). Each number carries the
counts it was computed from, and `per_problem` holds (n, correct) for every problem and
method, so a reader can recompute any accuracy by hand from the records. `files` names each
record file (sha256, lines, config, environments); `environment` is the analysis's own
(sharpen.runs.provenance.environment()).

Large-k entries (an "entry" is {"value", "low", "high", ...} with a percentile bootstrap
interval over problems, like accuracy; the modules named hold the full definitions):

- methods[name]["coverage"]: pass@N on the problems every method has, N the smallest
  samples-per-problem among all methods there; also "k" (= N) and "problems"
  (sharpen.analysis.large_k). None, with a warning, when no problem is shared by all.
- methods[name]["entropy"] = {"token": entry | None, "token_note": str, "answer": entry | None}.
  token: Monte-Carlo entropy rate of the method's own samples, per problem
  sum(-log q) / sum(tokens) in nats per generated token, q the distribution each token was
  drawn from; available where the records hold log q (kinds base and grpo at temperature 1
  without top-k/top-p, or any record with `sampling_logprobs`), else None and token_note
  says why. answer: per problem the Shannon entropy (nats) of the extracted answers of the
  first settings.entropy_samples_per_problem samples ("no answer" counted as one answer),
  averaged over problems (sharpen.analysis.entropy).
- methods[name]["support"] = {"retention": entry | None, "new_correct_answers": entry, "samples", "problems"}
  against the reference base on the shared problems, first m samples of each (m the smaller
  count): retention, over problems where base has a correct answer, of the fraction of base's
  distinct correct answers the method also gives; new_correct_answers, the mean number per
  problem of distinct correct answers base did not give (plus "total"). None for the reference
  base itself (its retention is 1 by definition) and without extracted answers.
- crossover: one entry per method other than the reference base, vs base on their shared
  problems up to the smaller n: the first k with base pass@k >= the method's after being
  below it. value/low/high: a k, 0 (base never below) or None (none up to max_k); status,
  low_status, high_status name the case; draws_none / draws_never_below / draws_crossover
  the share of resamples of each case (sharpen.analysis.large_k).
- boundary: one entry per pair (a, b) on their shared problems at k = the smaller n: expected
  problems solved only by a, only by b, by both, by neither and net = only_b - only_a, each
  an entry of counts (sharpen.analysis.boundary).
- equal_compute: one row per (method, reference) with reference an instance of kind base or
  low_temp: k = (C_method - prompt_reference) / (C_reference - prompt_reference), the reference
  samples whose cost, the prompt prefilled once, equals one completion of the method (C: mean
  forward tokens per completion on the shared problems; k_prompt_per_sample = C_method /
  C_reference, a prefill per sample, beside it), the method's accuracy, the reference's
  majority vote and pass@k at that k, difference = accuracy - majority vote and beats_voting
  yes / no / inconclusive; "status" says "ok" or why numbers are missing (k > n, no forward
  tokens). A method with a training cost gets a second row with training forward tokens / its
  problems added to its cost (training: true) (sharpen.analysis.equal_compute).
- reference_base: the instance crossover and support compare against (None without one).
- A weighted method (Method.weighted, e.g. power_is: records are proposal draws with importance weights):
  its block skips the DRAWS_ONLY sections; accuracy, base_scores and extractions are self-normalised
  estimates under p^alpha, plus `weighted`, `ess` {median, min, share_below_5}, `estimates` per problem,
  None for pass_at_k, majority_vote, diversity, entropy, support and a `not_reported` note; coverage,
  crossover, boundary and equal compute leave it out (MetricInputs.drawn); paired comparisons use its
  estimates (Outcomes.rates).
- methods[name]["mixing"]: the sampler's convergence diagnostic, chosen by what its records carry
  (sharpen.analysis.mixing): MH chains from two starts (init: both; permutation tests of answers and
  log-likelihood between the starts, R-hat, verdict `mixed`), SMC (resamples, ESS fractions, spread
  of log_z), or look-ahead samplers (look-ahead / mean completion length, `short_sighted`). None
  for plain sampling.
- target: each sampler of the base model with the weighted method's alpha (and base, the reference)
  against its estimate: difference with a paired interval and a verdict, reached / missed / cannot
  tell (sharpen.analysis.target).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from sharpen.runs.provenance import environment, library_differences

from . import diversity as div
from .boundary import boundary
from .entropy import answer_entropy, support, token_entropy
from .equal_compute import SUBSETS, equal_compute_rows
from .large_k import coverage, crossover
from .mixing import mixing_diagnostics
from .outcomes import Outcomes, reference_base
from .runs import MethodRecords, Run
from .stats import holm, k_grid, majority_vote_score, mean_interval, paired_comparison, pass_at_k_curve
from .square import sharpening_square
from .target import MIN_ESS, reached_target, weighted_block

SCORE_NAMES = ("logprob_mean", "logprob_sum", "confidence", "self_certainty")
DIVERSITY_MAX_SAMPLES = 64  # diversity uses the first min(smallest n, 64) samples of each problem
COST_FIELDS = ("sampled_tokens", "forward_tokens", "wall_seconds", "proposals", "accepted", "rollout_tokens",
               "resamples")


def completion_tokens(record: dict) -> list[int]:
    """Generated token ids without the closing EOS (it would be a shared n-gram of every sample)."""
    ids = list(record["completion_ids"])
    return ids[:-1] if record.get("finish_reason") == "eos" and ids else ids


def _interval(values, confidence, n_resamples, seed) -> dict:
    mean, low, high = mean_interval(values, confidence, n_resamples, seed)
    return {"value": mean, "low": low, "high": high,
            "problems": int(sum(v is not None and math.isfinite(v) for v in values))}


def _base_scores(method: MethodRecords, groups: dict[str, list[dict]], confidence, n_resamples, seed) -> dict | None:
    """Mean (interval over problems), median and spread of each base-model score."""
    # Each record's scores looked up once: (record, scores) per problem, scored records only.
    per_group = [[(r, s) for r in g if (s := method.score_of(r)) is not None] for g in groups.values()]
    scored = [pair for group in per_group for pair in group]
    if not scored:
        return None
    total = sum(len(g) for g in groups.values())
    out = {"model": sorted({str(s.get("model")) for _, s in scored}), "scored": len(scored),
           "unscored": total - len(scored)}
    for name in SCORE_NAMES:
        per_problem = []
        for group in per_group:
            values = [s[name] for _, s in group if s.get(name) is not None]
            per_problem.append(float(np.mean(values)) if values else None)
        pairs = [(s[name], bool(r["correct"])) for r, s in scored if s.get(name) is not None]
        values = np.array([v for v, _ in pairs], dtype=float)
        split = {flag: [v for v, ok in pairs if ok is flag] for flag in (True, False)}
        out[name] = {**_interval(per_problem, confidence, n_resamples, seed),
                     "median": float(np.median(values)) if values.size else None,
                     "std": float(values.std()) if values.size else None, "samples": int(values.size),
                     "mean_correct": float(np.mean(split[True])) if split[True] else None,
                     "mean_incorrect": float(np.mean(split[False])) if split[False] else None}
    # Log-probs recorded while sampling come from the sampling model at temperature 1; for a
    # method sampled from the base model they must match this forward pass up to rounding.
    diffs = [abs(float(r["base_logprob_mean"]) - float(s["logprob_mean"])) for r, s in scored
             if r.get("base_logprob_mean") is not None and s.get("logprob_mean") is not None]
    out["sampler_logprob_mean_abs_diff"] = float(np.mean(diffs)) if diffs else None
    return out


def _diversity(groups, samples_used: int, embeddings, confidence, n_resamples, seed) -> dict:
    """Per-problem diversity over the first `samples_used` samples, averaged over problems."""
    per_problem: dict[str, list] = {f"distinct_{n}": [] for n in range(1, 5)}
    per_problem.update(self_bleu=[], distinct_answers=[], embedding_distance=[], vendi=[])
    any_answer = any(r.get("extracted_answer") is not None for g in groups.values() for r in g)
    for pid, group in groups.items():
        group = group[:samples_used]
        if len(group) < 2:
            continue
        for name, value in div.token_diversity([completion_tokens(r) for r in group]).items():
            per_problem[name].append(value)
        if any_answer:
            count = div.distinct_answers([r.get("extracted_answer") for r in group])
            per_problem["distinct_answers"].append(0 if count is None else count)
        if embeddings is not None and pid in embeddings:
            result = div.embedding_diversity(embeddings[pid][:samples_used])
            if result is not None:
                per_problem["embedding_distance"].append(result[0])
                per_problem["vendi"].append(result[1])
    out = {"samples_per_problem": samples_used}
    for name, values in per_problem.items():
        out[name] = _interval(values, confidence, n_resamples, seed) if any(v is not None for v in values) else None
    return out


def _extractions(groups: dict[str, list[dict]], confidence, n_resamples, seed) -> dict | None:
    """Accuracy under each answer extraction the records carry (`verdicts`: strict / flexible), and how
    many records the extractions disagree on; None when the records carry no verdicts."""
    names = sorted({k for g in groups.values() for r in g for k in (r.get("verdicts") or {})})
    if not names:
        return None
    out = {"disagreements": 0, "records": 0}
    for g in groups.values():
        for r in g:
            verdicts = r.get("verdicts") or {}
            if verdicts:
                out["records"] += 1
                out["disagreements"] += len(set(verdicts.values())) > 1
    for name in names:
        rates = [float(np.mean([bool((r.get("verdicts") or {}).get(name)) for r in g])) for g in groups.values()]
        out[name] = _interval(rates, confidence, n_resamples, seed)
    return out


def _cost(records: list[dict], sessions: list[dict], training: dict | None) -> dict:
    """Totals and means of the records' costs; `sessions`: measured elapsed sampling time, when recorded.

    A record's wall_seconds is its share of the measured time, so the total is the sum of
    shares; the sessions' elapsed_seconds is the time the sampler measured end to end. A session
    of several processes logs one line per process (rank, world_size), and each process's
    records share that process's time, so both totals count process-seconds.
    """
    with_cost = [r["cost"] for r in records if isinstance(r.get("cost"), dict)]
    out = {"records_with_cost": len(with_cost), "records": len(records)}
    found: dict[str, list[float]] = {name: [] for name in COST_FIELDS}
    for c in with_cost:  # one pass: a run may hold millions of records
        for name, value in c.items():
            if value is not None and name in found:
                found[name].append(float(value))
    for name, values in found.items():
        if values:
            out[name] = {"total": float(np.sum(values)), "per_sample": float(np.mean(values)), "samples": len(values)}
    if "proposals" in out and "accepted" in out and out["proposals"]["total"] > 0:
        out["acceptance_rate"] = out["accepted"]["total"] / out["proposals"]["total"]
    tokens = [len(r["completion_ids"]) for r in records]
    out["completion_tokens"] = {"total": int(np.sum(tokens)), "per_sample": float(np.mean(tokens))}
    timed = [s for s in sessions if s.get("elapsed_seconds") is not None]
    if timed:
        out["sessions"] = {"count": sum(int(s.get("rank") or 0) == 0 for s in timed), "lines": len(timed),
                           "processes": max(int(s.get("world_size") or 1) for s in timed),
                           "elapsed_seconds": float(sum(float(s["elapsed_seconds"]) for s in timed)),
                           "records_written": int(sum(int(s.get("records_written") or 0) for s in timed))}
    if training:
        out["training"] = training
    return out


@dataclass
class MetricInputs:
    """What every metric section reads: the run, its records grouped by problem, their outcomes and sample counts.

    `warnings` is metrics.json's warnings list: a section appends to it as it finds something to say.
    """

    run: Run
    groups: dict[str, dict[str, list[dict]]]  # {method: {problem_id: records by sample_idx}}
    outcomes: dict[str, Outcomes]
    n_min: dict[str, int]  # {method: fewest samples of any of its problems}
    n_max: dict[str, int]
    base_name: str | None  # the reference base instance (crossover, support)
    entropy_n: int | None  # answer entropy's samples per problem: the smallest n of at least 2
    diversity_n: int | None  # the same, at most DIVERSITY_MAX_SAMPLES
    embeddings: dict
    training_costs: dict
    interval: dict  # confidence, n_resamples, seed of every interval
    warnings: list[str]
    target_tolerance: float = 0.05  # the `target` verdicts' "reached" margin (AnalysisConfig.target_tolerance)

    @property
    def drawn(self) -> dict[str, Outcomes]:
        """The outcomes of methods whose records are draws of their own distribution (all but weighted methods):
        what pass@k-based comparisons (coverage, crossover, boundary, equal compute) may read."""
        return {name: o for name, o in self.outcomes.items() if not o.weighted}

    @classmethod
    def of(cls, run: Run, *, embeddings: dict | None, training_costs: dict | None, confidence: float,
           n_resamples: int, seed: int, target_tolerance: float = 0.05) -> MetricInputs:
        warnings = list(run.warnings)
        groups = {name: m.by_problem() for name, m in run.methods.items()}
        outcomes = {name: Outcomes.from_groups(name, run.methods[name].kind, by_problem)
                    for name, by_problem in groups.items()}
        n_min = {name: min(len(g) for g in by_problem.values()) for name, by_problem in groups.items()}
        n_max = {name: max(len(g) for g in by_problem.values()) for name, by_problem in groups.items()}
        multi = [n for name, n in n_min.items() if n >= 2 and not outcomes[name].weighted]
        entropy_n = min(multi) if multi else None
        # Self-BLEU and embedding distances cost O(m^2) per problem: 1024 samples x 500 problems would take
        # minutes, and the measures settle long before that.
        diversity_n = min(entropy_n, DIVERSITY_MAX_SAMPLES) if entropy_n else None
        problem_sets = {name: set(by_problem) for name, by_problem in groups.items()}
        if len({frozenset(s) for s in problem_sets.values()}) > 1:
            counts = ", ".join(f"{name} {len(s)}" for name, s in problem_sets.items())
            warnings.append(f"methods cover different problems ({counts}): each method's own table uses all its "
                            f"problems; paired comparisons use the problems both methods have")
        base_name = reference_base({name: o for name, o in outcomes.items() if not o.weighted})
        if base_name is None:
            warnings.append("no method of kind base: crossover and support retention are not computed")
        return cls(run=run, groups=groups, outcomes=outcomes, n_min=n_min, n_max=n_max, base_name=base_name,
                   entropy_n=entropy_n, diversity_n=diversity_n, embeddings=embeddings or {},
                   training_costs=training_costs or {},
                   interval=dict(confidence=confidence, n_resamples=n_resamples, seed=seed), warnings=warnings,
                   target_tolerance=target_tolerance)


# ---- one method's block: metrics["methods"][name], section by section -------------------------


def counts(name: str, inputs: MetricInputs) -> dict:
    """Which method made the records, how many problems and samples, how many correct."""
    return {"kind": inputs.run.methods[name].kind,  # the registered method that made the records
            "problems": len(inputs.groups[name]), "samples": len(inputs.run.methods[name].records),
            "samples_per_problem": {"min": inputs.n_min[name], "max": inputs.n_max[name]},
            "correct": int(inputs.outcomes[name].c.sum())}


def accuracy_and_pass_at_k(name: str, inputs: MetricInputs) -> dict:
    """Accuracy (pass@1) and pass@k up to the method's smallest samples-per-problem."""
    n_min, n_max = inputs.n_min[name], inputs.n_max[name]
    if n_min != n_max:
        inputs.warnings.append(f"{name}: problems have {n_min} to {n_max} samples (an unfinished run?): "
                               f"pass@k is reported for k <= {n_min} only")
    elif n_min < max(inputs.n_max.values()):
        inputs.warnings.append(f"{name} has {n_min} sample(s) per problem: pass@k is reported for k <= {n_min} only")
    # The grid, plus every other method's n below this one's: the report's columns at those k are exact.
    ks = sorted(set(k_grid(n_min)) | {k for k in inputs.n_min.values() if k <= n_min})
    o = inputs.outcomes[name]
    curve = pass_at_k_curve(o.n.tolist(), o.c.tolist(), ks, **inputs.interval)
    return {"accuracy": {"value": curve["value"][0], "low": curve["low"][0], "high": curve["high"][0]},
            "pass_at_k": curve}


def majority(name: str, inputs: MetricInputs) -> dict:
    """Majority vote over each problem's extracted answers; None when no record carries one."""
    answers_given = sum(r.get("extracted_answer") is not None for r in inputs.run.methods[name].records)
    vote = None
    if answers_given:
        votes = [majority_vote_score([r.get("extracted_answer") for r in g], [bool(r["correct"]) for r in g])
                 for g in inputs.groups[name].values()]
        vote = _interval([0.0 if v is None else v for v in votes], **inputs.interval)
        vote["problems_without_answer"] = int(sum(v is None for v in votes))
    return {"majority_vote": vote, "answers_given": int(answers_given)}


def base_model_scores(name: str, inputs: MetricInputs) -> dict:
    """Log-likelihood, confidence and self-certainty under the base model (from RUN_DIR/scores/)."""
    scores = _base_scores(inputs.run.methods[name], inputs.groups[name], **inputs.interval)
    if scores and scores["unscored"]:
        inputs.warnings.append(f"{name}: {scores['unscored']} record(s) have no base-model scores (empty completions "
                               f"or not scored); likelihood and confidence use the other {scores['scored']}")
    return {"base_scores": scores}


def sample_diversity(name: str, inputs: MetricInputs) -> dict:
    """Diversity over the first diversity_n samples of each problem; None with one sample per problem."""
    if inputs.diversity_n is None or inputs.n_min[name] < 2:
        return {"diversity": None}
    return {"diversity": _diversity(inputs.groups[name], inputs.diversity_n, inputs.embeddings.get(name),
                                    **inputs.interval)}


def extractions(name: str, inputs: MetricInputs) -> dict:
    return {"extractions": _extractions(inputs.groups[name], **inputs.interval)}


def cost(name: str, inputs: MetricInputs) -> dict:
    """Tokens, forward tokens, wall time (records and sessions) and any training cost."""
    method = inputs.run.methods[name]
    out = _cost(method.records, method.sessions, inputs.training_costs.get(name))
    if out["records_with_cost"] < len(method.records):
        inputs.warnings.append(f"{name}: {len(method.records) - out['records_with_cost']} record(s) carry no cost; "
                               f"costs sum the others")
    return {"cost": out}


def entropy_and_support(name: str, inputs: MetricInputs) -> dict:
    """Token and answer entropy of the method's own samples; support against the reference base."""
    method = inputs.run.methods[name]
    token, token_note = token_entropy(method.kind, method.settings, inputs.groups[name], **inputs.interval)
    entropy = {"token": token, "token_note": token_note,
               "answer": answer_entropy(inputs.outcomes[name], inputs.entropy_n, **inputs.interval)}
    base = inputs.base_name
    kept = None if base in (None, name) else support(inputs.outcomes[base], inputs.outcomes[name], **inputs.interval)
    return {"entropy": entropy, "support": kept}


def weighted_estimate(name: str, inputs: MetricInputs) -> dict:
    """A weighted method's accuracy, base-model scores and extractions estimated under p^alpha, its ESS, and None
    for what its proposal draws cannot say (sharpen.analysis.target); nothing for other methods."""
    return weighted_block(name, inputs, SCORE_NAMES) if inputs.outcomes[name].weighted else {}


def mixing(name: str, inputs: MetricInputs) -> dict:
    """Whether the sampler reached its target as configured: two MH starts, SMC weights, SPS look-ahead
    (sharpen.analysis.mixing; None for plain sampling)."""
    return {"mixing": mixing_diagnostics(inputs.groups[name], inputs.run.methods[name].settings,
                                         seed=inputs.interval["seed"])}


METHOD_SECTIONS = [counts, accuracy_and_pass_at_k, majority, base_model_scores, sample_diversity, extractions, cost,
                   entropy_and_support, weighted_estimate, mixing]
# Sections that read a method's records as draws of its own distribution: a weighted method (Method.weighted)
# skips them, and weighted_estimate fills their keys with its estimates under p^alpha, or None.
DRAWS_ONLY = (accuracy_and_pass_at_k, majority, base_model_scores, sample_diversity, extractions, entropy_and_support)


# ---- metrics.json's blocks, in file order ----------------------------------------------------
# Each takes the inputs and the blocks made so far and returns the keys it adds ({} when it only warns).


def analysis_environment(inputs: MetricInputs, metrics: dict) -> dict:
    return {"environment": environment()}


def analysis_settings(inputs: MetricInputs, metrics: dict) -> dict:
    return {"settings": {"confidence": inputs.interval["confidence"],
                         "bootstrap_resamples": inputs.interval["n_resamples"], "seed": inputs.interval["seed"],
                         "diversity_samples_per_problem": inputs.diversity_n,
                         "entropy_samples_per_problem": inputs.entropy_n, "majority_subsets": SUBSETS,
                         "target_tolerance": inputs.target_tolerance, "min_ess": MIN_ESS}}


def warning_list(inputs: MetricInputs, metrics: dict) -> dict:
    return {"warnings": inputs.warnings}  # the list the later sections append to


def record_files(inputs: MetricInputs, metrics: dict) -> dict:
    """Each record file: path, lines, sha256, model, temperature, settings, grader, environment, sessions."""
    run = inputs.run
    files = {}
    for name, m in run.methods.items():
        config = m.config or {}
        temps = sorted({r.get("temperature") for r in m.records if r.get("temperature") is not None})
        files[name] = {"path": str(m.path.relative_to(run.dir)) if m.path.is_relative_to(run.dir) else str(m.path),
                       "records": len(m.records), "first_line": min(m.lines), "last_line": max(m.lines),
                       "sha256": m.sha256, "method": m.kind, "model": m.model,
                       "temperature": temps[0] if temps else None, "identity": config.get("identity"),
                       "settings": m.settings, "grader_version": config.get("grader_version"),
                       "model_revision": config.get("model_revision"), "environment": config.get("environment"),
                       "sessions": m.sessions}
    return {"files": files}


def method_blocks(inputs: MetricInputs, metrics: dict) -> dict:
    """METHOD_SECTIONS for every method (but DRAWS_ONLY for weighted ones), then coverage, which compares them all
    on their shared problems."""
    methods = {}
    for name in inputs.groups:
        methods[name] = {}
        for section in METHOD_SECTIONS:
            if not (inputs.outcomes[name].weighted and section in DRAWS_ONLY):
                methods[name].update(section(name, inputs))
    covered, why_not = coverage(inputs.drawn, **inputs.interval) if inputs.drawn else ({}, None)
    if why_not:
        inputs.warnings.append(why_not)
    for name in methods:
        methods[name]["coverage"] = covered.get(name)
    return {"methods": methods}


def paired_comparisons(inputs: MetricInputs, metrics: dict) -> dict:
    """Every pair on the problems both have: mean difference with its interval, the permutation test of that mean
    (p_value, Holm-adjusted over the pairs as p_holm), Wilcoxon or McNemar beside it (stats.paired_comparison)."""
    paired = []
    for a, b in itertools.combinations(inputs.groups, 2):
        ga, gb = inputs.groups[a], inputs.groups[b]
        shared = [pid for pid in ga if pid in gb]
        entry = {"a": a, "b": b, "problems_a": len(ga), "problems_b": len(gb)}
        if not shared:
            inputs.warnings.append(f"{a} and {b} share no problem: they are not compared")
            paired.append({**entry, "problems": 0})
            continue
        oa, ob = inputs.outcomes[a], inputs.outcomes[b]
        ia, ib = oa.rows(shared), ob.rows(shared)
        binary = bool(np.all(oa.n[ia] == 1) and np.all(ob.n[ib] == 1))
        entry.update(paired_comparison(oa.rates[ia], ob.rates[ib], binary=binary, any_a=oa.c[ia] > 0,
                                       any_b=ob.c[ib] > 0, **inputs.interval))
        paired.append(entry)
    tested = [e for e in paired if "p_value" in e]
    for entry, adjusted in zip(tested, holm([e["p_value"] for e in tested])):
        entry["p_holm"] = adjusted
    return {"paired": paired}


def reference(inputs: MetricInputs, metrics: dict) -> dict:
    return {"reference_base": inputs.base_name}


def crossovers(inputs: MetricInputs, metrics: dict) -> dict:
    base = inputs.base_name
    return {"crossover": [crossover(inputs.outcomes[base], o, **inputs.interval) for name, o in inputs.drawn.items()
                          if base is not None and name != base]}


def boundaries(inputs: MetricInputs, metrics: dict) -> dict:
    return {"boundary": [boundary(inputs.outcomes[a], inputs.outcomes[b], **inputs.interval)
                         for a, b in itertools.combinations(inputs.drawn, 2)]}


def equal_compute_table(inputs: MetricInputs, metrics: dict) -> dict:
    training = {n: m["cost"].get("training") for n, m in metrics["methods"].items()}
    return {"equal_compute": equal_compute_rows(inputs.drawn, training, inputs.groups, **inputs.interval)}


def square(inputs: MetricInputs, metrics: dict) -> dict:
    """The sharpening square: methods by verifier and training, with the significant cross-corner differences
    (sharpen.analysis.square; None without a trained method)."""
    return {"square": sharpening_square(metrics)}


def per_problem_counts(inputs: MetricInputs, metrics: dict) -> dict:
    """(n, correct) of every problem and method: any accuracy can be recomputed by hand."""
    return {"per_problem": {name: {pid: [n, c] for pid, n, c in zip(o.pids, o.n.tolist(), o.c.tolist())}
                            for name, o in inputs.outcomes.items()}}


def version_warnings(inputs: MetricInputs, metrics: dict) -> dict:
    inputs.warnings.extend(environment_warnings(inputs.run, metrics["environment"]))
    return {}


METRIC_SECTIONS = [analysis_environment, analysis_settings, warning_list, record_files, method_blocks,
                   paired_comparisons, reached_target, reference, crossovers, boundaries, equal_compute_table,
                   square, per_problem_counts, version_warnings]


def compute_metrics(run: Run, *, embeddings: dict | None = None, training_costs: dict | None = None,
                    confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                    target_tolerance: float = 0.05) -> dict:
    """All metrics of a run: METRIC_SECTIONS in order. embeddings: {method: {problem_id: (m, d) array in sample
    order}}; training_costs: {method: {wall_seconds, rollout_tokens, optimizer_steps}} (e.g. GRPO training);
    target_tolerance: the margin of the `target` verdict "reached" (sharpen.analysis.target)."""
    inputs = MetricInputs.of(run, embeddings=embeddings, training_costs=training_costs, confidence=confidence,
                             n_resamples=n_resamples, seed=seed, target_tolerance=target_tolerance)
    metrics: dict = {}
    for section in METRIC_SECTIONS:
        metrics.update(section(inputs, metrics))
    return metrics


def method_environments(method: MethodRecords) -> list[dict]:
    """The environments a method's records were made under: its config's, then each session's, in order."""
    found = [(method.config or {}).get("environment")] + [s.get("environment") for s in method.sessions]
    return [e for e in found if isinstance(e, dict)]


def environment_warnings(run: Run, here: dict) -> list[str]:
    """Library and code differences between a method's sampling sessions, and between them and this analysis."""
    warnings, against_here = [], {}
    for name, method in run.methods.items():
        envs = method_environments(method)
        between = list(dict.fromkeys(d for a, b in zip(envs, envs[1:]) for d in library_differences(a, b)))
        if between:
            warnings.append(f"{name}: its records were sampled under different versions ({'; '.join(between)}); "
                            f"see files.{name}.sessions in metrics.json")
        if envs:
            diff = tuple(library_differences(envs[-1], here))
            if diff:
                against_here.setdefault(diff, []).append(name)
    for diff, names in against_here.items():
        warnings.append(f"{', '.join(names)} sampled under other versions than this analysis runs under "
                        f"({'; '.join(diff)})")
    return warnings


def clean_for_json(value):
    """NaN and infinities become null, so metrics.json is strict JSON.

    >>> clean_for_json({"a": float("nan"), "b": [1.5, float("inf")], 3: np.float64(2.0)})
    {'a': None, 'b': [1.5, None], '3': 2.0}
    """
    if isinstance(value, np.generic):  # before float: np.float64 is a float
        return clean_for_json(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_for_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_for_json(v) for v in value]
    return value
