"""`sharpen sample`: sample a model on a task with a registered method, grade every completion, append records.

    sharpen sample --model smollm2-135m --task basic_arithmetic --method low_temp --chat \\
        --num-problems 24 --num-samples 4 --max-new-tokens 160 --output-dir runs/demo

    sharpen sample --model smollm2-135m --task basic_arithmetic --method power_mh --chat \\
        --alpha 4 --block-size 32 --mcmc-steps 10 --max-new-tokens 160 --output-dir runs/demo --name power_mh_b32

    sharpen sample --method power_mh --help      # the flags of one method: its settings dataclass

writes runs/demo/samples/<name>.jsonl (one line per completion, flushed as each finishes; <name>
defaults to the method), <name>.config.json (method, settings, provenance) and appends one line
per session to <name>.sessions.jsonl (elapsed time, environment). Running the same command again
resumes: finished (problem, sample) pairs are skipped, none is written twice. A directory holding
records made with other settings, another grader version or another model revision is refused.
The flags of each method come from its settings dataclass in the registry (sharpen.sampling.methods).
"""

from __future__ import annotations

import argparse
import sys

from sharpen.errors import UsageError
from sharpen.runs.processes import current_shard
from sharpen.runs.records import read_records
from sharpen.sampling.methods import get_method, registered_methods
from sharpen.study.sample import SampleRunArgs, format_summary, run, summarize

from .args import ArgumentParser


def make_parser(method: str = "base"):
    """Flags of SampleRunArgs plus those of `method`'s settings dataclass (from the registry)."""

    settings = get_method(method).settings
    return ArgumentParser((SampleRunArgs, settings), prog="sharpen sample",
                          description="Sample a model on a task with a registered method, grade each completion, "
                                      "write per-sample records.",
                          epilog=f"Methods: {', '.join(registered_methods())}. The settings flags shown are those "
                                 f"of method {method} ({settings.__name__}); `sharpen sample --method M --help` "
                                 f"shows another method's.")


def parse_args(argv: list[str]):
    """(SampleRunArgs, the method's settings) from the command line; UsageError in one line."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--method", default="base")
    known, _ = probe.parse_known_args(argv)
    if known.method not in registered_methods():
        raise UsageError(f"unknown method '{known.method}': registered methods are {', '.join(registered_methods())}")
    parser = make_parser(known.method)
    try:
        args, settings, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except UsageError:
        raise  # SampleRunArgs' own messages already name their flag
    except ValueError as err:  # a settings dataclass refused a value ("alpha must be ..."): name the flag
        name, _, reason = str(err).partition(" ")
        raise UsageError(f"--{name.replace('_', '-')} {reason}" if reason else str(err)) from None
    if rest:
        flags = ", ".join(f"--{f.replace('_', '-')}" for f in get_method(known.method).field_names())
        check_other_settings(rest, known.method, flags)
        parser.error(f"unrecognized arguments: {' '.join(rest)} (method {known.method} takes the settings {flags})")
    return args, settings


def check_other_settings(rest: list[str], method: str, flags: str) -> None:
    """UsageError for a leftover flag that is another method's setting: `method` has no such setting."""
    for word in rest:
        if not word.startswith("--"):
            continue
        name = word[2:].split("=", 1)[0].replace("-", "_")
        owners = [m for m in registered_methods() if m != method and name in get_method(m).field_names()]
        if owners:
            raise UsageError(f"method {method} has no setting {name}: its settings are {flags} ({name} is a "
                             f"setting of {', '.join(owners)})")


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(sys.argv[1:] if argv is None else list(argv))
    shard = current_shard()
    path = run(args, settings, shard=shard, progress=shard.is_main)
    if shard.is_main:
        print(format_summary(f"{args.task} / {args.name}", summarize(read_records(path))))
    return 0
