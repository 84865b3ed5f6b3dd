"""GRPO through TRL, the baseline the power samplers are compared with: a task's grader is the reward.

    from sharpen.rl import default_grpo_args, grpo_train, grade_reward
    cost = grpo_train(model_path, tokenizer, dataset, grade_reward(task.grade, problems), {"output_dir": "runs/x"})

    grpo.py       grpo_train: GRPOTrainer with the run defaults, batch/LoRA checks, resume, cost.json, metrics.json
    rewards.py    grade_reward: a task's grade(problem, completion) as a TRL reward function
    rollouts.py   GRPO's completions from sharpen.sample (TRL's rollout_func hook), or TRL's own generate
    vllm_rollouts.py  rollouts: vllm, the same sampler on a float32 vLLM engine synced with the policy each step
    self_reward.py  grpo_self: RL without a verifier, reward (1 + beta) log p_base - beta log pi, optimum p^alpha
    settings.py   GrpoRunArgs, GrpoSettings, a study's grpo section as settings (study_mapping)
    merge.py      the one merge of defaults, a YAML mapping and flags: trl.TrlParser (SettingsParser)
    rundir.py     run.json identity, resume and ownership checks, recorded checkpoints (grpo_model_spec)
    launch.py     the accelerate relaunch and accelerate-config checks
    stage.py      the GRPO stage: train set, checks before any work (preflight), train_grpo, run_grpo

The `sharpen grpo` command is sharpen.cli.grpo; a study calls stage.check_grpo_settings and
stage.train_grpo.

    python -m pytest --doctest-modules sharpen/rl   # the docstring examples
"""

from .grpo import (DEFAULT_LORA_TARGETS, check_grpo_args, default_grpo_args, default_model_args, grpo_config,
                   grpo_train, is_finished, last_checkpoint, lora_config, lora_targets, trl_defaults)
from .rewards import completion_text, grade_reward
from .rollouts import DEFAULT_ROLLOUTS, ROLLOUT_KINDS, check_rollouts, sharpen_rollouts
from .rundir import grpo_model_spec, record_checkpoint
from .settings import GrpoRunArgs, GrpoSettings, settings_from_mapping
from .stage import check_grpo_settings, check_train_split, run_grpo, train_grpo

__all__ = ["DEFAULT_LORA_TARGETS", "DEFAULT_ROLLOUTS", "GrpoRunArgs", "GrpoSettings", "ROLLOUT_KINDS",
           "check_grpo_args", "check_grpo_settings", "check_rollouts", "check_train_split", "completion_text",
           "default_grpo_args", "default_model_args", "grade_reward", "grpo_config", "grpo_model_spec", "grpo_train",
           "is_finished", "last_checkpoint", "lora_config", "lora_targets", "record_checkpoint", "run_grpo",
           "settings_from_mapping", "sharpen_rollouts", "train_grpo", "trl_defaults"]
