"""wandb runs, or a null run that costs nothing: one place decides the mode, no call site branches on it.

    from sharpen.runs.tracking import WandbConfig, start_run
    run = start_run(WandbConfig(mode="off"), name="demo-base", job_type="sample", dir="runs/demo")
    run.summary.update({"sample/accuracy": 0.5}); run.log({"x": 1}); run.finish()   # all no-ops when off
    is_logging(run)   # False for the null run: skip building what only wandb would show

Modes: `offline` (runs land in DIR/wandb, upload later with `wandb sync`), `online`, `off`
(wandb is never imported), and `auto` ($WANDB_MODE when set, else offline). DEFAULT_MODE
(`auto`) is every default: a WandbConfig made without a mode, a study without `wandb.mode`,
`sharpen analyze` and `sharpen grpo` without --wandb. Only the main process of a launched
group opens a real run; the others get the null run.

`keep_id=True` keeps the run's id in DIR/wandb_run_ids.json under its name, so a later session
that starts a run of the same name resumes it: online, the one run is updated in place (no
duplicate); offline, each session writes its own DIR/wandb/offline-run-<time>-<id> directory
with that id, and `wandb sync` of a later one replaces what an earlier one uploaded. So a
session should write its run whole (as the analysis does), never half of it.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sharpen.errors import UsageError
from .files import write_text_atomic
from .processes import is_main_process

MODES = ("auto", "offline", "online", "off")
# `auto` rather than `offline`: a user's $WANDB_MODE (e.g. disabled on a cluster) is obeyed unless a
# config or flag names a mode; without it, auto is offline.
DEFAULT_MODE = "auto"
DEFAULT_PROJECT = "sharpen"
RUN_IDS_FILE = "wandb_run_ids.json"


@dataclass
class WandbConfig:
    """Where runs are logged; the study's `wandb:` section and the CLI flags fill this one dataclass."""

    mode: str = field(default=DEFAULT_MODE, metadata={
        "help": "auto ($WANDB_MODE if set, else offline) | offline | online | off (never imports wandb)."})
    project: str = field(default=DEFAULT_PROJECT, metadata={"help": "wandb project (WANDB_PROJECT wins if set)."})
    entity: str | None = field(default=None, metadata={"help": "wandb entity (team or user)."})
    group: str | None = field(default=None, metadata={"help": "wandb group, e.g. the study name."})

    def __post_init__(self):
        if self.mode not in MODES:
            raise UsageError(f"wandb mode must be one of {', '.join(MODES)}, got '{self.mode}'")

    @property
    def resolved_mode(self) -> str:
        """offline, online or off: `auto` read from $WANDB_MODE (disabled -> off, dryrun -> offline)."""
        if self.mode != "auto":
            return self.mode
        mode = os.environ.get("WANDB_MODE", "offline")
        return {"disabled": "off", "dryrun": "offline"}.get(mode, mode)

    @property
    def enabled(self) -> bool:
        return self.resolved_mode != "off"


class _NullSummary(dict):
    def update(self, *args, **kwargs):  # keeps nothing: a null run records nothing
        return None


class NullRun:
    """Stands in for a wandb run when logging is off or this is not the main process."""

    enabled = False
    dir = None
    id = None

    def __init__(self):
        self.summary = _NullSummary()

    def log(self, *args, **kwargs):
        return None

    def finish(self, *args, **kwargs):
        return None


def kept_run_id(dir: str | os.PathLike, name: str) -> str:
    """The wandb id of the run called `name` in DIR/wandb_run_ids.json, made (random) and saved on first use.

    Random rather than derived from the path: two machines with the same runs/<study> path
    must not write into each other's runs of one project.
    """
    path = Path(dir) / RUN_IDS_FILE
    ids = json.loads(path.read_text()) if path.exists() else {}
    if name not in ids:
        ids[name] = uuid.uuid4().hex[:12]
        write_text_atomic(path, json.dumps(ids, indent=1, sort_keys=True) + "\n")
    return ids[name]


def start_run(config: WandbConfig, *, name: str, job_type: str, dir: str | os.PathLike, run_config: dict | None = None,
              run_id: str | None = None, group: str | None = None, keep_id: bool = False, quiet: bool = False):
    """A wandb run (main process, mode not off) or a NullRun; `run_id` resumes a run of that id.

    keep_id: take the id from DIR/wandb_run_ids.json (kept_run_id), so that a later session
    with the same `name` resumes this run instead of adding a second one. quiet: no wandb banner
    (for runs started by the dozen, such as one per method).
    """
    if not config.enabled or not is_main_process():
        return NullRun()
    import wandb

    os.makedirs(dir, exist_ok=True)
    if keep_id and run_id is None:
        run_id = kept_run_id(dir, name)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", config.project), entity=config.entity,
                     group=group or config.group, name=name, job_type=job_type, dir=str(dir),
                     mode=config.resolved_mode, config=run_config or {}, id=run_id,
                     resume="allow" if run_id else None, settings=wandb.Settings(silent=True) if quiet else None,
                     # finish_previous makes this the global wandb.run, which transformers' WandbCallback
                     # and TRL's completion tables log into (create_new would leave them a second run).
                     reinit="finish_previous")
    return run


def is_logging(run) -> bool:
    """False for the NullRun (logging off or not the main process)."""
    return not isinstance(run, NullRun)
