"""GRPO through TRL's GRPOTrainer: run defaults, up-front checks, resumable training, cost accounting.

    from sharpen.rl import grpo_train
    cost = grpo_train("runs/testbed/model", tokenizer, dataset, [reward],
                      {"max_steps": 40, "output_dir": "runs/x/grpo"},     # GRPOConfig fields over the run defaults
                      model_args=trl.ModelConfig(use_peft=True, lora_r=8),  # optional: dtype, LoRA (get_peft_config)
                      wandb=WandbConfig(mode="offline", group="study-x"),
                      rollouts="sharpen")  # or "trl": TRL's own model.generate; "vllm": sharpen.rl.vllm_rollouts

`grpo_train` is the whole stage in one call: the settings (a GRPOConfig, or a dict over
`default_grpo_args()`) are checked, the trainer is built the way TRL's own `trl grpo`
script builds it from a trl.ModelConfig, training resumes from the last checkpoint, and
it leaves in `args.output_dir`:
  - the trained model (config + weights + tokenizer), or a LoRA adapter whose
    adapter_config.json names its base model, so `sampling.load_model(output_dir)` works;
  - metrics.json: TRL's per-step log history (reward, reward_std, kl, completion lengths, ...);
  - cost.json: wall_seconds (trainer set-up to saved model, summed over resumed sessions),
    optimizer_steps, rollout_tokens (completion tokens sampled), rollout_completions,
    trained_tokens (prompt + completion tokens of the rollouts, each trained on
    num_iterations times), rollouts (who sampled them: sharpen, trl or vllm), processes and device:
    the compute to set against power sampling;
  - grpo_config.json: the full GRPOConfig the run used.
It checkpoints to output_dir/checkpoint-N while it runs and resumes from the last one
when called again; once cost.json exists the run is finished and is not retrained.
Under `accelerate launch` every process calls it; only the main process writes files
and logs to wandb (sharpen.runs.tracking: the run id is kept in output_dir/wandb_run_id, so a
resumed run continues its wandb run).

trl is imported inside the functions that use it: its GRPOConfig alone takes ~3 s to import,
which `sharpen sample` and a study's config check should not pay.

    python -m pytest -q tests/test_grpo.py tests/test_grpo_rollouts.py
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from sharpen.analysis.stats import first_and_last_fifth
from sharpen.errors import UsageError
from sharpen.runs.files import write_text_atomic
from sharpen.runs.tracking import WandbConfig, start_run

from .rollouts import DEFAULT_ROLLOUTS, check_rollouts, sharpen_rollouts
from .vllm_rollouts import VllmRollouts

COST_FILE = "cost.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "grpo_config.json"
WANDB_ID_FILE = "wandb_run_id"
CHECKPOINT_COST_FILE = "sharpen_cost.json"  # running cost totals saved inside each checkpoint
# LoRA's target modules unless the caller names others: every linear layer, as in the LoRA defaults of most recipes.
DEFAULT_LORA_TARGETS = "all-linear"


def default_grpo_args(cuda: bool | None = None) -> dict:
    """GRPOConfig values this project uses unless the caller overrides them.

    Sized for the testbed on CPU: 300 steps of 2 prompts x 8 completions take about 40 s
    on one core and lift its pass@1 from ~0.35 to ~0.95 (lr 1e-3 diverged there, 1e-4 was
    slow). A YAML preset or command-line flags change them for other models: TRL's own
    defaults (learning rate 1e-6, 512 completion tokens, bf16, gradient checkpointing)
    suit 7B models on GPUs (see sharpen/configs/grpo_gpu.yaml).

    >>> args = default_grpo_args(cuda=False)
    >>> args["use_cpu"], args["learning_rate"], args["num_generations"], args["per_device_train_batch_size"]
    (True, 0.0003, 8, 16)
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    return {
        "use_cpu": not cuda,
        "bf16": bf16,
        # Checkpointing trades ~20% speed for memory: worth it for big models on GPUs only.
        "gradient_checkpointing": bool(cuda),
        "learning_rate": 3e-4,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_steps": 300,
        "num_generations": 8,
        "per_device_train_batch_size": 16,  # 2 prompts x 8 completions per step on one process
        "gradient_accumulation_steps": 1,
        "max_completion_length": 32,  # testbed completions take <= 14 tokens; its evaluation allows 32
        "temperature": 1.0,  # the base distribution, as power sampling targets p^alpha of it
        "beta": 0.0,
        "loss_type": "dapo",
        "logging_steps": 5,  # each log also prints and saves a completions table
        "save_steps": 0.1,  # a ratio of max_steps: ten checkpoints per run, whatever its length
        "save_total_limit": 1,
        "report_to": ["wandb"],  # dropped when wandb is off (grpo_train's `wandb`)
        "log_completions": True,
        "num_completions_to_print": 2,
        "seed": 0,
        "dataloader_num_workers": 0,
    }


def default_model_args() -> dict:
    """trl.ModelConfig values this project uses unless the caller overrides them (TRL's own otherwise).

    >>> default_model_args()
    {'lora_target_modules': 'all-linear'}
    """
    return {"lora_target_modules": DEFAULT_LORA_TARGETS}


@functools.cache
def trl_defaults() -> dict:
    """trl.GRPOConfig's own field defaults: what TRL uses for each setting the run leaves out.

    >>> trl_defaults()["num_generations"], trl_defaults()["steps_per_generation"]
    (8, None)
    """
    from trl import GRPOConfig

    return {f.name: f.default for f in dataclasses.fields(GRPOConfig) if f.default is not dataclasses.MISSING}


def output_dir_of(args: dict) -> Path:
    """A run's output_dir from its GRPOConfig fields; UsageError when it has none (nothing could be saved)."""
    if not args.get("output_dir"):
        raise UsageError("give --output-dir (output_dir in GRPO settings): where the trained model, metrics and "
                         "cost go")
    return Path(args["output_dir"])


def check_grpo_args(args: dict, num_processes: int, num_prompts: int | None = None) -> None:
    """Reject batch settings that TRL would reject cryptically (or that silently break groups); one-line UsageError.

    A generation round samples `generation_batch_size` completions, `num_generations` per
    prompt, split over the processes: per_device_train_batch_size x processes x
    steps_per_generation (which defaults to gradient_accumulation_steps). `args` holds
    GRPOConfig fields (missing ones take TRL's defaults), so it can be checked for another
    number of processes than this one's, before `accelerate launch` starts them.

    >>> check_grpo_args({"num_generations": 8, "per_device_train_batch_size": 4}, num_processes=2)
    >>> check_grpo_args({"num_generations": 8, "per_device_train_batch_size": 4}, num_processes=1)
    Traceback (most recent call last):
    ...
    sharpen.errors.UsageError: per_device_train_batch_size (4) x processes (1) x gradient_accumulation_steps (1) = 4 \
completions per generation round must be a multiple of num_generations (8): change one of them (num_generations \
dividing 4: 2, 4)
    """
    args = trl_defaults() | {k: v for k, v in args.items() if v is not None}
    g = int(args["num_generations"])
    if g < 2:
        raise UsageError(f"num_generations must be >= 2 (GRPO compares completions within a prompt's group), got {g}")
    per_device = int(args["per_device_train_batch_size"])
    if per_device < 1:
        raise UsageError(f"per_device_train_batch_size must be >= 1, got {per_device}")
    accum = int(args["gradient_accumulation_steps"])
    spg, gen_bs = args["steps_per_generation"], args["generation_batch_size"]
    global_bs = per_device * num_processes
    if spg is not None and gen_bs is not None:
        raise UsageError("set steps_per_generation or generation_batch_size, not both")
    if gen_bs is not None:
        gen_bs = int(gen_bs)
        if gen_bs % global_bs:
            raise UsageError(f"generation_batch_size ({gen_bs}) must be a multiple of per_device_train_batch_size "
                             f"({per_device}) x processes ({num_processes}) = {global_bs}")
        how = f"generation_batch_size ({gen_bs})"
    else:
        spg = int(spg) if spg is not None else accum
        gen_bs = global_bs * spg
        name = "steps_per_generation" if args["steps_per_generation"] is not None else "gradient_accumulation_steps"
        how = (f"per_device_train_batch_size ({per_device}) x processes ({num_processes}) x {name} ({spg}) "
               f"= {gen_bs} completions per generation round")
    if gen_bs % g:
        fits = sorted({k for k in range(2, gen_bs + 1) if gen_bs % k == 0})
        raise UsageError(f"{how} must be a multiple of num_generations ({g}): change one of them "
                         f"(num_generations dividing {gen_bs}: {', '.join(map(str, fits)) or 'none'})")
    if num_prompts is not None and num_prompts < gen_bs // g:
        raise UsageError(f"a generation round needs {gen_bs // g} distinct prompts ({gen_bs} completions / "
                         f"num_generations {g}) but the training set has {num_prompts}")
    if int(args["max_completion_length"]) < 1:
        raise UsageError(f"max_completion_length must be >= 1, got {args['max_completion_length']}")
    if not float(args["temperature"]) > 0:
        raise UsageError(f"temperature must be > 0, got {args['temperature']}")


def grpo_config(values: dict | None = None, *, output_dir: str | os.PathLike | None = None,
                num_prompts: int | None = None):
    """A trl.GRPOConfig from the run defaults updated by `values`, checked first; UsageError in one line.

    `values` may hold every GRPOConfig field (a merged command line) or a few overrides.
    """
    from accelerate import PartialState
    from trl import GRPOConfig

    values = default_grpo_args() | dict(values or {})
    if output_dir is not None:
        values["output_dir"] = str(output_dir)
    output_dir_of(values)
    check_grpo_args(values, PartialState().num_processes, num_prompts)
    try:
        return GRPOConfig(**values)
    except (TypeError, ValueError) as err:
        message = " ".join(str(err).split())
        raise UsageError(f"invalid GRPO settings: {message}") from None


def module_names(model_path: str) -> list[str]:
    """Names of the model's modules, from its config on the meta device (no weights are read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [name for name, _ in model.named_modules()]


def lora_targets(targets) -> str | list[str] | None:
    """LoRA target modules as peft wants them: "all-linear", a list of names, or None (peft's per-model default).

    Comma-separated names are split; a one-item list is its item, because peft reads a
    string as a pattern but turns a list into a set of names (so ["all-linear"] would name
    a module called all-linear).

    >>> lora_targets(["all-linear"]), lora_targets("q_proj, v_proj"), lora_targets(["q_proj,v_proj", "up_proj"])
    ('all-linear', ['q_proj', 'v_proj'], ['q_proj', 'v_proj', 'up_proj'])
    """
    if targets is None:
        return None
    items = [targets] if isinstance(targets, str) else list(targets)
    names = [name.strip() for item in items for name in str(item).split(",") if name.strip()]
    if names == [DEFAULT_LORA_TARGETS]:
        return DEFAULT_LORA_TARGETS
    if DEFAULT_LORA_TARGETS in names:
        raise UsageError(f"LoRA target modules: {DEFAULT_LORA_TARGETS} stands alone, got {', '.join(names)}")
    return names


def lora_config(model_path: str, model_args):
    """The peft.LoraConfig that trl.get_peft_config makes of a trl.ModelConfig (None without use_peft).

    Its target modules are checked to exist in the model first (the model's config is read,
    not its weights); UsageError in one line otherwise.
    """
    from trl import get_peft_config

    if not model_args.use_peft:
        return None
    if model_args.lora_r < 1:
        raise UsageError(f"LoRA rank must be >= 1, got {model_args.lora_r}")
    targets = lora_targets(model_args.lora_target_modules)
    if isinstance(targets, list):
        names = module_names(model_path)
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n.rsplit(".", 1)[-1].isdigit()})
        for target in targets:
            if target == "lm_head":
                raise UsageError("LoRA on lm_head is not trained by TRL's GRPOTrainer: leave it out of target modules")
            if not any(n == target or n.endswith("." + target) for n in names):
                raise UsageError(f"LoRA target module '{target}' is not in the model: its modules are "
                                 f"{', '.join(leaves)} (or use all-linear)")
    model_args = dataclasses.replace(model_args)  # a copy: the caller's ModelConfig stays as given
    model_args.lora_target_modules = targets
    try:
        return get_peft_config(model_args)
    except (TypeError, ValueError) as err:
        raise UsageError(f"invalid LoRA settings: {' '.join(str(err).split())}") from None


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-N directory that was completely written (it holds trainer_state.json)."""
    if not output_dir.is_dir():
        return None
    found = []
    for path in output_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "trainer_state.json").exists():
            found.append((int(step), path))
    return max(found)[1] if found else None


def is_finished(output_dir: str | os.PathLike) -> bool:
    return (Path(output_dir) / COST_FILE).exists()


class CostTracker:
    """Counts completion tokens sampled (per process) and keeps running totals inside each checkpoint."""

    def __init__(self, previous: dict | None = None):
        previous = previous or {}
        self.previous_tokens = int(previous.get("rollout_tokens", 0))
        self.previous_completions = int(previous.get("rollout_completions", 0))
        self.previous_wall = float(previous.get("wall_seconds", 0.0))
        self.tokens = 0  # this process, this session
        self.completions = 0
        self.started = time.time()
        self.accelerator = None

    def wrap(self, reward: Callable) -> Callable:
        """`reward` that also counts the completion tokens it is shown (TRL passes completion_ids)."""

        def counted(*args, completion_ids=None, **kwargs):
            if completion_ids is not None:
                self.tokens += sum(len(ids) for ids in completion_ids)
                self.completions += len(completion_ids)
            return reward(*args, completion_ids=completion_ids, **kwargs)

        counted.__name__ = counted.__qualname__ = getattr(reward, "__name__", "reward")
        return counted

    def totals(self) -> dict:
        """Totals over all processes and earlier sessions (a collective call: every process must make it)."""
        counts = torch.tensor([self.tokens, self.completions], dtype=torch.float64)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            # gloo/nccl reduce in the accelerator's device; float64 holds exact integers far past any run
            counts = self.accelerator.reduce(counts.to(self.accelerator.device), reduction="sum").cpu()
        return {"rollout_tokens": self.previous_tokens + int(counts[0]),
                "rollout_completions": self.previous_completions + int(counts[1]),
                "wall_seconds": self.previous_wall + time.time() - self.started}

    def callback(self):
        from transformers import TrainerCallback

        tracker = self

        class SaveCost(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                totals = tracker.totals()
                if state.is_world_process_zero:
                    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                    if folder.is_dir():
                        write_text_atomic(folder / CHECKPOINT_COST_FILE, json.dumps(totals))

        return SaveCost()


def grpo_train(model: str, tokenizer, train_dataset, reward_funcs: Callable | list[Callable], args, *,
               model_args=None, base_model_spec: str | None = None, keep_checkpoints: bool = False,
               wandb: WandbConfig | None = None, callbacks=None, rollouts: str = DEFAULT_ROLLOUTS,
               rollout_func: Callable | None = None) -> dict:
    """Train `model` (a checkpoint path or Hub id) with GRPO; save model, metrics and cost; return the cost dict.

    `args` is a trl.GRPOConfig, or a dict of GRPOConfig fields over `default_grpo_args()`
    (checked against the dataset's size; it must hold output_dir). `train_dataset` is a
    datasets.Dataset with a `prompt` column (text) and the columns the reward functions
    read. `model_args` (a trl.ModelConfig) says how to load the model and whether to train
    a LoRA adapter, as in TRL's `trl grpo` script: its dtype, attn_implementation and
    model_revision go under `args.model_init_kwargs` (which wins), its quantization and
    peft fields become the trainer's quantization_config and peft_config (target modules
    checked). `base_model_spec` is written as a LoRA adapter's base model (default:
    `model`), so it can be a portable name rather than a cache path. With "wandb" in
    `args.report_to` the main process logs to a run opened by sharpen.runs.tracking.start_run
    under `args.run_name` (`wandb`, default WandbConfig(): mode auto); with wandb off, "wandb" is dropped
    from report_to. `rollouts` says who samples the completions: "sharpen" (`sharpen.sample`
    through TRL's rollout_func, sharpen.rl.rollouts), "trl" (TRL's own model.generate) or "vllm" (the same
    sampler on a float32 vLLM engine made from `model` and loaded with the policy after each optimizer step,
    sharpen.rl.vllm_rollouts); `rollout_func` replaces sharpen's hook with another built on it (grpo_self's
    self_rollouts), or, for "vllm", is a VllmRollouts (one made on a VllmModel leaves it open at the end).
    """
    from trl import GRPOTrainer

    check_rollouts(rollouts, args if isinstance(args, dict) else args.to_dict())
    if isinstance(args, dict):
        args = grpo_config(args, num_prompts=len(train_dataset))
    output_dir = Path(args.output_dir)
    if is_finished(output_dir):
        return json.loads((output_dir / COST_FILE).read_text())
    wandb = wandb or WandbConfig()
    if "wandb" in args.report_to and not wandb.enabled:
        args.report_to = [name for name in args.report_to if name != "wandb"]
    peft_config, quantization_config = _model_settings(model, args, model_args)
    resume = last_checkpoint(output_dir)
    previous = None
    if resume is not None and (resume / CHECKPOINT_COST_FILE).exists():
        previous = json.loads((resume / CHECKPOINT_COST_FILE).read_text())
    tracker = CostTracker(previous)
    rewards = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    # Every reward sees the same completions: count them through the first one only.
    rewards = [tracker.wrap(rewards[0]), *rewards[1:]]

    run = _start_wandb(wandb if "wandb" in args.report_to else WandbConfig(mode="off"), args, output_dir)
    vllm_hook = None
    if rollouts == "vllm":
        if rollout_func is not None and not isinstance(rollout_func, VllmRollouts):
            raise TypeError("rollouts vllm takes a VllmRollouts as rollout_func (or none: one is made from model)")
        vllm_hook = rollout_func or VllmRollouts(model)  # its engine is made in attach, after the checks
    try:
        with warnings.catch_warnings():
            # TRL calls rollout_func experimental; the hook and what it receives are pinned by our tests.
            warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
            trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=train_dataset,
                                  processing_class=tokenizer, peft_config=peft_config,
                                  quantization_config=quantization_config,
                                  callbacks=[tracker.callback(), *(callbacks or [])],
                                  rollout_func=(vllm_hook if rollouts == "vllm" else
                                                (rollout_func or sharpen_rollouts) if rollouts == "sharpen" else None))
        check_rollouts(rollouts, fsdp=trainer.is_fsdp_enabled)  # FSDP set by `accelerate launch`, known only here
        if vllm_hook is not None:
            vllm_hook.attach(trainer)  # checks processes, sharding, LoRA; makes the engine; TRL's correction on
        tracker.accelerator = trainer.accelerator
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        trainer.save_model(str(output_dir))  # every process: ZeRO-3 / FSDP gather the weights here
        cost = _cost(trainer, tracker.totals(), resume, rollouts)
        if trainer.accelerator.is_main_process:
            _save_results(trainer, cost, adapter_base=(base_model_spec or model) if peft_config is not None else None,
                          keep_checkpoints=keep_checkpoints)
        trainer.accelerator.wait_for_everyone()
    finally:
        run.finish()
        if vllm_hook is not None:
            vllm_hook.close()  # only an engine it made: the memory goes back before sampling the trained model
    return cost


def _model_settings(model: str, args, model_args) -> tuple:
    """(peft_config, quantization_config) from a trl.ModelConfig, whose loading options go under
    args.model_init_kwargs (which win), as TRL's own `trl grpo` script does; (None, None) without one."""
    from trl import get_quantization_config

    if model_args is None:
        return None, None
    args.model_init_kwargs = {"revision": model_args.model_revision,
                              "attn_implementation": model_args.attn_implementation,
                              "dtype": model_args.dtype} | (args.model_init_kwargs or {})
    return lora_config(model, model_args), get_quantization_config(model_args)


def _save_results(trainer, cost: dict, *, adapter_base: str | None, keep_checkpoints: bool) -> None:
    """The main process's files once the model is saved: grpo_config.json, metrics.json, then cost.json."""
    output_dir = Path(trainer.args.output_dir)
    if adapter_base is not None:
        _set_adapter_base(output_dir, adapter_base)
    write_text_atomic(output_dir / CONFIG_FILE, trainer.args.to_json_string())
    history = trainer.state.log_history
    write_text_atomic(output_dir / METRICS_FILE, json.dumps({"log_history": history, "summary": _summary(history)},
                                                            indent=1))
    # cost.json goes last: its presence marks the run as finished.
    write_text_atomic(output_dir / COST_FILE, json.dumps(cost, indent=2))
    if not keep_checkpoints:
        for path in output_dir.glob("checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)


def _cost(trainer, totals: dict, resume: Path | None, rollouts: str) -> dict:
    state = trainer.state
    steps = int(state.global_step)
    return {
        "wall_seconds": round(totals["wall_seconds"], 3),
        "optimizer_steps": steps,
        "seconds_per_step": round(totals["wall_seconds"] / steps, 3) if steps else None,
        "rollout_tokens": totals["rollout_tokens"],
        "rollout_completions": totals["rollout_completions"],
        "trained_tokens": int(state.num_input_tokens_seen),
        "num_generations": trainer.args.num_generations,
        "num_iterations": trainer.args.num_iterations,
        "rollouts": rollouts,
        "processes": trainer.accelerator.num_processes,
        "device": str(trainer.accelerator.device.type),
        "resumed_from_step": int(resume.name.removeprefix("checkpoint-")) if resume else None,
    }


def _summary(log_history: list[dict]) -> dict:
    """Mean reward over the first and last fifth of the logged steps, and the final train loss."""
    rewards = [row["reward"] for row in log_history if isinstance(row.get("reward"), (int, float))]
    out = {"logged_steps": len(rewards)}
    if rewards:
        out["reward_first"], out["reward_last"] = first_and_last_fifth(rewards)
    final = [row for row in log_history if "train_loss" in row]
    if final:
        out["train_loss"] = final[-1]["train_loss"]
        out["train_runtime"] = final[-1].get("train_runtime")
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def _set_adapter_base(output_dir: Path, base: str) -> None:
    """Point the saved adapter at `base` (a builtin name, Hub id or absolute path) rather than a cache dir."""
    path = output_dir / "adapter_config.json"
    if path.exists():
        config = json.loads(path.read_text())
        config["base_model_name_or_path"] = base
        write_text_atomic(path, json.dumps(config, indent=2))


def _start_wandb(config: WandbConfig, args, output_dir: Path):
    """The run transformers' WandbCallback and TRL's completion tables log into (a NullRun when off or not main).

    Its id is kept in output_dir/wandb_run_id, so a resumed training run continues the same wandb run.
    """
    id_file = output_dir / WANDB_ID_FILE
    run_id = None
    if config.enabled and args.process_index == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        write_text_atomic(id_file, run_id)
    # start_run makes it the global wandb.run, which transformers' WandbCallback and TRL log into.
    # A group is a study's (a study passes its own; `sharpen grpo --wandb-group` names one): its name is
    # also in the run's config, as the method runs of the study carry it.
    return start_run(config, name=args.run_name, job_type="grpo", dir=output_dir, run_id=run_id,
                     run_config={"study": config.group} if config.group else None)
