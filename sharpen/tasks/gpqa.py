"""GPQA: graduate-level multiple choice (Rein et al. 2023), the paper's prompt, graded by the choice letter.

    task = get_task("gpqa", path="gpqa_diamond.csv")          # the official CSV release
    task = get_task("gpqa", path="dataset/", subset="diamond") # a folder holding gpqa_<subset>.csv
    task = get_task("gpqa", subset="diamond")                  # the Hub dataset Idavidrein/gpqa (gated: log in)

Rows have the official columns `Question`, `Correct Answer`, `Incorrect Answer 1..3` (and
`Record ID`, used as the id when present). The four choices are shuffled by a permutation
seeded by the problem's id (or question), so the correct letter is uniform over A-D across
problems and the same in every run. The prompt is the reference implementation's
(GPQA_QUERY_TEMPLATE): the answer goes in \\boxed{LETTER}. The `choice` grader reads the letter
in the last \\boxed{}, else after the last "answer is", else the last "(X)"; records also keep
the reference's own reading (`verdicts.reference`: the last stand-alone A-D in the upper-cased
completion, which counts the article "a" as a choice).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from sharpen.errors import UsageError
from .datafiles import DataSource, Row, hash_bucket
from .file_task import DataTask
from .graders import ChoiceGrader

HUB_DATASET = "Idavidrein/gpqa"
SUBSETS = ("diamond", "main", "extended", "experts")
CHOICE_COLUMNS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
# The reference implementation's GPQA_QUERY_TEMPLATE, after its str.format.
PROMPT = ("Answer the following multiple choice question. The last line of your response should be of the "
          "following format: '\\boxed{{$LETTER}}' (without quotes) where LETTER is one of ABCD (ex. "
          "'\\boxed{{A}}'). Think step by step before answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}")


def reference_letter(completion: str) -> str | None:
    """The reference's parse_answer_gpqa: the last stand-alone A-D of the upper-cased completion."""
    found = re.findall(r"\b(A|B|C|D)\b", completion.upper())
    return found[-1] if found else None


class GPQA(DataTask):
    name = "gpqa"

    def __init__(self, path: str | None = None, subset: str = "diamond", hub_split: str = "train"):
        if subset not in SUBSETS:
            raise UsageError(f"unknown GPQA subset '{subset}': valid ones are {', '.join(SUBSETS)}")
        self.subset = subset
        if path is not None and Path(path).expanduser().is_dir():
            path = str(Path(path).expanduser() / f"gpqa_{subset}.csv")
        # GPQA has one split; the Hub names it "train", but it is an evaluation set here.
        source = (DataSource(path=path) if path is not None else
                  DataSource(hub=HUB_DATASET, config=f"gpqa_{subset}", hub_split=hub_split, hub_train_split=None))
        super().__init__(source, ChoiceGrader(), question_field="Question", answer_field="Correct Answer",
                         prompt=PROMPT)

    def required_fields(self):
        return {column: "choice" for column in CHOICE_COLUMNS} | {"Question": "question"}

    def problem_of(self, row: Row) -> dict:
        values = row.values
        question = str(values["Question"]).strip()
        pid = str(values.get("Record ID") or "").strip() or f"gpqa-{int(hash_bucket(question, 0) * 16**12):012x}"
        # A per-problem permutation: uniform and stable, independent of row order and of every other row.
        order = list(range(4))
        random.Random(f"gpqa:{pid}").shuffle(order)
        choices = [str(values[CHOICE_COLUMNS[i]]).strip() for i in order]
        letter = "ABCD"[order.index(0)]
        return {"id": pid, "question": question, "answer": letter, "num_choices": 4,
                "fields": dict(zip("ABCD", choices)) | {"question": question}}

    def grade_all(self, problem, completion):
        """The task's verdict and the reference's reading of the same completion."""
        return {"choice": self.grade(problem, completion),
                "reference": 1.0 if reference_letter(completion) == problem["answer"] else 0.0}

    def extract_answer(self, completion):
        return self.grader.extract(completion, {"num_choices": 4})
