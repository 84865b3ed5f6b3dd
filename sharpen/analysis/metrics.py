"""Every number of a run's report, computed from its records and stored scores: the content of metrics.json.

    from sharpen.analysis.runs import attach_scores, load_run
    run = load_run("runs/demo"); attach_scores(run, None)
    metrics = compute_metrics(run)
    metrics["methods"]["base"]["pass_at_k"]    # {"k": [...], "value": [...], "low": [...], "high": [...]}
    metrics["paired"][0]                       # low_temp - base: difference, interval, test, p-value

Per method instance: accuracy, pass@k up to the method's own samples-per-problem (the
smallest over its problems; every k up to 16, then powers of two and 1.5 times them, then n:
stats.k_grid), majority vote, base-model scores (from RUN_DIR/scores/<name>.jsonl, see
sharpen.analysis.scoring), diversity (over the first settings.diversity_samples_per_problem samples:
the run's smallest n of at least 2, at most DIVERSITY_MAX_SAMPLES) and cost (the sum of the
records' wall-time shares, and the elapsed sampling time of the sessions in
<name>.sessions.jsonl). Then every pair of methods
on the problems both have. Each number carries the counts it was computed from, and
`per_problem` holds (n, correct) for every problem and method, so a reader can recompute any
accuracy by hand from the records. `files` names each record file (sha256, lines, config,
environments); `environment` is the analysis's own (sharpen.runs.provenance.environment()).

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
  low_temp: k = C_method / C_reference (mean forward tokens per completion on the shared
  problems), the method's accuracy, the reference's majority vote and pass@k at that k,
  difference = accuracy - majority vote and beats_voting yes / no / inconclusive; "status"
  says "ok" or why numbers are missing (k > n, no forward tokens). A method with a training
  cost gets a second row with training forward tokens / its problems added to its cost
  (training: true) (sharpen.analysis.equal_compute).
- reference_base: the instance crossover and support compare against (None without one).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from sharpen.runs.provenance import environment, library_differences

from . import diversity as div
from .boundary import boundary
from .entropy import answer_entropy, support, token_entropy
from .equal_compute import SUBSETS, equal_compute_rows
from .large_k import coverage, crossover
from .outcomes import Outcomes, reference_base
from .runs import MethodRecords, Run
from .stats import holm, k_grid, majority_vote_score, mean_interval, paired_comparison, pass_at_k_curve

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


def compute_metrics(run: Run, *, embeddings: dict | None = None, training_costs: dict | None = None,
                    confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """All metrics of a run. embeddings: {method: {problem_id: (m, d) array in sample order}};
    training_costs: {method: {wall_seconds, rollout_tokens, optimizer_steps}} (e.g. GRPO training)."""
    warnings = list(run.warnings)
    embeddings = embeddings or {}
    training_costs = training_costs or {}
    groups_by_method = {name: m.by_problem() for name, m in run.methods.items()}
    n_min = {name: min(len(g) for g in groups.values()) for name, groups in groups_by_method.items()}
    n_max = {name: max(len(g) for g in groups.values()) for name, groups in groups_by_method.items()}
    largest_n = max(n_max.values())
    multi = [n for n in n_min.values() if n >= 2]
    entropy_n = min(multi) if multi else None
    # Self-BLEU and embedding distances cost O(m^2) per problem: 1024 samples x 500 problems would take
    # minutes, and the measures settle long before that.
    diversity_n = min(entropy_n, DIVERSITY_MAX_SAMPLES) if entropy_n else None
    problem_sets = {name: set(groups) for name, groups in groups_by_method.items()}
    if len({frozenset(s) for s in problem_sets.values()}) > 1:
        counts = ", ".join(f"{name} {len(s)}" for name, s in problem_sets.items())
        warnings.append(f"methods cover different problems ({counts}): each method's own table uses all its "
                        f"problems; paired comparisons use the problems both methods have")

    outcomes = {name: Outcomes.from_groups(name, run.methods[name].kind, groups)
                for name, groups in groups_by_method.items()}
    base_name = reference_base(outcomes)
    if base_name is None:
        warnings.append("no method of kind base: crossover and support retention are not computed")
    interval = dict(confidence=confidence, n_resamples=n_resamples, seed=seed)
    methods = {}
    for name, groups in groups_by_method.items():
        records = run.methods[name].records
        n, c = outcomes[name].n.tolist(), outcomes[name].c.tolist()
        if n_min[name] != n_max[name]:
            warnings.append(f"{name}: problems have {n_min[name]} to {n_max[name]} samples (an unfinished run?): "
                            f"pass@k is reported for k <= {n_min[name]} only")
        elif n_min[name] < largest_n:
            warnings.append(f"{name} has {n_min[name]} sample(s) per problem: pass@k is reported for "
                            f"k <= {n_min[name]} only")
        # The grid, plus every other method's n below this one's: the report's columns at those k are exact.
        ks = sorted(set(k_grid(n_min[name])) | {k for k in n_min.values() if k <= n_min[name]})
        curve = pass_at_k_curve(n, c, ks, confidence, n_resamples, seed)
        answers_given = sum(r.get("extracted_answer") is not None for r in records)
        majority = None
        if answers_given:
            votes = [majority_vote_score([r.get("extracted_answer") for r in g], [bool(r["correct"]) for r in g])
                     for g in groups.values()]
            majority = _interval([0.0 if v is None else v for v in votes], confidence, n_resamples, seed)
            majority["problems_without_answer"] = int(sum(v is None for v in votes))
        scores = _base_scores(run.methods[name], groups, confidence, n_resamples, seed)
        if scores and scores["unscored"]:
            warnings.append(f"{name}: {scores['unscored']} record(s) have no base-model scores (empty completions "
                            f"or not scored); likelihood and confidence use the other {scores['scored']}")
        if diversity_n is not None and n_min[name] >= 2:
            diversity = _diversity(groups, diversity_n, embeddings.get(name), confidence, n_resamples, seed)
        else:
            diversity = None
        extractions = _extractions(groups, confidence, n_resamples, seed)
        cost = _cost(records, run.methods[name].sessions, training_costs.get(name))
        if cost["records_with_cost"] < len(records):
            warnings.append(f"{name}: {len(records) - cost['records_with_cost']} record(s) carry no cost; "
                            f"costs sum the others")
        token, token_note = token_entropy(run.methods[name].kind, run.methods[name].settings, groups, **interval)
        entropy = {"token": token, "token_note": token_note,
                   "answer": answer_entropy(outcomes[name], entropy_n, **interval)}
        kept = None if base_name in (None, name) else support(outcomes[base_name], outcomes[name], **interval)
        methods[name] = {
            "kind": run.methods[name].kind,  # the registered method that made the records
            "problems": len(groups), "samples": len(records),
            "samples_per_problem": {"min": n_min[name], "max": n_max[name]},
            "correct": int(sum(c)),
            "accuracy": {"value": curve["value"][0], "low": curve["low"][0], "high": curve["high"][0]},
            "pass_at_k": curve,
            "majority_vote": majority,
            "answers_given": int(answers_given),
            "base_scores": scores,
            "diversity": diversity,
            "extractions": extractions,
            "cost": cost,
            "entropy": entropy,
            "support": kept,
        }
    covered, why_not = coverage(outcomes, **interval)
    if why_not:
        warnings.append(why_not)
    for name in methods:
        methods[name]["coverage"] = covered.get(name)

    paired = []
    for a, b in itertools.combinations(groups_by_method, 2):
        ga, gb = groups_by_method[a], groups_by_method[b]
        shared = [pid for pid in ga if pid in gb]
        entry = {"a": a, "b": b, "problems_a": len(ga), "problems_b": len(gb)}
        if not shared:
            warnings.append(f"{a} and {b} share no problem: they are not compared")
            paired.append({**entry, "problems": 0})
            continue
        oa, ob = outcomes[a], outcomes[b]
        ia, ib = oa.rows(shared), ob.rows(shared)
        binary = bool(np.all(oa.n[ia] == 1) and np.all(ob.n[ib] == 1))
        entry.update(paired_comparison(oa.rates[ia], ob.rates[ib], binary=binary, any_a=oa.c[ia] > 0,
                                       any_b=ob.c[ib] > 0, confidence=confidence, n_resamples=n_resamples,
                                       seed=seed))
        paired.append(entry)
    boundaries = [boundary(outcomes[a], outcomes[b], **interval) for a, b in itertools.combinations(outcomes, 2)]
    crossovers = [crossover(outcomes[base_name], o, **interval) for name, o in outcomes.items()
                  if base_name is not None and name != base_name]
    compute_rows = equal_compute_rows(outcomes, {n: m["cost"].get("training") for n, m in methods.items()},
                                      **interval)
    tested = [e for e in paired if "p_value" in e]
    for entry, adjusted in zip(tested, holm([e["p_value"] for e in tested])):
        entry["p_holm"] = adjusted

    here = environment()
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
    warnings += environment_warnings(run, here)
    per_problem = {name: {pid: [n, c] for pid, n, c in zip(o.pids, o.n.tolist(), o.c.tolist())}
                   for name, o in outcomes.items()}
    return {"environment": here,
            "settings": {"confidence": confidence, "bootstrap_resamples": n_resamples, "seed": seed,
                         "diversity_samples_per_problem": diversity_n, "entropy_samples_per_problem": entropy_n,
                         "majority_subsets": SUBSETS},
            "warnings": warnings, "files": files, "methods": methods, "paired": paired,
            "reference_base": base_name, "crossover": crossovers, "boundary": boundaries,
            "equal_compute": compute_rows, "per_problem": per_problem}


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
