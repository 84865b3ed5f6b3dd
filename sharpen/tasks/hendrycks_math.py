"""`math`: the Hendrycks MATH problems (train and test), graded like math500; the training set for a MATH500 study.

    task = get_task("math", path="math_test.jsonl", train_path="math_train.jsonl")
    task = get_task("math")                                   # the Hub: EleutherAI/hendrycks_math, all subjects
    task = get_task("math", subjects=["algebra", "number_theory"], levels=[4, 5])
    task = get_task("math", exclude="math500", math500_path="MATH500.json")
    train = task.load(split="train")                          # what `grpo.task: math` trains on

Rows have the MATH fields `problem`, `solution`, `level` ("Level 3") and `type` ("Algebra"); the
gold answer is the last \\boxed{} of the solution, and grading is math500's (the `math` grader:
last \\boxed{} of the completion, math-verify). `exclude=math500` drops from the train split every
problem whose text (white space collapsed) is a MATH500 problem, so a study that trains on MATH and
evaluates on MATH500 never trains on an evaluation problem; MATH500 comes from `math500_path=` or
the Hub. Problem ids come from a hash of the problem text (or the file's `unique_id` / `id`).
"""

from __future__ import annotations

import re
import sys

from sharpen.errors import UsageError
from .datafiles import DataSource, Row, question_id, read_hub
from .file_task import DataTask
from .graders import MathGrader, last_boxed
from .math500 import Math500

HUB_DATASET = "EleutherAI/hendrycks_math"
SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
            "prealgebra", "precalculus")
EXCLUSIONS = ("math500",)


def problem_key(text: str) -> str:
    """A problem's text with white space collapsed: how the exclusion rule compares problems."""
    return re.sub(r"\s+", " ", str(text)).strip()


class _Subjects(DataSource):
    """The Hub dataset's subjects (one config each), concatenated in a fixed order."""

    def __init__(self, subjects):
        super().__init__(hub=HUB_DATASET, hub_split="test", hub_train_split="train")
        self.subjects = subjects

    def rows(self, split):
        if split not in ("test", "train"):
            return []
        rows = []
        for subject in self.subjects:
            where = f"{HUB_DATASET}[{subject}]:{split}"
            rows += [Row(i, values, where) for i, values in enumerate(read_hub(HUB_DATASET, subject, split))]
        return rows


class HendrycksMath(DataTask):
    name = "math"
    reference_rl_chat = True  # the reference prompts its GRPO checkpoint through the chat template
    reference_options = {"prompt": "reference_math"}  # the study's profile: reference

    def __init__(self, path: str | None = None, train_path: str | None = None, subjects: list | None = None,
                 levels: list | None = None, exclude: str | list | None = None, math500_path: str | None = None,
                 prompt: str = "paper_math"):
        unknown = [s for s in subjects or () if s not in SUBJECTS]
        if unknown:
            raise UsageError(f"unknown MATH subject '{unknown[0]}': valid ones are {', '.join(SUBJECTS)}")
        self.levels = self._levels(levels)
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
        bad = [e for e in self.exclude if e not in EXCLUSIONS]
        if bad:
            raise UsageError(f"unknown exclude '{bad[0]}': valid ones are {', '.join(EXCLUSIONS)}")
        self.math500_path = math500_path
        self.subjects = list(subjects) if subjects else None
        source = DataSource(path=path, train_path=train_path) if path is not None else _Subjects(
            self.subjects or SUBJECTS)
        super().__init__(source, MathGrader(), question_field="problem", answer_field="solution", prompt=prompt)
        self.excluded = 0  # train problems dropped by the exclusion rule (after load)

    @staticmethod
    def _levels(levels) -> set[int] | None:
        if levels is None:
            return None
        values = levels if isinstance(levels, list) else [levels]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 5 for v in values):
            raise UsageError(f"levels must be a list of integers 1-5, got {levels!r}")
        return set(values)

    @property
    def splits(self):
        return ("test", "train")

    def rows(self, split):
        rows = self.source.rows(split)
        if self.subjects and self.source.path is not None:
            self.source.require_field(rows, "type", "subject")
            wanted = {s.replace("_", " ") for s in self.subjects}
            rows = [r for r in rows if str(r.values["type"]).strip().lower() in wanted]
        if self.levels is not None:
            self.source.require_field(rows, "level", "level")
            rows = [r for r in rows if _level(r.values["level"]) in self.levels]
        if split == "train" and "math500" in self.exclude:
            evaluation = self._math500_keys()
            kept = [r for r in rows if problem_key(r.values.get("problem", "")) not in evaluation]
            self.excluded = len(rows) - len(kept)
            print(f"math: exclude=math500 dropped {self.excluded} of {len(rows)} train problems", file=sys.stderr)
            rows = kept
        return rows

    def _math500_keys(self) -> set[str]:
        return {problem_key(p["question"]) for p in Math500(path=self.math500_path).load()}

    def gold_text(self, row):
        return last_boxed(str(row.values.get("solution") or ""))

    def problem_of(self, row):
        problem = super().problem_of(row)
        given = row.values.get("unique_id") or row.values.get("id")
        problem["id"] = str(given) if given else question_id(problem["question"])
        problem["level"], problem["type"] = row.values.get("level"), row.values.get("type")
        return problem


def _level(value) -> int | None:
    match = re.search(r"\d", str(value))
    return int(match.group()) if match else None
