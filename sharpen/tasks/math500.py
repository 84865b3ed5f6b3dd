"""MATH500: competition math, the paper's prompt, last-\\boxed{} extraction, math-verify grading.

    task = get_task("math500", path="../shared/data/MATH500.json")     # data_path= is an alias
    task = get_task("math500")      # the Hub dataset HuggingFaceH4/MATH-500 (needs network or HF cache)
    task = get_task("math500", prompt="reference_math")   # the reference code's exact text (see file_task.py)

A local file is JSON (a list) or JSONL with, per problem, the question (`prompt` or
`problem`), the gold `answer`, and optionally an `id` / `unique_id`. Grading compares
the last \\boxed{...} of the completion to the gold answer with math-verify, so
`\\frac12`, `\\dfrac{1}{2}` and `0.5` agree (the `math` grader of sharpen/tasks/graders.py,
bounded in time in any thread).
"""

from __future__ import annotations

import json
from pathlib import Path

from sharpen.errors import UsageError
from .base import Task, take
from .datafiles import render
from .file_task import PAPER_MATH, resolve_template
from .graders import MathGrader, answers_match, last_boxed  # noqa: F401 (last_boxed, answers_match: public here)

HUB_DATASET = "HuggingFaceH4/MATH-500"
# The paper's wording (reference implementation, `format_prompt` with cot=True).
PROMPT_PREFIX, PROMPT_SUFFIX = PAPER_MATH.split("{question}")


class Math500(Task):
    name = "math500"
    reference_rl_chat = True  # the reference prompts its GRPO checkpoint through the chat template
    reference_options = {"prompt": "reference_math"}  # the study's profile: reference
    splits = ("test",)
    grader_libraries = ("math-verify",)

    def __init__(self, path: str | None = None, data_path: str | None = None, prompt: str = "paper_math"):
        if path is not None and data_path is not None:
            raise UsageError("give path= or its alias data_path=, not both")
        self.data_path = path if path is not None else data_path
        self.template = resolve_template(prompt)
        self.grader = MathGrader()

    def load(self, limit=None, seed=0, split="test"):
        self.check_split(split)
        rows = self._read_file(Path(self.data_path)) if self.data_path else self._read_hub()
        problems = []
        for i, row in enumerate(rows):
            question = row.get("prompt", row.get("problem")) if isinstance(row, dict) else None
            if question is None or row.get("answer") is None:
                raise UsageError(f"MATH500 data: problem {i + 1} lacks a question ('prompt' or 'problem') "
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
                             f"pass path=<MATH500 .json/.jsonl file>") from None

    def prompt_text(self, problem):
        return render(self.template, {"question": problem["question"]})

    def extract_answer(self, completion):
        return self.grader.extract(completion)

    def grade(self, problem, completion):
        return self.grader.grade(problem, completion)
