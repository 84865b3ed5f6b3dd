"""MATH500: competition math, the paper's prompt, last-\\boxed{} extraction, math-verify grading.

    task = get_task("math500", data_path="../shared/data/MATH500.json")
    task = get_task("math500")      # the Hub dataset HuggingFaceH4/MATH-500 (needs network or HF cache)

A local file is JSON (a list) or JSONL with, per problem, the question (`prompt` or
`problem`), the gold `answer`, and optionally an `id` / `unique_id`. Grading compares
the last \\boxed{...} of the completion to the gold answer with math-verify, so
`\\frac12`, `\\dfrac{1}{2}` and `0.5` agree. math-verify bounds its own time with
SIGALRM, which works only in the main thread; elsewhere (a reward function in a
worker thread) the check runs in a forked process that is killed at the timeout.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

from common.errors import UsageError
from .base import Task, take

HUB_DATASET = "HuggingFaceH4/MATH-500"
# The paper's wording (reference implementation, `format_prompt` with cot=True).
PROMPT_PREFIX = "Can you solve the following math problem? "
PROMPT_SUFFIX = " Please reason step by step, and put your final answer within \\boxed{}."


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
    """math-verify equivalence of two LaTeX answers, bounded in time in any thread."""
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
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, gold, predicted), daemon=True)
    proc.start()
    verdict = receive.recv() if receive.poll(timeout * 3) else False
    proc.kill()
    proc.join()
    return verdict


class Math500(Task):
    name = "math500"
    splits = ("test",)
    grader_libraries = ("math-verify",)

    def __init__(self, data_path: str | None = None):
        self.data_path = data_path

    def load(self, limit=None, seed=0, split="test"):
        self.check_split(split)
        rows = self._read_file(Path(self.data_path)) if self.data_path else self._read_hub()
        problems = []
        for i, row in enumerate(rows):
            question = row.get("prompt", row.get("problem")) if isinstance(row, dict) else None
            if question is None or row.get("answer") is None:
                raise UsageError(f"MATH500 data: problem {i} lacks a question ('prompt' or 'problem') "
                                 f"or an 'answer'")
            problems.append({"id": str(row.get("id", row.get("unique_id", i))), "question": question,
                             "answer": str(row["answer"])})
        if not problems:
            raise UsageError("MATH500 data holds no problems")
        return take(problems, limit)

    @staticmethod
    def _read_file(path: Path) -> list[dict]:
        if not path.is_file():
            raise UsageError(f"MATH500 data file '{path}' does not exist: give a JSON list or JSONL file")
        text = path.read_text()
        try:
            if path.suffix == ".jsonl":
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"MATH500 data file '{path}' is not valid JSON/JSONL ({err})") from None
        if not isinstance(data, list):
            raise UsageError(f"MATH500 data file '{path}' must hold a JSON list of problems")
        return data

    @staticmethod
    def _read_hub() -> list[dict]:
        try:
            from datasets import load_dataset

            return list(load_dataset(HUB_DATASET, split="test"))
        except Exception as err:  # network, auth or cache errors all mean "not loadable here"
            raise UsageError(f"cannot load {HUB_DATASET} from the Hub ({type(err).__name__}); "
                             f"pass data_path=<MATH500 .json/.jsonl file>") from None

    def prompt_text(self, problem):
        return PROMPT_PREFIX + problem["question"] + PROMPT_SUFFIX

    def extract_answer(self, completion):
        return last_boxed(completion)

    def grade(self, problem, completion):
        predicted = self.extract_answer(completion)
        if predicted is None:
            return 0.0
        return 1.0 if answers_match(problem["answer"], predicted) else 0.0
