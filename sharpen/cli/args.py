"""Argument parsing shared by the `sharpen` commands: dataclass fields as flags, one-line errors.

    from sharpen.cli.args import ArgumentParser
    (settings,) = ArgumentParser(MySettings, prog="sharpen mine").parse_args_into_dataclasses(argv)

A mistyped flag ends in one line on stderr with the closest known flags, exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os

from transformers import HfArgumentParser


def did_you_mean(message: str, parser: argparse.ArgumentParser) -> str:
    """For an 'unrecognized arguments' message, the parser's flags closest to each unknown one.

    >>> p = argparse.ArgumentParser(); _ = p.add_argument("--method"); _ = p.add_argument("--seed")
    >>> did_you_mean("unrecognized arguments: --methd base --sed 3", p)
    '; did you mean --method (for --methd), --seed (for --sed)?'
    >>> did_you_mean("unrecognized arguments: --alpha 2", p)
    ''
    """
    if not message.startswith("unrecognized arguments:"):
        return ""
    # --help is no value-taking flag: "--alpha 2" is never a misspelt "--help" (it matched at 0.6)
    known = [flag for flag in parser._option_string_actions if flag.startswith("--") and flag != "--help"]
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
