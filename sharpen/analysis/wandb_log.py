"""Log an analysis to Weights & Biases: one run per method instance, plus the study's analysis run.

    from sharpen.runs.tracking import WandbConfig, start_run
    config = WandbConfig(mode="offline", group="study-1")
    ids = log_method_runs(config, metrics, run, study="study-1", dir=run_dir)   # {"base": run id, ...}
    wb = start_run(config, name="study-1-analysis", job_type="analysis", dir=run_dir, keep_id=True)
    log_to_wandb(wb, metrics, plots, run)   # returns the run's directory; nothing (and no import) for a NullRun
    wb.finish()

`sharpen analyze RUN_DIR --wandb offline|online` logs them (`--wandb off` never imports wandb).

Method runs (job_type `method`, named <study>-<instance>, in the study's group) carry the
method's settings as a flat config (method, instance, model, task, alpha, block_size,
mcmc_steps, num_particles, temperature, ...: a method without a setting lacks the key) and
its final metrics under the *same* summary keys in every run (accuracy, pass@<k>,
base_logprob_mean, diversity/<key>, cost/<key>, ...; method_summary), so the runs table, bar
charts and parallel coordinates compare methods, and studies, directly. Each also holds its
base-model score histograms and a table of samples. The analysis run (job_type `analysis`)
holds what compares methods with each other: the paired tests (paired/<b>-<a>/<field>), every
method's summary again as <method>/<key>, the plots, the pass@k curve as a line plot with one
series per method (charts/pass_at_k) and as a table, and the GRPO training curves.

A weighted method's run (power_is: an importance-sampling estimate of p^alpha) has accuracy = its
estimate, no pass@k, majority vote or histograms, and ess/median, ess/min, ess/share_below_5; each
method held against it (metrics.json's `target`) gets target/<estimate>/difference (with _low,
_high), target/<estimate>/verdict and target/<estimate>/problems in its own run (target_summary).

Run ids are kept in RUN_DIR/wandb_run_ids.json (sharpen.runs.tracking.kept_run_id), so analysing
again resumes the same runs: online, no duplicate appears. Offline, every analysis writes new
RUN_DIR/wandb/offline-run-<time>-<id> directories with those ids, each holding the whole run;
`wandb sync` of the latest ones is enough (syncing an older one after it would bring back its
numbers). sharpen.runs.tracking decides the mode and the main process: when wandb is off, or in the
other processes of a launched group, nothing is logged and wandb is never imported.
"""

from __future__ import annotations

import numbers

from sharpen.runs.tracking import WandbConfig, is_logging, start_run

from .mixing import mixing_scalars
from .plots import HISTOGRAMS
from .runs import MethodRecords, Run

SAMPLES_PER_METHOD = 64  # rows of the samples table per method: enough to read, small to upload
METHOD_JOB = "method"
# metrics["methods"][name] entries of the form {"value", "low", "high", ...}, logged as <key> when present
INTERVAL_ENTRIES = (("coverage",), ("entropy", "token"), ("entropy", "answer"), ("support", "retention"),
                    ("support", "new_correct_answers"))
# config keys every method run has; a settings field of one of these names is logged as settings.<name>
RUN_KEYS = ("method", "instance", "study", "model", "base_model", "task", "task_args", "split", "seed", "chat",
            "num_problems", "num_samples", "grader_version")


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def method_summary(m: dict) -> dict[str, float]:
    """One method's final metrics (an entry of metrics["methods"]) under the keys every method run uses.

    Keys: accuracy, accuracy_low, accuracy_high, pass@<k> for the method's own k grid,
    majority_vote, base_<score>, diversity/<key>, coverage, entropy/<key>, support/<key>,
    ess/<key> (a weighted method), cost/<field> (total) and cost/<field>_per_completion, mixing/<key> (the
    sampler's convergence diagnostic: mixing.mixing_scalars), and counts; entries a method lacks
    are left out, never logged as 0.

    >>> m = {"accuracy": {"value": 0.5, "low": 0.2, "high": 0.8}, "pass_at_k": {"k": [1, 2], "value": [0.5, 0.75]},
    ...      "majority_vote": None, "cost": {"forward_tokens": {"total": 40.0, "per_sample": 10.0}}}
    >>> summary = method_summary(m)
    >>> summary["pass@2"], summary["cost/forward_tokens_per_completion"], "majority_vote" in summary
    (0.75, 10.0, False)
    """
    out = {"problems": m.get("problems"), "samples": m.get("samples"),
           "accuracy": m["accuracy"]["value"], "accuracy_low": m["accuracy"]["low"],
           "accuracy_high": m["accuracy"]["high"]}
    for extraction, entry in (m.get("extractions") or {}).items():
        if isinstance(entry, dict):
            out[f"accuracy_{extraction}"] = entry["value"]
    curve = m.get("pass_at_k") or {"k": [], "value": []}  # a weighted method has none
    for k, v in zip(curve["k"], curve["value"]):
        out[f"pass@{k}"] = v
    for key, value in (m.get("ess") or {}).items():  # a weighted method's effective sample size over problems
        out[f"ess/{key}"] = value
    if m.get("majority_vote"):
        out["majority_vote"] = m["majority_vote"]["value"]
    for score, (stem, _) in HISTOGRAMS.items():
        entry = (m.get("base_scores") or {}).get(score)
        if entry:
            out[stem] = entry["value"]
    for key, entry in (m.get("diversity") or {}).items():
        if isinstance(entry, dict):
            out[f"diversity/{key}"] = entry["value"]
    for path in INTERVAL_ENTRIES:
        entry = m
        for part in path:
            entry = entry.get(part) if isinstance(entry, dict) else None
        if isinstance(entry, dict):
            out["/".join(path)] = entry.get("value")
    cost = m.get("cost") or {}
    for key, entry in cost.items():  # sampled_tokens, forward_tokens, wall_seconds, completion_tokens, ...
        if isinstance(entry, dict) and "total" in entry:  # wall_seconds: the sum of per-record shares
            out[f"cost/{key}"] = entry["total"]
            out[f"cost/{key}_per_completion"] = entry.get("per_sample")
    out["cost/acceptance_rate"] = cost.get("acceptance_rate")
    if cost.get("sessions"):
        out["cost/sampling_elapsed_seconds"] = cost["sessions"]["elapsed_seconds"]
    for key, value in (cost.get("training") or {}).items():
        out[f"cost/training_{key}"] = value
    for key, value in mixing_scalars(m.get("mixing")).items():  # flags as 0 / 1
        out[f"mixing/{key}"] = value
    return {k: v for k, v in out.items() if _number(v)}


def target_summary(metrics: dict, name: str) -> dict:
    """Method `name` against each weighted method's estimate of p^alpha (metrics["target"]), as flat keys.

    >>> row = {"estimate": "power_is", "method": "power_mh", "problems": 3, "verdict": "missed",
    ...        "difference": {"value": 0.2, "low": 0.1, "high": 0.3}}
    >>> target_summary({"target": [row]}, "power_mh")["target/power_is/verdict"]
    'missed'
    """
    out = {}
    for row in metrics.get("target") or []:
        if row["method"] != name or row.get("verdict") is None:
            continue
        key, d = f"target/{row['estimate']}", row["difference"]
        out.update({f"{key}/difference": d["value"], f"{key}/difference_low": d["low"],
                    f"{key}/difference_high": d["high"], f"{key}/verdict": row["verdict"],
                    f"{key}/problems": row["problems"]})
    return out


def flatten(metrics: dict) -> dict[str, float]:
    """The analysis run's summary: method_summary and target_summary of each method as `<method>/<key>`, and
    `paired/<b>-<a>/<field>`."""
    out = {f"{name}/{key}": value for name, m in metrics["methods"].items()
           for key, value in (method_summary(m) | target_summary(metrics, name)).items()}
    for e in metrics["paired"]:
        if e.get("problems"):
            for key in ("diff", "low", "high", "p_value", "p_holm"):
                if _number(e.get(key)):
                    out[f"paired/{e['b']}-{e['a']}/{key}"] = e[key]
    return out


def method_config(name: str, records: MethodRecords | None, m: dict, *, study: str,
                  base_model: str | None = None) -> dict:
    """A method run's config: which study, model and task, then every setting as a flat key (alpha, block_size, ...).

    Read from samples/<name>.config.json (`records.config`); settings nested one level deeper
    become <setting>.<key>.

    >>> method_config("power_mh_a2", None, {"kind": "power_mh", "problems": 5, "samples_per_problem": {"max": 4}},
    ...               study="demo")
    {'method': 'power_mh', 'instance': 'power_mh_a2', 'study': 'demo', 'num_problems': 5, 'num_samples': 4}
    """
    saved = (records.config if records else None) or {}
    args, identity = saved.get("run") or {}, saved.get("identity") or {}
    out = {"method": m.get("kind") or (records.kind if records else name), "instance": name, "study": study,
           "model": records.model if records else None, "base_model": base_model,
           "task": args.get("task") or identity.get("task"), "task_args": identity.get("task_args"),
           "split": args.get("split", identity.get("split")), "seed": args.get("seed", identity.get("seed")),
           "chat": args.get("chat", identity.get("chat")),
           # what was asked for, else what the records hold (a run of `sharpen sample` without a limit)
           "num_problems": args.get("num_problems") or m.get("problems"),
           "num_samples": args.get("num_samples") or (m.get("samples_per_problem") or {}).get("max"),
           "grader_version": saved.get("grader_version")}
    replicate = identity.get("replicate")
    if replicate is not None:
        # A replicate of a study over seeds (sharpen.study: RUN_DIR/seed_<n>, named <study>-seed<n>): `seed` is
        # the replicate, what a workspace groups and averages by; the problems' seed is kept as problem_seed,
        # and `study` names the whole study, shared by its replicates.
        out.update(seed=replicate, problem_seed=out.get("seed"), study=study.removesuffix(f"-seed{replicate}"))
    out = {k: v for k, v in out.items() if v is not None}
    settings = saved.get("settings") if isinstance(saved.get("settings"), dict) else {}
    for key, value in settings.items():
        key = f"settings.{key}" if key in RUN_KEYS else key
        if isinstance(value, dict):
            out.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            out[key] = value
    if "temperature" not in out and identity.get("temperature") is not None:
        out["temperature"] = identity["temperature"]  # the temperature the tokens were sampled at
    return out


def log_method_runs(config: WandbConfig, metrics: dict, run: Run, *, study: str, dir) -> dict[str, str]:
    """One wandb run per method instance (job_type method, named <study>-<instance>, in config.group).

    Each run's config is method_config, its summary method_summary; it also holds the
    method's base-model score histograms and a table of its first samples. Returns
    {instance: run id}; {} when logging is off (wandb is not imported then).
    """
    ids = {}
    for name, m in metrics["methods"].items():
        records = run.methods.get(name)
        wb = start_run(config, name=f"{study}-{name}", job_type=METHOD_JOB, dir=dir, keep_id=True, quiet=True,
                       run_config=method_config(name, records, m, study=study, base_model=metrics.get("base_model")))
        if not is_logging(wb):
            return {}
        try:
            wb.summary.update(method_summary(m) | target_summary(metrics, name))
            if records is not None:
                logged = {} if m.get("weighted") else _histograms(records)  # a proposal's draws: no histogram
                logged["tables/samples"] = _samples_table(name, records)
                wb.log(logged)
            ids[name] = wb.id
        finally:
            wb.finish()
    return ids


def _histograms(m: MethodRecords) -> dict:
    import wandb  # here, not at the top: with logging off wandb is never imported

    logged = {}
    for score, (stem, _) in HISTOGRAMS.items():
        values = [s.get(score) for s in map(m.score_of, m.records) if s is not None]
        values = [v for v in values if v is not None]
        if values:
            logged[f"histograms/{stem}"] = wandb.Histogram(values, num_bins=64)
    return logged


def _samples_table(method: str, m: MethodRecords):
    import wandb  # only for a real run, as in _histograms

    columns = ["method", "problem_id", "sample_idx", "prompt", "completion", "extracted_answer",
               "gold_answer", "correct", "num_tokens", "base_logprob_mean", "base_confidence",
               "base_self_certainty"]
    table = wandb.Table(columns=columns)
    for r in m.records[:SAMPLES_PER_METHOD]:
        s = m.score_of(r) or {}
        table.add_data(method, str(r["problem_id"]), int(r["sample_idx"]), r["prompt"], r["completion"],
                       None if r.get("extracted_answer") is None else str(r["extracted_answer"]),
                       None if r.get("gold_answer") is None else str(r["gold_answer"]), bool(r["correct"]),
                       len(r["completion_ids"]), s.get("logprob_mean"), s.get("confidence"),
                       s.get("self_certainty"))
    return table


def log_to_wandb(wb, metrics: dict, plots: dict, run: Run) -> str | None:
    """Log the comparison of methods to the analysis run `wb` (from start_run); return its directory.

    The caller finishes `wb`. A NullRun (wandb off, or not the main process) returns None at once.
    """
    if not is_logging(wb):
        return None
    import wandb  # only for a real run, as in _histograms

    wb.summary.update(flatten(metrics))
    logged = {f"plots/{key}": wandb.Image(str(path)) for key, path in plots.items()}
    curve = wandb.Table(columns=["method", "k", "pass_at_k", "low", "high"])
    for method, m in metrics["methods"].items():
        c = m["pass_at_k"] or {"k": [], "value": [], "low": [], "high": []}  # a weighted method has none
        for row in zip(c["k"], c["value"], c["low"], c["high"]):
            curve.add_data(method, *row)
    logged["tables/pass_at_k"] = curve
    # Each method has its own k grid (k <= its samples per problem): line_series takes one xs per series.
    curves = [(name, m["pass_at_k"]) for name, m in metrics["methods"].items() if (m["pass_at_k"] or {}).get("k")]
    if curves:
        logged["charts/pass_at_k"] = wandb.plot.line_series(
            xs=[list(c["k"]) for _, c in curves], ys=[list(c["value"]) for _, c in curves],
            keys=[name for name, _ in curves], title="pass@k", xname="k")
    for name, history in (metrics.get("training") or {}).items():
        keys = [k for k in history if k != "step"]
        table = wandb.Table(columns=["step", *keys])
        for i, step in enumerate(history["step"]):
            table.add_data(step, *(history[k][i] for k in keys))
        logged[f"training/{name}"] = table
        for key in ("reward", "reward_std", "completion_length", "entropy"):
            if key in keys:
                logged[f"training/{name}/{key}"] = wandb.plot.line(table, "step", key, title=f"{name} {key}")
    wb.log(logged)
    return str(wb.dir)
