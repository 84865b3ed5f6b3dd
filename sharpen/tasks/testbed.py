"""The testbed task: the last digit of a sum of five digits (of twice the sum), worked step by step.

    task = get_task("testbed")                 # plain, trap and twice problems in turn (test split)
    task = get_task("testbed", kind="trap")    # trap problems only
    problems = task.load(limit=64)             # test split; split="train" for GRPO (disjoint)
    task.prompt(problems[0])                   # 'plain 0 + 4 + 5 + 2 + 2 ='
    task.grade(problems[0], "work +0 0 +4 4 +5 9 +2 1 +2 3 answer 3")   # 1.0

The train split (what GRPO trains on) mixes plain and trap problems only: twice problems, whose
right path is rare under the base model, are absent from it (`kind="twice"` asks for them).

The problems, the noisy-teacher corpus and its exact probabilities are documented in
sharpen/tasks/testbed_corpus.py; the model is built by `sharpen testbed`. The answer is the
word after the first `answer`, and only an exactly right answer scores 1.0.
"""

from __future__ import annotations

from sharpen.errors import UsageError
from .testbed_corpus import KINDS, extract_answer, generate_problems
from .base import Task, take

DEFAULT_SIZE = 1000


class Testbed(Task):
    name = "testbed"
    splits = ("test", "train")

    def __init__(self, size: int = DEFAULT_SIZE, kind: str = "mixed"):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UsageError(f"testbed option size must be an integer >= 1, got {size!r}")
        if kind not in ("mixed",) + KINDS:
            raise UsageError(f"testbed option kind must be mixed, {', '.join(KINDS[:-1])} or {KINDS[-1]}, got {kind!r}")
        self.size = size
        self.kind = kind

    def load(self, limit=None, seed=0, split="test"):
        self.check_split(split)
        count = self.size if limit is None else min(limit, self.size)
        try:
            return take(generate_problems(max(count, 1), seed=seed, split=split, kind=self.kind), limit)
        except ValueError as err:
            raise UsageError(f"testbed: {err}") from None

    def prompt_text(self, problem):
        return problem["question"]

    def extract_answer(self, completion):
        return extract_answer(completion)

    def grade(self, problem, completion):
        return 1.0 if self.extract_answer(completion) == problem["answer"] else 0.0
