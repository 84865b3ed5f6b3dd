"""`sharpen grpo`: GRPO-train a base model on a task's train split with TRL, the task's grader as the reward.

    sharpen grpo --model runs/testbed/model --task testbed --output-dir runs/study/grpo
    sharpen grpo --model smollm2-135m --task basic_arithmetic --chat --config my_grpo.yaml \\
        --learning_rate 1e-5 --max_completion_length 160 --lora --output-dir D   # any GRPOConfig field
    sharpen grpo --accelerate-config cpu_2proc --model M --task T --output-dir D   # or a file's path
    accelerate launch --config_file sharpen/configs/accelerate/multi_gpu.yaml -m sharpen grpo \\
        --model M --task T --config grpo_gpu --output-dir D
    sharpen grpo --output-dir D --from-checkpoint \\
        stellalisy/rethink_rlvr_reproduce-ground_truth-qwen2.5_math_7b-lr5e-7-kl0.00-step150   # record, no training

Settings are merged once by TRL's TrlParser.parse_args_and_config (sharpen.rl.merge) into
GrpoRunArgs, trl.GRPOConfig and trl.ModelConfig: the run defaults (`sharpen.rl.default_grpo_args`,
sized for the testbed on 2 CPU cores, and `default_model_args`), then the YAML file given with
--config (a path, or a packaged name such as grpo_gpu; any option of `sharpen grpo --help` as a
key, plus an `env:` mapping), then the flags. LoRA is ModelConfig's: --lora (or --use_peft),
--lora_r, --lora_alpha, --lora_target_modules (default all-linear), ... and
`trl.get_peft_config` builds it. A study's `grpo:` section is the same mapping
(sharpen.rl.stage.train_grpo). --rollouts sharpen (the default) samples GRPO's completions with
`sharpen.sample` (sharpen.rl.rollouts); --rollouts trl keeps TRL's own model.generate; --rollouts vllm
samples with sharpen's sampler on a float32 vLLM engine synced with the policy after every optimizer step
(sharpen.rl.vllm_rollouts; in .venv-vllm, one process).
--accelerate-config (a file, or a packaged name: cpu, cpu_2proc, multi_gpu, deepspeed_zero3,
fsdp2, ...) runs the same command again under `accelerate launch` and waits for it.

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

import sys

from sharpen.configs import find_config
from sharpen.errors import UsageError
from sharpen.rl.merge import SettingsParser
from sharpen.rl.rundir import RECORD_FILE, grpo_model_spec, record_checkpoint
from sharpen.rl.settings import GrpoSettings, read_grpo_config
from sharpen.rl.stage import run_grpo
from sharpen.runs.files import check_output_dir
from sharpen.runs.locks import hold_run_dir

from .args import OneLineErrors


class GrpoParser(OneLineErrors, SettingsParser):
    """The merge's parser with the commands' one-line errors (exit status 2, the closest flags)."""


def make_parser() -> GrpoParser:
    return GrpoParser(prog="sharpen grpo",
                      description="GRPO-train a model on a task's train split (TRL GRPOTrainer), or record an "
                                  "existing RL checkpoint. Settings: run defaults, then --config FILE.yaml (any "
                                  "option below as a key), then flags.")


def parse_args(argv: list[str]) -> GrpoSettings:
    """The settings of `sharpen grpo ARGV`: run defaults, then --config YAML, then flags (TrlParser's merge)."""
    argv = list(argv)
    parser = make_parser()
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UsageError("--config needs a YAML file or a packaged name (grpo_gpu)")
        name = argv[i + 1]
        read_grpo_config(name)  # it exists (or is packaged) and holds a YAML mapping: else one line, here
        argv[i + 1] = str(find_config(name, "grpo"))  # TrlParser reads it
        parser.source = f"config file '{name}'"
    (settings,) = parser.parse_args_and_config(argv)
    return settings


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = parse_args(argv)
    check_output_dir(settings.output_dir, "--output-dir")
    with hold_run_dir(settings.output_dir, "grpo"):
        if settings.run.from_checkpoint is not None:
            out = record_checkpoint(settings.run.from_checkpoint, settings.output_dir)
            print(f"grpo: recorded existing checkpoint {grpo_model_spec(out)} in {out / RECORD_FILE}")
            return 0
        run_grpo(settings, argv=argv)
    return 0
