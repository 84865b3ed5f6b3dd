"""Graders by name: how an answer is read from a completion and compared with the gold answer.

    from sharpen.tasks.graders import get_grader
    grader = get_grader("number")
    gold = grader.gold("1,024")               # "1024": the gold answer as the grader reads it (None: unreadable)
    grader.grade({"answer": gold}, "... so the total is 1024.")   # 1.0

    math     the last \\boxed{} (or the last match of `answer_pattern`), math-verify equivalence,
             bounded in time in any thread (the math500 grader)
    number   the last number in the completion (1,024 and $12.50 read as numbers), numeric equality
    exact    the last \\boxed{}, else the text after the last "answer is" / "Answer:", else the last line;
             equal after normalising case, spaces, quotes and a closing period
    choice   a choice letter A-J: in the last \\boxed{}, else after the last "answer is" / "Answer:", else
             the last "(X)" or "X)"; the problem's `num_choices` bounds the letters
    code     a Python function run against the problem's tests in the HumanEval sandbox

A file task, gpqa, math and gsm8k all grade through these, and the GRPO reward calls the same
`grade`, so evaluation and training cannot disagree on what is correct. Every grader reads the
gold answers before any work: `gold()` returns None for one it cannot read, and the task refuses
the file in one line (how many rows, and one example).
"""

from __future__ import annotations

import re
import threading

from sharpen.errors import UsageError

from .code import program_body
from .sandbox import check_setting, resolve_sandbox, run_tests

LETTERS = "ABCDEFGHIJ"
NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
ANSWER_IS = re.compile(r"(?:answer\s+is|answer\s*:)\s*(.+)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None  # unbalanced: the completion was cut inside its answer


def answers_match(gold: str, predicted: str, timeout: int = 5) -> bool:
    """math-verify equivalence of two LaTeX answers, bounded in time in any thread.

    math-verify bounds its own time with SIGALRM, which works only in the main thread; elsewhere
    (a reward function in a worker thread) the check runs in a forked process killed at the timeout.
    """
    if threading.current_thread() is threading.main_thread():
        return _verify(gold, predicted, timeout)
    return _verify_in_child(gold, predicted, timeout)


def _verify(gold: str, predicted: str, timeout: int | None) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    pred_parsed = parse(f"${predicted}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return gold.strip() == predicted.strip()
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def _child(conn, gold, predicted):
    conn.send(_verify(gold, predicted, None))


def _verify_in_child(gold: str, predicted: str, timeout: int) -> bool:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, gold, predicted), daemon=True)
    proc.start()
    verdict = receive.recv() if receive.poll(timeout * 3) else False
    proc.kill()
    proc.join()
    return verdict


def read_number(text: str) -> float | None:
    """`text` as one number ("1,024", "$12.50", "-3", "7.") or None."""
    cleaned = text.strip().strip("$").replace("\\$", "").replace(",", "").rstrip(".").strip()
    try:
        return float(cleaned)
    except ValueError:
        return None


def normalise_text(text: str) -> str:
    """Lower case, single spaces, no surrounding quotes, \\text{} or closing period: for exact matching."""
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text.strip())
    text = re.sub(r"\s+", " ", text).strip().strip("\"'`*").strip()
    return text.rstrip(".").strip().lower()


def _pattern(answer_pattern: str | None) -> re.Pattern | None:
    if answer_pattern is None:
        return None
    try:
        pattern = re.compile(answer_pattern)
    except re.error as err:
        raise UsageError(f"answer_pattern {answer_pattern!r} is not a valid regular expression ({err})") from None
    if pattern.groups > 1:
        raise UsageError(f"answer_pattern {answer_pattern!r} has {pattern.groups} groups: give at most one "
                         f"(the answer)")
    return pattern


def _last_match(pattern: re.Pattern, text: str) -> str | None:
    found = [m.group(1) if pattern.groups else m.group(0) for m in pattern.finditer(text)]
    return found[-1].strip() if found else None


class Grader:
    """Reads answers and decides correctness; `grade` is the one verdict records and rewards use."""

    name = ""
    libraries: tuple[str, ...] = ()  # packages whose code decides the verdict (in the grader version)
    needs: tuple[str, ...] = ()  # problem fields beyond `answer` (code: its tests and entry point)

    def gold(self, answer) -> str | None:
        """The gold answer as this grader compares it, or None when it cannot read it."""
        text = None if answer is None else str(answer).strip()
        return text or None

    def extract(self, completion: str, problem: dict | None = None) -> str | None:
        raise NotImplementedError

    def matches(self, gold: str, predicted: str, problem: dict) -> bool:
        raise NotImplementedError

    def grade(self, problem: dict, completion: str) -> float:
        predicted = self.extract(completion, problem)
        if predicted is None:
            return 0.0
        return 1.0 if self.matches(problem["answer"], predicted, problem) else 0.0

    def describe(self) -> str:
        """What distinguishes this grader's verdicts (it goes into the grader version)."""
        return self.name


class PatternGrader(Grader):
    """A grader whose answer may be read by a user's `answer_pattern` (a regex, its group the answer)."""

    def __init__(self, answer_pattern: str | None = None):
        self.answer_pattern = answer_pattern
        self._pattern = _pattern(answer_pattern)

    def extract(self, completion, problem=None):
        if self._pattern is not None:
            return _last_match(self._pattern, completion)
        return self.default_extract(completion)

    def default_extract(self, completion: str) -> str | None:
        raise NotImplementedError

    def describe(self):
        return self.name if self.answer_pattern is None else f"{self.name} pattern={self.answer_pattern}"


class MathGrader(PatternGrader):
    name = "math"
    libraries = ("math-verify",)

    def default_extract(self, completion):
        return last_boxed(completion)

    def matches(self, gold, predicted, problem):
        return answers_match(gold, predicted)


class NumberGrader(Grader):
    name = "number"

    def gold(self, answer):
        value = None if answer is None else read_number(str(answer))
        return None if value is None else _format_number(value)

    def extract(self, completion, problem=None):
        found = NUMBER.findall(completion)
        return found[-1].replace(",", "") if found else None

    def matches(self, gold, predicted, problem):
        a, b = read_number(gold), read_number(predicted)
        return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(a))


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


class ExactGrader(PatternGrader):
    name = "exact"

    def default_extract(self, completion):
        boxed = last_boxed(completion)
        if boxed is not None:
            return boxed
        said = ANSWER_IS.findall(completion)
        if said:
            return said[-1].strip()
        lines = [line.strip() for line in completion.splitlines() if line.strip()]
        return lines[-1] if lines else None

    def matches(self, gold, predicted, problem):
        return normalise_text(gold) == normalise_text(predicted)


class ChoiceGrader(Grader):
    """A letter A-J. The problem's `num_choices` (when it has one) bounds the letters a completion may pick."""

    name = "choice"
    # "(B)" or "B)" as a choice is written; a bare capital letter is too often an article ("A car ...").
    MARKED = re.compile(r"\(([A-J])\)|(?<![A-Za-z])([A-J])\)")

    def gold(self, answer):
        if answer is None:
            return None
        text = str(answer).strip().strip("()*. ").upper()
        return text if len(text) == 1 and text in LETTERS else None

    @staticmethod
    def _letter(text: str, allowed: str) -> str | None:
        text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text).strip().strip("()*.:$ ").strip()
        match = re.match(r"(?:option\s+|choice\s+)?\(?([A-J])\)?(?![A-Za-z])", text, re.IGNORECASE)
        if match and match.group(1).upper() in allowed:
            return match.group(1).upper()
        return None

    def extract(self, completion, problem=None):
        allowed = LETTERS[:int((problem or {}).get("num_choices") or len(LETTERS))]
        boxed = last_boxed(completion)
        if boxed is not None:
            return self._letter(boxed, allowed)
        for said in reversed(ANSWER_IS.findall(completion)):
            letter = self._letter(said, allowed)
            if letter is not None:
                return letter
        marked = [a or b for a, b in self.MARKED.findall(completion) if (a or b) in allowed]
        return marked[-1] if marked else None

    def matches(self, gold, predicted, problem):
        return gold == predicted


class CodeGrader(Grader):
    """The HumanEval machinery: the completion (a continuation or a fenced solution) after the prompt, the
    tests run by a trusted checker against the sandboxed program (see sharpen/tasks/sandbox.py)."""

    name = "code"
    needs = ("prompt", "test", "entry_point")

    def __init__(self, timeout: float = 5.0, memory_mb: int = 1024, sandbox: str = "auto"):
        self.timeout, self.memory_mb = timeout, memory_mb
        self.sandbox_setting = check_setting(sandbox)
        # Resolved here, when the task is built (before any model load or sampling): where bwrap cannot
        # work, 'auto' is a UsageError that says how to install it or to choose sandbox=none.
        self.sandbox = resolve_sandbox(sandbox)

    def gold(self, answer):
        return "" if answer is None else str(answer)  # a reference solution is optional: the tests decide

    def extract(self, completion, problem=None):
        return None  # code has no short answer; the record keeps the completion itself

    def execute(self, problem: dict, completion: str) -> str:
        """'passed', 'timed out' or 'failed: ...' for one completion."""
        program = problem["prompt"] + program_body(problem["entry_point"], completion)
        # trusted: the prompt (helpers the tests call) and the tests
        harness = problem["prompt"] + "\n" + problem["test"]
        return run_tests(program, harness, problem["entry_point"], kind=self.sandbox, timeout=self.timeout,
                         memory_mb=self.memory_mb)

    def grade(self, problem, completion):
        return 1.0 if self.execute(problem, completion) == "passed" else 0.0

    def describe(self):
        return f"code sandbox={self.sandbox}"


GRADERS = {"math": MathGrader, "number": NumberGrader, "exact": ExactGrader, "choice": ChoiceGrader,
           "code": CodeGrader}


def get_grader(name: str, **options) -> Grader:
    """The grader called `name` with its options (answer_pattern for math and exact; timeout, memory_mb and
    sandbox for code); UsageError naming the valid graders or options otherwise."""
    if name not in GRADERS:
        raise UsageError(f"unknown grader '{name}': valid graders are {', '.join(GRADERS)}")
    import inspect

    accepted = [p for p in inspect.signature(GRADERS[name]).parameters]
    unknown = sorted(k for k, v in options.items() if v is not None and k not in accepted)
    if unknown:
        raise UsageError(f"grader '{name}' has no option {', '.join(unknown)}: it accepts "
                         f"{', '.join(accepted) or 'no options'}")
    return GRADERS[name](**{k: v for k, v in options.items() if k in accepted and v is not None})
