"""The `sharpen` command: dispatches `sharpen <command> ...` to the command's module.

    sharpen sample --help

Each command module has `main(argv) -> int` and `make_parser()`. Mistakes a user can
make (UsageError, an unloadable model, a bad flag) end in one line on stderr and exit
status 2; set SHARPEN_DEBUG=1 to see their tracebacks.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

from sharpen.errors import UsageError

from .args import disk_full_message

# command -> (module, one-line description)
COMMANDS = {
    "study": ("sharpen.cli.study", "run a whole study from a YAML config: base model, GRPO, four samplers, report"),
    "sample": ("sharpen.cli.sample", "sample a model on a task and write graded per-sample records"),
    "analyze": ("sharpen.cli.analyze", "metrics, plots, report.md and wandb from a run directory's records"),
    "grpo": ("sharpen.cli.grpo", "GRPO-train a model on a task's train split with TRL (or record an RL checkpoint)"),
    "testbed": ("sharpen.cli.testbed", "build (or reuse) the synthetic testbed model and print its calibration"),
    "kinds": ("sharpen.cli.kinds", "pass@k of a testbed run's methods split by problem kind (plain, trap, twice)"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "usage: sharpen <command> [options]\n\ncommands:\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"sharpen: error: unknown command '{command}': valid commands are {', '.join(COMMANDS)}\n")
        return 2
    from transformers.utils import logging as hf_logging

    # imported once a command is known: `sharpen --help` and a mistyped command answer without loading torch
    from sharpen.sampling.models import ModelLoadError

    hf_logging.set_verbosity_error()  # weight-loading bars and notices drown the run's own output
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not the user's

    try:
        module = importlib.import_module(COMMANDS[command][0])
        return module.main(rest)
    except (UsageError, ModelLoadError) as err:
        if os.environ.get("SHARPEN_DEBUG"):
            raise
        sys.stderr.write(f"sharpen {command}: error: {err}\n")
        return 2
    except SystemExit as exit_:  # argparse: --help (0) or a bad flag (2, message already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    except OSError as err:
        message = disk_full_message(err)
        if message is None or os.environ.get("SHARPEN_DEBUG"):
            raise
        sys.stderr.write(f"sharpen {command}: error: {message}\n")
        return 2


