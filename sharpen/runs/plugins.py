"""Plug-ins: methods and tasks that other installed distributions add through entry points.

A distribution declares them in its pyproject.toml:

    [project.entry-points."sharpen.methods"]
    mine = "mypkg.sampler:MINE"      # a sharpen.Method whose name is "mine"

    [project.entry-points."sharpen.tasks"]
    mytask = "mypkg.task:MyTask"     # a task class or factory; the entry point's name is the task's

sharpen.sampling.methods and sharpen.tasks read their group once, on the first lookup of a name
(get_method, registered_methods, get_task, registered_tasks). Every process that looks a name up
therefore sees the plug-ins: `sharpen sample`, `sharpen study` and accelerate's child processes,
which are fresh interpreters. An entry point that fails to import is a UsageError naming its
distribution and entry point, so the command line prints one line and exits with status 2.
"""

from __future__ import annotations

from importlib import metadata
from typing import Callable

from sharpen.errors import UsageError

METHODS_GROUP = "sharpen.methods"
TASKS_GROUP = "sharpen.tasks"


def describe(entry_point: metadata.EntryPoint) -> str:
    """'plug-in <distribution> <version> entry point <group>:<name>': how errors name an entry point."""
    dist = entry_point.dist
    owner = f"{dist.name} {dist.version}" if dist is not None else "(unknown distribution)"
    return f"plug-in {owner} entry point {entry_point.group}:{entry_point.name}"


def load_entry_points(group: str) -> list[tuple[str, object, str]]:
    """(entry point name, the object it names, describe(entry point)) of every installed entry point of `group`,
    ordered by distribution then name (registration order is table order, so it must not depend on sys.path)."""
    entry_points = sorted(metadata.entry_points(group=group),
                          key=lambda ep: (ep.dist.name if ep.dist is not None else "", ep.name))
    loaded = []
    for entry_point in entry_points:
        origin = describe(entry_point)
        try:
            value = entry_point.load()
        except Exception as err:  # anything the plug-in's import raises is the plug-in's fault, not ours
            reason = (str(err).splitlines() or [""])[0]
            raise UsageError(f"{origin} failed to import: {type(err).__name__}: {reason}") from err
        loaded.append((entry_point.name, value, origin))
    return loaded


def short(value) -> str:
    """A value as one short line: its type and the start of its repr."""
    return f"{type(value).__name__} {(repr(value).splitlines() or [''])[0][:60]}"


class PluginGroup:
    """One registry's entry-point group, read once on the first lookup: all of its plug-ins register, or none.

    `check(name, value, origin)` raises UsageError for an entry point that names the wrong kind of
    thing; `holder(name)` says who already holds a name (None when free); `register(name, value,
    origin)` adds one. A name taken twice (by two plug-ins, or by a plug-in and a built-in or an
    in-process registration) is a UsageError naming both.
    """

    def __init__(self, group: str, what: str, check: Callable, holder: Callable, register: Callable):
        self.group, self.what = group, what
        self.check, self.holder, self.register = check, holder, register
        self.read = False

    def read_once(self) -> None:
        if self.read:
            return
        self.read = True  # first: a plug-in that looks a name up while it is imported sees the built-ins
        try:
            found = load_entry_points(self.group)
            seen: dict[str, str] = {}
            for name, value, origin in found:
                self.check(name, value, origin)
                other = seen.get(name) or self.holder(name)
                if other is not None:
                    raise UsageError(f"{self.what} '{name}' is registered twice: by {other} and by {origin}")
                seen[name] = origin
        except BaseException:
            self.read = False  # the next lookup reports the same error instead of silently lacking plug-ins
            raise
        for name, value, origin in found:
            self.register(name, value, origin)
