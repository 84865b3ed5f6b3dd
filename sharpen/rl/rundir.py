"""A GRPO output directory: its identity (run.json), who may write it, resuming, and recorded checkpoints.

    check_run(output_dir, identity(settings, base_spec), revision)   # refuse another run's directory
    write_run_file(output_dir, identity=..., model_path=..., revision=..., train_problems=...)
    record_checkpoint("owner/rl-model", "runs/x/grpo")               # an RL model trained elsewhere
    grpo_model_spec("runs/x/grpo")                                   # what `sharpen sample --model` loads

run.json is written when a run starts: what shapes the trained model (the merged GRPOConfig
but NOT_IDENTITY, the task and its train problems, the ModelConfig), the base model's revision
and the code and library versions. A later session resumes only a run with the same identity
(keys both sides have are compared, so a field a newer TRL adds or drops does not block it)
on the same base model revision.

    python -m pytest -q tests/test_grpo.py -k "directory or checkpoint"
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from sharpen.errors import UsageError
from sharpen.runs.files import resolve_local, write_text_atomic
from sharpen.runs.locks import LOCK_FILE
from sharpen.runs.provenance import environment, library_differences
from sharpen.sampling.models import check_model_reachable
from sharpen.tasks import parse_task_args

from .grpo import COST_FILE

RUN_FILE = "run.json"
RUN_FORMAT = 2  # run.json's layout version, so that a later layout can tell this one apart
RECORD_FILE = "grpo_checkpoint.json"
LAUNCH_FILE = "grpo_launch.yaml"
# GRPOConfig fields that do not change what is trained: a resumed run may differ in them.
NOT_IDENTITY = {
    "output_dir", "logging_dir", "run_name", "report_to", "project", "trackio_space_id", "trackio_bucket_id",
    "trackio_static_space_id", "logging_steps", "logging_strategy", "logging_first_step", "log_on_each_node",
    "log_level", "log_level_replica", "disable_tqdm", "log_completions", "num_completions_to_print",
    "log_unique_prompts", "log_multimodal", "log_completions_hub_repo", "save_steps", "save_strategy",
    "save_total_limit", "save_on_each_node", "save_only_model", "enable_jit_checkpoint", "resume_from_checkpoint",
    "overwrite_output_dir", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "ddp_timeout", "skip_memory_metrics", "push_to_hub", "hub_model_id", "hub_token",
    "hub_strategy", "hub_private_repo", "hub_always_push", "hub_revision",
}


def identity(settings, base_spec: str | None) -> dict:
    """What shapes the trained model (a GrpoSettings'): a resumed run must match it.

    Every merged GRPOConfig field but NOT_IDENTITY, the task and its train problems, and the
    ModelConfig (its LoRA fields only with use_peft). `base_spec` None leaves the model out.
    """
    run = settings.run
    run_part = {"model": base_spec, "task": run.task, "task_args": parse_task_args(run.task_args),
                "chat": run.chat, "num_train_problems": run.num_train_problems, "problem_seed": run.problem_seed,
                "rollouts": run.rollouts, "reward": run.reward}
    if run.reward != "correct":  # the grader's runs keep the identity they had before rewards were a setting
        run_part["alpha"] = run.alpha
    if base_spec is None:
        del run_part["model"]
    model_part = dataclasses.asdict(settings.model_args)
    model_part.pop("model_name_or_path")
    if not model_part["use_peft"]:
        model_part = {k: v for k, v in model_part.items()
                      if not k.startswith("lora_") and k not in ("use_rslora", "use_dora")}
    grpo_part = {k: v for k, v in sorted(settings.grpo.items()) if k not in NOT_IDENTITY}
    return json.loads(json.dumps({"run": run_part, "grpo": grpo_part, "model": model_part}, default=str))


def has_progress(output_dir: Path) -> bool:
    """Whether a GRPO directory holds training that a resumed run would build on (a checkpoint or the result)."""
    return (output_dir / COST_FILE).exists() or any(output_dir.glob("checkpoint-*"))


def check_owned(output_dir: Path) -> None:
    """`sharpen grpo` writes only GRPO directories: not a study, a sampling run, or someone else's files."""
    if not output_dir.is_dir():
        return
    if (output_dir / "study.json").exists() or (output_dir / "samples").is_dir():
        raise UsageError(f"{output_dir} holds a study or sampling records: sharpen grpo writes only its own "
                         f"directory; give the study's grpo/ stage ({output_dir / 'grpo'}) or another --output-dir")
    own = {RUN_FILE, RECORD_FILE, LAUNCH_FILE, LOCK_FILE, COST_FILE}
    entries = [child.name for child in output_dir.iterdir()]
    if entries and not any(name in own or name.startswith("checkpoint-") for name in entries):
        raise UsageError(f"{output_dir} is not empty and holds no GRPO run ({', '.join(sorted(entries)[:5])}): "
                         f"give an empty directory or a GRPO run's own")


def check_run(output_dir: Path, mine: dict, revision: str | None) -> None:
    """Refuse a directory that holds another run, or this run's settings on another base model revision.

    A run.json without any checkpoint (a first session that failed before its first save) binds
    nothing: the corrected command replaces it.
    """
    check_owned(output_dir)
    path = output_dir / RUN_FILE
    if not path.exists():
        if (output_dir / RECORD_FILE).exists():
            raise UsageError(f"{output_dir} records an existing checkpoint (--from-checkpoint): "
                             f"use another --output-dir")
        return
    if not has_progress(output_dir):
        return
    saved = json.loads(path.read_text())
    diff = []
    for section, values in mine.items():
        theirs = saved["identity"].get(section, {})
        if section == "run":  # runs saved before `reward` existed were trained on the task's grader
            theirs = {"reward": "correct"} | theirs
        diff += [f"{section}.{k}" for k in sorted(set(values) & set(theirs)) if values[k] != theirs[k]]
    if diff:
        raise UsageError(f"{output_dir} holds a GRPO run with other settings ({', '.join(diff)}): "
                         f"use another --output-dir")
    before = saved.get("base_model_revision")
    if revision and before and revision != before:
        raise UsageError(f"{output_dir} holds a GRPO run of another revision of its base model "
                         f"({before} then, {revision} now): use another --output-dir")


def write_run_file(output_dir: Path, *, identity: dict, model_path: str, revision: str | None,
                   train_problems: int) -> None:
    """run.json, written when a run starts; a resumed session keeps it and only warns about new library versions."""
    path = output_dir / RUN_FILE
    env = environment()
    if path.exists() and has_progress(output_dir):
        changed = library_differences(json.loads(path.read_text()).get("environment"), env)
        if changed:
            print(f"grpo: warning: resuming under other versions ({'; '.join(changed)})", file=sys.stderr)
        return
    write_text_atomic(path, json.dumps(
        {"format": RUN_FORMAT, "identity": identity, "model_path": model_path, "base_model_revision": revision,
         "train_problems": train_problems, "environment": env}, indent=2))


def record_checkpoint(spec: str, output_dir: str | os.PathLike) -> Path:
    """Record an existing RL model (Hub id or path) as a GRPO run's result; nothing is trained or downloaded.

    A Hub id must be in the local Hugging Face cache or answered for by the Hub: offline, an id
    recorded unchecked would fail only when a study samples it.
    """
    output_dir = Path(output_dir)
    check_model_reachable(spec, "--from-checkpoint")
    if Path(spec).expanduser().exists():
        spec = resolve_local(spec)
    if (output_dir / RUN_FILE).exists():
        raise UsageError(f"{output_dir} holds a trained GRPO run: use another --output-dir")
    check_owned(output_dir)
    record = {"kind": "existing_checkpoint", "model": spec, "trained_here": False,
              "note": "GRPO model trained elsewhere; sample it with --model set to 'model'"}
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / RECORD_FILE, json.dumps(record, indent=2))
    return output_dir


def grpo_model_spec(output_dir: str | os.PathLike) -> str:
    """The model spec a GRPO output directory stands for: the recorded checkpoint, or the directory itself."""
    record = Path(output_dir) / RECORD_FILE
    if record.exists():
        return json.loads(record.read_text())["model"]
    return str(output_dir)
