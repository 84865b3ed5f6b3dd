"""The report's figures as PNG files (matplotlib, Agg backend: no display needed).

    paths = make_plots(run, metrics, "runs/demo/plots")   # {"pass_at_k": Path(...), ...}

`sharpen analyze RUN_DIR` draws them into RUN_DIR/plots/ and links them from report.md.

pass_at_k.png             pass@k against k (log axis), one line and interval band per method, each up to its own n
accuracy_vs_compute.png   pass@k against forward tokens spent per problem on k samples
frontier.png              accuracy against forward tokens and wall seconds per completion: every instance a
                          point, the instances of one method joined into its curve; a weighted method's
                          estimate of p^alpha (sharpen.analysis.target) a horizontal band
base_logprob_mean.png     histogram of per-token base log-likelihood, per method
base_confidence.png       histogram of confidence (negative entropy) under the base model
base_self_certainty.png   histogram of self-certainty under the base model
diversity.png             distinct-n, self-BLEU, distinct answers, embedding distance per method
boundary.png              solved-set matrix: problems the row method solves and the column method does not,
                          at the pair's largest shared k (sharpen.analysis.boundary)

Every method instance of the run gets its own colour (tab10, in table order) and, past ten
instances, its own line style; with more than four the legend moves beside the axes. A weighted
method's records are draws of a proposal: it has no pass@k curve and no histograms.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only; never open a window or need a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .boundary import only_matrix  # noqa: E402
from .runs import Run  # noqa: E402

HISTOGRAMS = {
    "logprob_mean": ("base_logprob_mean", "log-likelihood per token under the base model (nats)"),
    "confidence": ("base_confidence", "confidence: mean over tokens of sum_v p log p (higher = surer)"),
    "self_certainty": ("base_self_certainty", "self-certainty: mean over tokens of KL(U || p) (higher = surer)"),
}


LINE_STYLES = ("-", "--", ":", "-.")


def method_colors(names) -> dict[str, str]:
    """One colour per method, in table order, cycling through tab10.

    >>> method_colors(["base", "power_mh_a2"])
    {'base': '#1f77b4', 'power_mh_a2': '#ff7f0e'}
    """
    palette = plt.get_cmap("tab10").colors
    return {n: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, n in enumerate(names)}


def method_styles(names) -> dict[str, str]:
    """Line styles that tell apart methods whose colours repeat (the eleventh instance on)."""
    return {n: LINE_STYLES[(i // 10) % len(LINE_STYLES)] for i, n in enumerate(names)}


def _legend(ax, count: int) -> None:
    """Inside the axes for a few methods; beside them (outside the data) for many."""
    if count > 4:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=8)


def _width(count: int, base: float = 6.0) -> float:
    return base + (2.2 if count > 4 else 0.0)


def _save(fig, path: Path) -> Path:
    if len(fig.axes) > 1:  # spacing between panels; one panel's margins are bbox_inches="tight"'s (and cheaper)
        fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # "tight" keeps a legend placed beside the axes
    plt.close(fig)
    return path


def plot_pass_at_k(metrics: dict, path: Path) -> Path:
    methods = metrics["methods"]
    colors, styles = method_colors(methods), method_styles(methods)
    fig, ax = plt.subplots(figsize=(_width(len(methods)), 4))
    largest = 1
    uneven = len({m["problems"] for m in methods.values()}) > 1  # then say which problems each curve is over
    for name, m in methods.items():
        curve = m["pass_at_k"]
        if curve is None:  # a weighted method (sharpen.analysis.target)
            continue
        largest = max(largest, max(curve["k"]))
        label = f"{name} (n={max(curve['k'])}" + (f", {m['problems']} problems)" if uneven else ")")
        ax.plot(curve["k"], curve["value"], marker="o", ms=3, color=colors[name], linestyle=styles[name],
                label=label)
        ax.fill_between(curve["k"], curve["low"], curve["high"], color=colors[name], alpha=0.2, linewidth=0)
    if largest >= 4:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 1 2 4, not 2^0
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.02)
    conf = int(round(100 * metrics["settings"]["confidence"]))
    ax.set_title(f"pass@k with {conf}% bootstrap intervals over problems", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, len(methods))
    return _save(fig, path)


def plot_accuracy_vs_compute(metrics: dict, path: Path) -> Path:
    """pass@k against k x (forward tokens per sample): the compute of drawing k samples."""
    methods = metrics["methods"]
    colors, styles = method_colors(methods), method_styles(methods)
    fig, ax = plt.subplots(figsize=(_width(len(methods)), 4))
    unit = "forward tokens"
    for name, m in methods.items():
        cost = m["cost"]
        per_sample = (cost.get("forward_tokens") or {}).get("per_sample")
        if per_sample is None:
            per_sample, unit = cost["completion_tokens"]["per_sample"], "completion tokens"
        curve = m["pass_at_k"]
        if curve is None:
            continue
        x = np.array(curve["k"]) * max(per_sample, 1e-9)
        ax.plot(x, curve["value"], marker="o", ms=3, color=colors[name], linestyle=styles[name], label=name)
        ax.fill_between(x, curve["low"], curve["high"], color=colors[name], alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel(f"{unit} per problem (k samples)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("accuracy against sampling compute (training cost not included)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, len(methods))
    return _save(fig, path)


def frontier_points(metrics: dict) -> dict[str, list[dict]]:
    """Per registered method, its instances as (forward tokens, wall s per completion, accuracy) points by cost;
    weighted methods are bands (frontier_bands), not points."""
    curves: dict[str, list[dict]] = {}
    for name, m in metrics["methods"].items():
        if m.get("weighted"):
            continue
        cost = m["cost"]
        forward = (cost.get("forward_tokens") or {}).get("per_sample")
        wall = (cost.get("wall_seconds") or {}).get("per_sample")
        if forward is None:
            continue
        curves.setdefault(m.get("kind", name), []).append(
            {"name": name, "forward_tokens": forward, "wall_seconds": wall, **m["accuracy"]})
    return {kind: sorted(points, key=lambda p: p["forward_tokens"]) for kind, points in curves.items()}


def frontier_bands(metrics: dict) -> list[dict]:
    """Each weighted method's estimate of p^alpha's accuracy ({name, value, low, high}): a band across the frontier,
    not a point, since no completion it drew is a draw of p^alpha."""
    return [{"name": name, **m["accuracy"]} for name, m in metrics["methods"].items()
            if m.get("weighted") and m["accuracy"].get("value") is not None]


def plot_frontier(metrics: dict, path: Path) -> Path | None:
    """Accuracy (with its interval) against compute and against wall time per completion, one curve per method."""
    curves = frontier_points(metrics)
    if not curves:
        return None
    colors = dict(zip(curves, plt.get_cmap("tab10").colors * 3))
    bands = frontier_bands(metrics)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax in axes:
        for band in bands:
            label = "p^alpha (IS estimate" + (f", {band['name']})" if len(bands) > 1 else ")")
            ax.axhspan(band["low"], band["high"], color="0.5", alpha=0.25, linewidth=0, label=label)
            ax.axhline(band["value"], color="0.3", linestyle="--", linewidth=1)
    for ax, key, label in ((axes[0], "forward_tokens", "forward tokens per completion (compute)"),
                           (axes[1], "wall_seconds", "wall seconds per completion (share of batched time)")):
        for kind, points in curves.items():
            points = [p for p in points if p[key] is not None]
            if not points:
                continue
            x = np.array([p[key] for p in points])
            y = np.array([p["value"] for p in points])
            err = np.array([[p["value"] - p["low"] for p in points], [p["high"] - p["value"] for p in points]])
            ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker="o", ms=4, capsize=2, color=colors[kind],
                        label=kind)
            if len(points) > 1:
                for p in points:
                    ax.annotate(p["name"], (p[key], p["value"]), fontsize=6, xytext=(3, 3),
                                textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (pass@1)")
    axes[0].set_ylim(-0.02, 1.02)
    if any(p["wall_seconds"] is not None for points in curves.values() for p in points):
        axes[1].legend(fontsize=8, loc="best")
    elif bands:  # no wall seconds recorded: the band's label goes beside the compute axis
        axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("one frontier: every method instance at its cost (training cost not included)", fontsize=10)
    return _save(fig, path)


def plot_boundary(metrics: dict, path: Path) -> Path | None:
    """Solved-set matrix: cell (row A, column B) = expected problems A solves and B does not, at the pair's k."""
    entries = [e for e in metrics.get("boundary") or [] if "k" in e]
    if not entries:
        return None
    names = [n for n, m in metrics["methods"].items() if not m.get("weighted")]
    matrix = only_matrix(entries, names)
    ks = np.full_like(matrix, np.nan)
    for e in entries:
        i, j = names.index(e["a"]), names.index(e["b"])
        ks[i, j] = ks[j, i] = e["k"]
    size = 1.0 + 0.75 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="Reds", vmin=0)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.1f}\nk={int(ks[i, j])}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("... and not solved by this method")
    ax.set_ylabel("solved by this method ...")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="problems (expected count)")
    ax.set_title("reasoning boundary: problems only the row method solves\n(shared problems, k = smaller n of the "
                 "pair)", fontsize=9)
    return _save(fig, path)


def score_values(run: Run, name: str) -> dict[str, np.ndarray]:
    """Each method's values of base-model score `name`, one per scored record (table order)."""
    out = {}
    for method, m in run.methods.items():
        values = [s.get(name) for s in map(m.score_of, m.records) if s is not None]
        values = np.array([v for v in values if v is not None], dtype=float)
        if values.size:
            out[method] = values[np.isfinite(values)]
    return out


def plot_histogram(values: dict[str, np.ndarray], xlabel: str, path: Path, names=None) -> Path:
    """Step histograms, one per method; `names` (all the run's methods) keeps colours as in the other plots."""
    names = list(names or values)
    colors, styles = method_colors(names), method_styles(names)
    fig, ax = plt.subplots(figsize=(_width(len(values)), 4))
    everything = np.concatenate(list(values.values()))
    low, high = np.quantile(everything, [0.005, 1.0]) if everything.size else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 41)
    for name, v in values.items():
        fill = 0.25 if len(values) <= 4 else 0.08  # many overlapping fills turn to mud
        ax.hist(np.clip(v, low, high), bins=bins, density=True, histtype="stepfilled", alpha=fill,
                color=colors[name])
        ax.hist(np.clip(v, low, high), bins=bins, density=True, histtype="step", linewidth=1.5,
                color=colors[name], linestyle=styles[name], label=f"{name} (mean {v.mean():.3f}, {v.size} samples)")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    _legend(ax, len(values))
    return _save(fig, path)


def plot_diversity(metrics: dict, path: Path) -> Path | None:
    """Grouped bars with interval whiskers: one panel per diversity measure present."""
    methods = {n: m["diversity"] for n, m in metrics["methods"].items() if m.get("diversity")}
    if not methods:
        return None
    panels = [("distinct-n (higher = more diverse)", [f"distinct_{n}" for n in range(1, 5)], ["1", "2", "3", "4"]),
              ("self-BLEU (lower = more diverse)", ["self_bleu"], [""]),
              ("distinct final answers", ["distinct_answers"], [""]),
              ("embedding cosine distance", ["embedding_distance"], [""]),
              ("Vendi score (embeddings)", ["vendi"], [""])]
    panels = [p for p in panels if any(d.get(k) for d in methods.values() for k in p[1])]
    colors = method_colors(metrics["methods"])
    repeated = {n for i, n in enumerate(metrics["methods"]) if i >= 10}  # hatched: their colours repeat
    many = len(methods) > 4
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + (2.7 if many else 0.5), 3.6),
                             squeeze=False)
    width = 0.8 / len(methods)
    for ax, (title, keys, labels) in zip(axes[0], panels):
        for j, (name, d) in enumerate(methods.items()):
            x = np.arange(len(keys)) + (j - (len(methods) - 1) / 2) * width
            vals = [d[k]["value"] if d.get(k) else np.nan for k in keys]
            err = np.array([[d[k]["value"] - d[k]["low"], d[k]["high"] - d[k]["value"]] if d.get(k) else [0, 0]
                            for k in keys]).T
            ax.bar(x, vals, width, yerr=err, color=colors[name], label=name, capsize=2 if not many else 1,
                   hatch="//" if name in repeated else None)
        ax.set_xticks(np.arange(len(keys)), labels)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    if many:
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        axes[0][0].legend(fontsize=8)
    m = metrics["settings"]["diversity_samples_per_problem"]
    fig.suptitle(f"diversity across the first {m} samples of each problem (mean over problems)", fontsize=10)
    return _save(fig, path)


def plot_training(curve: dict, name: str, path: Path) -> Path:
    """A training run against optimizer step: GRPO's reward (with its within-group std), completion length and
    entropy; a fine-tuning's loss and token accuracy."""
    panels = [("reward", "reward (mean over completions)"), ("completion_length", "completion length (tokens)"),
              ("entropy", "token entropy (nats)"), ("loss", "fine-tuning loss (nats per token)"),
              ("mean_token_accuracy", "token accuracy")]
    if "reward" in curve:  # GRPO also logs its loss, which is not the quantity it learns from
        panels = panels[:3]
    panels = [(key, label) for key, label in panels if key in curve]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    steps = np.array(curve["step"])
    for ax, (key, label) in zip(axes[0], panels):
        values = np.array([np.nan if v is None else v for v in curve[key]], dtype=float)
        ax.plot(steps, values, color="tab:red", lw=1.2)
        if key == "reward" and "reward_std" in curve:
            spread = np.array([np.nan if v is None else v for v in curve["reward_std"]], dtype=float)
            ax.fill_between(steps, values - spread, values + spread, color="tab:red", alpha=0.15,
                            label="± reward std (within groups)")
            ax.legend(fontsize=8, loc="best")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: training curves (trainer log history)")
    return _save(fig, path)


def make_plots(run: Run, metrics: dict, out_dir) -> dict[str, Path]:
    """Write every figure the metrics allow into out_dir; return {name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"pass_at_k": plot_pass_at_k(metrics, out_dir / "pass_at_k.png"),
             "accuracy_vs_compute": plot_accuracy_vs_compute(metrics, out_dir / "accuracy_vs_compute.png")}
    weighted = {n for n, m in metrics["methods"].items() if m.get("weighted")}  # proposal draws: not shown
    for score, (stem, label) in HISTOGRAMS.items():
        values = {n: v for n, v in score_values(run, score).items() if n not in weighted}
        if values:
            paths[stem] = plot_histogram(values, label, out_dir / f"{stem}.png", names=run.methods)
    diversity = plot_diversity(metrics, out_dir / "diversity.png")
    if diversity is not None:
        paths["diversity"] = diversity
    frontier = plot_frontier(metrics, out_dir / "frontier.png")
    if frontier is not None:
        paths["frontier"] = frontier
    boundary = plot_boundary(metrics, out_dir / "boundary.png")
    if boundary is not None:
        paths["boundary"] = boundary
    for name, curve in (metrics.get("training") or {}).items():
        paths[f"training_{name}"] = plot_training(curve, name, out_dir / f"training_{name}.png")
    stems = ["pass_at_k", "accuracy_vs_compute", "diversity", "frontier", "boundary"]
    stems += [stem for stem, _ in HISTOGRAMS.values()]
    stems += [p.stem for p in out_dir.glob("training_*.png")]
    for stem in stems:  # a figure this run cannot draw must not survive from an earlier analysis
        if stem not in paths:
            (out_dir / f"{stem}.png").unlink(missing_ok=True)
    return paths
