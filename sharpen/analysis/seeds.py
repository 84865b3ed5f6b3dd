"""A study over replicate seeds, analysed as one: per-seed and pooled accuracy and pass@k, two-level intervals.

    from sharpen.analysis.seeds import analyze_seeds
    metrics = analyze_seeds("runs/testbed-seeds", [0, 1, 2])   # what `sharpen study` runs after the replicates
    metrics["methods"]["grpo"]["accuracy"]       # pooled over seeds and problems, with its two-level interval
    metrics["methods"]["grpo"]["per_seed"]       # each replicate's own accuracy; seed_sd is their spread

A study with `seeds: [0, 1, 2]` (sharpen.study) runs whole once per seed in RUN_DIR/seed_<n>/, on the same
test problems, each trained arm trained anew and every instance sampled anew; each seed's directory has
its own analysis (metrics.json, report.md). This module reads their per-problem counts and writes
RUN_DIR/metrics.json, RUN_DIR/report.md and RUN_DIR/plots/seeds_accuracy.png.

Statistics. Problems and seeds are crossed: r[s, i] is the pass rate of problem i under seed s (c / n of
its samples; pass@k the unbiased estimate). A method's pooled value is the mean of r over both. Its
interval is a two-level bootstrap: each resample draws the seeds with replacement, then the problems
with replacement, and takes the mean of r over the drawn cells, so it covers the spread of problems and
of seeds (for a trained arm: its training run and its sampling; for a method without training: its
sampling seed only, the training-free sampler's only randomness) as well as the samples within a cell.
With one seed it is the usual problem bootstrap. Paired comparisons take d[s, i] = r_b - r_a over the
problems both methods have in every seed and resample it the same way; their p-value is the two-sided
bootstrap p (twice the share of resampled means on the other side of 0; the share is at least one
resample in n_resamples + 1), Holm-adjusted over the pairs. Per-seed values and their standard deviation
(between-seed spread, ddof 1) are reported beside the pooled ones, as Agarwal et al. 2021 ("Deep RL at the
edge of the statistical precipice") ask of any RL result. Whether a sampler reached p^alpha is not pooled:
each seed's verdict (sharpen.analysis.target, against that run's own importance-sampling estimate) and
mixing diagnostic are listed side by side, and the sampler reached p^alpha on the seeds whose verdict says so.

    python -m pytest -q tests/test_seeds.py
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

from sharpen.runs.files import write_text_atomic
from sharpen.runs.tracking import WandbConfig, start_run
from .pipeline import training_stage
from .report import _ci, _p
from .stats import holm, pass_at_k_matrix

SIGNIFICANCE = 0.05


def seed_dir(run_dir, seed: int) -> Path:
    return Path(run_dir) / f"seed_{seed}"


def _per_problem(seed_metrics: dict[int, dict]) -> tuple[dict, dict, dict]:
    """({seed: {method: {pid: (n, c)}}}, {method: kind}, {weighted method: {seed: its estimate}}) from every
    seed's metrics.json ({seed: its metrics})."""
    counts, kinds, estimates = {}, {}, {}
    for seed, metrics in seed_metrics.items():
        counts[seed] = {name: {pid: tuple(nc) for pid, nc in problems.items()}
                        for name, problems in metrics["per_problem"].items()}
        for name, block in metrics["methods"].items():
            kinds[name] = block.get("kind", name)
            if block.get("weighted"):  # its per-problem counts are draws of its proposal, not of its target
                counts[seed].pop(name, None)
                estimates.setdefault(name, {})[str(seed)] = (block.get("accuracy") or {}).get("value")
    return counts, kinds, estimates


def _reach_by_seed(seed_metrics: dict[int, dict]) -> tuple[list[dict], dict]:
    """Each seed's own verdicts on whether a sampler reached p^alpha (sharpen.analysis.target) and on whether
    it mixed (sharpen.analysis.mixing), side by side: ([{method, estimate, role, per_seed: {seed: {difference,
    verdict}}}], {method: {seed: mixing verdict}}). They are not pooled: each verdict tests one run against
    that run's own estimate of p^alpha, and a sampler reaches p^alpha on the runs where its diagnostic says so."""
    target, mixing = {}, {}
    for seed, metrics in seed_metrics.items():
        for row in metrics.get("target") or []:
            key = (row["method"], row["estimate"])
            entry = target.setdefault(key, {"method": row["method"], "estimate": row["estimate"],
                                            "role": row.get("role"), "per_seed": {}})
            entry["per_seed"][str(seed)] = ({"skipped": row["skipped"]} if row.get("skipped") else
                                            {"difference": row["difference"], "verdict": row["verdict"]})
        for name, block in metrics["methods"].items():
            if block.get("mixing"):
                mixing.setdefault(name, {})[str(seed)] = block["mixing"].get("verdict")
    return list(target.values()), mixing


def two_level_bootstrap(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `values` (seeds x problems) over resampled seeds, then resampled problems; (n_resamples,)."""
    rng = np.random.default_rng(seed)
    seeds, problems = values.shape
    seed_rows = rng.integers(0, seeds, size=(n_resamples, seeds))
    problem_cols = rng.integers(0, problems, size=(n_resamples, problems))
    # values[seed_rows] is (B, S, P); pick each resample's problem columns from its own rows
    picked = np.take_along_axis(values[seed_rows], problem_cols[:, None, :], axis=2)
    return picked.mean(axis=(1, 2))


def _entry(values: np.ndarray, confidence: float, n_resamples: int, seed: int) -> dict:
    means = two_level_bootstrap(values, n_resamples, seed)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"value": float(values.mean()), "low": float(low), "high": float(high)}


def _matrix(counts: dict, seeds: list[int], name: str, pids: list[str], k: int) -> np.ndarray:
    """r[s, i]: pass@k of problem i under seed s (k = 1: the pass rate)."""
    rows = []
    for s in seeds:
        n = [counts[s][name][pid][0] for pid in pids]
        c = [counts[s][name][pid][1] for pid in pids]
        rows.append(pass_at_k_matrix(n, c, [k])[:, 0])
    return np.array(rows, dtype=float)


def analyze_seeds(run_dir, seeds: list[int], config=None, *, wandb: WandbConfig | None = None,
                  wandb_name: str | None = None) -> dict:
    """Pool the replicates of RUN_DIR/seed_<n> (each already analysed): write metrics.json, report.md and
    plots/seeds_accuracy.png in RUN_DIR and log a wandb run (job_type seeds); return the metrics."""
    confidence = getattr(config, "confidence", 0.95)
    n_resamples = getattr(config, "bootstrap", 2000)
    boot_seed = getattr(config, "seed", 0)
    seeds = list(seeds)
    seed_metrics = {s: json.loads((seed_dir(run_dir, s) / "metrics.json").read_text()) for s in seeds}
    counts, kinds, estimates = _per_problem(seed_metrics)
    names = [n for n in kinds if all(n in counts[s] for s in seeds)]
    methods, shared_pids = {}, {}
    for name in names:
        pids = sorted(set.intersection(*(set(counts[s][name]) for s in seeds)))
        shared_pids[name] = pids
        n_min = min(counts[s][name][pid][0] for s in seeds for pid in pids)
        ks = sorted({1, n_min} | {2 ** j for j in range(1, 12) if 2 ** j < n_min})
        per_k = {k: _matrix(counts, seeds, name, pids, k) for k in ks}
        rates = per_k[1]
        per_seed = {str(s): float(rates[i].mean()) for i, s in enumerate(seeds)}
        curve = {"k": ks, "value": [], "low": [], "high": []}
        for k in ks:
            entry = _entry(per_k[k], confidence, n_resamples, boot_seed)
            for key in ("value", "low", "high"):
                curve[key].append(entry[key])
        methods[name] = {
            "kind": kinds[name], "trained": training_stage(kinds[name]) is not None, "problems": len(pids), "samples_per_problem": n_min,
            "accuracy": _entry(rates, confidence, n_resamples, boot_seed), "per_seed": per_seed,
            "seed_sd": float(np.std(list(per_seed.values()), ddof=1)) if len(seeds) > 1 else None,
            "pass_at_k": curve,
            "pass_at_k_per_seed": {str(s): float(per_k[ks[-1]][i].mean()) for i, s in enumerate(seeds)},
            "variance_covered": ("problems, seeds (training run and sampling) and samples"
                                 if training_stage(kinds[name]) is not None
                                 else "problems, seeds (sampling) and samples"),
        }
    paired = []
    for a, b in itertools.combinations(names, 2):
        pids = sorted(set(shared_pids[a]) & set(shared_pids[b]))
        if not pids:
            continue
        d = _matrix(counts, seeds, b, pids, 1) - _matrix(counts, seeds, a, pids, 1)
        means = two_level_bootstrap(d, n_resamples, boot_seed)
        low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
        below, above = (np.sum(means <= 0) + 1) / (n_resamples + 1), (np.sum(means >= 0) + 1) / (n_resamples + 1)
        paired.append({"a": a, "b": b, "problems": len(pids), "diff": float(d.mean()), "low": float(low),
                       "high": float(high), "p_value": float(min(1.0, 2 * min(below, above))),
                       "per_seed": {str(s): float(d[i].mean()) for i, s in enumerate(seeds)}})
    for entry, adjusted in zip(paired, holm([e["p_value"] for e in paired])):
        entry["p_holm"] = adjusted
    # A weighted method (power_is) estimates its target's accuracy per seed from self-normalised weights, with no
    # per-problem rates to resample: its per-seed estimates, their mean and spread, and no pooled interval.
    weighted = {name: {"kind": kinds[name], "per_seed": per_seed,
                       "mean": float(np.mean([v for v in per_seed.values() if v is not None]))
                       if any(v is not None for v in per_seed.values()) else None,
                       "seed_sd": float(np.std([v for v in per_seed.values() if v is not None], ddof=1))
                       if sum(v is not None for v in per_seed.values()) > 1 else None}
                for name, per_seed in estimates.items()}
    target, mixing = _reach_by_seed(seed_metrics)
    metrics = {"seeds": seeds, "confidence": confidence, "n_resamples": n_resamples, "methods": methods,
               "weighted": weighted, "target": target, "mixing": mixing, "paired": paired, "seed_reports": {str(s): str(seed_dir(run_dir, s) / "report.md") for s in seeds}}
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=1))
    plot = plot_seeds(metrics, run_dir / "plots" / "seeds_accuracy.png")
    write_text_atomic(run_dir / "report.md", render_seeds_report(metrics, plot.relative_to(run_dir)))
    if wandb is not None:
        log_seeds(wandb, metrics, name=wandb_name or f"{run_dir.name}-seeds", dir=run_dir)
    return metrics


def plot_seeds(metrics: dict, path: Path) -> Path:
    """Each method's per-seed accuracies as points beside its pooled accuracy and two-level interval."""
    from .plots import _save, plt  # matplotlib's non-interactive backend is chosen there

    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(metrics["methods"])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 3.6))
    for x, name in enumerate(names):
        m = metrics["methods"][name]
        acc = m["accuracy"]
        ax.errorbar([x + 0.12], [acc["value"]], yerr=[[acc["value"] - acc["low"]], [acc["high"] - acc["value"]]],
                    fmt="s", color="black", capsize=4, label="pooled, two-level 95% interval" if x == 0 else None)
        points = list(m["per_seed"].values())
        ax.scatter([x - 0.12] * len(points), points, color="tab:blue", alpha=0.8, s=22,
                   label="one replicate seed" if x == 0 else None)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("accuracy (pass@1)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"accuracy per replicate seed ({len(metrics['seeds'])} seeds) and pooled", fontsize=10)
    return _save(fig, path)


def render_seeds_report(metrics: dict, plot: Path) -> str:
    seeds = metrics["seeds"]
    level = int(round(metrics["confidence"] * 100))
    out = [f"# Study over {len(seeds)} replicate seeds", "",
           f"Seeds {', '.join(map(str, seeds))}: the whole study once per seed on the same test problems "
           f"(`seed_<n>/report.md` holds each seed's own report). Pooled values are means over seeds and "
           f"problems; intervals ({level}%) come from a two-level bootstrap (seeds, then problems, "
           f"{metrics['n_resamples']} resamples). For a trained arm they cover its training run's seed as well as "
           "the sampling; for a method without training, the sampling seed. *seed sd* is the spread of the "
           "per-seed accuracies (ddof 1).", ""]
    ks = {m["pass_at_k"]["k"][-1] for m in metrics["methods"].values()}
    rows = []
    for name, m in metrics["methods"].items():
        per_seed = ", ".join(f"{v:.3f}" for v in m["per_seed"].values())
        k = m["pass_at_k"]["k"][-1]
        pass_k = {key: m["pass_at_k"][key][-1] for key in ("value", "low", "high")}
        sd = "—" if m["seed_sd"] is None else f"{m['seed_sd']:.3f}"
        rows.append(f"| {name} | {'yes' if m['trained'] else 'no'} | {_ci(m['accuracy'])} | {per_seed} | {sd} | "
                    f"pass@{k} {_ci(pass_k)} | {m['problems']} x {m['samples_per_problem']} |")
    out += ["| method | trained | accuracy, pooled | per seed | seed sd | pass@k, pooled | problems x samples |",
            "|---|---|---|---|---|---|---|", *rows, ""]
    for name, w in metrics.get("weighted", {}).items():
        per_seed = ", ".join("—" if v is None else f"{v:.3f}" for v in w["per_seed"].values())
        mean = "—" if w["mean"] is None else f"{w['mean']:.3f}"
        sd = "—" if w["seed_sd"] is None else f"{w['seed_sd']:.3f}"
        out += [f"{name} (weighted: an estimate of p^alpha's accuracy per seed, from its self-normalised weights; "
                f"no per-problem rates, so no pooled interval): per seed {per_seed}, mean {mean}, seed sd {sd}.", ""]
    out += _reach_section(metrics)
    if len(ks) > 1:
        out += [f"pass@k is at each method's own samples per problem ({', '.join(map(str, sorted(ks)))}).", ""]
    out += [f"![accuracy per seed]({plot})", "", "## Paired comparisons over seeds and problems", "",
            "b − a on the problems both have in every seed: mean difference, its two-level interval, the two-sided "
            "bootstrap p and its Holm adjustment over the pairs, and the difference within each seed.", "",
            "| a | b | b − a | per seed | p | Holm p |", "|---|---|---|---|---|---|"]
    for e in metrics["paired"]:
        per_seed = ", ".join(f"{v:+.3f}" for v in e["per_seed"].values())
        out.append(f"| {e['a']} | {e['b']} | {e['diff']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}] | {per_seed} | "
                   f"{_p(e['p_value'])} | {_p(e['p_holm'])} |")
    held = [e for e in metrics["paired"] if e["p_holm"] < SIGNIFICANCE]
    out += ["", f"Differences that hold over the seeds (Holm p < {SIGNIFICANCE}): "
            + ("; ".join(f"{e['b']} − {e['a']} {e['diff']:+.3f}" for e in held) if held else "none") + "."]
    flips = [e for e in metrics["paired"] if len(e["per_seed"]) > 1
             and min(e["per_seed"].values()) < 0 < max(e["per_seed"].values())]
    if flips:
        out.append("Pairs whose sign changes between seeds: "
                   + "; ".join(f"{e['b']} − {e['a']}" for e in flips) + ".")
    return "\n".join(out) + "\n"


def _reach_section(metrics: dict) -> list[str]:
    """Each seed's verdicts on reaching p^alpha and on mixing, beside each other (see _reach_by_seed)."""
    target, mixing = metrics.get("target") or [], metrics.get("mixing") or {}
    if not target and not mixing:
        return []
    seeds = [str(s) for s in metrics["seeds"]]
    out = ["## Did the samplers reach p^alpha, seed by seed?", "",
           "Each seed's own verdict (its report's *Did the samplers reach p^alpha?* and *Mixing diagnostics*): "
           "accuracy − the weighted estimate of p^alpha on that seed's run, with its interval over problems. "
           "They are not pooled: a sampler reached p^alpha on the runs whose verdict says so.", ""]
    if target:
        out += ["| method | against | " + " | ".join(f"seed {s}" for s in seeds) + " | reached in |",
                "|---|---|" + "---|" * len(seeds) + "---|"]
        for row in target:
            cells, reached, judged = [], 0, 0
            for s in seeds:
                cell = row["per_seed"].get(s)
                if cell is None or "skipped" in cell:
                    cells.append("—")
                    continue
                d = cell["difference"]
                cells.append(f"{cell['verdict']}: {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
                judged += 1
                reached += cell["verdict"] == "reached"
            name = row["method"] + (" (reference, p)" if row.get("role") == "reference" else "")
            out.append(f"| {name} | {row['estimate']} | " + " | ".join(cells) + f" | {reached} of {judged} seeds |")
        out.append("")
    for name, per_seed in mixing.items():
        out += [f"{name} mixing, per seed: " + "; ".join(f"seed {s} {per_seed.get(s) or '—'}" for s in seeds) + ".",
                ""]
    return out


def format_seeds_summary(metrics: dict) -> str:
    lines = [f"over seeds {', '.join(map(str, metrics['seeds']))}:"]
    for name, m in metrics["methods"].items():
        per_seed = ", ".join(f"{v:.3f}" for v in m["per_seed"].values())
        lines.append(f"{name}: accuracy {_ci(m['accuracy'])} (per seed {per_seed})")
    return "\n".join(lines)


def log_seeds(config: WandbConfig, metrics: dict, *, name: str, dir) -> None:
    """One wandb run (job_type seeds) with the pooled values, per-seed values and paired differences."""
    run = start_run(config, name=name, job_type="seeds", dir=dir, keep_id=True, quiet=True,
                    run_config={"seeds": metrics["seeds"], "study": config.group})
    summary = {}
    for method, m in metrics["methods"].items():
        for key in ("value", "low", "high"):
            summary[f"{method}/accuracy/{key}"] = m["accuracy"][key]
        for seed, value in m["per_seed"].items():
            summary[f"{method}/accuracy/seed_{seed}"] = value
        if m["seed_sd"] is not None and math.isfinite(m["seed_sd"]):
            summary[f"{method}/accuracy/seed_sd"] = m["seed_sd"]
    for e in metrics["paired"]:
        for key in ("diff", "low", "high", "p_value", "p_holm"):
            summary[f"paired/{e['b']}-{e['a']}/{key}"] = e[key]
    try:
        run.summary.update(summary)
    finally:
        run.finish()
