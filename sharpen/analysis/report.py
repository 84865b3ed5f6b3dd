"""report.md: the metrics as markdown, one section after another, beside the plots; readable with no wandb.

    from sharpen.analysis.report import render_report
    text = render_report(metrics, plots, run_dir)   # metrics: metrics.json's content; plots: {key: path}
    sharpen.runs.files.write_text_atomic(run_dir / "report.md", text)

`sharpen analyze RUN_DIR` writes it (sharpen.analysis.pipeline). The report is REPORT_SECTIONS
in order: each section is a function `section(metrics, ctx) -> str | None` that renders one
part of the report from metrics.json's content and returns None (or "") when it has nothing
to say; `ctx` (ReportContext) holds the plots and the run directory, and `ctx.image(key, alt)`
links a plot. To add an analysis to the report, compute its numbers in a metric section
(sharpen.analysis.metrics.METRIC_SECTIONS), write one function here and put it in
REPORT_SECTIONS where it belongs. Sections are joined by newlines; headings get a blank line
before them and runs of blank lines collapse to one.

Beside accuracy and pass@k (each method up to its own n; n<k where it has fewer samples) come
coverage and the crossover k, the reasoning boundary of each pair, accuracy at equal compute
and entropy / support (sharpen.analysis.large_k, .boundary, .equal_compute, .entropy define them),
and, when a weighted method (power_is) estimates p^alpha, whether each sampler reached it
(sharpen.analysis.target).
Every table says which records it counts; the "Records used" table names each file,
its line count and its sha256, the "Provenance" section the code, library and grader
versions the records and this analysis ran under, and the closing per-problem table gives
(correct / n) for every problem, so each accuracy can be recomputed by hand from the
record lines.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .mixing import LOG_Z_SD_LIMIT, MIXING_P, RHAT_LIMIT
from .plots import frontier_bands, frontier_points
from .square import CELL_TITLES, CELLS
from .stats import first_and_last_fifth

PASS_K_COLUMNS = 6  # pass@k columns in the table (each method's n, then powers of two); the plot has all


def _f(x, digits: int = 3) -> str:
    """A table cell: — for a missing number.

    >>> _f(None), _f(3), _f(0.12345), _f(2.0, 1)
    ('—', '3', '0.123', '2.0')
    """
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def _seconds(x) -> str:
    """Seconds with two decimals below 10 s (a tiny run's 0.04 s is not 0.0), one above.

    >>> _seconds(0.043), _seconds(12.345), _seconds(None)
    ('0.04', '12.3', '—')
    """
    return _f(x, 2 if x is not None and abs(x) < 10 else 1)


def _ci(entry: dict | None, digits: int = 3) -> str:
    if not entry or entry.get("value") is None:
        return "—"
    return f"{_f(entry['value'], digits)} [{_f(entry['low'], digits)}, {_f(entry['high'], digits)}]"


def _p(p) -> str:
    if p is None:
        return "—"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _shown_ks(metrics: dict) -> list[int]:
    """pass@k columns: every method's own n, and powers of two below the largest (every other one when
    there would be more than PASS_K_COLUMNS columns).

    >>> _shown_ks({"methods": {"a": {"pass_at_k": {"k": [1, 2, 4]}}, "b": {"pass_at_k": {"k": [1, 2]}}}})
    [2, 4]
    >>> _shown_ks({"methods": {"a": {"pass_at_k": {"k": [1, 256]}}, "b": {"pass_at_k": {"k": [1, 8, 16]}}}})
    [4, 16, 64, 256]
    """
    own = {max(m["pass_at_k"]["k"]) for m in metrics["methods"].values() if m.get("pass_at_k")} - {1}
    largest = max(own, default=1)
    powers = [2 ** j for j in range(1, 21) if 2 ** j < largest]
    while len(set(powers) | own) > PASS_K_COLUMNS and len(powers) > 1:
        powers = powers[1::2]  # 2, 4, 8, 16, ... -> 4, 16, ...
    return sorted(set(powers) | own)


def _pass_cell(curve: dict, k: int) -> str:
    """pass@k of one method at k; n<k where the method has fewer samples (never extrapolated)."""
    if k in curve["k"]:
        i = curve["k"].index(k)
        return _ci({"value": curve["value"][i], "low": curve["low"][i], "high": curve["high"][i]})
    return "n<k" if k > max(curve["k"]) else "—"


def _crossover_cell(e: dict | None) -> str:
    """`12 [4, none]`: the crossover k and its interval; 'none' is no crossover up to n, '≤1' base never below.

    >>> _crossover_cell({"status": "crossover", "value": 12, "low": 0, "high": None, "max_k": 64})
    '12 [≤1, none]'
    >>> _crossover_cell({"status": "none up to n", "value": None, "low": 40, "high": None, "max_k": 64})
    'none up to 64 [40, none]'
    """
    if not e or e.get("status") == "no shared problem":
        return "—"
    word = lambda v: "none" if v is None else ("≤1" if v == 0 else str(v))  # noqa: E731
    point = {"crossover": str(e["value"]), "base never below": "base never below",
             "none up to n": f"none up to {e['max_k']}"}[e["status"]]
    return f"{point} [{word(e['low'])}, {word(e['high'])}]"


def _count(entry: dict) -> str:
    return _ci(entry, 1)


def _code(env: dict | None) -> str:
    """`sharpen 0.1.0 @ a79a98d4e1 (dirty)` from an environment() dict."""
    if not env:
        return "—"
    text = f"sharpen {env.get('sharpen') or '?'}"
    if env.get("git_commit"):
        text += f" @ {env['git_commit'][:10]}" + (" (dirty)" if env.get("git_dirty") else "")
    return text


@dataclass
class ReportContext:
    """What a section reads besides the metrics: the plots written ({key: path}) and the run directory."""

    plots: dict
    run_dir: Path

    def image(self, key: str, alt: str) -> str:
        """A markdown image of plot `key`, relative to the run directory; "" when that plot was not drawn.

        >>> ReportContext({"pass_at_k": "/r/plots/pass_at_k.png"}, Path("/r")).image("pass_at_k", "pass@k")
        '\\n![pass@k](plots/pass_at_k.png)\\n'
        >>> ReportContext({}, Path("/r")).image("boundary", "boundary")
        ''
        """
        if key not in self.plots:
            return ""
        rel = os.path.relpath(Path(self.plots[key]), self.run_dir)
        return f"\n![{alt}]({rel})\n"


# ---- the sections, in report order -----------------------------------------------------------


def header(metrics: dict, ctx: ReportContext) -> str:
    """Title, where the numbers come from and how the intervals are made."""
    settings = metrics["settings"]
    conf = int(round(100 * settings["confidence"]))
    return "\n".join([
        f"# Analysis of `{ctx.run_dir.name}`", "",
        f"Written by `sharpen analyze` from the record files listed under *Records used*; "
        f"`metrics.json` beside this file holds every number below and the per-problem counts. "
        f"Intervals are {conf}% percentile bootstraps over problems "
        f"({settings['bootstrap_resamples']} resamples, seed {settings['seed']}), "
        f"Wilson intervals where a method has one sample per problem."])


def warnings(metrics: dict, ctx: ReportContext) -> str | None:
    if not metrics["warnings"]:
        return None
    return "\n".join(["", "## Warnings", ""] + [f"- {w}" for w in metrics["warnings"]])


def records_used(metrics: dict, ctx: ReportContext) -> str:
    """Each method instance's record file: lines, problems, samples per problem, model, sha256; its settings."""
    methods = metrics["methods"]
    out = ["", "## Records used", "",
           "Each row is one method instance (*name*; *method* is the sampler that made it). Record files are "
           "read, never modified; base-model scores live beside them in `scores/<name>.jsonl`.", ""]
    rows = []
    for name, f in metrics["files"].items():
        m = methods[name]
        spp = m["samples_per_problem"]
        n = str(spp["min"]) if spp["min"] == spp["max"] else f"{spp['min']}–{spp['max']}"
        rows.append([name, f.get("method") or name, f"`{f['path']}`",
                     f"{f['records']} (lines {f['first_line']}–{f['last_line']})",
                     m["problems"], n, f"`{f['model']}`" if f["model"] else "—",
                     "—" if f["temperature"] is None else f"{f['temperature']:g}",
                     f"`{f['sha256'][:12]}`"])
    out.append(_table(["name", "method", "file", "records", "problems", "samples / problem", "sampled by",
                       "temperature", "sha256"], rows))
    settings = {name: f["settings"] for name, f in metrics["files"].items() if f.get("settings")}
    if settings:
        out += ["", "<details><summary>settings of each method instance (from samples/&lt;name&gt;.config.json)"
                "</summary>", ""]
        out += [f"- `{name}`: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
                for name, values in settings.items()]
        out += ["", "</details>"]
    return "\n".join(out)


def accuracy_and_pass_at_k(metrics: dict, ctx: ReportContext) -> str:
    """Accuracy, majority vote and pass@k of every method, with the pass@k plot."""
    ks = _shown_ks(metrics)
    out = ["", "## Accuracy and pass@k", "",
           "Accuracy is the mean over problems of each problem's fraction of correct samples (pass@1; a sample "
           "is correct when its record says `correct`, i.e. the task's grader gave it a full score of 1). "
           "pass@k uses the unbiased estimator 1 − C(n−c, k)/C(n, k) on each problem's n samples (c correct), "
           "only for k ≤ n; *n<k* marks k beyond a method's samples (never extrapolated). Each method's curve "
           "goes up to its own n (the plot's x axis is logarithmic). Majority vote scores the most common "
           "extracted answer of each problem (ties split evenly; a problem without any answer counts as wrong; "
           "— when a method's records carry no extracted answer).", ""]
    rows = []
    for name, m in metrics["methods"].items():
        if m.get("weighted"):  # its records are proposal draws: the estimate alone, no pass@k (sharpen.analysis.target)
            rows.append([f"{name} (IS estimate of p^alpha, median ESS {_f(m['ess']['median'], 1)})", m["problems"],
                         f"{m['correct']} / {m['samples']}", _ci(m["accuracy"]), "—"] + ["—"] * len(ks))
            continue
        curve = m["pass_at_k"]
        rows.append([name, m["problems"], f"{m['correct']} / {m['samples']}", _ci(m["accuracy"]),
                     _ci(m["majority_vote"])] + [_pass_cell(curve, k) for k in ks])
    out.append(_table(["method", "problems", "correct / samples", "accuracy", "majority vote"]
                      + [f"pass@{k}" for k in ks], rows))
    if any(m.get("weighted") for m in metrics["methods"].values()):
        out.append("\nAn *IS estimate* row is a weighted method: its records are draws of a proposal, each with an "
                   "importance weight, and its accuracy is the self-normalised estimate of the accuracy of p^alpha "
                   "(per problem Σ w·correct / Σ w, averaged over problems; *correct / samples* counts the draws). "
                   "Pass@k, majority vote, diversity and the other numbers over the draws themselves would describe "
                   "the proposal, so they are not reported for it; see *Did the samplers reach p^alpha?*.")
    out.append(ctx.image("pass_at_k", "pass@k"))
    return "\n".join(out)


def coverage_and_crossover(metrics: dict, ctx: ReportContext) -> str | None:
    """Coverage at the largest shared n and the k at which base overtakes each method."""
    methods = metrics["methods"]
    covered = {n: m.get("coverage") for n, m in methods.items() if m.get("coverage")}
    crossings = {e["b"]: e for e in metrics.get("crossover") or []}
    if not covered and not crossings:
        return None
    base = metrics.get("reference_base")
    first = next(iter(covered.values()), None)
    out = ["", "### Coverage and crossover", ""]
    if first:
        out.append(f"*Coverage* is pass@{first['k']} on the {first['problems']} problems every method has, "
                   f"{first['k']} being the smallest samples-per-problem among them, so every method is measured "
                   f"at the same k on the same problems.")
    if crossings:
        out.append(f"*Crossover* is the first k at which `{base}`'s pass@k reaches the method's (≥) after being "
                   f"below it, on the problems both have, searched up to the smaller n of the two (every k up to "
                   f"128, then 16 points per doubling). Its interval is the percentile interval of the crossover "
                   f"over problem resamples, where a resample may cross nowhere up to n (*none*, ordered above "
                   f"every k) or have `{base}` never below (*≤1*); the last column gives the share of each.")
    out.append("")
    rows = []
    for name, m in methods.items():
        e = crossings.get(name)
        shares = (f"{e['draws_none']:.0%} / {e['draws_never_below']:.0%}" if e and "draws_none" in e else "—")
        rows.append([name, m["samples_per_problem"]["min"], _ci(covered.get(name)),
                     "reference" if name == base else _crossover_cell(e), shares])
    k = f"@{first['k']}" if first else ""
    out.append(_table(["method", "n", f"coverage (pass{k})", f"crossover k ({base} ≥ method)",
                       "resamples: none / never below"], rows))
    return "\n".join(out)


def answer_extraction(metrics: dict, ctx: ReportContext) -> str | None:
    """Accuracy under strict and flexible extraction, for the methods where the two disagree."""
    rows = []
    for name, m in metrics["methods"].items():
        ex = m.get("extractions")
        if ex and ex["disagreements"]:
            kinds = [k for k in ex if k not in ("disagreements", "records")]
            rows.append([name] + [_ci(ex[k]) for k in kinds] + [f"{ex['disagreements']} / {ex['records']}"])
    if not rows:
        return None
    out = ["## Answer extraction", "",
           "The task reads answers two ways, as evaluation harnesses do: *strict* takes only the final-answer "
           "format the prompt declares (a completion without one, e.g. cut off at the length limit, is "
           "wrong); *flexible* takes the last number anywhere. The tables above use the task's own choice "
           "(the GRPO reward uses the same one). Shown for the methods where the two disagree.", ""]
    out.append(_table(["method"] + kinds + ["records where they disagree"], rows))
    out.append("")
    return "\n".join(out)


def _first_last(curve: dict, key: str) -> str:
    """Mean of the first fifth of the logged values → mean of the last fifth (stats.first_and_last_fifth).

    >>> _first_last({"reward": [0.0, 0.1, None, 0.4, 0.5]}, "reward"), _first_last({}, "entropy")
    ('0.000 → 0.500', '—')
    """
    ends = first_and_last_fifth(v for v in curve.get(key) or [] if v is not None)
    return "—" if ends is None else f"{ends[0]:.3f} → {ends[1]:.3f}"


def grpo_training(metrics: dict, ctx: ReportContext) -> str | None:
    """Reward, its spread, completion length and entropy over each GRPO run (grpo, grpo_self), the loss over
    power_distill's fine-tuning, with each run's curves."""
    training = metrics.get("training") or {}
    if not training:
        return None
    out = ["## Training", "",
           "From each training run's log history (`RUN_DIR/<stage>/metrics.json`, one row per logged "
           "optimizer step). GRPO runs (grpo: the task's grader; grpo_self: the base model's likelihood, "
           "(1 + beta) log p_base - beta log pi): mean reward of the rollouts (± its within-group standard "
           "deviation, the signal GRPO learns from), completion length and token entropy; rollouts sample the "
           "policy at the training temperature, the evaluation above at the method's own. power_distill: the "
           "fine-tuning loss (mean negative log-likelihood per teacher token) and token accuracy.", ""]
    grpo_runs = {name: curve for name, curve in training.items() if "reward" in curve}
    if grpo_runs:
        rows = [[name, f"{curve['step'][0]}–{curve['step'][-1]} ({len(curve['step'])} logged)"]
                + [_first_last(curve, key) for key in ("reward", "reward_std", "completion_length", "entropy")]
                for name, curve in grpo_runs.items()]
        out.append(_table(["run", "steps", "reward (first → last fifth)", "reward std", "completion length",
                           "entropy"], rows))
    tuned = {name: curve for name, curve in training.items() if "reward" not in curve}
    if tuned:
        rows = [[name, f"{curve['step'][0]}–{curve['step'][-1]} ({len(curve['step'])} logged)"]
                + [_first_last(curve, key) for key in ("loss", "mean_token_accuracy")]
                for name, curve in tuned.items()]
        out += ["", _table(["run", "steps", "loss (first → last fifth)", "token accuracy"], rows)]
    out += [ctx.image(f"training_{name}", f"{name} training curves") for name in training]
    return "\n".join(out)


def paired_comparisons(metrics: dict, ctx: ReportContext) -> str | None:
    """Every pair of methods on their shared problems: difference, its permutation p-values, who solves what."""
    if not metrics["paired"]:
        return None
    out = ["## Paired comparisons", "",
           "Each row compares method B with method A on the problems both have: the difference of "
           "accuracies (B − A), the mean over problems of the per-problem pass-rate difference, with a paired "
           "bootstrap interval; *p* tests that same mean with a paired sign-flip permutation test (each "
           "problem's difference flipped in sign at random under the null; exact up to 20 differing problems, "
           "else 20000 seeded flips), and *p (Holm)* adjusts it for all the pairs. *Wilcoxon p* (signed ranks "
           "of the differences), or with one sample per problem *McNemar p* (exact: a binomial test on the "
           "problems where exactly one is correct), is a secondary test of another quantity: a mean carried by "
           "a few large gains can be clear while the signed ranks balance. "
           "*B > A* counts problems where B's pass rate is higher; *only A solves* counts problems where "
           "some sample of A and none of B is correct.", ""]
    rows = []
    for e in metrics["paired"]:
        if not e.get("problems"):
            rows.append([f"{e['b']} − {e['a']}", 0] + ["no shared problem"] + ["—"] * 6)
            continue
        shared = str(e["problems"])
        if e["problems"] < max(e["problems_a"], e["problems_b"]):
            shared += f" (of {e['problems_a']} / {e['problems_b']})"
        diff = _ci({"value": e["diff"], "low": e["low"], "high": e["high"]})
        secondary = (f"{_p(e['mcnemar_p'])} (McNemar)" if e.get("mcnemar_p") is not None
                     else _p(e.get("wilcoxon_p")))
        rows.append([f"{e['b']} − {e['a']}", shared, diff, _p(e["p_value"]), _p(e.get("p_holm")), secondary,
                     f"{e['b_better']} / {e['a_better']} / {e['ties']}", e["only_a_solves"], e["only_b_solves"]])
    out.append(_table(["B − A", "problems", "difference", "p", "p (Holm)", "Wilcoxon p", "B > A / A > B / tie",
                       "only A solves", "only B solves"], rows))
    return "\n".join(out)


def reached_target(metrics: dict, ctx: ReportContext) -> str | None:
    """Each sampler of the base model against a weighted method's estimate of p^alpha: difference and verdict."""
    rows_in = metrics.get("target") or []
    if not rows_in:
        return None
    tolerance = metrics["settings"].get("target_tolerance")
    min_ess = metrics["settings"].get("min_ess")
    estimates = list(dict.fromkeys(r["estimate"] for r in rows_in))
    out = ["", "## Did the samplers reach p^alpha?", "",
           f"{', '.join(f'`{e}`' for e in estimates)} estimates the accuracy of p^alpha itself by importance "
           "sampling (weighted draws of a proposal, self-normalised per problem). Each row holds a method that "
           "samples the base model with the same alpha against that estimate on the problems both have: "
           "*difference* = accuracy − estimate, with a paired bootstrap interval over problems. "
           f"*Reached* means the interval lies within ±{_f(tolerance, 2)} of the importance-sampling estimate of "
           f"p^alpha and holds 0; *within tolerance*, that it excludes 0 but stays within ±{_f(tolerance, 2)} "
           f"(a difference the samples resolve, smaller than the study's margin: not p^alpha exactly); *missed*, "
           f"that it excludes 0 and reaches beyond ±{_f(tolerance, 2)}; *cannot tell*, that the "
           f"estimate's median effective sample "
           f"size on those problems is below {min_ess} (ESS too low) or that the interval is too wide for either. "
           "A high acceptance rate is not evidence of reaching p^alpha: a chain can accept most proposals and "
           "still sit far from its target. The *reference* row is base, p itself: how far sharpening moves "
           "accuracy at all.", ""]
    rows, skipped = [], []
    for r in rows_in:
        if r.get("skipped"):
            skipped.append(f"`{r['method']}` (against `{r['estimate']}`): {r['skipped']}")
            continue
        name = r["method"] + (" (reference, p)" if r.get("role") == "reference" else "")
        rows.append([name, r["estimate"], r["problems"], _ci(r["accuracy"]), _ci(r["estimated_accuracy"]),
                     _ci(r["difference"]), _f(r["ess_median"], 1), f"**{r['verdict']}**"])
    if rows:
        out.append(_table(["method", "estimate from", "problems", "accuracy", "estimate of p^alpha",
                           "difference (accuracy − estimate)", "median ESS", "verdict"], rows))
    if skipped:
        out += ["", "Not compared: " + "; ".join(skipped) + "."]
    return "\n".join(out)


def _mixing_cells(e: dict) -> tuple[str, str]:
    """(diagnostic, figures) of one method's mixing entry (sharpen.analysis.mixing)."""
    if e["diagnostic"] == "two_starts":
        starts = e["starts"]
        if e.get("status") != "ok":
            return "two starts", f"{e['status']} ({starts['proposal']} + {starts['base']} chains)"
        ans, ll, rhat = e.get("answers"), e["loglik"], e["rhat"]
        below = f"{_f(100 * ll['share_problems_below'], 0)}% (log-lik)"
        if ans:
            below = f"{_f(100 * ans['share_problems_below'], 0)}% (answers), " + below
        return "two starts (proposal / base)", (
            f"p = {_p(e['p_value'])} (answers {_p(ans['p_value']) if ans else '—'}, log-lik {_p(ll['p_value'])}); "
            f"problems with p < {e['thresholds']['problem_p']}: {below}; R-hat pooled {_f(rhat['pooled'])}, median "
            f"{_f(rhat['median'])}, max {_f(rhat['max'])}; {e['problems']} problems, {starts['proposal']} + "
            f"{starts['base']} chains")
    if e["diagnostic"] == "smc":
        return "SMC weights", (
            f"{_f(e['num_particles'], 0)} particles, {e['runs']} runs; resamples {_f(e['resamples_median'], 1)}; "
            f"ESS / N min {_f(e['min_ess_fraction_median'])}, mean {_f(e['mean_ess_fraction_median'])}, final "
            f"{_f(e['final_ess_fraction_median'])} (medians over runs); sd of log Z over runs of a problem "
            f"{_f(e['log_z_sd_median'], 2)} (median over {e['log_z_sd_problems']} problems)")
    return "look-ahead", (f"{_f(e['lookahead'], 1)} tokens per decision / {_f(e['completion_tokens'], 1)} tokens "
                          f"per completion = {_f(e['ratio'], 2)} (from the {e['source']})")


def mixing_diagnostics(metrics: dict, ctx: ReportContext) -> str | None:
    """One row per sampler of p^alpha: its convergence diagnostic and verdict (sharpen.analysis.mixing)."""
    entries = {n: m["mixing"] for n, m in metrics["methods"].items() if m.get("mixing")}
    if not entries:
        return None
    out = ["", "## Mixing diagnostics", "",
           "Whether each sampler of p^alpha reached its target as configured, not only whether its kernel targets "
           "it (sharpen.analysis.mixing defines each figure). *Two starts*: power_mh with `init: both` grows half "
           "its chains from the proposal and half from the base model; chains that mixed give the same answers "
           "and log-likelihoods from either start. p: stratified permutation tests across problems (Bonferroni "
           "over answers and log-likelihood); R-hat between the two starts, pooled over problems. *Not mixed* "
           f"when p < {MIXING_P} or the pooled R-hat > {RHAT_LIMIT}; *no sign of non-mixing* is not a proof of "
           "mixing. *SMC weights*: low ESS fractions and a large spread of log Z between runs of one problem say "
           f"the particles are too few (flagged above {LOG_Z_SD_LIMIT:g} nat). *Look-ahead*: a look-ahead "
           "shorter than the completions targets a short-sighted law, not p^alpha. A high MH acceptance rate is "
           "not a mixing diagnostic: a chain that accepts small changes near its start accepts often and never "
           "leaves it.", ""]
    rows = [[name, *_mixing_cells(e), f"**{e['verdict']}**"] for name, e in entries.items()]
    out.append(_table(["method", "diagnostic", "figures", "verdict"], rows))
    return "\n".join(out)


def reasoning_boundary(metrics: dict, ctx: ReportContext) -> str | None:
    """Problems solved by only one side of each pair at the largest k both have."""
    entries = metrics.get("boundary") or []
    if not entries:
        return None
    out = ["## Reasoning boundary", "",
           "For each pair (A, B), on the problems both have, at k = the smaller samples-per-problem of the two: "
           "the expected number of problems solved only by A, only by B, by both and by neither. A problem counts "
           "as solved by a method with probability pass@k (its unbiased estimate from all of that method's "
           "samples), the two methods drawing independently; with exactly k samples each these are plain set "
           "counts of *some sample correct*. Intervals resample problems.", ""]
    rows = []
    for e in entries:
        if "k" not in e:
            rows.append([e["a"], e["b"], "—", 0, "no shared problem", "—", "—", "—", "—"])
            continue
        rows.append([e["a"], e["b"], e["k"], e["problems"], _count(e["only_a"]), _count(e["only_b"]),
                     _count(e["both"]), _count(e["neither"]), _count(e["net"])])
    out.append(_table(["A", "B", "k", "problems", "only A", "only B", "both", "neither", "only B − only A"], rows))
    out.append(ctx.image("boundary", "problems solved by one method and not the other"))
    return "\n".join(out)


def base_model_scores(metrics: dict, ctx: ReportContext) -> str:
    """Log-likelihood, confidence and self-certainty of every method's completions under the base model."""
    scored = {n: m["base_scores"] for n, m in metrics["methods"].items() if m.get("base_scores")}
    out = ["", "## Likelihood and confidence under the base model", ""]
    if not scored:
        out.append("Not computed (no record carries base-model scores; run without `--no-score`).")
        return "\n".join(out)
    models = sorted({x for s in scored.values() for x in s["model"]})
    out.append(f"Every completion, whichever method produced it, scored by one forward pass of the base model "
               f"{', '.join(f'`{x}`' for x in models)} (temperature 1) over prompt + completion "
               f"(stored in `scores/<name>.jsonl`). "
               f"Log-likelihood per token = mean of log p(token); confidence = mean over tokens of "
               f"Σ_v p log p (negative entropy; Karan & Du, Eq. 13); self-certainty = mean over tokens of "
               f"KL(uniform ‖ p) (Kang et al. 2025). Means are over problems of per-problem means.")
    out.append("")
    rows = []
    for name, s in scored.items():
        lp = s["logprob_mean"]
        shown = f"{name} (IS estimate under p^alpha)" if s.get("weighted") else name  # sharpen.analysis.target
        rows.append([shown, f"{s['scored']}" + (f" (+{s['unscored']} unscored)" if s["unscored"] else ""),
                     _ci(lp), _f(lp["median"]), f"{_f(lp['mean_correct'])} / {_f(lp['mean_incorrect'])}",
                     _ci(s["logprob_sum"], 2), _ci(s["confidence"]), _ci(s["self_certainty"])])
    out.append(_table(["method", "scored", "log-lik / token", "median", "correct / incorrect",
                       "log-lik (sum)", "confidence", "self-certainty"], rows))
    out.append(ctx.image("base_logprob_mean", "base log-likelihood per token"))
    out.append(ctx.image("base_confidence", "confidence under the base model"))
    out.append(ctx.image("base_self_certainty", "self-certainty under the base model"))
    return "\n".join(out)


def diversity(metrics: dict, ctx: ReportContext) -> str:
    """distinct-n, self-BLEU, distinct answers and embedding diversity over equal sample counts."""
    methods = metrics["methods"]
    diverse = {n: m["diversity"] for n, m in methods.items() if m.get("diversity")}
    out = ["## Diversity", ""]
    if not diverse:
        out.append("Not computed: every method has a single sample per problem.")
        return "\n".join(out)
    used = metrics["settings"]["diversity_samples_per_problem"]
    out.append(f"Across the first {used} samples of each problem (the same number for every method, so the "
               f"measures compare; at most 64, as self-BLEU and embedding distances grow quadratically), "
               f"averaged over problems. distinct-n: distinct token n-grams / all n-grams "
               f"(higher = more diverse); self-BLEU: BLEU of each sample against the others, in [0, 1] "
               f"(lower = more diverse); distinct answers: number of different extracted answers; embedding "
               f"distance: mean pairwise cosine distance of all-MiniLM-L6-v2 embeddings, Vendi: their Vendi "
               f"score (1 = all alike, {used} = all orthogonal).")
    out.append("")
    keys = [f"distinct_{n}" for n in range(1, 5)] + ["self_bleu", "distinct_answers", "embedding_distance", "vendi"]
    keys = [k for k in keys if any(d.get(k) for d in diverse.values())]
    rows = [[name] + [_ci(d.get(k)) for k in keys] for name, d in diverse.items()]
    out.append(_table(["method"] + [k.replace("_", "-") for k in keys], rows))
    skipped = [n for n, m in methods.items() if not m.get("diversity") and not m.get("weighted")]
    if skipped:
        out.append(f"\nNot computed for {', '.join(skipped)} (one sample per problem).")
    weighted = [n for n, m in methods.items() if m.get("weighted")]
    if weighted:
        out.append(f"\nNot reported for {', '.join(weighted)}: weighted draws of a proposal, not of p^alpha.")
    out.append(ctx.image("diversity", "diversity"))
    return "\n".join(out)


def entropy_and_support(metrics: dict, ctx: ReportContext) -> str | None:
    """Token and answer entropy of each method's own samples, and support retention against base."""
    methods = metrics["methods"]
    if not any(m.get("entropy") or m.get("support") for m in methods.values()):
        return None
    base = metrics.get("reference_base")
    used = metrics["settings"].get("entropy_samples_per_problem")
    out = ["", "### Entropy and support", "",
           "*Token entropy*: nats per generated token of the method's own sampling distribution along its own "
           "completions, estimated per problem as Σ −log q(token | prefix) / Σ tokens (q the distribution each "
           "token was drawn from), averaged over problems; available only where the records hold log q (see the "
           f"last column). *Answer entropy*: Shannon entropy (nats) of the extracted answers over the first {used} "
           "samples of each problem (the same count for every method: the plug-in estimate grows with it), "
           f"*no answer* counted as one answer. *Support* against `{base}`, on shared problems and the first m "
           "samples of each side (m the smaller count): *retention* is the fraction of base's distinct correct "
           "answers that the method also produced (over problems where base produced one), *new correct* the "
           "distinct correct answers per problem that base did not produce (total in brackets).", ""]
    rows = []
    for name, m in methods.items():
        ent, sup = m.get("entropy") or {}, m.get("support")
        retention = "reference" if name == base else (_ci(sup.get("retention")) if sup else "—")
        new = "—"
        if sup and sup.get("new_correct_answers"):
            new = f"{_ci(sup['new_correct_answers'], 2)} ({sup['new_correct_answers']['total']})"
        rows.append([name, _ci(ent.get("token")), _ci(ent.get("answer")), retention, new,
                     str(sup["samples"]) if sup else "—", ent.get("token_note") or "—"])
    out.append(_table(["method", "token entropy", f"answer entropy (first {used})", "support retention",
                       "new correct answers / problem", "m", "token entropy from"], rows))
    return "\n".join(out)


def _sessions_cell(cost: dict) -> str:
    """`2.25 (2 sessions, up to 2 processes, 5 of 8 records)`: measured sampling time and what it covers."""
    sessions = cost.get("sessions")
    if not sessions:
        return "—"
    cell = f"{_seconds(sessions['elapsed_seconds'])} ({sessions['count']} session" \
           f"{'s' if sessions['count'] != 1 else ''}"
    if sessions.get("processes", 1) > 1:
        cell += f", up to {sessions['processes']} processes"
    if sessions["records_written"] != cost["records"]:
        cell += f", {sessions['records_written']} of {cost['records']} records"
    return cell + ")"


def compute(metrics: dict, ctx: ReportContext) -> str:
    """Tokens sampled and run through the model, wall time, MH acceptance and training cost of each method."""
    methods = metrics["methods"]
    sessions_any = any(m["cost"].get("sessions") for m in methods.values())
    training_any = any(m["cost"].get("training") for m in methods.values())
    out = ["## Compute", "",
           "Summed over the records: tokens sampled (decode steps), tokens run through the model (prefill "
           "included; power-MH re-proposals counted) and wall-clock seconds. *wall s, sum of per-record shares* "
           "adds up each record's `cost.wall_seconds`, its share of the time the sampler measured"
           + (("; *sampling s, elapsed* is the measured time itself, summed over the sampling sessions in "
               "`samples/<name>.sessions.jsonl` and, for a session of several processes, over its processes "
               "(process-seconds, as the shares are; a session killed before it ended logs none, so the "
               "column says when its sessions wrote fewer records than the file holds)") if sessions_any else "")
           + ". Training columns come from `<name>/cost.json` when the study wrote one.", ""]
    rows = []
    for name, m in methods.items():
        c = m["cost"]
        row = [name, c["records"], _f(c["completion_tokens"]["per_sample"], 1),
               _f((c.get("sampled_tokens") or {}).get("total"), 0), _f((c.get("forward_tokens") or {}).get("total"), 0),
               _f((c.get("forward_tokens") or {}).get("per_sample"), 1),
               _seconds((c.get("wall_seconds") or {}).get("total"))]
        if sessions_any:
            row.append(_sessions_cell(c))
        row.append(_f(c.get("acceptance_rate")))
        if training_any:
            t = c.get("training") or {}
            row += [_f(t.get("wall_seconds"), 1), _f(t.get("rollout_tokens"), 0), _f(t.get("optimizer_steps"), 0)]
        rows.append(row)
    header = ["method", "samples", "tokens / completion", "sampled tokens", "forward tokens",
              "forward tokens / sample", "wall s, sum of per-record shares"]
    header += ["sampling s, elapsed (sessions)"] if sessions_any else []
    header += ["MH acceptance"]
    if training_any:
        header += ["training wall s", "training rollout tokens", "optimizer steps"]
    out.append(_table(header, rows))
    out.append(ctx.image("accuracy_vs_compute", "accuracy against compute"))
    return "\n".join(out)


def frontier(metrics: dict, ctx: ReportContext) -> str | None:
    """Every method instance at its cost per completion (forward tokens, wall seconds), on the same axes."""
    curves = frontier_points(metrics)
    if not curves:
        return None
    out = ["", "### One frontier", "",
           "Every method instance at its cost per completion, on the same axes. *Compute* is forward tokens: "
           "every token run through the model for that completion (prompt prefill, proposals, particles, "
           "rollouts). *Wall s* is the completion's share of the measured sampling time when its rows "
           "(chains, particles, rollouts) ran batched with others: a throughput cost on this machine, not "
           "the latency of one completion alone (`python -m benchmarks.bench_samplers` measures that). "
           "Instances of one method (e.g. two budgets of particles or MH steps) form its curve.", ""]
    rows = [[p["name"], kind, _f(p["forward_tokens"], 1), _f(p["wall_seconds"], 4), _ci(p)]
            for kind, points in curves.items() for p in points]
    out.append(_table(["instance", "method", "forward tokens / completion", "wall s / completion",
                       "accuracy"], rows))
    for band in frontier_bands(metrics):
        out.append(f"\n`{band['name']}` is no point of the frontier: {_ci(band)} is its importance-sampling estimate "
                   f"of the accuracy of p^alpha, drawn across the plot as a band (*p^alpha (IS estimate)*).")
    out.append(ctx.image("frontier", "one frontier: accuracy against cost"))
    return "\n".join(out)


def equal_compute(metrics: dict, ctx: ReportContext) -> str | None:
    """Each sampler against majority voting over base / low_temp samples that cost the same forward tokens."""
    rows_in = metrics.get("equal_compute") or []
    if not rows_in:
        return None
    out = ["", "### Accuracy at equal compute", "",
           "Each method against majority voting over samples of a cheap reference (base, low_temp) that spend the "
           "same forward tokens. C is the mean forward tokens per completion of each on the problems both have "
           "(the method's includes its prompt once); the reference's k samples of a problem share one prefill "
           "of the prompt, so they cost prompt + k (C_reference − prompt), and "
           "k = (C_method − prompt) / (C_reference − prompt), prompt the reference's mean prompt length. "
           "*k, prompt per sample* = C_method / C_reference is the older accounting that prefills the prompt "
           "for every reference sample (a smaller k, in the method's favour), shown for comparison. k is "
           "linearly interpolated between the integers around it (k < 1 is shown at k = 1; k beyond the "
           "reference's samples is marked, not extrapolated). Majority vote at k is the "
           "expected vote of a random k-subset of the reference's samples "
           f"({metrics['settings'].get('majority_subsets')} seeded subsets per problem; exact at k = n); pass@k (oracle, needs a verifier) is shown beside it. "
           "*Beats voting*: yes when the paired interval of method − majority vote lies above 0, no when below, "
           "else inconclusive. A *+ training* row adds the method's training compute spread over its evaluation "
           "problems (forward tokens of rollout generation and of the loss's forward passes, from "
           "`<name>/cost.json`; backward passes left out, so a lower bound) to its cost per completion.", ""]
    rows = []
    for r in rows_in:
        name = r["method"] + (" + training" if r.get("training") else "")
        cost = "—"
        if r.get("forward_per_completion") is not None:
            cost = f"{_f(r['forward_per_completion'], 1)} / {_f(r['reference_forward_per_completion'], 1)}"
        note = "" if r["status"] == "ok" else r["status"]
        for extra in ("cost_note", "training_note"):
            if r.get(extra):
                note = "; ".join(x for x in (note, r[extra]) if x)
        rows.append([name, r["reference"], r["problems"], cost, _f(r.get("reference_prompt_tokens"), 1),
                     _f(r.get("k"), 2), _f(r.get("k_prompt_per_sample"), 2), _ci(r.get("accuracy")),
                     _ci(r.get("majority_vote")), _ci(r.get("pass_at_k")), _ci(r.get("difference")),
                     r.get("beats_voting") or "—", note or "—"])
    out.append(_table(["method", "reference", "problems", "forward tokens / completion (method / reference)",
                       "reference prompt tokens", "k", "k, prompt per sample", "method accuracy",
                       "reference majority vote at k", "reference pass@k", "method − majority", "beats voting",
                       "note"], rows))
    return "\n".join(out)


def provenance(metrics: dict, ctx: ReportContext) -> str:
    """The code and libraries this analysis ran under; each method's code, sessions, grader and model revision."""
    here = metrics.get("environment") or {}
    libraries = ", ".join(f"{k} {v}" for k, v in (here.get("libraries") or {}).items() if v)
    out = ["## Provenance", "",
           f"This analysis ran under {_code(here)}, Python {here.get('python', '?')}"
           + (f", {libraries}" if libraries else "") + ". Each method's code, grader and model as its "
           "`samples/<name>.config.json` and `<name>.sessions.jsonl` record them (differences in library "
           "versions are listed under *Warnings*):", ""]
    rows = []
    for name, f in metrics["files"].items():
        sessions = f.get("sessions") or []
        codes = list(dict.fromkeys(_code(e) for e in [f.get("environment")] + [s.get("environment") for s in sessions]
                                   if e))
        rows.append([name, "; ".join(codes) or "—", len(sessions) if sessions else "—",
                     f.get("grader_version") or "—",
                     f"`{f['model_revision']}`" if f.get("model_revision") else "—"])
    out.append(_table(["name", "code", "sampling sessions", "grader version", "model revision"], rows))
    unsandboxed = [name for name, f in metrics["files"].items() if "sandbox=unsandboxed" in (f.get("grader_version") or "")]
    if unsandboxed:
        out += ["", f"**Graded unsandboxed:** {', '.join(unsandboxed)}. The run asked for `sandbox=none`, so the "
                    "programs ran under the process guard only (resource limits, and Landlock where the kernel has "
                    "it), not in bwrap: see README, \"The code grader sandbox\", for what that leaves open."]
    return "\n".join(out)


def this_analysis(metrics: dict, ctx: ReportContext) -> str | None:
    """How this analysis scored (now, reused, started afresh), its embeddings and its time."""
    analysis = metrics.get("analysis")
    if not analysis:
        return None
    if analysis.get("scored_now") is None:
        scoring = "off (`--no-score`); scores already in `scores/` are shown"
    else:
        scoring = (f"{analysis['scored_now']} record(s) scored now ({_f(analysis.get('scoring_seconds'), 1)} s), "
                   f"{analysis.get('scored_before', 0)} reused from `scores/`")
        for name, reason in (analysis.get("reset") or {}).items():
            scoring += f"; `scores/{name}.jsonl` started afresh ({reason})"
    return "\n".join(["## This analysis", "",
                      f"Base-model scoring: {scoring}. Embeddings: {analysis.get('embeddings', 'off')}. "
                      f"Total {_f(analysis.get('seconds'), 1)} s."])


def sharpening_square(metrics: dict, ctx: ReportContext) -> str | None:
    """The 2 x 2 of {no verifier, verifier} x {no training, training}, and what differs significantly across it."""
    sq = metrics.get("square")
    if not sq:
        return None
    k = sq["k"]
    out = ["## The sharpening square", "",
           "Each method in its corner: sampled from the base model or from a model trained from it "
           "(grpo_self: GRPO on the base model's own likelihood toward p^alpha; power_distill: fine-tuned on a "
           "power sampler's train-split samples; grpo: GRPO on the task's grader), with or without a verifier. "
           f"*Verifier, no training* is an oracle best-of-{k}: a sampler's pass@{k}, a correct completion "
           f"picked among {k} draws whenever there is one. pass@{k} is at the largest number of samples "
           "per problem every drawn method has; accuracy with its interval over problems (a weighted method's is "
           "its estimate under p^alpha, with no draws for pass@k); log-likelihood is the base model's, per token; "
           "distinct answers among a problem's first samples; cost in forward tokens per completion (per answer "
           f"for the oracle: {k} draws), plus the training's forward tokens per evaluated problem where the "
           "model was trained.", ""]
    rows = []
    for cell in CELLS:
        for r in sq["cells"][cell]:
            name = f"{r['method']}, best of {k} (oracle)" if r["oracle"] else r["method"]
            rows.append([CELL_TITLES[cell], name, _ci(r["accuracy"]), _ci(r["pass_at_k"]),
                         _f(r["base_logprob_mean"]), _f(r["distinct_answers"], 2),
                         _f(r["forward_tokens_per_sample"], 1), _f(r["training_forward_tokens_per_problem"], 0)])
        if not sq["cells"][cell]:
            rows.append([CELL_TITLES[cell], "(no method)", "—", "—", "—", "—", "—", "—"])
    out.append(_table(["corner", "method", "accuracy", f"pass@{k}", "base log p / token", "distinct answers",
                       "forward tokens / completion", "training forward tokens / problem"], rows))
    out += ["", _square_paragraph(sq)]
    return "\n".join(out)


SQUARE_PAIRS_SHOWN = 3  # per pair of corners, the largest significant differences; metrics.json has them all


def _square_paragraph(sq: dict) -> str:
    """What the paired comparisons say across corners, corner pair by corner pair, written from the numbers."""
    if not sq["cross_corner_pairs"]:
        return "No two methods in different corners share problems: nothing is compared across corners."
    found = sq["significant"]
    out = [f"Of the {sq['cross_corner_pairs']} pairs of methods in different corners, compared on their shared "
           f"problems (paired permutation test, Holm-adjusted over every pair of the study), {len(found)} differ in "
           f"accuracy at p < {sq['threshold']}" + (": no corner is shown better than another here." if not found
                                                    else "; by pair of corners (the largest differences):")]
    by_corners: dict[tuple, list] = {}
    for s in found:
        by_corners.setdefault(tuple(sorted((s["cell_a"], s["cell_b"]), key=CELLS.index)), []).append(s)
    for (first, second), pairs in by_corners.items():
        parts = []
        for s in sorted(pairs, key=lambda s: -abs(s["diff"]))[:SQUARE_PAIRS_SHOWN]:
            # diff is b - a with its interval: turned around when a is the more accurate
            if s["diff"] > 0:
                better, worse, gap, low, high = s["b"], s["a"], s["diff"], s["low"], s["high"]
            else:
                better, worse, gap, low, high = s["a"], s["b"], -s["diff"], -s["high"], -s["low"]
            parts.append(f"{better} over {worse} +{gap:.3f} [{_f(low)}, {_f(high)}], p = {_p(s['p_holm'])}")
        more = f" and {len(pairs) - len(parts)} more" if len(pairs) > len(parts) else ""
        out.append(f"- *{CELL_TITLES[first]}* against *{CELL_TITLES[second]}*: " + "; ".join(parts) + more + ".")
    for key, count in sq.get("compared_by_corners", {}).items():
        first, second = key.split(" | ")
        if (first, second) not in by_corners:
            out.append(f"- *{CELL_TITLES[first]}* against *{CELL_TITLES[second]}*: none of the {count} pairs differs.")
    return "\n".join(out)


PER_PROBLEM_ROWS = 500  # the report's table stops there; metrics.json has every problem


def per_problem_counts(metrics: dict, ctx: ReportContext) -> str:
    """(correct / samples) of every problem and method, so each accuracy can be recomputed by hand."""
    per_problem = metrics["per_problem"]
    names = list(per_problem)
    pids = list(dict.fromkeys(pid for name in names for pid in per_problem[name]))
    limit = PER_PROBLEM_ROWS
    out = ["## Per-problem counts", "",
           f"<details><summary>correct / samples for each problem and method"
           f"{f' (first {limit} of {len(pids)}; all in metrics.json)' if len(pids) > limit else ''}</summary>", ""]
    rows = [[f"`{pid}`"] + [("{1} / {0}".format(*per_problem[n][pid]) if pid in per_problem[n] else "—")
                            for n in names] for pid in pids[:limit]]
    out += [_table(["problem"] + names, rows), "", "</details>", ""]
    return "\n".join(out)


REPORT_SECTIONS = [header, warnings, records_used, accuracy_and_pass_at_k, coverage_and_crossover,
                   answer_extraction, sharpening_square, grpo_training, paired_comparisons, reached_target, mixing_diagnostics,
                   reasoning_boundary,
                   base_model_scores, diversity, entropy_and_support, compute, frontier, equal_compute, provenance,
                   this_analysis, per_problem_counts]


def render_report(metrics: dict, plots: dict, run_dir) -> str:
    """report.md from metrics.json's content and the plots ({key: path}): REPORT_SECTIONS in order."""
    ctx = ReportContext(dict(plots), Path(run_dir))
    text = "\n".join(part for section in REPORT_SECTIONS if (part := section(metrics, ctx)))
    text = re.sub(r"([^\n])\n(#+ )", r"\1\n\n\2", text)  # a blank line before every heading
    return re.sub(r"\n{3,}", "\n\n", text)
