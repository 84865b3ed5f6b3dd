"""reasoning-gym task families, generated locally from a seed and graded by their own scorers.

    task = get_task("basic_arithmetic")                       # 2 one-digit terms, + and -
    task = get_task("reasoning_gym", dataset="chain_sum", min_terms=2, max_terms=3)
    train = task.load(limit=200, split="train")               # disjoint from the test split

The prompt is the bare question. The answer is the last number in the completion
(the families here have numeric answers), and only that extracted answer is passed
to the family's scorer; reasoning-gym gives partial credit for near misses, so only a
score of 1.0 counts as correct.
"""

from __future__ import annotations

import hashlib
import re

from ..errors import UsageError
from .base import Task, take

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# Settings under which SmolLM2-135M-Instruct has non-trivial accuracy (ARCHITECTURE.md).
BASIC_ARITHMETIC = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ("+", "-")}
DEFAULT_SIZE = 1000


class ReasoningGym(Task):
    splits = ("test", "train")

    def __init__(self, dataset: str = "basic_arithmetic", size: int = DEFAULT_SIZE, **options):
        try:
            import reasoning_gym
        except ImportError:
            raise UsageError("reasoning-gym tasks need the package reasoning-gym: pip install reasoning-gym") from None
        if dataset not in reasoning_gym.factory.DATASETS:
            raise UsageError(f"unknown reasoning-gym dataset '{dataset}': valid ones are "
                             f"{', '.join(sorted(reasoning_gym.factory.DATASETS))}")
        self.name = dataset
        self.dataset = dataset
        self.size = size
        self.options = options
        self._scorer_data = None

    def _generate(self, seed: int):
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(self.dataset, size=self.size, seed=seed, **self.options)
        except (TypeError, ValueError, AssertionError) as err:
            raise UsageError(f"bad options for reasoning-gym '{self.dataset}': {err}") from None

    def load(self, limit=None, seed=0, split="test"):
        self.check_split(split)
        # A question belongs to one split by a hash of its text, so the splits never share a
        # problem even in small spaces (2 one-digit terms have ~700 distinct questions); the
        # seed picks which generated questions are drawn.
        data = self._generate(seed * 2 + (1 if split == "test" else 2))
        problems, seen = [], set()
        for i, entry in enumerate(data):
            question = entry["question"]
            if question in seen or question_split(question) != split:
                continue
            seen.add(question)
            problems.append({"id": f"{split}-{seed}-{i}", "question": question, "answer": entry["answer"],
                             "entry": {k: entry[k] for k in ("question", "answer", "metadata")}})
        return take(problems, limit)

    def prompt_text(self, problem):
        return problem["question"]

    def extract_answer(self, completion):
        numbers = NUMBER.findall(completion)
        return numbers[-1] if numbers else None

    def grade(self, problem, completion):
        answer = self.extract_answer(completion)
        if answer is None:
            return 0.0
        score = self._scorer().score_answer(answer, problem["entry"])
        return 1.0 if score >= 1.0 else 0.0

    def _scorer(self):
        # score_answer is a method of the dataset object but reads only its arguments.
        if self._scorer_data is None:
            self._scorer_data = self._generate(1)
        return self._scorer_data


def question_split(question: str, test_fraction: float = 0.3) -> str:
    """'test' for a stable ~30% of all possible questions, 'train' for the rest."""
    bucket = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=4).digest(), "little")
    return "test" if bucket % 1000 < test_fraction * 1000 else "train"


def basic_arithmetic(**options) -> ReasoningGym:
    return ReasoningGym("basic_arithmetic", **(BASIC_ARITHMETIC | options))
