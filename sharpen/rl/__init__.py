"""GRPO baseline through TRL: `grpo_train` is the whole stage in one call, `grade_reward` adapts a task grader.

    from sharpen.rl import default_grpo_args, grpo_train, grade_reward
    cost = grpo_train(model_path, tokenizer, dataset, grade_reward(task.grade, problems), {"output_dir": "runs/x"})

GRPO's completions come from `sampling.sample` (sharpen.rl.rollouts, TRL's rollout_func
hook) unless `rollouts="trl"` asks for TRL's own model.generate.

This package knows nothing of tasks or the CLI: `sharpen/rl/stage.py` builds the
dataset and the reward from a task, merges the settings, and hands them here.

    python -m pytest --doctest-modules rl_baselines   # the docstring examples
"""

from .grpo import (DEFAULT_LORA_TARGETS, check_grpo_args, default_grpo_args, default_model_args, grpo_config,
                   grpo_train, is_finished, last_checkpoint, lora_config, lora_targets)
from .rewards import completion_text, grade_reward
from .rollouts import DEFAULT_ROLLOUTS, ROLLOUT_KINDS, check_rollouts, sharpen_rollouts

__all__ = ["DEFAULT_LORA_TARGETS", "DEFAULT_ROLLOUTS", "ROLLOUT_KINDS", "check_grpo_args", "check_rollouts",
           "completion_text", "default_grpo_args", "default_model_args", "grade_reward", "grpo_config", "grpo_train",
           "is_finished", "last_checkpoint", "lora_config", "lora_targets", "sharpen_rollouts"]
