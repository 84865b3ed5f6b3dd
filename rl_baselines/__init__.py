"""GRPO baseline through TRL: `grpo_train` trains with TRL's GRPOTrainer, `grade_reward` adapts a task grader.

    from rl_baselines import grpo_config, grpo_train, grade_reward, lora_config

This package knows nothing of tasks or the CLI: `experiments/grpo.py` builds the
dataset and the reward from a task and hands them here.
"""

from .grpo import (check_grpo_args, default_grpo_args, grpo_config, grpo_train, is_finished, last_checkpoint,
                   lora_config)
from .rewards import completion_text, grade_reward

__all__ = ["check_grpo_args", "completion_text", "default_grpo_args", "grade_reward", "grpo_config", "grpo_train",
           "is_finished", "last_checkpoint", "lora_config"]
