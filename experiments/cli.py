"""The `sharpen` command: dispatches `sharpen <command> ...` to the command's module.

    sharpen sample --help

Each command module has `main(argv) -> int` and `make_parser()`. Mistakes a user can
make (UsageError, an unloadable model, a bad flag) end in one line on stderr and exit
status 2; set SHARPEN_DEBUG=1 to see their tracebacks.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
import sys
import warnings

from transformers import HfArgumentParser

# command -> (module, one-line description)
COMMANDS = {
    "study": ("experiments.study", "run a whole study from a YAML config: base model, GRPO, four samplers, report"),
    "sample": ("experiments.sample", "sample a model on a task and write graded per-sample records"),
    "analyze": ("experiments.analyze", "metrics, plots, report.md and wandb from a run directory's records"),
    "grpo": ("experiments.grpo", "GRPO-train a model on a task's train split with TRL (or record an RL checkpoint)"),
    "testbed": ("experiments.testbed.cli", "build (or reuse) the synthetic testbed model and print its calibration"),
}


def did_you_mean(message: str, parser: argparse.ArgumentParser) -> str:
    """For an 'unrecognized arguments' message, the parser's flags closest to each unknown one.

    >>> p = argparse.ArgumentParser(); _ = p.add_argument("--method"); _ = p.add_argument("--seed")
    >>> did_you_mean("unrecognized arguments: --methd base --sed 3", p)
    '; did you mean --method (for --methd), --seed (for --sed)?'
    """
    if not message.startswith("unrecognized arguments:"):
        return ""
    known = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    hints = []
    for word in message.split(":", 1)[1].split("(", 1)[0].split():  # not the explanation in brackets
        if not word.startswith("--"):
            continue
        flag = word.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        if close:
            hints.append(f"{close[0]} (for {flag})")
    return f"; did you mean {', '.join(dict.fromkeys(hints))}?" if hints else ""


class OneLineErrors:
    """argparse errors in one line, with the closest known flags for a misspelled one."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}{did_you_mean(message, self)} (see {self.prog} --help)\n")


class ArgumentParser(OneLineErrors, HfArgumentParser):
    """HfArgumentParser (dataclass fields -> flags, --a-b and --a_b) with one-line errors."""

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        """HfArgumentParser's, except that leftover arguments are a one-line error, not a ValueError."""
        *parsed, rest = super().parse_args_into_dataclasses(args, return_remaining_strings=True, **kwargs)
        if return_remaining_strings:
            return (*parsed, rest)
        if rest:
            self.error(f"unrecognized arguments: {' '.join(rest)}")
        return tuple(parsed)


class PlainArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """argparse.ArgumentParser with the same one-line errors."""


def disk_full_message(err: OSError) -> str | None:
    """A one-line explanation of a full disk (or quota), or None for any other OSError."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = f" writing {err.filename}" if err.filename else ""
    return (f"no space left on the device{where} ({os.strerror(err.errno)}): free some space and run the same "
            f"command again; it resumes after the last complete record")


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

    from sampling.models import ModelLoadError

    hf_logging.set_verbosity_error()  # weight-loading bars and notices drown the run's own output
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not the user's

    from common.errors import UsageError

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


if __name__ == "__main__":
    sys.exit(main())
