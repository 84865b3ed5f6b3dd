"""A GRPO run's settings: GrpoRunArgs, trl.GRPOConfig fields and a trl.ModelConfig, merged once into GrpoSettings.

    from sharpen.rl.settings import settings_from_mapping
    settings = settings_from_mapping({"model": "runs/testbed/model", "task": "testbed", "output_dir": "runs/x",
                                      "max_steps": 40, "lora": True})
    settings.run.task, settings.grpo["max_steps"], settings.model_args.use_peft   # 'testbed', 40, True

The merge, lowest first: each field's own default, the run defaults (`default_grpo_args`, sized
for the testbed on 2 CPU cores, and `default_model_args`), a mapping (a `--config` YAML file,
or a study's grpo section through `study_mapping`), then, on the command line, the flags. It is
TRL's own merge, trl.TrlParser (sharpen.rl.merge), for the command and the study alike, so a
study's run and the same settings given as flags have one identity.

    python -m pytest -q tests/test_grpo.py -k "settings or flags or yaml"
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sharpen.configs import find_config
from sharpen.errors import UsageError
from sharpen.runs.tracking import DEFAULT_MODE, DEFAULT_PROJECT, WandbConfig
from sharpen.sampling.draw import TEMPERATURE_RANGE, check_in_range
from sharpen.tasks import parse_task_args

from .grpo import default_grpo_args, output_dir_of, trl_defaults
from .rollouts import DEFAULT_ROLLOUTS, check_rollouts
from .self_reward import REWARDS, SELF_GRPO_SETTINGS, SELF_REWARD, check_self_settings, kl_coefficient
from .vllm_rollouts import check_vllm_launch

# GrpoRunArgs fields a study's grpo section may set; the study sets the others (and output_dir, run_name).
STUDY_KEYS = ("num_train_problems", "accelerate_config", "keep_checkpoints", "lora", "rollouts", "reward", "alpha")


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
        "help": "Who samples GRPO's completions: sharpen (sharpen.sample through TRL's rollout_func: finished rows "
                "leave the batch, one seed per completion), trl (TRL's own model.generate) or vllm (the same sampler "
                "on a float32 vLLM engine loaded with the policy after each step, TRL's importance-sampling "
                "correction on its log-probs; one process, needs .venv-vllm)."})
    reward: str = field(default="correct", metadata={
        "help": "correct: the task's grader (GRPO with a verifier); self_likelihood: no verifier, the frozen base "
                "model's log-likelihood with the KL to it folded in, whose optimum is p^alpha (grpo_self, "
                "sharpen.rl.self_reward; it sets beta 0, scale_rewards none, loss_type dr_grpo, temperature 1)."})
    alpha: float = field(default=4.0, metadata={
        "help": "With --reward self_likelihood: the power of the target p^alpha (> 1; KL coefficient 1/(alpha - 1))."})
    from_checkpoint: str | None = field(default=None, metadata={
        "help": "Record an existing RL checkpoint (Hub id or path) as this run's model instead of training."})
    accelerate_config: str | None = field(default=None, metadata={
        "help": "Relaunch under `accelerate launch --config_file FILE`: a file, or a packaged config's name "
                "(cpu, cpu_2proc, multi_gpu, deepspeed_zero3, fsdp2, ...)."})
    keep_checkpoints: bool = field(default=False, metadata={
        "help": "Keep checkpoint-N directories (optimizer state) after a finished run."})
    wandb_mode: str = field(default=DEFAULT_MODE, metadata={
        "help": "auto ($WANDB_MODE if set, else offline), offline, online, or off (wandb is not used)."})
    wandb_project: str = field(default=DEFAULT_PROJECT, metadata={"help": "wandb project (WANDB_PROJECT wins if set)."})
    wandb_entity: str | None = field(default=None, metadata={"help": "wandb entity (team or user)."})
    wandb_group: str | None = field(default=None, metadata={"help": "wandb group (e.g. the study name)."})

    def __post_init__(self):
        if self.num_train_problems is not None and self.num_train_problems < 1:
            raise UsageError(f"--num-train-problems must be >= 1, got {self.num_train_problems}")
        if self.from_checkpoint is None and (not self.model or not self.task):
            raise UsageError("give --model and --task (or --from-checkpoint to record an existing RL model)")
        parse_task_args(self.task_args)
        check_rollouts(self.rollouts)
        if self.rollouts == "vllm" and self.accelerate_config:
            check_vllm_launch(self.accelerate_config)  # one process only: refused before any relaunch
        if self.reward not in REWARDS:
            raise UsageError(f"unknown --reward '{self.reward}': valid rewards are {', '.join(REWARDS)}")
        if self.reward == SELF_REWARD:
            kl_coefficient(self.alpha)
            if self.rollouts != "sharpen":
                raise UsageError("--reward self_likelihood needs --rollouts sharpen (its rollouts carry the "
                                 "policy's and the base model's log-likelihoods)")
        WandbConfig(mode=self.wandb_mode)  # a bad mode is a one-line error here, before any work


@dataclass
class GrpoSettings:
    """One run's settings after the merge: the run options, every GRPOConfig field, and a trl.ModelConfig."""

    run: GrpoRunArgs
    # GRPOConfig fields. The GRPOConfig itself is built by the training processes: its __post_init__
    # checks the batch sizes against the number of processes it runs in, which a relaunching parent is not.
    grpo: dict
    model_args: object  # trl.ModelConfig, use_peft already set by --lora

    @property
    def output_dir(self) -> Path:
        return output_dir_of(self.grpo)

    @property
    def wandb(self) -> WandbConfig:
        run = self.run
        return WandbConfig(mode=run.wandb_mode, project=run.wandb_project, entity=run.wandb_entity,
                           group=run.wandb_group)

    @classmethod
    def from_values(cls, values: dict) -> GrpoSettings:
        """Split one merged value per field (of GrpoRunArgs, GRPOConfig and ModelConfig) into the settings."""
        from trl import GRPOConfig, ModelConfig  # ~3 s to import: paid only once GRPO settings are merged

        run = {k: values[k] for k in field_names(GrpoRunArgs)}
        model = {k: values[k] for k in field_names(ModelConfig)}
        grpo = {k: values[k] for k in field_names(GRPOConfig)}
        model["use_peft"] = bool(model["use_peft"] or run["lora"])
        run["model"] = run["model"] or model["model_name_or_path"]  # TRL's name for --model
        run = GrpoRunArgs(**run)
        if run.reward == SELF_REWARD:
            _self_reward_settings(grpo)
        check_grpo_numbers(grpo)
        if grpo["run_name"] is None and run.task:
            grpo["run_name"] = f"grpo-{run.task}"
        try:
            model_args = ModelConfig(**model)
        except ValueError as err:
            raise UsageError(f"invalid model settings: {' '.join(str(err).split())}") from None
        return cls(run, grpo, model_args)


def _self_reward_settings(grpo: dict) -> None:
    """grpo_self's GRPOConfig values where the merge left a default, then refuse any the user set otherwise."""
    defaults = trl_defaults() | default_grpo_args()
    for name, value in SELF_GRPO_SETTINGS.items():
        if grpo.get(name) == defaults.get(name):  # not chosen by the user: grpo_self's value
            grpo[name] = value
    check_self_settings(grpo)


# GRPOConfig numbers with a range beyond finiteness: field -> (lowest, highest, lowest allowed, highest allowed).
# Each would end in a torch or TRL error only once training starts (lr nan: after run.json, completions/
# and a wandb run were written). The sampling temperature takes the samplers' own range (sampling.draw).
INF = math.inf
GRPO_RANGES = {
    "learning_rate": (0, INF, False, False), "adam_epsilon": (0, INF, False, False),
    "num_train_epochs": (0, INF, False, False), "repetition_penalty": (0, INF, False, False),
    "delta": (0, INF, False, False), "weight_decay": (0, INF, True, False), "max_grad_norm": (0, INF, True, False),
    "beta": (0, INF, True, False), "warmup_steps": (0, INF, True, False), "epsilon": (0, INF, True, False),
    "epsilon_high": (0, INF, True, False), "adam_beta1": (0, 1, True, False), "adam_beta2": (0, 1, True, False),
    "top_p": (0, 1, False, True), "min_p": (0, 1, True, True), "top_entropy_quantile": (0, 1, True, True),
}


def check_grpo_numbers(grpo: dict) -> None:
    """Every number among the GRPOConfig values finite, and those of GRPO_RANGES in range; UsageError in one line.

    The one check for `sharpen grpo` flags, a --config file and a study's grpo section (all merge
    through GrpoSettings.from_values), before run.json, completions/ or a wandb run exist.

    >>> check_grpo_numbers({"learning_rate": float("nan"), "beta": 0.0})
    Traceback (most recent call last):
    ...
    sharpen.errors.UsageError: learning_rate must be a finite number > 0, got nan
    >>> check_grpo_numbers({"adam_beta2": 1.0})
    Traceback (most recent call last):
    ...
    sharpen.errors.UsageError: adam_beta2 must be a finite number in [0, 1), got 1.0
    >>> check_grpo_numbers({"reward_weights": [1.0, float("inf")]})
    Traceback (most recent call last):
    ...
    sharpen.errors.UsageError: reward_weights must hold finite numbers, got [1.0, inf]
    """
    for name, value in grpo.items():
        if isinstance(value, list) and any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise UsageError(f"{name} must hold finite numbers, got {value}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if name == "temperature":
            try:
                check_in_range(value, "temperature", TEMPERATURE_RANGE)
            except ValueError as err:
                raise UsageError(str(err)) from None
            continue
        low, high, low_ok, high_ok = GRPO_RANGES.get(name, (-INF, INF, False, False))
        inside = (low <= value if low_ok else low < value) and (value <= high if high_ok else value < high)
        if not (math.isfinite(value) and inside):
            if high == INF:
                what = "" if low == -INF else f" {'>=' if low_ok else '>'} {low:g}"
            else:
                what = f" in {'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
            raise UsageError(f"{name} must be a finite number{what}, got {value}")


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def settings_from_mapping(mapping: dict) -> GrpoSettings:
    """The settings of `sharpen grpo --config FILE` for a FILE holding `mapping`: the same merge as the command's.

    A value the merge cannot read is a one-line `grpo.KEY: ...` UsageError.
    """
    from .merge import SettingsParser  # imports trl's GRPOConfig (~3 s): only when settings are merged

    parser = SettingsParser(prog="grpo")
    parser.set_defaults_with_config(**mapping)
    (settings,) = parser.parse_args_into_dataclasses([])
    return settings


def read_grpo_config(name: str, what: str = "config file") -> dict:
    """The mapping in a GRPO settings file (a path, or a packaged name such as grpo_gpu); one-line UsageError."""
    path = find_config(name, "grpo", what=what)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"{what} '{name}' is not valid YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("env", {}), dict):
        raise UsageError(f"{what} '{name}' must hold a YAML mapping of option: value (and env: a mapping of "
                         f"variable: value)")
    return config


def study_mapping(settings: dict, *, model: str | None, task: str, task_args: dict, chat: bool, problem_seed: int,
                  output_dir, run_name: str | None = None, wandb: WandbConfig | None = None) -> dict:
    """A study's grpo section plus what the study sets itself: a `sharpen grpo --config` mapping.

    Unknown keys, and keys the study sets itself, are one-line errors naming `grpo.<key>`.
    """
    from trl import GRPOConfig, ModelConfig  # ~3 s to import: paid only when a study has a GRPO stage

    settings = {str(k).replace("-", "_"): v for k, v in (settings or {}).items()}
    run_fields = field_names(GrpoRunArgs)
    known = set(run_fields) | set(field_names(GRPOConfig)) | set(field_names(ModelConfig))
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
