"""GSM8K: grade-school math word problems (Cobbe et al. 2021), train and test, graded by the last number.

    task = get_task("gsm8k", path="gsm8k_test.jsonl", train_path="gsm8k_train.jsonl")
    task = get_task("gsm8k")                  # the Hub: openai/gsm8k (config main), its train and test splits
    task = get_task("gsm8k", prompt="Q: {question}\\nA: Let's think step by step.")

Rows have `question` and `answer`, a worked solution that ends with `#### <number>`; the gold
answer is that number (commas dropped). The `number` grader reads the last number of the
completion and compares numerically, as lm-evaluation-harness's flexible extraction does.
The default prompt is the bare question plus an instruction to end with the number.
"""

from __future__ import annotations

from .datafiles import DataSource
from .file_task import DataTask
from .graders import NumberGrader

HUB_DATASET = "openai/gsm8k"
PROMPT = "{question}\nSolve it step by step, and end with the final number."


class GSM8K(DataTask):
    name = "gsm8k"

    def __init__(self, path: str | None = None, train_path: str | None = None, prompt: str = PROMPT):
        source = (DataSource(path=path, train_path=train_path) if path is not None else
                  DataSource(hub=HUB_DATASET, config="main", hub_split="test", hub_train_split="train"))
        super().__init__(source, NumberGrader(), question_field="question", answer_field="answer", prompt=prompt)

    def gold_text(self, row):
        written = str(row.values.get("answer") or "")
        return written.rsplit("####", 1)[1].strip() if "####" in written else None
