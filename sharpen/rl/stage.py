"""The GRPO stage: a task's train split and grader made into TRL's dataset and reward, checked, then trained.

    from sharpen.rl.stage import check_grpo_settings, train_grpo
    section = {"max_steps": 40, "lora": True}                   # a study's grpo section
    check_grpo_settings(section, model="runs/testbed/model", task="testbed", task_args={}, chat=False,
                        problem_seed=0, output_dir="runs/x/grpo")   # before any work; UsageError in one line
    train_grpo(section, model="runs/testbed/model", task="testbed", task_args={}, chat=False, problem_seed=0,
               output_dir="runs/x/grpo", wandb=WandbConfig(mode="off"), run_name="x-grpo")

`sharpen grpo` (sharpen.cli.grpo) and a study both come here with GrpoSettings: `preflight`
checks everything a user can get wrong (the task's train split, the batch sizes for the
processes that will train, the LoRA targets, the rollout kind, the output directory) reading
the tokenizer and the model's config but never its weights; `run_grpo` then trains, resumes,
finds the run finished, or relaunches it under `accelerate launch` (sharpen.rl.launch).

    python -m pytest -q tests/test_grpo.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from sharpen.errors import UsageError
from sharpen.runs.files import check_output_dir, looks_like_path, resolve_local, write_text_atomic
from sharpen.runs.processes import is_main_process
from sharpen.runs.provenance import model_revision
from sharpen.runs.tracking import WandbConfig
from sharpen.sampling.models import check_weights, load_model, resolve_model_path
from sharpen.tasks import get_task, parse_task_args

from .grpo import check_grpo_args, grpo_train, is_finished, lora_config
from .launch import accelerate_launch, is_launched, planned_processes, uses_fsdp
from .rewards import grade_reward
from .rollouts import check_rollouts
from .rundir import LAUNCH_FILE, check_run, identity, write_run_file
from .self_reward import SELF_REWARD, self_likelihood_reward, self_rollouts
from .settings import GrpoSettings, settings_from_mapping, study_mapping


@dataclass
class Preflight:
    """What the checks found: the task, its train problems, the run's identity, and (model known) the rest."""

    task: object
    problems: list
    identity: dict
    model_path: str | None = None  # None: the base model does not exist yet (a study's testbed)
    base_spec: str | None = None
    revision: str | None = None
    tokenizer: object = None
    dataset: object = None


# ---- the train set ----------------------------------------------------------------------------

def check_train_split(task, advice: str = "give a task that has one") -> None:
    """GRPO trains on a task's train split: UsageError when `task` has none.

    >>> from sharpen.tasks import get_task
    >>> check_train_split(get_task("basic_arithmetic"))
    """
    if "train" not in task.splits:
        raise UsageError(f"GRPO needs a train split, and task '{task.name}' has only {', '.join(task.splits)} "
                         f"(no split 'train'): {advice}")


def load_tokenizer(model_path: str, spec: str):
    """The model's tokenizer as GRPO uses it: padded on the left, prompts tokenized as `sharpen sample` does."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UsageError(f"cannot load the tokenizer of model '{spec}' ({reason})") from None
    tokenizer.padding_side = "left"  # TRL generates batches of prompts, padded on the left
    _match_sampling_tokenization(tokenizer)
    return tokenizer


def build_train_set(task, tokenizer, *, limit: int | None, seed: int, chat: bool):
    """(datasets.Dataset with `prompt` and `problem_index`, the problem dicts) from the task's train split."""
    from datasets import Dataset

    check_train_split(task)
    problems = _train_problems(task, limit, seed)
    prompts = [task.prompt(p, tokenizer, chat=chat) for p in problems]
    return Dataset.from_dict({"prompt": prompts, "problem_index": list(range(len(problems)))}), problems


def _train_problems(task, limit: int | None, seed: int) -> list:
    problems = task.load(limit=limit, seed=seed, split="train")
    if not problems:
        raise UsageError(f"task '{task.name}' gave no train problems")
    return problems


def _match_sampling_tokenization(tokenizer) -> None:
    """Make TRL tokenize prompts as `sharpen sample` does (no added BOS/EOS), so training and evaluation agree.

    TRL calls tokenizer(prompts) with special tokens on; sampling encodes prompt text with
    add_special_tokens=False (a chat template already writes its own BOS).
    """
    def differs():
        return tokenizer("1 2")["input_ids"] != tokenizer("1 2", add_special_tokens=False)["input_ids"]

    if not differs():
        return
    for name in ("add_bos_token", "add_eos_token"):
        if hasattr(tokenizer, name):
            try:
                setattr(tokenizer, name, False)
            except (AttributeError, ValueError):
                pass
    if differs():
        print("grpo: warning: this tokenizer adds special tokens to prompts under TRL but not under "
              "`sharpen sample`; training and evaluation prompts differ by them", file=sys.stderr)


# ---- checks before any work -------------------------------------------------------------------

def preflight(settings: GrpoSettings, processes: int, *, model_known: bool = True) -> Preflight:
    """Everything a run needs that a user can get wrong, checked before any training or launching.

    Reads the tokenizer and the model's config, never its weights. Without `model_known`
    (a base model built later) the checks that need the model are left to training time.
    """
    run = settings.run
    check_output_dir(settings.output_dir, "--output-dir")
    task = get_task(run.task, **parse_task_args(run.task_args))
    check_train_split(task)
    found = Preflight(task=task, problems=[], identity={})
    if model_known:
        _check_model(settings, found)
    else:
        found.problems = _train_problems(task, run.num_train_problems, run.problem_seed)
    check_grpo_args(settings.grpo, processes, len(found.problems))
    check_rollouts(run.rollouts, settings.grpo, fsdp=bool(run.accelerate_config) and uses_fsdp(run.accelerate_config))
    found.identity = identity(settings, found.base_spec)
    check_run(settings.output_dir, found.identity, found.revision)
    return found


def _check_model(settings: GrpoSettings, found: Preflight) -> None:
    """The base model's path, tokenizer, train set, LoRA targets and revision, into `found`."""
    run = settings.run
    model_path = resolve_model_path(run.model)
    if Path(model_path).expanduser().exists():
        model_path = resolve_local(model_path)
        check_weights(model_path, run.model)  # a cut-short weights file: one line now, not after run.json
    elif looks_like_path(run.model):
        raise UsageError(f"model '{run.model}' does not exist: give a checkpoint directory, a Hugging Face id, "
                         f"or a built-in name")
    found.model_path, found.base_spec = model_path, resolve_local(run.model)
    found.tokenizer = load_tokenizer(model_path, run.model)
    found.dataset, found.problems = build_train_set(found.task, found.tokenizer, limit=run.num_train_problems,
                                                    seed=run.problem_seed, chat=run.chat)
    lora_config(model_path, settings.model_args)  # checks the target modules (None without use_peft)
    found.revision = model_revision(model_path)


def check_grpo_settings(settings: dict, *, model: str | None, task: str, task_args: dict, chat: bool,
                        problem_seed: int, output_dir) -> None:
    """Check a study's grpo section (a `sharpen grpo --config` mapping) before any work; UsageError in one line.

    Unknown keys, batch sizes that do not divide into groups, LoRA targets the model lacks,
    an accelerate config that does not parse, and a directory holding a run with other
    settings. `model` None (a base model the study builds later) leaves the checks that need
    it to training time.
    """
    mapping = study_mapping(settings, model=model or "(built later)", task=task, task_args=task_args, chat=chat,
                            problem_seed=problem_seed, output_dir=output_dir)
    resolved = settings_from_mapping(mapping)
    preflight(resolved, planned_processes(resolved.run.accelerate_config), model_known=model is not None)


# ---- training ---------------------------------------------------------------------------------

def train_grpo(settings: dict, *, model: str, task: str, task_args: dict, chat: bool, problem_seed: int, output_dir,
               wandb: WandbConfig, run_name: str) -> Path:
    """Train (or resume, or find finished) the GRPO run a study's grpo section describes; return output_dir.

    `settings` is a `sharpen grpo --config` mapping (GRPOConfig and ModelConfig fields, plus
    num_train_problems, accelerate_config, keep_checkpoints, lora, rollouts); the other
    arguments are what the study decides. With accelerate_config the run is relaunched under
    `accelerate launch` from a YAML file of the same mapping, and this call waits for it.
    """
    mapping = study_mapping(settings, model=model, task=task, task_args=task_args, chat=chat,
                            problem_seed=problem_seed, output_dir=output_dir, run_name=run_name, wandb=wandb)
    run_grpo(settings_from_mapping(mapping), mapping=mapping)
    return Path(output_dir)


def run_grpo(settings: GrpoSettings, *, argv: list[str] | None = None, mapping: dict | None = None) -> None:
    """Train, resume or find finished the run `settings` describe; with an accelerate config, relaunch it.

    The relaunched children get what the user gave, the command's `argv` or a YAML file of a
    study's `mapping`, never a re-serialised GRPOConfig: its __post_init__ derives fields
    (generation_batch_size) that it then refuses beside the ones they come from.
    """
    if not settings.run.accelerate_config or is_launched():
        _train(settings)
        return
    preflight(settings, planned_processes(settings.run.accelerate_config))
    out = settings.output_dir
    if is_finished(out):
        print(f"grpo: {out} holds a finished run (cost.json); nothing to do")
        return
    out.mkdir(parents=True, exist_ok=True)
    if mapping is not None:
        write_text_atomic(out / LAUNCH_FILE, yaml.safe_dump(mapping, sort_keys=True))
        argv = ["--config", str(out / LAUNCH_FILE)]
    accelerate_launch(settings.run.accelerate_config, argv)


def _train(settings: GrpoSettings) -> Path:
    output_dir = settings.output_dir
    found = preflight(settings, planned_processes(settings.run.accelerate_config))
    if is_finished(output_dir):
        if is_main_process():
            print(f"grpo: {output_dir} holds a finished run (cost.json); nothing to do")
        return output_dir
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        write_run_file(output_dir, identity=found.identity, model_path=found.model_path, revision=found.revision,
                       train_problems=len(found.problems))
    if settings.run.reward == SELF_REWARD:  # no verifier: the frozen base model scores every rollout
        reward = self_likelihood_reward(settings.run.alpha)
        rollout_func = self_rollouts(load_model(found.model_path)[0])
    else:
        reward, rollout_func = grade_reward(found.task.grade, found.problems, name="correct"), None
    cost = grpo_train(found.model_path, found.tokenizer, found.dataset, reward, dict(settings.grpo),
                      model_args=settings.model_args, base_model_spec=found.base_spec,
                      keep_checkpoints=settings.run.keep_checkpoints, wandb=settings.wandb,
                      rollouts=settings.run.rollouts, rollout_func=rollout_func)
    if is_main_process():
        print(f"grpo: {cost['optimizer_steps']} steps in {cost['wall_seconds']:.0f} s "
              f"({cost['rollout_tokens']} rollout tokens from {cost['rollouts']} rollouts, "
              f"{cost['processes']} process(es)); model in {output_dir}")
    return output_dir
