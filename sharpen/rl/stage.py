"""`sharpen grpo`: GRPO-train a base model on a task's train split with TRL, the task's grader as the reward.

    sharpen grpo --model runs/testbed/model --task testbed --output-dir runs/study/grpo
    sharpen grpo --model smollm2-135m --task basic_arithmetic --chat --config my_grpo.yaml \\
        --learning_rate 1e-5 --max_completion_length 160 --lora --output-dir D   # any GRPOConfig field
    sharpen grpo --accelerate-config sharpen/configs/accelerate/cpu_2proc.yaml --model M --task T --output-dir D
    accelerate launch --config_file sharpen/configs/accelerate/multi_gpu.yaml -m sharpen grpo \\
        --model M --task T --config sharpen/configs/grpo_gpu.yaml --output-dir D
    sharpen grpo --output-dir D --from-checkpoint \\
        stellalisy/rethink_rlvr_reproduce-ground_truth-qwen2.5_math_7b-lr5e-7-kl0.00-step150   # record, no training

Settings are merged once, the way trl.TrlParser does it, into GrpoRunArgs (below),
trl.GRPOConfig and trl.ModelConfig: the run defaults (`sharpen.rl.default_grpo_args`,
sized for the testbed on 2 CPU cores, and `default_model_args`), then the YAML file given
with --config (any option of `sharpen grpo --help` as a key, plus an `env:` mapping),
then the flags. LoRA is ModelConfig's: --lora (or --use_peft), --lora_r, --lora_alpha,
--lora_target_modules (default all-linear), ... and `trl.get_peft_config` builds it.
A study's `grpo:` section is the same mapping (`check_grpo_settings`, `train_grpo`).
--rollouts sharpen (the default) samples GRPO's completions with `sampling.sample`
(sharpen.rl.rollouts); --rollouts trl keeps TRL's own model.generate.

The output directory D then holds the trained model (`sharpen sample --model D` and
`load_model(D)` take it; a LoRA adapter is applied on its base), metrics.json,
cost.json (wall time, optimizer steps, rollout tokens), grpo_config.json and run.json
(the settings, the base model's revision and the code and library versions). Running
the same command again resumes from the last checkpoint; a finished run is not
retrained; a directory holding a run with other settings or another base model
revision is refused.

wandb: --wandb-mode auto (default: $WANDB_MODE if set, else offline), offline, online or
off; TRL logs completions tables into the run. --wandb-group, --wandb-project and
--run-name place it beside a study's sampling runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sharpen.errors import UsageError
from sharpen.runs.files import check_output_dir, looks_like_path, resolve_local, write_text_atomic
from sharpen.runs.locks import hold_run_dir
from sharpen.runs.processes import is_main_process
from sharpen.runs.provenance import environment, library_differences, model_revision
from sharpen.runs.tracking import WandbConfig
from sharpen.rl.rollouts import DEFAULT_ROLLOUTS, check_rollouts

from sharpen.tasks import get_task, parse_task_args

RUN_FILE = "run.json"
RUN_FORMAT = 2  # run.json's layout; 1 (no "format" key) held the settings that differed from TRL's defaults
RECORD_FILE = "grpo_checkpoint.json"
LAUNCH_FILE = "grpo_launch.yaml"
# Set in the processes a relaunch starts: they train, and never relaunch themselves.
LAUNCHED_ENV = "SHARPEN_GRPO_LAUNCHED"
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
# GrpoRunArgs fields a study's grpo section may set; the study sets the others (and output_dir, run_name).
STUDY_KEYS = ("num_train_problems", "accelerate_config", "keep_checkpoints", "lora", "rollouts")


@dataclass
class GrpoRunArgs:
    """What to train and where it is logged; every trl.GRPOConfig and trl.ModelConfig field is a flag beside these."""

    model: str | None = field(default=None, metadata={
        "help": "Base model: checkpoint directory, Hugging Face id or built-in name (smollm2-135m)."})
    task: str | None = field(default=None, metadata={
        "help": "Task with a train split: basic_arithmetic, reasoning_gym, testbed, ..."})
    task_args: list[str] = field(default_factory=list, metadata={
        "help": "Task options as KEY=VALUE, e.g. dataset=chain_sum."})
    chat: bool = field(default=False, metadata={"help": "Wrap prompts in the tokenizer's chat template."})
    num_train_problems: int | None = field(default=None, metadata={
        "help": "Use the first N train problems (default: all the task's train split gives)."})
    problem_seed: int = field(default=0, metadata={"help": "Seed the task draws its train problems with."})
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft): the same as --use_peft."})
    rollouts: str = field(default=DEFAULT_ROLLOUTS, metadata={
        "help": "Who samples GRPO's completions: sharpen (sampling.sample through TRL's rollout_func: finished rows "
                "leave the batch, one seed per completion) or trl (TRL's own model.generate)."})
    from_checkpoint: str | None = field(default=None, metadata={
        "help": "Record an existing RL checkpoint (Hub id or path) as this run's model instead of training."})
    accelerate_config: str | None = field(default=None, metadata={
        "help": "Relaunch under `accelerate launch --config_file FILE`, e.g. sharpen/configs/accelerate/cpu_2proc.yaml."})
    keep_checkpoints: bool = field(default=False, metadata={
        "help": "Keep checkpoint-N directories (optimizer state) after a finished run."})
    wandb_mode: str = field(default="auto", metadata={
        "help": "auto ($WANDB_MODE if set, else offline), offline, online, or off (wandb is not used)."})
    wandb_project: str = field(default="sharpen", metadata={"help": "wandb project (WANDB_PROJECT wins if set)."})
    wandb_entity: str | None = field(default=None, metadata={"help": "wandb entity (team or user)."})
    wandb_group: str | None = field(default=None, metadata={"help": "wandb group (e.g. the study name)."})

    def __post_init__(self):
        if self.num_train_problems is not None and self.num_train_problems < 1:
            raise UsageError(f"--num-train-problems must be >= 1, got {self.num_train_problems}")
        if self.from_checkpoint is None and (not self.model or not self.task):
            raise UsageError("give --model and --task (or --from-checkpoint to record an existing RL model)")
        parse_task_args(self.task_args)
        check_rollouts(self.rollouts)
        WandbConfig(mode=self.wandb_mode)  # a bad mode is a one-line error here, before any work


@dataclass
class GrpoSettings:
    """One run's settings after the merge: the run options, every GRPOConfig field, and a trl.ModelConfig."""

    run: GrpoRunArgs
    grpo: dict  # GRPOConfig fields; the GRPOConfig itself is built by the training processes
    model_args: object  # trl.ModelConfig, use_peft already set by --lora

    @property
    def output_dir(self) -> Path:
        return Path(self.grpo["output_dir"])

    @property
    def wandb(self) -> WandbConfig:
        run = self.run
        return WandbConfig(mode=run.wandb_mode, project=run.wandb_project, entity=run.wandb_entity,
                           group=run.wandb_group)


# ---- settings: one merge ---------------------------------------------------------------------

def make_parser(prog: str = "sharpen grpo"):
    """TrlParser over (GrpoRunArgs, GRPOConfig, ModelConfig) whose defaults are the run defaults."""
    from trl import GRPOConfig, ModelConfig, TrlParser

    from sharpen.rl import default_grpo_args, default_model_args

    from sharpen.cli.args import ArgumentParser

    class Parser(ArgumentParser, TrlParser):
        pass

    parser = Parser((GrpoRunArgs, GRPOConfig, ModelConfig), prog=prog,
                    description="GRPO-train a model on a task's train split (TRL GRPOTrainer), or record an "
                                "existing RL checkpoint. Settings: run defaults, then --config FILE.yaml (any "
                                "option below as a key), then flags.")
    parser.set_defaults_with_config(**default_grpo_args(), **default_model_args())
    return parser


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _settings(parser, argv: list[str]) -> GrpoSettings:
    """Parse `argv` over the parser's defaults and split the values into the three dataclasses."""
    from trl import GRPOConfig, ModelConfig

    values = vars(parser.parse_args(argv))
    run = {k: values[k] for k in _field_names(GrpoRunArgs)}
    model = {k: values[k] for k in _field_names(ModelConfig)}
    grpo = {k: values[k] for k in _field_names(GRPOConfig)}
    model["use_peft"] = bool(model["use_peft"] or run["lora"])
    run["model"] = run["model"] or model["model_name_or_path"]  # TRL's name for --model
    run = GrpoRunArgs(**run)
    if grpo["run_name"] is None and run.task:
        grpo["run_name"] = f"grpo-{run.task}"
    try:
        model_args = ModelConfig(**model)
    except ValueError as err:
        raise UsageError(f"invalid model settings: {' '.join(str(err).split())}") from None
    return GrpoSettings(run, grpo, model_args)


def parse_args(argv: list[str]) -> GrpoSettings:
    """The settings of `sharpen grpo ARGV`: run defaults, then --config YAML, then flags (TrlParser's merge)."""
    parser = make_parser()
    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UsageError("--config needs a YAML file")
        path = argv[i + 1]
        del argv[i:i + 2]
        config = _read_yaml(path)
        for key, value in (config.pop("env", None) or {}).items():
            os.environ[key] = str(value)
        unknown = parser.set_defaults_with_config(**{k.replace("-", "_"): v for k, v in config.items()})
        if unknown:
            raise UsageError(f"config file '{path}' has unknown options: {', '.join(unknown[::2])} "
                             f"(see sharpen grpo --help)")
    return _settings(parser, argv)


def _read_yaml(path: str) -> dict:
    if not Path(path).is_file():
        raise UsageError(f"config file '{path}' does not exist")
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"config file '{path}' is not valid YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(config, dict):
        raise UsageError(f"config file '{path}' must hold a YAML mapping of option: value")
    return config


def study_mapping(settings: dict, *, model: str | None, task: str, task_args: dict, chat: bool, problem_seed: int,
                  output_dir, run_name: str | None = None, wandb: WandbConfig | None = None) -> dict:
    """A study's grpo section plus what the study sets itself: a `sharpen grpo --config` mapping.

    Unknown keys, and keys the study sets itself, are one-line errors naming `grpo.<key>`.
    """
    from trl import GRPOConfig, ModelConfig

    settings = {str(k).replace("-", "_"): v for k, v in (settings or {}).items()}
    run_fields = _field_names(GrpoRunArgs)
    known = set(run_fields) | set(_field_names(GRPOConfig)) | set(_field_names(ModelConfig))
    owned = ({"output_dir", "run_name", "model_name_or_path"} | set(run_fields)) - set(STUDY_KEYS)
    for key in settings:
        if key not in known:
            raise UsageError(f"unknown key 'grpo.{key}' in the study config: valid keys are the fields of GrpoRunArgs, "
                             f"trl.GRPOConfig and trl.ModelConfig (see `sharpen grpo --help`)")
        if key in owned:
            raise UsageError(f"grpo.{key} is set by the study itself (from its model, task, seed, output_dir and "
                             f"wandb sections): remove it from the grpo section")
    wandb = wandb or WandbConfig()
    study = {"model": model, "task": task, "task_args": [f"{k}={json.dumps(v)}" for k, v in (task_args or {}).items()],
             "chat": chat, "problem_seed": problem_seed, "output_dir": str(output_dir), "run_name": run_name,
             "wandb_mode": wandb.mode, "wandb_project": wandb.project, "wandb_entity": wandb.entity,
             "wandb_group": wandb.group}
    return settings | {k: v for k, v in study.items() if v is not None}


def _from_mapping(mapping: dict) -> GrpoSettings:
    """The settings of `sharpen grpo --config FILE` for a FILE holding `mapping` (study settings).

    The parser reports a mistyped value as `grpo.KEY: ...` rather than exiting.
    """
    parser = make_parser(prog="grpo")

    def error(message):  # argparse's "argument --max_steps/--max-steps: invalid int value: 'ten'"
        raise UsageError(re.sub(r"^argument --(\w+)(/--[\w-]+)?: ", r"grpo.\1: ", message))

    parser.error = error
    unknown = parser.set_defaults_with_config(**mapping)
    assert not unknown, unknown  # study_mapping refused them
    return _settings(parser, [])


# ---- checks before any work ------------------------------------------------------------------

@dataclass
class _Prepared:
    task: object
    problems: list
    identity: dict
    model_path: str | None = None  # None: the base model does not exist yet (a study's testbed)
    base_spec: str | None = None
    revision: str | None = None
    tokenizer: object = None
    dataset: object = None


def _prepare(settings: GrpoSettings, processes: int, *, model_known: bool = True) -> _Prepared:
    """Everything a run needs that a user can get wrong, checked before any training or launching.

    Reads the tokenizer and the model's config, never its weights. Without `model_known`
    (a base model built later) the checks that need the model are left to training time.
    """
    from sharpen.rl import check_grpo_args, lora_config

    from sharpen.sampling.models import resolve_model_path

    run = settings.run
    if not settings.grpo.get("output_dir"):
        raise UsageError("give --output-dir (where the trained model, metrics and cost go)")
    check_output_dir(settings.output_dir, "--output-dir")
    task = get_task(run.task, **parse_task_args(run.task_args))
    task.check_split("train")
    prep = _Prepared(task=task, problems=[], identity={})
    if model_known:
        model_path = resolve_model_path(run.model)
        if Path(model_path).expanduser().exists():
            model_path = resolve_local(model_path)
        elif looks_like_path(run.model):
            raise UsageError(f"model '{run.model}' does not exist: give a checkpoint directory, a Hugging Face id, "
                             f"or a built-in name")
        prep.model_path, prep.base_spec = model_path, resolve_local(run.model)
        prep.tokenizer = _tokenizer(model_path, run.model)
        prep.dataset, prep.problems = build_train_set(task, prep.tokenizer, limit=run.num_train_problems,
                                                      seed=run.problem_seed, chat=run.chat)
        lora_config(model_path, settings.model_args)  # checks the target modules (None without use_peft)
        prep.revision = model_revision(model_path)
    else:
        prep.problems = task.load(limit=run.num_train_problems, seed=run.problem_seed, split="train")
        if not prep.problems:
            raise UsageError(f"task '{task.name}' gave no train problems")
    check_grpo_args(settings.grpo, processes, len(prep.problems))
    check_rollouts(run.rollouts, settings.grpo)
    if run.rollouts == "sharpen" and run.accelerate_config and _uses_fsdp(run.accelerate_config):
        raise UsageError(f"rollouts: sharpen does not run under FSDP ({run.accelerate_config}): each process "
                         f"decodes a different number of steps; use rollouts: trl")
    prep.identity = identity(settings, prep.base_spec)
    _check_run(settings.output_dir, prep.identity, prep.revision)
    return prep


def _tokenizer(model_path: str, spec: str):
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

    task.check_split("train")
    problems = task.load(limit=limit, seed=seed, split="train")
    if not problems:
        raise UsageError(f"task '{task.name}' gave no train problems")
    prompts = [task.prompt(p, tokenizer, chat=chat) for p in problems]
    return Dataset.from_dict({"prompt": prompts, "problem_index": list(range(len(problems)))}), problems


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


def identity(settings: GrpoSettings, base_spec: str | None) -> dict:
    """What shapes the trained model: a resumed run must match it (only keys both sides have are compared).

    Every merged GRPOConfig field but NOT_IDENTITY, the task and its train problems, and the
    ModelConfig (its LoRA fields only with use_peft). `base_spec` None leaves the model out.
    """
    run = settings.run
    run_part = {"model": base_spec, "task": run.task, "task_args": parse_task_args(run.task_args),
                "chat": run.chat, "num_train_problems": run.num_train_problems, "problem_seed": run.problem_seed,
                "rollouts": run.rollouts}
    if base_spec is None:
        del run_part["model"]
    model_part = dataclasses.asdict(settings.model_args)
    model_part.pop("model_name_or_path")
    if not model_part["use_peft"]:
        model_part = {k: v for k, v in model_part.items()
                      if not k.startswith("lora_") and k not in ("use_rslora", "use_dora")}
    grpo_part = {k: v for k, v in sorted(settings.grpo.items()) if k not in NOT_IDENTITY}
    return json.loads(json.dumps({"run": run_part, "grpo": grpo_part, "model": model_part}, default=str))


def _has_progress(output_dir: Path) -> bool:
    """Whether a GRPO directory holds training that a resumed run would build on (a checkpoint or the result)."""
    return (output_dir / "cost.json").exists() or any(output_dir.glob("checkpoint-*"))


def _check_owned(output_dir: Path) -> None:
    """`sharpen grpo` writes only GRPO directories: not a study, a sampling run, or someone else's files."""
    from sharpen.runs.locks import LOCK_FILE

    if not output_dir.is_dir():
        return
    if (output_dir / "study.json").exists() or (output_dir / "samples").is_dir():
        raise UsageError(f"{output_dir} holds a study or sampling records: sharpen grpo writes only its own "
                         f"directory; give the study's grpo/ stage ({output_dir / 'grpo'}) or another --output-dir")
    own = {RUN_FILE, RECORD_FILE, LAUNCH_FILE, LOCK_FILE, "cost.json"}
    entries = [child.name for child in output_dir.iterdir()]
    if entries and not any(name in own or name.startswith("checkpoint-") for name in entries):
        raise UsageError(f"{output_dir} is not empty and holds no GRPO run ({', '.join(sorted(entries)[:5])}): "
                         f"give an empty directory or a GRPO run's own")


def _check_run(output_dir: Path, mine: dict, revision: str | None) -> None:
    """Refuse a directory that holds another run, or this run's settings on another base model revision.

    A run.json without any checkpoint (a first session that failed before its first save) binds
    nothing: the corrected command replaces it.
    """
    _check_owned(output_dir)
    path = output_dir / RUN_FILE
    if not path.exists():
        if (output_dir / RECORD_FILE).exists():
            raise UsageError(f"{output_dir} records an existing checkpoint (--from-checkpoint): "
                             f"use another --output-dir")
        return
    saved = json.loads(path.read_text())
    if not _has_progress(output_dir):
        return
    if saved.get("format") != RUN_FORMAT:
        if (output_dir / "cost.json").exists():
            return  # a finished run of an older sharpen: reused as it is
        raise UsageError(f"{output_dir} holds an unfinished GRPO run of an older sharpen version: "
                         f"use another --output-dir")
    diff = []
    for section, values in mine.items():
        theirs = saved["identity"].get(section, {})
        diff += [f"{section}.{k}" for k in sorted(set(values) & set(theirs)) if values[k] != theirs[k]]
    if diff:
        raise UsageError(f"{output_dir} holds a GRPO run with other settings ({', '.join(diff)}): "
                         f"use another --output-dir")
    before = saved.get("base_model_revision")
    if revision and before and revision != before:
        raise UsageError(f"{output_dir} holds a GRPO run of another revision of its base model "
                         f"({before} then, {revision} now): use another --output-dir")


def _processes(settings: GrpoSettings) -> int:
    """How many processes will train: the accelerate config's, or this launch's."""
    if settings.run.accelerate_config and not os.environ.get(LAUNCHED_ENV):
        return max(1, int(check_accelerate_config(settings.run.accelerate_config).num_processes or 1))
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_grpo_settings(settings: dict, *, model: str | None, task: str, task_args: dict, chat: bool,
                        problem_seed: int, output_dir) -> None:
    """Check a study's grpo section (a `sharpen grpo --config` mapping) before any work; UsageError in one line.

    Unknown keys, batch sizes that do not divide into groups, LoRA targets the model lacks,
    an accelerate config that does not parse, and a directory holding a run with other
    settings. Reads the tokenizer and the model's config, never its weights; `model` None
    (a base model the study builds later) leaves the checks that need it to training time.
    """
    mapping = study_mapping(settings, model=model or "(built later)", task=task, task_args=task_args, chat=chat,
                            problem_seed=problem_seed, output_dir=output_dir)
    resolved = _from_mapping(mapping)
    _prepare(resolved, _processes(resolved), model_known=model is not None)


# ---- training --------------------------------------------------------------------------------

def train_grpo(settings: dict, *, model: str, task: str, task_args: dict, chat: bool, problem_seed: int, output_dir,
               wandb: WandbConfig, run_name: str) -> Path:
    """Train (or resume, or find finished) the GRPO run a study's grpo section describes; return output_dir.

    `settings` is a `sharpen grpo --config` mapping (GRPOConfig and ModelConfig fields, plus
    num_train_problems, accelerate_config, keep_checkpoints); the other arguments are what
    the study decides. With accelerate_config the run is relaunched under `accelerate
    launch` (e.g. two CPU processes) from a YAML file of the same mapping, and this call
    waits for it.
    """
    mapping = study_mapping(settings, model=model, task=task, task_args=task_args, chat=chat,
                            problem_seed=problem_seed, output_dir=output_dir, run_name=run_name, wandb=wandb)
    resolved = _from_mapping(mapping)
    if resolved.run.accelerate_config and not os.environ.get(LAUNCHED_ENV):
        _launch(resolved, mapping=mapping)
    else:
        _train(resolved)
    return Path(output_dir)


def _train(settings: GrpoSettings) -> Path:
    from sharpen.rl import grade_reward, grpo_train, is_finished

    output_dir = settings.output_dir
    prep = _prepare(settings, _processes(settings))
    if is_finished(output_dir):
        if is_main_process():
            print(f"grpo: {output_dir} holds a finished run (cost.json); nothing to do")
        return output_dir
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_run_file(output_dir, prep)
    reward = grade_reward(prep.task.grade, prep.problems, name="correct")
    cost = grpo_train(prep.model_path, prep.tokenizer, prep.dataset, reward, dict(settings.grpo),
                      model_args=settings.model_args, base_model_spec=prep.base_spec,
                      keep_checkpoints=settings.run.keep_checkpoints, wandb=settings.wandb,
                      rollouts=settings.run.rollouts)
    if is_main_process():
        print(f"grpo: {cost['optimizer_steps']} steps in {cost['wall_seconds']:.0f} s "
              f"({cost['rollout_tokens']} rollout tokens from {cost['rollouts']} rollouts, "
              f"{cost['processes']} process(es)); model in {output_dir}")
    return output_dir


def _write_run_file(output_dir: Path, prep: _Prepared) -> None:
    """run.json: what shapes the run, written when it starts; a resumed session only warns about new versions."""
    path = output_dir / RUN_FILE
    env = environment()
    if path.exists() and _has_progress(output_dir):
        changed = library_differences(json.loads(path.read_text()).get("environment"), env)
        if changed:
            print(f"grpo: warning: resuming under other versions ({'; '.join(changed)})", file=sys.stderr)
        return
    write_text_atomic(path, json.dumps(
        {"format": RUN_FORMAT, "identity": prep.identity, "model_path": prep.model_path,
         "base_model_revision": prep.revision, "train_problems": len(prep.problems), "environment": env},
        indent=2))


def record_checkpoint(spec: str, output_dir: str | os.PathLike) -> Path:
    """Record an existing RL model (Hub id or path) as a GRPO run's result; nothing is trained or downloaded."""
    output_dir = Path(output_dir)
    if Path(spec).expanduser().exists():
        spec = resolve_local(spec)
    elif looks_like_path(spec) or "/" not in spec:
        raise UsageError(f"--from-checkpoint '{spec}' is neither an existing directory nor a Hub id (owner/name)")
    if (output_dir / RUN_FILE).exists():
        raise UsageError(f"{output_dir} holds a trained GRPO run: use another --output-dir")
    _check_owned(output_dir)
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


# ---- the accelerate relaunch -----------------------------------------------------------------

def launch_command(config_file: str, child_args: list[str], port: int | None = None) -> list[str]:
    """`accelerate launch` of `sharpen grpo CHILD_ARGS`: the child re-runs the same merge of the same settings."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file]
    if port is not None:
        command += ["--main_process_port", str(port)]
    return command + ["-m", "sharpen", "grpo", *child_args]


def _launch(settings: GrpoSettings, *, argv: list[str] | None = None, mapping: dict | None = None) -> None:
    """Check, then run `sharpen grpo` again under `accelerate launch`, given the user's `argv` or a study's `mapping`.

    The children get what the user gave (the flags, or a YAML file of the mapping), never
    a re-serialised GRPOConfig: its __post_init__ derives fields (generation_batch_size)
    that it then refuses when they are given beside the ones they come from.
    """
    from sharpen.rl import is_finished

    config_file = settings.run.accelerate_config
    config = check_accelerate_config(config_file)
    processes = max(1, int(config.num_processes or 1))
    _prepare(settings, processes)
    out = settings.output_dir
    if is_finished(out):
        print(f"grpo: {out} holds a finished run (cost.json); nothing to do")
        return
    out.mkdir(parents=True, exist_ok=True)
    if mapping is not None:
        write_text_atomic(out / LAUNCH_FILE, yaml.safe_dump(mapping, sort_keys=True))
        argv = ["--config", str(out / LAUNCH_FILE)]
    # Two runs at once must not share a port.
    port = _free_port() if processes > 1 and not getattr(config, "main_process_port", None) else None
    done = subprocess.run(launch_command(config_file, list(argv), port), env=os.environ | {LAUNCHED_ENV: "1"})
    if done.returncode != 0:
        raise UsageError(f"accelerate launch with {config_file} failed (exit status {done.returncode}); "
                         f"see the output above")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uses_fsdp(path: str) -> bool:
    from accelerate.utils import DistributedType

    return check_accelerate_config(path).distributed_type == DistributedType.FSDP


def check_accelerate_config(path: str):
    """The accelerate config in `path` (accelerate's own ClusterConfig); UsageError if accelerate cannot parse it."""
    if not Path(path).is_file():
        raise UsageError(f"accelerate config '{path}' does not exist: give a file such as "
                         f"sharpen/configs/accelerate/cpu.yaml or sharpen/configs/accelerate/cpu_2proc.yaml")
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(path)
    except Exception as err:  # yaml, TypeError and ValueError all mean "not a valid accelerate config"
        raise UsageError(f"accelerate config '{path}' is not valid ({' '.join(str(err).split())[:200]})") from None
    return config


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = parse_args(argv)
    if not settings.grpo.get("output_dir"):
        raise UsageError("give --output-dir (where the trained model, metrics and cost go)")
    check_output_dir(settings.output_dir, "--output-dir")
    with hold_run_dir(settings.output_dir, "grpo"):
        if settings.run.from_checkpoint is not None:
            out = record_checkpoint(settings.run.from_checkpoint, settings.output_dir)
            print(f"grpo: recorded existing checkpoint {grpo_model_spec(out)} in {out / RECORD_FILE}")
            return 0
        if settings.run.accelerate_config and not os.environ.get(LAUNCHED_ENV):
            _launch(settings, argv=argv)
        else:
            _train(settings)
    return 0
