"""`sharpen sample`: sample a model on a task, grade every completion, append per-sample records.

    sharpen sample --model smollm2-135m --task basic_arithmetic --method low_temp --chat \\
        --num-problems 24 --num-samples 4 --max-new-tokens 160 --output-dir runs/demo

    sharpen sample --model smollm2-135m --task basic_arithmetic --method power_mh --chat \\
        --alpha 4 --block-size 32 --mcmc-steps 10 --max-new-tokens 160 --output-dir runs/demo

writes runs/demo/samples/<method>.jsonl (one line per completion, flushed as each
finishes) and runs/demo/samples/<method>.config.json (the resolved config). Running the
same command again resumes: finished (problem, sample) pairs are skipped, none is
written twice. A directory holding records made with a different config is refused.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from sampling import (
    PowerSamplingConfig,
    SampleResult,
    derive_seed,
    load_model,
    power_sample,
    sample,
)
from sampling.generate import check_prompts

from .errors import UsageError
from .records import RecordWriter, make_output_dir, read_records, record_key
from .tasks import get_task, parse_task_args

METHODS = ("base", "low_temp", "power_mh", "grpo")
POWER_FIELDS = ("block_size", "mcmc_steps", "proposal_temperature", "stop_on_eos")  # power_mh only


@dataclass
class SampleRunConfig:
    """Everything that determines a sampling run's records."""

    model: str = field(metadata={"help": "Checkpoint directory, Hugging Face id, or built-in name (smollm2-135m)."})
    task: str = field(metadata={"help": "Task name: humaneval, math500, basic_arithmetic, reasoning_gym, ..."})
    output_dir: str = field(metadata={"help": "Run directory; records go to OUTPUT_DIR/samples/<method>.jsonl."})
    method: Literal["base", "low_temp", "power_mh", "grpo"] = field(
        default="base", metadata={"help": "base: temperature 1; low_temp: token-level temperature 1/alpha; "
                                          "power_mh: Metropolis-Hastings chains targeting p(x)^alpha; "
                                          "grpo: a GRPO-trained --model (sharpen grpo's output) at temperature 1."})
    task_args: list[str] = field(
        default_factory=list, metadata={"help": "Task options as KEY=VALUE, e.g. data_path=MATH500.json."})
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature (default: 1 for base, 1/alpha for low_temp)."})
    alpha: float = field(default=4.0, metadata={"help": "Power of the target p^alpha; low_temp uses 1/alpha."})
    block_size: int = field(default=192, metadata={"help": "power_mh: tokens added per block before its MH steps."})
    mcmc_steps: int = field(default=10, metadata={"help": "power_mh: MH steps per block."})
    proposal_temperature: float | None = field(
        default=None, metadata={"help": "power_mh: temperature of the proposal (default 1/alpha)."})
    stop_on_eos: bool = field(
        default=True, metadata={"help": "power_mh: stop a chain after a block that ended in EOS (the paper); "
                                        "false targets p^alpha exactly."})
    top_k: int | None = field(default=None, metadata={"help": "Keep only the k most likely tokens (default: off)."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass in (0, 1] (default: off)."})
    num_problems: int | None = field(default=None, metadata={"help": "Use the first N problems (default: all)."})
    num_samples: int = field(default=1, metadata={"help": "Completions per problem."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget of one completion."})
    seed: int = field(default=0, metadata={"help": "Run seed; each completion's seed derives from (seed, problem, sample)."})
    split: str = field(default="test", metadata={"help": "Task split to sample (test, or train where a task has one)."})
    chat: bool = field(default=False, metadata={"help": "Wrap prompts in the tokenizer's chat template (instruct models)."})
    batch_size: int = field(default=32, metadata={"help": "Completions decoded together."})

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"unknown method '{self.method}': valid methods are {', '.join(METHODS)}")
        for name in ("num_samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.num_problems is not None and self.num_problems < 1:
            raise UsageError(f"--num-problems must be >= 1, got {self.num_problems}")
        if not self.alpha > 0:
            raise UsageError(f"--alpha must be > 0, got {self.alpha}")
        if self.temperature is not None and not self.temperature > 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        if self.method in ("base", "grpo") and self.temperature not in (None, 1.0):
            raise UsageError(f"method {self.method} samples at temperature 1; use --method low_temp for another "
                             f"temperature")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.method == "power_mh":
            if self.temperature is not None:
                raise UsageError("method power_mh samples proposals at --proposal-temperature (default 1/alpha), "
                                 "not --temperature")
            try:
                self.power_config()
            except ValueError as err:
                name, _, rest = str(err).partition(" ")
                raise UsageError(f"--{name.replace('_', '-')} {rest}") from None
        self.task_options()  # fail early on a malformed KEY=VALUE

    @property
    def sampling_temperature(self) -> float:
        if self.method == "power_mh":
            return self.proposal_temperature if self.proposal_temperature is not None else 1.0 / self.alpha
        if self.temperature is not None:
            return self.temperature
        return 1.0 / self.alpha if self.method == "low_temp" else 1.0

    def power_config(self) -> PowerSamplingConfig:
        return PowerSamplingConfig(alpha=self.alpha, block_size=self.block_size, mcmc_steps=self.mcmc_steps,
                                   max_new_tokens=self.max_new_tokens, proposal_temperature=self.proposal_temperature,
                                   top_k=self.top_k, top_p=self.top_p, stop_on_eos=self.stop_on_eos,
                                   batch_size=self.batch_size)

    def task_options(self) -> dict:
        return parse_task_args(self.task_args)

    def identity(self) -> dict:
        """The fields that shape each record; records made under other values must not be mixed in."""
        keep = asdict(self)
        for name in ("output_dir", "num_problems", "num_samples", "batch_size"):
            keep.pop(name)
        keep["temperature"] = self.sampling_temperature
        for name in POWER_FIELDS:
            if self.method != "power_mh":
                keep.pop(name)
        if self.method == "power_mh":
            keep["proposal_temperature"] = self.sampling_temperature
        return keep


def check_run_config(config_path: Path, identity: dict, overwrite: bool = False) -> None:
    """Refuse to mix records of different configs in one file; save the config on first use."""
    if config_path.exists() and not overwrite:
        saved = json.loads(config_path.read_text()).get("identity", {})
        diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        if diff:
            raise UsageError(f"{config_path.parent} holds records made with other settings ({', '.join(diff)}): "
                             f"use another --output-dir")


def make_record(config: SampleRunConfig, task, tokenizer, problem: dict, sample_idx: int, seed: int,
                prompt: str, result: SampleResult, wall_seconds: float) -> dict:
    completion = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    score = float(task.grade(problem, completion))
    logprob_sum = float(sum(result.logprobs))
    return {
        "method": config.method,
        "problem_id": problem["id"],
        "sample_idx": sample_idx,
        "seed": seed,
        "prompt": prompt,
        "completion": completion,
        "completion_ids": result.token_ids,
        "finish_reason": result.finish_reason,
        "extracted_answer": task.extract_answer(completion),
        "gold_answer": problem.get("answer") if isinstance(problem.get("answer"), str) else None,
        "score": score,
        "correct": score >= 1.0,
        "num_tokens": len(result.token_ids),
        "token_logprobs": [round(x, 6) for x in result.logprobs],
        "base_logprob_sum": logprob_sum,
        "base_logprob_mean": logprob_sum / max(len(result.logprobs), 1),
        "temperature": config.sampling_temperature,
        "cost": dict(result.stats, wall_seconds=wall_seconds),
    }


def run(config: SampleRunConfig, *, model=None, tokenizer=None, progress: bool = True, shard=None) -> Path:
    """Sample, grade and record every missing (problem, sample) pair; return the records' path.

    Under `accelerate launch`, pass `shard` (experiments.distributed.current_shard()): each
    process samples every world_size-th missing pair into its own part file, and the main
    process merges the parts into <method>.jsonl once all are done. Seeds derive from
    (seed, problem, sample), so the records do not depend on the number of processes.
    """
    from .distributed import Shard

    shard = shard or Shard()
    task = get_task(config.task, **config.task_options())
    problems = task.load(limit=config.num_problems, seed=config.seed, split=config.split)
    if not problems:
        raise UsageError(f"task '{config.task}' gave no problems for split '{config.split}'")
    samples_dir = Path(config.output_dir) / "samples"
    records_path = samples_dir / f"{config.method}.jsonl"
    config_path = samples_dir / f"{config.method}.config.json"
    check_run_config(config_path, config.identity())
    if model is None:
        from .grpo import grpo_model_spec

        # A `sharpen grpo --from-checkpoint` directory stands for the RL model it records.
        model, tokenizer = load_model(grpo_model_spec(config.model) if Path(config.model).is_dir() else config.model)

    prompts = [task.prompt(p, tokenizer, chat=config.chat) for p in problems]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    try:
        check_prompts(model, prompt_ids)
    except ValueError as err:
        raise UsageError(str(err)) from None

    if shard.is_main:
        make_output_dir(samples_dir)
        config_path.write_text(json.dumps({"identity": config.identity(), "config": asdict(config)}, indent=2))
        _merge_parts(records_path)  # parts left by a killed multi-process run
    shard.wait()
    done = {record_key(r) for r in read_records(records_path)}
    path = records_path if shard.world_size == 1 else _part_path(records_path, shard.rank)
    with RecordWriter(path) as writer:
        todo = [(i, s) for i, p in enumerate(problems) for s in range(config.num_samples)
                if (str(p["id"]), s) not in done | writer.done]
        todo = todo[shard.rank::shard.world_size]
        _sample_and_write(config, task, tokenizer, model, problems, prompts, prompt_ids, todo, writer, progress)
    shard.wait()
    if shard.is_main:
        _merge_parts(records_path)
    shard.wait()
    return records_path


def _part_path(records_path: Path, rank: int) -> Path:
    return records_path.with_name(f"{records_path.stem}.part{rank}.jsonl")


def _merge_parts(records_path: Path) -> None:
    """Append the records of every part file not yet in the main file, then delete the parts.

    A merge killed half-way leaves its part files; the next merge skips what already landed.
    """
    parts = sorted(records_path.parent.glob(f"{records_path.stem}.part*.jsonl"))
    if not parts:
        return
    with RecordWriter(records_path) as writer:
        for part in parts:
            for record in read_records(part):
                if record_key(record) not in writer.done:
                    writer.write(record)
    for part in parts:
        part.unlink()


def _sample_and_write(config, task, tokenizer, model, problems, prompts, prompt_ids, todo, writer, progress):
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"{config.method}", unit="sample", disable=not progress, file=sys.stderr)
    tokens_done, correct_done, started = 0, 0, time.time()
    proposals_done = accepted_done = finished = 0  # own count: a disabled tqdm does not count
    power = config.method == "power_mh"
    # power_sample refills its batch as chains finish, so it takes every pair in one call.
    chunk_size = max(len(todo), 1) if power else config.batch_size
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        seeds = [derive_seed(config.seed, str(problems[i]["id"]), s) for i, s in chunk]
        chunk_started = time.time()

        def on_result(row: int, result: SampleResult):
            nonlocal tokens_done, correct_done, proposals_done, accepted_done, finished
            i, s = chunk[row]
            finished += 1
            # Wall time per completion: the chunk's share (power_mh: the run's so far).
            wall = (time.time() - chunk_started) / (finished if power else len(chunk))
            record = make_record(config, task, tokenizer, problems[i], s, seeds[row], prompts[i], result, wall)
            writer.write(record)
            tokens_done += result.stats.get("sampled_tokens", record["num_tokens"])
            correct_done += record["correct"]
            bar.update(1)
            postfix = {"acc": f"{correct_done / finished:.2f}"}
            if power:
                proposals_done += result.stats["proposals"]
                accepted_done += result.stats["accepted"]
                postfix["mh_accept"] = f"{accepted_done / max(proposals_done, 1):.2f}"
            postfix["tok_s"] = f"{tokens_done / (time.time() - started):.0f}"
            bar.set_postfix(postfix, refresh=False)  # a refresh per record floods non-terminal logs

        if power:
            power_sample(model, [prompt_ids[i] for i, _ in chunk], config.power_config(), seeds=seeds,
                         on_result=on_result)
        else:
            sample(model, [prompt_ids[i] for i, _ in chunk], temperature=config.sampling_temperature,
                   max_new_tokens=config.max_new_tokens, top_k=config.top_k, top_p=config.top_p,
                   seeds=seeds, batch_size=config.batch_size, on_result=on_result)
    bar.close()


def summarize(records: list[dict]) -> dict:
    """Accuracy (mean over problems of per-problem pass rate) with its 95% interval."""
    from analysis.stats import accuracy_interval

    per_problem: dict[str, list[float]] = {}
    for r in records:
        per_problem.setdefault(str(r["problem_id"]), []).append(float(r["correct"]))
    accuracy, low, high = accuracy_interval(list(per_problem.values()))
    return {"problems": len(per_problem), "samples": len(records), "accuracy": accuracy,
            "ci_low": low, "ci_high": high,
            "mean_tokens": sum(r["num_tokens"] for r in records) / max(len(records), 1)}


def format_summary(name: str, summary: dict) -> str:
    if math.isnan(summary["accuracy"]):
        return f"{name}: no records"
    return (f"{name}: accuracy {summary['accuracy']:.3f} [95% CI {summary['ci_low']:.3f}, {summary['ci_high']:.3f}]"
            f" over {summary['problems']} problems x {summary['samples'] // max(summary['problems'], 1)} samples,"
            f" mean {summary['mean_tokens']:.0f} tokens")


def make_parser():
    from .cli import ArgumentParser

    return ArgumentParser(SampleRunConfig, prog="sharpen sample",
                          description="Sample a model on a task, grade each completion, write per-sample records.")


def main(argv: list[str] | None = None) -> int:
    from .distributed import current_shard

    (config,) = make_parser().parse_args_into_dataclasses(argv)
    shard = current_shard()
    path = run(config, shard=shard, progress=shard.is_main)
    if shard.is_main:
        print(format_summary(f"{config.task} / {config.method}", summarize(read_records(path))))
    return 0
