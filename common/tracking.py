"""wandb runs, or a null run that costs nothing: one place decides the mode, no call site branches on it.

    from common.tracking import WandbConfig, start_run
    run = start_run(WandbConfig(mode="off"), name="demo-base", job_type="sample", dir="runs/demo")
    run.summary.update({"sample/accuracy": 0.5}); run.log({"x": 1}); run.finish()   # all no-ops when off
    is_logging(run)   # False for the null run: skip building what only wandb would show

Modes: `offline` (runs land in DIR/wandb, upload later with `wandb sync`), `online`, `off`
(wandb is never imported), and `auto` ($WANDB_MODE when set, else offline). Only the main
process of a launched group opens a real run; the others get the null run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import UsageError
from .processes import is_main_process

MODES = ("auto", "offline", "online", "off")


@dataclass
class WandbConfig:
    """Where runs are logged; the study's `wandb:` section and the CLI flags fill this one dataclass."""

    mode: str = field(default="offline", metadata={
        "help": "offline | online | off (never imports wandb) | auto ($WANDB_MODE if set, else offline)."})
    project: str = field(default="sharpen", metadata={"help": "wandb project."})
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


def start_run(config: WandbConfig, *, name: str, job_type: str, dir: str | os.PathLike, run_config: dict | None = None,
              run_id: str | None = None, group: str | None = None):
    """A wandb run (main process, mode not off) or a NullRun; `run_id` resumes a run of that id."""
    if not config.enabled or not is_main_process():
        return NullRun()
    import wandb

    os.makedirs(dir, exist_ok=True)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", config.project), entity=config.entity,
                     group=group or config.group, name=name, job_type=job_type, dir=str(dir),
                     mode=config.resolved_mode, config=run_config or {}, id=run_id,
                     resume="allow" if run_id else None,
                     # finish_previous makes this the global wandb.run, which transformers' WandbCallback
                     # and TRL's completion tables log into (create_new would leave them a second run).
                     reinit="finish_previous")
    return run


def is_logging(run) -> bool:
    """False for the NullRun (logging off or not the main process)."""
    return not isinstance(run, NullRun)
