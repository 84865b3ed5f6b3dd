"""Every number of a run's report, computed from its records and stored scores: the content of metrics.json.

    from analysis.runs import attach_scores, load_run
    run = load_run("runs/demo"); attach_scores(run, None)
    metrics = compute_metrics(run)
    metrics["methods"]["base"]["pass_at_k"]    # {"k": [...], "value": [...], "low": [...], "high": [...]}
    metrics["paired"][0]                       # low_temp - base: difference, interval, test, p-value

Per method instance: accuracy, pass@k for every k up to the smallest samples-per-problem,
majority vote, base-model scores (from RUN_DIR/scores/<name>.jsonl, see analysis.scoring),
diversity and cost (the sum of the records' wall-time shares, and the elapsed sampling time
of the sessions in <name>.sessions.jsonl). Then every pair of methods on the problems both
have. Each number carries the counts it was computed from, and `per_problem` holds
(n, correct) for every problem and method, so a reader can recompute any accuracy by hand
from the records. `files` names each record file (sha256, lines, config, environments);
`environment` is the analysis's own (common.provenance.environment()).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from common.provenance import environment, library_differences

from . import diversity as div
from .runs import MethodRecords, Run
from .stats import holm, majority_vote_score, mean_interval, paired_comparison, pass_at_k_curve

SCORE_NAMES = ("logprob_mean", "logprob_sum", "confidence", "self_certainty")
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
    records = [r for g in groups.values() for r in g]
    scored = [r for r in records if method.score_of(r) is not None]
    if not scored:
        return None
    out = {"model": sorted({str(method.score_of(r).get("model")) for r in scored}), "scored": len(scored),
           "unscored": len(records) - len(scored)}
    for name in SCORE_NAMES:
        def value(r):
            scores = method.score_of(r)
            return scores.get(name) if scores is not None else None

        per_problem = []
        for group in groups.values():
            values = [value(r) for r in group if value(r) is not None]
            per_problem.append(float(np.mean(values)) if values else None)
        values = np.array([value(r) for r in scored if value(r) is not None], dtype=float)
        split = {flag: [value(r) for r in scored if value(r) is not None and bool(r["correct"]) is flag]
                 for flag in (True, False)}
        out[name] = {**_interval(per_problem, confidence, n_resamples, seed),
                     "median": float(np.median(values)) if values.size else None,
                     "std": float(values.std()) if values.size else None, "samples": int(values.size),
                     "mean_correct": float(np.mean(split[True])) if split[True] else None,
                     "mean_incorrect": float(np.mean(split[False])) if split[False] else None}
    # Log-probs recorded while sampling come from the sampling model at temperature 1; for a
    # method sampled from the base model they must match this forward pass up to rounding.
    diffs = [abs(float(r["base_logprob_mean"]) - float(method.score_of(r)["logprob_mean"])) for r in scored
             if r.get("base_logprob_mean") is not None and method.score_of(r).get("logprob_mean") is not None]
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
    for name in COST_FIELDS:
        values = [float(c[name]) for c in with_cost if c.get(name) is not None]
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
    diversity_n = min(multi) if multi else None
    problem_sets = {name: set(groups) for name, groups in groups_by_method.items()}
    if len({frozenset(s) for s in problem_sets.values()}) > 1:
        counts = ", ".join(f"{name} {len(s)}" for name, s in problem_sets.items())
        warnings.append(f"methods cover different problems ({counts}): each method's own table uses all its "
                        f"problems; paired comparisons use the problems both methods have")

    methods = {}
    for name, groups in groups_by_method.items():
        records = run.methods[name].records
        n = [len(g) for g in groups.values()]
        c = [sum(bool(r["correct"]) for r in g) for g in groups.values()]
        if n_min[name] != n_max[name]:
            warnings.append(f"{name}: problems have {n_min[name]} to {n_max[name]} samples (an unfinished run?): "
                            f"pass@k is reported for k <= {n_min[name]} only")
        elif n_min[name] < largest_n:
            warnings.append(f"{name} has {n_min[name]} sample(s) per problem: pass@k is reported for "
                            f"k <= {n_min[name]} only")
        ks = list(range(1, n_min[name] + 1))
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
        }

    paired = []
    for a, b in itertools.combinations(groups_by_method, 2):
        ga, gb = groups_by_method[a], groups_by_method[b]
        shared = [pid for pid in ga if pid in gb]
        entry = {"a": a, "b": b, "problems_a": len(ga), "problems_b": len(gb)}
        if not shared:
            warnings.append(f"{a} and {b} share no problem: they are not compared")
            paired.append({**entry, "problems": 0})
            continue
        rate = lambda g: np.mean([bool(r["correct"]) for r in g])  # noqa: E731
        solved = lambda g: any(bool(r["correct"]) for r in g)  # noqa: E731
        binary = all(len(ga[p]) == 1 and len(gb[p]) == 1 for p in shared)
        entry.update(paired_comparison([rate(ga[p]) for p in shared], [rate(gb[p]) for p in shared],
                                       binary=binary, any_a=[solved(ga[p]) for p in shared],
                                       any_b=[solved(gb[p]) for p in shared], confidence=confidence,
                                       n_resamples=n_resamples, seed=seed))
        paired.append(entry)
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
    per_problem = {name: {pid: [len(g), int(sum(bool(r["correct"]) for r in g))] for pid, g in groups.items()}
                   for name, groups in groups_by_method.items()}
    return {"environment": here,
            "settings": {"confidence": confidence, "bootstrap_resamples": n_resamples, "seed": seed,
                         "diversity_samples_per_problem": diversity_n},
            "warnings": warnings, "files": files, "methods": methods, "paired": paired,
            "per_problem": per_problem}


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
