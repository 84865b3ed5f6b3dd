"""reasoning-gym task families, generated locally from a seed and graded by their own scorers.

    task = get_task("basic_arithmetic")                       # 2 one-digit terms, + and -
    task = get_task("basic_arithmetic", answer_format="answer_is", extraction="strict")
    task = get_task("reasoning_gym", dataset="chain_sum", min_terms=2, max_terms=3)
    train = task.load(limit=200, split="train")               # disjoint from the test and validation splits

Answers are read the way evaluation harnesses read them (lm-evaluation-harness's GSM8K):
- `flexible` (the default): the last number anywhere in the completion;
- `strict`: the last answer in the declared final-answer format, which the prompt names
  (`answer_format`: `answer_is` asks for "The answer is <number>.", `boxed` for \\boxed{}).
  A completion without one (e.g. text cut off at the length limit) is wrong.
The prompt is the bare question, plus the format instruction when `answer_format` is set;
then both verdicts are recorded (`grade_all`) and `grade` is the one `extraction` names (the
GRPO reward and the evaluation verdict). Only the extracted answer is passed to the family's
scorer; reasoning-gym gives partial credit for near misses, so only a score of 1.0 counts.
"""

from __future__ import annotations

import hashlib
import re

from sharpen.errors import UsageError
from .base import Task, take

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# answer_format -> (instruction appended to the question, pattern of a declared final answer)
ANSWER_FORMATS = {
    "answer_is": ('Finish with "The answer is <number>."',
                  re.compile(r"answer is\s*:?\s*\$?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)),
    "boxed": ("Put your final answer within \\boxed{}.", re.compile(r"\\boxed\{\s*(-?\d+(?:\.\d+)?)\s*\}")),
}
EXTRACTIONS = ("flexible", "strict")
# Settings under which SmolLM2-135M-Instruct has non-trivial accuracy (measured: see the README).
BASIC_ARITHMETIC = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ("+", "-")}
DEFAULT_SIZE = 1000


class ReasoningGym(Task):
    splits = ("test", "validation", "train")  # validation: carved out of the training questions, for recipes
    grader_libraries = ("reasoning-gym",)

    def __init__(self, dataset: str = "basic_arithmetic", size: int = DEFAULT_SIZE, answer_format: str | None = None,
                 extraction: str = "flexible", **options):
        if answer_format is not None and answer_format not in ANSWER_FORMATS:
            raise UsageError(f"unknown answer_format '{answer_format}': valid ones are {', '.join(ANSWER_FORMATS)}")
        if extraction not in EXTRACTIONS:
            raise UsageError(f"unknown extraction '{extraction}': valid ones are {', '.join(EXTRACTIONS)}")
        if extraction == "strict" and answer_format is None:
            raise UsageError(f"extraction=strict needs an answer_format the prompt declares "
                             f"({', '.join(ANSWER_FORMATS)})")
        self.answer_format, self.extraction = answer_format, extraction
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
        if self.answer_format is None:
            return problem["question"]
        return f"{problem['question']}\n{ANSWER_FORMATS[self.answer_format][0]}"

    def extract_answer(self, completion, extraction: str | None = None):
        """The answer under `extraction` (default: the task's own).

        >>> task = ReasoningGym.__new__(ReasoningGym); task.answer_format, task.extraction = "answer_is", "strict"
        >>> rambling = "4 feet. My step is 1.7% over 10 feet. So 10"   # cut off at the length limit
        >>> task.extract_answer(rambling), task.extract_answer(rambling, "flexible")
        (None, '10')
        >>> task.extract_answer("5 - -5 = 10. The answer is 10.")
        '10'
        """
        if (extraction or self.extraction) == "strict":
            found = ANSWER_FORMATS[self.answer_format][1].findall(completion)
        else:
            found = NUMBER.findall(completion)
        return found[-1] if found else None

    def _verdict(self, problem, answer) -> float:
        if answer is None:
            return 0.0
        return 1.0 if self._scorer().score_answer(answer, problem["entry"]) >= 1.0 else 0.0

    def grade(self, problem, completion):
        return self._verdict(problem, self.extract_answer(completion))

    def grade_all(self, problem, completion):
        """Both verdicts when the prompt declares a format (the report shows them when they differ)."""
        if self.answer_format is None:
            return {}
        return {e: self._verdict(problem, self.extract_answer(completion, e)) for e in EXTRACTIONS}

    def _scorer(self):
        # score_answer is a method of the dataset object but reads only its arguments.
        if self._scorer_data is None:
            self._scorer_data = self._generate(1)
        return self._scorer_data


def question_split(question: str, test_fraction: float = 0.3, validation_fraction: float = 0.1) -> str:
    """'test' for a stable ~30% of all possible questions, 'validation' for ~10%, 'train' for the rest.

    Recipes (GRPO hyperparameters, prompts) are chosen on validation, never on test.
    """
    bucket = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=4).digest(), "little") % 1000
    if bucket < test_fraction * 1000:
        return "test"
    return "validation" if bucket < (test_fraction + validation_fraction) * 1000 else "train"


def basic_arithmetic(**options) -> ReasoningGym:
    return ReasoningGym("basic_arithmetic", **(BASIC_ARITHMETIC | options))
