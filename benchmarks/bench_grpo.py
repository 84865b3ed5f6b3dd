"""Benchmark GRPO steps with each kind of rollout: `sampling.sample` (sharpen) against TRL's model.generate (trl)
or against sharpen's sampler on the vLLM engine (vllm, sharpen.rl.vllm_rollouts).

    python -m benchmarks.bench_grpo                   # SmolLM2-135M, LoRA, 16 completions of <= 64 tokens a step
    python -m benchmarks.bench_grpo --rounds 3 --steps 3 --threads 2
    OMP_NUM_THREADS=1 .venv-vllm/bin/python -m benchmarks.bench_grpo --kinds sharpen,vllm   # needs .venv-vllm

Both kinds train the same model on the same chat prompts of the task's train split with
the same settings and seed (so their first step sees the same prompts); only who samples
the completions differs. Each run is a real `sharpen.rl.grpo_train` call (LoRA, the task's
grader as reward, nothing saved but the final adapter). Runs alternate between the kinds,
`rounds` times, the order swapped every round, so that load from other work on the machine
falls on both. A step is timed from the trainer's on_step_begin to on_step_end (rollouts,
rewards, forward, backward, optimizer); the first `warmup` steps of every run are left out.
Generation is the time spent in GRPOTrainer._generate (the sampler plus decoding the text; for vllm
also the weight sync, which TRL or the hook runs there, shown on its own as well). The vLLM engine is
made once per run before its first step (its start-up time is printed, not counted in a step).

It prints, per kind: seconds per step (mean and median), generation seconds per step and
their share of the step, and the mean and longest completion lengths (TRL's generate
decodes every row until the longest is done; sample drops a row when it ends); then the
ratio of seconds per step against the target (>= 1.5x): trl / sharpen, sharpen / vllm. For vllm it
also prints the weight sync per step, the engine's start-up, whether TRL's importance-sampling correction
ran (off when the policy has dropout: LoRA's default 0.05) and, when it ran, TRL's logged log-prob gap
between engine and trainer.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sharpen.cli.args import ArgumentParser
from sharpen.rl import grade_reward, grpo_train
from sharpen.rl.stage import build_train_set, load_tokenizer
from sharpen.rl.vllm_rollouts import VllmRollouts
from sharpen.sampling.models import resolve_model_path
from sharpen.tasks import get_task

KINDS = ("sharpen", "trl", "vllm")
TARGET = 1.5


@dataclass
class BenchConfig:
    model: str = field(default="smollm2-135m", metadata={"help": "Model spec (checkpoint dir, Hub id, built-in)."})
    task: str = field(default="basic_arithmetic", metadata={"help": "Task whose train split gives the prompts."})
    chat: bool = field(default=True, metadata={"help": "Wrap prompts in the chat template."})
    completions: int = field(default=16, metadata={"help": "Completions per step (per_device_train_batch_size)."})
    num_generations: int = field(default=8, metadata={"help": "Completions per prompt."})
    max_completion_length: int = field(default=64, metadata={"help": "Longest completion, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout temperature."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate (LoRA)."})
    lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (all-linear, rank lora_r)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_dropout: float = field(default=0.05, metadata={
        "help": "LoRA dropout (trl.ModelConfig's default); 0 lets rollouts vllm run TRL's correction."})
    kinds: str = field(default="sharpen,trl", metadata={
        "help": "Rollout kinds to compare, comma-separated, the first the baseline: sharpen, trl, vllm."})
    steps: int = field(default=3, metadata={"help": "Timed optimizer steps per run (after the warmup steps)."})
    warmup: int = field(default=1, metadata={"help": "Steps at the start of each run left out of the timings."})
    rounds: int = field(default=2, metadata={"help": "Runs of each kind, alternating between the kinds."})
    seed: int = field(default=0, metadata={"help": "GRPOConfig seed (data order and rollout seeds)."})
    threads: int = field(default=1, metadata={"help": "torch CPU threads."})


class StepTimer:
    """Wall time of each optimizer step and of the generation inside it, from trainer callbacks."""

    def __init__(self):
        self.steps: list[float] = []
        self.generation: list[float] = []
        self._started = None
        self._generating = 0.0

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._started, timer._generating = time.perf_counter(), 0.0

            def on_step_end(self, args, state, control, **kwargs):
                timer.steps.append(time.perf_counter() - timer._started)
                timer.generation.append(timer._generating)

        return Timer()

    @contextlib.contextmanager
    def timing_generation(self):
        """Time GRPOTrainer._generate (where both kinds of rollout run) while the context is open."""
        from trl import GRPOTrainer

        original = GRPOTrainer._generate
        timer = self

        def timed(trainer, prompts):
            started = time.perf_counter()
            try:
                return original(trainer, prompts)
            finally:
                timer._generating += time.perf_counter() - started

        GRPOTrainer._generate = timed
        try:
            yield
        finally:
            GRPOTrainer._generate = original


def run_once(kind: str, cfg: BenchConfig, model_path: str, tokenizer, dataset, reward, output_dir: Path) -> dict:
    """One grpo_train run of warmup + steps steps with `kind` rollouts; its timed steps and completion lengths."""
    from trl import ModelConfig

    args = {"max_steps": cfg.warmup + cfg.steps, "per_device_train_batch_size": cfg.completions,
            "num_generations": cfg.num_generations, "max_completion_length": cfg.max_completion_length,
            "temperature": cfg.temperature, "learning_rate": cfg.learning_rate, "seed": cfg.seed,
            "report_to": [], "log_completions": False, "logging_steps": 1, "save_strategy": "no",
            "output_dir": str(output_dir)}
    model_args = ModelConfig(use_peft=cfg.lora, lora_r=cfg.lora_r, lora_dropout=cfg.lora_dropout,
                             lora_target_modules="all-linear")
    timer = StepTimer()
    # rollouts vllm: a hook made here (its engine made and closed by grpo_train) so that its timings can be read
    hook = VllmRollouts(model_path) if kind == "vllm" else None
    with timer.timing_generation(), contextlib.redirect_stdout(io.StringIO()):  # the trainer's per-step logs
        grpo_train(model_path, tokenizer, dataset, reward, args, model_args=model_args, rollouts=kind,
                   callbacks=[timer.callback()], rollout_func=hook)
    history = json.loads((output_dir / "metrics.json").read_text())["log_history"]
    rows = [row for row in history if "completions/mean_length" in row][cfg.warmup:]
    sync = [0.0] * len(timer.steps)
    if hook is not None:  # one generation round per step here (steps_per_generation 1)
        for round_ in hook.rounds:
            sync[round_["step"]] += round_["sync_seconds"]
    gaps = [(row["sampling/sampling_logp_difference/mean"], row["sampling/sampling_logp_difference/max"])
            for row in rows if "sampling/sampling_logp_difference/mean" in row]
    return {"steps": timer.steps[cfg.warmup:], "generation": timer.generation[cfg.warmup:],
            "sync": sync[cfg.warmup:], "mean_length": [row["completions/mean_length"] for row in rows],
            "max_length": [row["completions/max_length"] for row in rows],
            "start_seconds": hook.start_seconds if hook else None, "corrected": hook.corrected if hook else None,
            "gaps": gaps}


def summarize(runs: list[dict]) -> dict:
    steps = [s for run in runs for s in run["steps"]]
    generation = [g for run in runs for g in run["generation"]]
    return {"n": len(steps), "mean": statistics.fmean(steps), "median": statistics.median(steps),
            "generation": statistics.fmean(generation), "share": sum(generation) / sum(steps),
            "sync": statistics.fmean(x for run in runs for x in run["sync"]),
            "mean_length": statistics.fmean(x for run in runs for x in run["mean_length"]),
            "max_length": statistics.fmean(x for run in runs for x in run["max_length"])}


def format_report(results: dict[str, list[dict]]) -> str:
    lines = [f"{'rollouts':<9} {'steps':>5} {'s/step':>7} {'median':>7} {'gen s/step':>10} {'gen share':>9} "
             f"{'sync s/step':>11} {'mean len':>8} {'max len':>7}"]
    summary = {kind: summarize(runs) for kind, runs in results.items()}
    for kind, s in summary.items():
        lines.append(f"{kind:<9} {s['n']:>5d} {s['mean']:>7.2f} {s['median']:>7.2f} {s['generation']:>10.2f} "
                     f"{s['share']:>9.0%} {s['sync']:>11.2f} {s['mean_length']:>8.1f} {s['max_length']:>7.1f}")
    if "sharpen" in summary and "trl" in summary:
        ratio = summary["trl"]["mean"] / summary["sharpen"]["mean"]
        median = summary["trl"]["median"] / summary["sharpen"]["median"]
        lines.append(f"trl / sharpen seconds per step: {ratio:.2f}x (medians {median:.2f}x; target >= {TARGET}x) "
                     f"{'ok' if ratio >= TARGET else 'MISSED'}")
    if "sharpen" in summary and "vllm" in summary:
        ratio = summary["sharpen"]["mean"] / summary["vllm"]["mean"]
        median = summary["sharpen"]["median"] / summary["vllm"]["median"]
        generation = summary["sharpen"]["generation"] / summary["vllm"]["generation"]
        lines.append(f"sharpen / vllm seconds per step: {ratio:.2f}x (medians {median:.2f}x; generation "
                     f"{generation:.2f}x; target >= {TARGET}x) {'ok' if ratio >= TARGET else 'MISSED'}")
    for run in results.get("vllm", []):
        gaps = run["gaps"]
        gap = (f"TRL's logged engine-trainer log-prob gap per token: mean {statistics.fmean(g[0] for g in gaps):.1e}, "
               f"max {max(g[1] for g in gaps):.1e}" if gaps else "no gap logged")
        lines.append(f"vllm run: engine start-up {run['start_seconds']:.1f} s (not in a step), TRL's importance-"
                     f"sampling correction {'on' if run['corrected'] else 'off'}; {gap}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    parser = ArgumentParser(BenchConfig, prog="python -m benchmarks.bench_grpo")
    (cfg,) = parser.parse_args_into_dataclasses(argv)
    kinds = tuple(kind.strip() for kind in cfg.kinds.split(",") if kind.strip())
    if len(kinds) < 1 or set(kinds) - set(KINDS) or len(set(kinds)) != len(kinds):
        parser.error(f"--kinds: distinct kinds among {', '.join(KINDS)}, got {cfg.kinds!r}")
    torch.set_num_threads(cfg.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path, cfg.model)
    task = get_task(cfg.task)
    prompts_per_step = cfg.completions // cfg.num_generations
    dataset, problems = build_train_set(task, tokenizer, limit=prompts_per_step * (cfg.warmup + cfg.steps) * 4,
                                        seed=cfg.seed, chat=cfg.chat)
    reward = grade_reward(task.grade, problems, name="correct")
    print(f"{cfg.model}: {cfg.completions} completions a step ({prompts_per_step} prompts x {cfg.num_generations}) "
          f"of <= {cfg.max_completion_length} tokens, temperature {cfg.temperature}, "
          f"{f'LoRA r {cfg.lora_r} dropout {cfg.lora_dropout}' if cfg.lora else 'full fine-tuning'}, "
          f"{cfg.task} chat={cfg.chat}, "
          f"{cfg.rounds} round(s) of {cfg.warmup} + {cfg.steps} steps per kind, {cfg.threads} thread(s)", flush=True)
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="bench_grpo.") as tmp:
        for round_ in range(cfg.rounds):
            for kind in (kinds if round_ % 2 == 0 else kinds[::-1]):
                run = run_once(kind, cfg, model_path, tokenizer, dataset, reward, Path(tmp) / f"{kind}-{round_}")
                results[kind].append(run)
                sync = "; sync " + ", ".join(f"{x:.2f}" for x in run["sync"]) if kind == "vllm" else ""
                print(f"round {round_ + 1} {kind:<7}: " + ", ".join(f"{s:.2f}" for s in run["steps"])
                      + " s/step (generation " + ", ".join(f"{g:.2f}" for g in run["generation"]) + sync + ")",
                      flush=True)
    print()
    print(format_report(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
