"""power_distill: the base model fine-tuned (TRL's SFTTrainer) on a power sampler's own completions.

    from sharpen.rl.distill import DistillSettings, distill_examples, train_distill
    settings = DistillSettings(teacher="power_mh", num_train_problems=64, num_samples=4)
    examples = distill_examples(records, tokenizer)       # the teacher's train-split records -> token ids
    train_distill(settings, model="runs/x/model", examples=examples, output_dir="runs/x/power_distill",
                  teacher_cost={"forward_tokens": ..., "wall_seconds": ...}, wandb=WandbConfig(mode="off"),
                  run_name="x-power_distill", seed=0)

A study runs it as the `power_distill` stage (sharpen.study.pipeline): the teacher instance named in
the study's `power_distill:` section samples `num_samples` completions of `num_train_problems`
problems of the task's *train* split (RUN_DIR/power_distill/samples/<teacher>.jsonl, resumable as any
sampling run), and the base model is fine-tuned on them; the method `power_distill` then samples
the result at temperature 1. Maximum likelihood on samples of a law q moves the model toward q: with
the teacher's law p^alpha, the distilled model amortises power sampling (arXiv 2605.04542).

Why these choices:
- the examples are the records' own token ids (prompt as `sharpen sample` tokenized it, completion
  ids as sampled, EOS kept where the completion ended with it): re-tokenizing the decoded text could
  give other tokens, and the loss is on the completion only (`completion_only_loss`), so the model
  learns the teacher's continuations, not the prompts;
- a LoRA adapter by default (`lora: false` trains every weight), merged into the weights when training
  ends, so that the result is a plain checkpoint that either engine loads;
- cost.json counts what the arm cost: the teacher's sampling (its forward tokens and wall time, from
  its records) plus the fine-tuning (tokens run through the model per epoch, wall time), and
  `forward_tokens`, their sum, which the analysis charges as the arm's training compute.

A run whose cost.json exists is finished; a run cut short retrains (the teacher's records are kept).

    python -m pytest -q tests/test_square.py
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sharpen.errors import UsageError
from sharpen.runs.files import write_text_atomic
from sharpen.runs.tracking import WandbConfig, start_run
from sharpen.sampling.models import resolve_model_path

COST_FILE, METRICS_FILE, MODEL_DIR = "cost.json", "metrics.json", "model"


@dataclass
class DistillSettings:
    """The study's `power_distill:` section: what is distilled and how the base model is fine-tuned on it."""

    teacher: str | None = None  # the study's method instance whose completions are distilled (a base-model sampler)
    num_train_problems: int = 64  # train-split problems the teacher samples (the first of the study's seed order)
    num_samples: int = 4  # teacher completions per train problem
    num_train_epochs: float = 3.0
    learning_rate: float = 1e-3  # for LoRA; a full fine-tune wants far less (e.g. 1e-5)
    per_device_train_batch_size: int = 16
    lora: bool = True  # a LoRA adapter (merged when training ends); false: every weight is trained
    lora_r: int = 16
    lora_alpha: int = 32

    def __post_init__(self):
        for name in ("num_train_problems", "num_samples", "per_device_train_batch_size", "lora_r", "lora_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"power_distill.{name} must be an integer >= 1, got {value!r}")
        for name in ("num_train_epochs", "learning_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"power_distill.{name} must be a number > 0, got {value!r}")


def is_finished(output_dir) -> bool:
    return (Path(output_dir) / COST_FILE).exists()


def model_dir(output_dir) -> Path:
    """Where a finished distillation keeps its merged checkpoint (what the method power_distill samples)."""
    return Path(output_dir) / MODEL_DIR


def distill_examples(records: list[dict], tokenizer) -> list[dict]:
    """SFT examples from sampling records: input_ids = prompt ids + completion ids, completion_mask 1 on the
    completion; the prompt tokenized as `sharpen sample` tokenized it (its text, no special tokens added)."""
    examples = []
    for record in records:
        prompt = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
        completion = [int(t) for t in record["completion_ids"]]
        if not completion:
            continue  # nothing to learn from an empty completion (a budget of 0 cannot happen; kept safe)
        examples.append({"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)})
    if not examples:
        raise UsageError("power_distill: the teacher's train-split records hold no completion to fine-tune on")
    return examples


def teacher_cost(records: list[dict], sessions: list[dict]) -> dict:
    """The teacher's sampling cost from its records: forward tokens and sampled tokens summed, wall time from
    its sessions (the time the sampling runs took, bookkeeping included)."""
    forward = sum(int((r.get("cost") or {}).get("forward_tokens") or 0) for r in records)
    sampled = sum(int(r.get("num_tokens") or 0) for r in records)
    wall = sum(float(s.get("elapsed_seconds") or 0.0) for s in sessions)
    return {"teacher_forward_tokens": forward, "teacher_sampled_tokens": sampled, "teacher_wall_seconds": round(wall, 3),
            "teacher_completions": len(records)}


def train_distill(settings: DistillSettings, *, model: str, examples: list[dict], output_dir, teacher: dict,
                  wandb: WandbConfig, run_name: str, seed: int) -> Path:
    """Fine-tune `model` (a checkpoint path or a built-in name) on `examples`; write model/, metrics.json, cost.json
    (last)."""
    # TRL, peft and datasets load in seconds: imported where training happens, not with the package.
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    output_dir = Path(output_dir)
    if is_finished(output_dir):
        return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    model = resolve_model_path(model)  # a built-in name (smollm2-135m) is a directory on disk
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    cpu = not torch.cuda.is_available()
    args = SFTConfig(output_dir=str(output_dir / "trainer"), num_train_epochs=settings.num_train_epochs,
                     learning_rate=settings.learning_rate,
                     per_device_train_batch_size=settings.per_device_train_batch_size,
                     completion_only_loss=True, packing=False, max_length=None, logging_steps=1,
                     save_strategy="no", report_to=["wandb"] if wandb.enabled else [], run_name=run_name,
                     seed=seed, data_seed=seed, use_cpu=cpu, bf16=False, fp16=False,
                     activation_checkpointing=False, lr_scheduler_type="constant", warmup_steps=0,
                     include_num_input_tokens_seen="all", dataset_num_proc=None)
    peft_config = (LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                              target_modules="all-linear", task_type="CAUSAL_LM") if settings.lora else None)
    run = start_run(wandb, name=run_name, job_type="power_distill", dir=output_dir,
                    run_config={"study": wandb.group, **vars(settings)} if wandb.group else vars(settings))
    started = time.perf_counter()
    try:
        trainer = SFTTrainer(model=base, args=args, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer, peft_config=peft_config)
        trainer.train()
    finally:
        run.finish()
    wall = time.perf_counter() - started
    trained = trainer.model.merge_and_unload() if settings.lora else trainer.model
    write_model(trained, tokenizer, model_dir(output_dir))
    history = trainer.state.log_history
    write_text_atomic(output_dir / METRICS_FILE, json.dumps({"log_history": history}, indent=1))
    tuned_tokens = int(trainer.state.num_input_tokens_seen)
    cost = {**teacher, "wall_seconds": round(wall + teacher.get("teacher_wall_seconds", 0.0), 3),
            "fine_tune_wall_seconds": round(wall, 3), "fine_tune_tokens": tuned_tokens,
            "optimizer_steps": int(trainer.state.global_step), "examples": len(examples),
            # What the arm ran through the model: the teacher's sampling plus every fine-tuning token once per epoch.
            "forward_tokens": int(teacher.get("teacher_forward_tokens", 0)) + tuned_tokens,
            "lora": settings.lora, "device": "cpu" if cpu else "cuda"}
    shutil.rmtree(output_dir / "trainer", ignore_errors=True)  # checkpoints of a finished run: not needed
    # cost.json goes last: its presence marks the run as finished.
    write_text_atomic(output_dir / COST_FILE, json.dumps(cost, indent=2))
    return output_dir


def write_model(model, tokenizer, path: Path) -> None:
    """Save a checkpoint whole or not at all: into a sibling directory, then renamed into place."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(partial)
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
