"""`sharpen grpo`: GRPO-train a base model on a task's train split with TRL, the task's grader as the reward.

    sharpen grpo --model runs/testbed/model --task testbed --output-dir runs/study/grpo
    sharpen grpo --model smollm2-135m --task basic_arithmetic --chat --config my_grpo.yaml \\
        --learning_rate 1e-5 --max_completion_length 160 --lora --output-dir D   # any GRPOConfig field
    sharpen grpo --accelerate-config accelerate_configs/cpu_2proc.yaml --model M --task T --output-dir D
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m experiments.cli grpo \\
        --model M --task T --config experiments/configs/grpo_gpu.yaml --output-dir D
    sharpen grpo --output-dir D --from-checkpoint \\
        stellalisy/rethink_rlvr_reproduce-ground_truth-qwen2.5_math_7b-lr5e-7-kl0.00-step150   # record, no training

Settings come from the run defaults (`rl_baselines.default_grpo_args`: sized for the
testbed on 2 CPU cores), then the YAML file given with --config (TrlParser style: any
GRPOConfig field or option below, plus an `env:` mapping), then the command line.
The output directory D then holds the trained model (`sharpen sample --model D` and
`load_model(D)` take it; a LoRA adapter is applied on its base), metrics.json,
cost.json (wall time, optimizer steps, rollout tokens), grpo_config.json and run.json.
Running the same command again resumes from the last checkpoint; a finished run is
not retrained; a directory holding a run with other settings is refused.

wandb: TRL reports to wandb with completions tables, offline unless WANDB_MODE is set
or an API key is configured (WANDB_API_KEY or `wandb login`); --wandb-group and
--run-name place the run beside a study's sampling runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from analysis.report import write_text_atomic

from .errors import UsageError
from .tasks import parse_task_args

RUN_FILE = "run.json"
RECORD_FILE = "grpo_checkpoint.json"
# GRPOConfig fields that do not change what is trained: a resumed run may differ in them.
NOT_IDENTITY = {
    "output_dir", "logging_dir", "run_name", "report_to", "logging_steps", "logging_strategy", "logging_first_step",
    "save_steps", "save_strategy", "save_total_limit", "log_completions", "num_completions_to_print",
    "disable_tqdm", "dataloader_num_workers", "resume_from_checkpoint", "overwrite_output_dir", "log_level",
    "log_level_replica", "push_to_hub", "hub_model_id", "hub_token", "hub_strategy", "hub_private_repo",
}


@dataclass
class GrpoRunArgs:
    """What to train and how; every trl.GRPOConfig field is a flag beside these (see --help)."""

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
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "Comma-separated module names to adapt (e.g. q_proj,v_proj), or all-linear."})
    from_checkpoint: str | None = field(default=None, metadata={
        "help": "Record an existing RL checkpoint (Hub id or path) as this run's model instead of training."})
    accelerate_config: str | None = field(default=None, metadata={
        "help": "Relaunch under `accelerate launch --config_file FILE`, e.g. accelerate_configs/cpu_2proc.yaml."})
    wandb_group: str | None = field(default=None, metadata={"help": "wandb group (e.g. the study name)."})
    wandb_project: str = field(default="sharpen", metadata={"help": "wandb project (WANDB_PROJECT wins if set)."})
    keep_checkpoints: bool = field(default=False, metadata={
        "help": "Keep checkpoint-N directories (optimizer state) after a finished run."})

    def __post_init__(self):
        if self.num_train_problems is not None and self.num_train_problems < 1:
            raise UsageError(f"--num-train-problems must be >= 1, got {self.num_train_problems}")
        if self.from_checkpoint is None and (not self.model or not self.task):
            raise UsageError("give --model and --task (or --from-checkpoint to record an existing RL model)")
        parse_task_args(self.task_args)

    def lora_options(self) -> dict:
        return {"r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                "target_modules": self.lora_target_modules}


def wandb_mode() -> str:
    """WANDB_MODE if set; online when an API key is configured; otherwise offline (never a login prompt)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    configured = os.environ.get("WANDB_API_KEY") or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    return "online" if configured else "offline"


def build_train_set(task, tokenizer, *, limit: int | None, seed: int, chat: bool):
    """(datasets.Dataset with `prompt` and `problem_index`, the problem dicts) from the task's train split."""
    from datasets import Dataset

    task.check_split("train")
    problems = task.load(limit=limit, seed=seed, split="train")
    if not problems:
        raise UsageError(f"task '{task.name}' gave no train problems")
    prompts = [task.prompt(p, tokenizer, chat=chat) for p in problems]
    return Dataset.from_dict({"prompt": prompts, "problem_index": list(range(len(problems)))}), problems


def train_grpo(model: str, task_name: str, task_options: dict | None, output_dir: str | os.PathLike,
               grpo_overrides: dict | None = None, *, lora: bool = False, lora_options: dict | None = None,
               chat: bool = False, num_train_problems: int | None = None, problem_seed: int = 0,
               wandb_group: str | None = None, wandb_name: str | None = None, wandb_project: str = "sharpen",
               keep_checkpoints: bool = False, accelerate_config: str | None = None) -> Path:
    """Train (or resume, or find finished) a GRPO run; return the output directory, a model spec for load_model.

    `grpo_overrides` holds GRPOConfig fields over the run defaults. With `accelerate_config`
    the run is relaunched under `accelerate launch` (e.g. two CPU processes) and this call
    waits for it.
    """
    run = GrpoRunArgs(model=model, task=task_name, chat=chat, num_train_problems=num_train_problems,
                      problem_seed=problem_seed, lora=lora, wandb_group=wandb_group, wandb_project=wandb_project,
                      keep_checkpoints=keep_checkpoints,
                      task_args=[f"{k}={json.dumps(v)}" for k, v in (task_options or {}).items()],
                      **{f"lora_{k}": v for k, v in (lora_options or {}).items()})
    grpo = dict(grpo_overrides or {}, output_dir=str(output_dir))
    if wandb_name is not None:
        grpo["run_name"] = wandb_name
    if accelerate_config is not None:
        _launch(accelerate_config, run, grpo)
        return Path(output_dir)
    return _train(run, grpo)


def _prepare(run: GrpoRunArgs, grpo: dict) -> dict:
    """Everything a run needs that a user can get wrong, checked before any training or launching."""
    from transformers import AutoTokenizer

    from sampling.models import resolve_model_path

    from .tasks import get_task

    task = get_task(run.task, **parse_task_args(run.task_args))
    task.check_split("train")
    model_path = resolve_model_path(run.model)
    local = Path(model_path).expanduser()
    if local.exists():
        model_path = str(local.resolve())
    elif run.model.startswith((".", "/", "~")) or run.model.count("/") > 1:
        raise UsageError(f"model '{run.model}' does not exist: give a checkpoint directory, a Hugging Face id, "
                         f"or a built-in name")
    base_spec = str(Path(run.model).expanduser().resolve()) if Path(run.model).expanduser().exists() else run.model
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UsageError(f"cannot load the tokenizer of model '{run.model}' ({reason})") from None
    tokenizer.padding_side = "left"  # TRL generates batches of prompts, padded on the left
    _match_sampling_tokenization(tokenizer)
    dataset, problems = build_train_set(task, tokenizer, limit=run.num_train_problems, seed=run.problem_seed,
                                        chat=run.chat)
    return {"task": task, "tokenizer": tokenizer, "dataset": dataset, "problems": problems,
            "model_path": model_path, "base_spec": base_spec}


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


def _train(run: GrpoRunArgs, grpo: dict) -> Path:
    from accelerate import PartialState

    from rl_baselines import grade_reward, grpo_config, grpo_train, is_finished, lora_config

    output_dir = Path(grpo["output_dir"])
    prep = _prepare(run, grpo)
    grpo.setdefault("run_name", f"grpo-{run.task}")
    try:
        args = grpo_config(grpo, output_dir=output_dir, num_prompts=len(prep["problems"]))
        peft = lora_config(prep["model_path"], **run.lora_options()) if run.lora else None
    except ValueError as err:
        raise UsageError(str(err)) from None
    identity = _identity(run, grpo)
    _check_run(output_dir, identity)
    if is_finished(output_dir):
        print(f"grpo: {output_dir} holds a finished run (cost.json); nothing to do")
        return output_dir

    state = PartialState()
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_dir / RUN_FILE, json.dumps(
            {"identity": identity, "model_path": prep["model_path"], "train_problems": len(prep["problems"])},
            indent=2, default=str))
    reward = grade_reward(prep["task"].grade, prep["problems"], name="correct")
    cost = grpo_train(prep["model_path"], prep["tokenizer"], prep["dataset"], reward, args, peft_config=peft,
                      base_model_spec=prep["base_spec"], wandb_project=run.wandb_project,
                      wandb_group=run.wandb_group, wandb_mode=wandb_mode(), keep_checkpoints=run.keep_checkpoints)
    if state.is_main_process:
        print(f"grpo: {cost['optimizer_steps']} steps in {cost['wall_seconds']:.0f} s "
              f"({cost['rollout_tokens']} rollout tokens, {cost['processes']} process(es)); model in {output_dir}")
    return output_dir


def _identity(run: GrpoRunArgs, grpo: dict) -> dict:
    """The settings that shape the trained model; a resumed run must match them."""
    from rl_baselines import default_grpo_args

    defaults = _grpo_defaults()
    values = default_grpo_args() | grpo
    grpo_identity = {k: v for k, v in sorted(values.items())
                     if k not in NOT_IDENTITY and k in defaults and v != defaults[k]}
    keep = dataclasses.asdict(run)
    for name in ("accelerate_config", "wandb_group", "wandb_project", "keep_checkpoints"):
        keep.pop(name)
    keep["task_args"] = parse_task_args(run.task_args)  # kind=trap and kind="trap" are the same run
    if not run.lora:
        for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"):
            keep.pop(name)
    return json.loads(json.dumps(keep | {"grpo": grpo_identity}, default=str))


def _check_run(output_dir: Path, identity: dict) -> None:
    path = output_dir / RUN_FILE
    if not path.exists():
        if (output_dir / RECORD_FILE).exists():
            raise UsageError(f"{output_dir} records an existing checkpoint (--from-checkpoint): "
                             f"use another --output-dir")
        return
    saved = json.loads(path.read_text()).get("identity", {})
    diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if "grpo" in diff:
        a, b = saved.get("grpo", {}), identity["grpo"]
        diff = [d for d in diff if d != "grpo"] + sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise UsageError(f"{output_dir} holds a GRPO run with other settings ({', '.join(diff)}): "
                         f"use another --output-dir")


def record_checkpoint(spec: str, output_dir: str | os.PathLike) -> Path:
    """Record an existing RL model (Hub id or path) as a GRPO run's result; nothing is trained or downloaded."""
    output_dir = Path(output_dir)
    local = Path(spec).expanduser()
    if local.exists():
        spec = str(local.resolve())
    elif spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise UsageError(f"--from-checkpoint '{spec}' is neither an existing directory nor a Hub id (owner/name)")
    if (output_dir / RUN_FILE).exists():
        raise UsageError(f"{output_dir} holds a trained GRPO run: use another --output-dir")
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


def _launch(config_file: str, run: GrpoRunArgs, grpo: dict) -> None:
    """Run this command again under `accelerate launch --config_file config_file`; UsageError if it fails."""
    from rl_baselines import check_grpo_args, default_grpo_args, is_finished, lora_config

    config = check_accelerate_config(config_file)
    processes = max(1, int(config.num_processes or 1))
    prep = _prepare(run, grpo)
    try:
        check_grpo_args(default_grpo_args() | grpo, processes, len(prep["problems"]))
        if run.lora:
            lora_config(prep["model_path"], **run.lora_options())
    except ValueError as err:
        raise UsageError(str(err)) from None
    out = Path(grpo["output_dir"])
    _check_run(out, _identity(run, grpo))
    if is_finished(out):
        print(f"grpo: {out} holds a finished run (cost.json); nothing to do")
        return
    out.mkdir(parents=True, exist_ok=True)
    # The settings travel as a --config YAML, so lists and dicts need no flag syntax.
    settings = {k: v for k, v in dataclasses.asdict(run).items() if k != "accelerate_config"} | grpo
    settings = {k: v for k, v in settings.items() if v is not None}
    launch_yaml = out / "grpo_launch.yaml"
    launch_yaml.write_text(yaml.safe_dump(json.loads(json.dumps(settings, default=str)), sort_keys=True))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file]
    if processes > 1 and not getattr(config, "main_process_port", None):
        command += ["--main_process_port", str(_free_port())]  # two runs at once must not share a port
    command += ["-m", "experiments.cli", "grpo", "--config", str(launch_yaml)]
    done = subprocess.run(command)
    if done.returncode != 0:
        raise UsageError(f"accelerate launch with {config_file} failed (exit status {done.returncode}); "
                         f"see the output above")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_accelerate_config(path: str):
    """The accelerate config in `path` (accelerate's own ClusterConfig); UsageError if accelerate cannot parse it."""
    if not Path(path).is_file():
        raise UsageError(f"accelerate config '{path}' does not exist: give a file such as "
                         f"accelerate_configs/cpu.yaml or accelerate_configs/cpu_2proc.yaml")
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(path)
    except Exception as err:  # yaml, TypeError and ValueError all mean "not a valid accelerate config"
        raise UsageError(f"accelerate config '{path}' is not valid ({' '.join(str(err).split())[:200]})") from None
    return config


def _grpo_defaults() -> dict:
    """GRPOConfig's own field defaults."""
    from trl import GRPOConfig

    out = {}
    for f in dataclasses.fields(GRPOConfig):
        if f.init:
            out[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return out


def make_parser():
    """TrlParser over (GrpoRunArgs, GRPOConfig) with the run defaults and one-line errors."""
    from trl import GRPOConfig, TrlParser

    from rl_baselines import default_grpo_args

    from .cli import ArgumentParser

    class Parser(ArgumentParser, TrlParser):
        pass

    parser = Parser((GrpoRunArgs, GRPOConfig), prog="sharpen grpo",
                    description="GRPO-train a model on a task's train split (TRL GRPOTrainer), or record an "
                                "existing RL checkpoint. Settings: run defaults, then --config FILE.yaml (any "
                                "option below as a key), then flags.")
    parser.set_defaults_with_config(**default_grpo_args(), output_dir=None)
    return parser


def parse(argv: list[str]) -> tuple[GrpoRunArgs, dict]:
    """(run options, GRPOConfig values) from --config YAML and flags, without building the GRPOConfig yet."""
    from trl import GRPOConfig

    parser = make_parser()
    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UsageError("--config needs a YAML file")
        path = argv[i + 1]
        del argv[i:i + 2]
        if not Path(path).is_file():
            raise UsageError(f"config file '{path}' does not exist")
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"config file '{path}' is not valid YAML ({' '.join(str(err).split())[:200]})") from None
        if not isinstance(config, dict):
            raise UsageError(f"config file '{path}' must hold a YAML mapping of option: value")
        for key, value in (config.pop("env", None) or {}).items():
            os.environ[key] = str(value)
        config = {k.replace("-", "_"): v for k, v in config.items()}
        unknown = parser.set_defaults_with_config(**config)
        if unknown:
            raise UsageError(f"config file '{path}' has unknown options: {', '.join(unknown[::2])}")
    namespace, rest = parser.parse_known_args(argv)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    values = vars(namespace)
    run_fields = {f.name for f in dataclasses.fields(GrpoRunArgs)}
    grpo_fields = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
    run = GrpoRunArgs(**{k: v for k, v in values.items() if k in run_fields})
    grpo = {k: v for k, v in values.items() if k in grpo_fields}
    return run, grpo


def main(argv: list[str] | None = None) -> int:
    run, grpo = parse(sys.argv[1:] if argv is None else argv)
    if not grpo.get("output_dir"):
        raise UsageError("give --output-dir (where the trained model, metrics and cost go)")
    if run.from_checkpoint is not None:
        out = record_checkpoint(run.from_checkpoint, grpo["output_dir"])
        print(f"grpo: recorded existing checkpoint {grpo_model_spec(out)} in {out / RECORD_FILE}")
        return 0
    if run.accelerate_config is not None:
        _launch(run.accelerate_config, dataclasses.replace(run, accelerate_config=None), _explicit(grpo))
        return 0
    _train(run, _explicit(grpo))
    return 0


def _explicit(grpo: dict) -> dict:
    """The GRPOConfig values set by the run defaults, the YAML file or a flag (the parser returns every field)."""
    from rl_baselines import default_grpo_args

    namespace, _ = make_parser().parse_known_args([])
    untouched = vars(namespace)
    run_defaults = default_grpo_args()
    return {k: v for k, v in grpo.items() if k in run_defaults or k == "output_dir" or v != untouched.get(k)}
