"""Log an analysis to Weights & Biases: summary metrics, plots, histograms, tables of samples.

    from common.tracking import WandbConfig, start_run
    wb = start_run(WandbConfig(mode="offline", group="study-1"), name="analysis", job_type="analysis", dir=run_dir)
    log_to_wandb(wb, metrics, plots, run)   # returns the run's directory; nothing (and no import) for a NullRun
    wb.finish()

common.tracking decides the mode and the main process: when wandb is off, or in the other
processes of a launched group, `wb` is a NullRun and this returns at once without importing
wandb. Offline runs land in RUN_DIR/wandb and can be uploaded later with `wandb sync`.
"""

from __future__ import annotations

from common.tracking import is_logging

from .plots import HISTOGRAMS
from .runs import Run

SAMPLES_PER_METHOD = 64  # rows of the samples table per method: enough to read, small to upload


def flatten(metrics: dict) -> dict[str, float]:
    """Scalar summary, namespaced `<method>/<metric>` and `paired/<b>-<a>/<field>`."""
    out = {}
    for name, m in metrics["methods"].items():
        out[f"{name}/accuracy"] = m["accuracy"]["value"]
        out[f"{name}/accuracy_low"] = m["accuracy"]["low"]
        out[f"{name}/accuracy_high"] = m["accuracy"]["high"]
        for extraction, entry in (m.get("extractions") or {}).items():
            if isinstance(entry, dict):
                out[f"{name}/accuracy_{extraction}"] = entry["value"]
        for k, v in zip(m["pass_at_k"]["k"], m["pass_at_k"]["value"]):
            out[f"{name}/pass@{k}"] = v
        if m["majority_vote"]:
            out[f"{name}/majority_vote"] = m["majority_vote"]["value"]
        for score in HISTOGRAMS:
            entry = (m.get("base_scores") or {}).get(score)
            if entry:
                out[f"{name}/base_{score}"] = entry["value"]
        for key, entry in (m.get("diversity") or {}).items():
            if isinstance(entry, dict):
                out[f"{name}/diversity/{key}"] = entry["value"]
        for key in ("sampled_tokens", "forward_tokens", "wall_seconds"):  # wall_seconds: sum of per-record shares
            if m["cost"].get(key):
                out[f"{name}/cost/{key}"] = m["cost"][key]["total"]
        if m["cost"].get("sessions"):
            out[f"{name}/cost/sampling_elapsed_seconds"] = m["cost"]["sessions"]["elapsed_seconds"]
        for key, value in (m["cost"].get("training") or {}).items():
            if isinstance(value, (int, float)):
                out[f"{name}/cost/training_{key}"] = value
    for e in metrics["paired"]:
        if e.get("problems"):
            for key in ("diff", "low", "high", "p_value", "p_holm"):
                if e.get(key) is not None:
                    out[f"paired/{e['b']}-{e['a']}/{key}"] = e[key]
    return {k: v for k, v in out.items() if v is not None}


def log_to_wandb(wb, metrics: dict, plots: dict, run: Run) -> str | None:
    """Log everything to the wandb run `wb` (from common.tracking.start_run); return its directory.

    The caller finishes `wb`. A NullRun (wandb off, or not the main process) returns None at once.
    """
    if not is_logging(wb):
        return None
    import wandb

    wb.summary.update(flatten(metrics))
    logged = {f"plots/{key}": wandb.Image(str(path)) for key, path in plots.items()}
    curve = wandb.Table(columns=["method", "k", "pass_at_k", "low", "high"])
    for method, m in metrics["methods"].items():
        c = m["pass_at_k"]
        for row in zip(c["k"], c["value"], c["low"], c["high"]):
            curve.add_data(method, *row)
    logged["tables/pass_at_k"] = curve
    for name, history in (metrics.get("training") or {}).items():
        keys = [k for k in history if k != "step"]
        table = wandb.Table(columns=["step", *keys])
        for i, step in enumerate(history["step"]):
            table.add_data(step, *(history[k][i] for k in keys))
        logged[f"training/{name}"] = table
        for key in ("reward", "reward_std", "completion_length", "entropy"):
            if key in keys:
                logged[f"training/{name}/{key}"] = wandb.plot.line(table, "step", key, title=f"{name} {key}")
    for score in HISTOGRAMS:
        for method, m in run.methods.items():
            values = [s.get(score) for s in map(m.score_of, m.records) if s is not None]
            values = [v for v in values if v is not None]
            if values:
                logged[f"histograms/{score}/{method}"] = wandb.Histogram(values, num_bins=64)
    columns = ["method", "problem_id", "sample_idx", "prompt", "completion", "extracted_answer",
               "gold_answer", "correct", "num_tokens", "base_logprob_mean", "base_confidence",
               "base_self_certainty"]
    for method, m in run.methods.items():
        table = wandb.Table(columns=columns)
        for r in m.records[:SAMPLES_PER_METHOD]:
            s = m.score_of(r) or {}
            table.add_data(method, str(r["problem_id"]), int(r["sample_idx"]), r["prompt"], r["completion"],
                           None if r.get("extracted_answer") is None else str(r["extracted_answer"]),
                           None if r.get("gold_answer") is None else str(r["gold_answer"]), bool(r["correct"]),
                           len(r["completion_ids"]), s.get("logprob_mean"), s.get("confidence"),
                           s.get("self_certainty"))
        logged[f"samples/{method}"] = table
    wb.log(logged)
    return str(wb.dir)
