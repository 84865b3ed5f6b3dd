"""`--task file`: any question/answer dataset from a local file or the Hub, with a prompt template and a grader.

    sharpen sample --task file --task-args path=data.jsonl grader=number ...
    sharpen sample --task file --task-args hub=openai/gsm8k config=main question_field=question grader=number ...
    task = get_task("file", path="qa.csv", question_field="q", answer_field="a", grader="exact",
                    prompt="Question: {q}\\nAnswer:", test_fraction=0.2)        # a seeded hash split
    task = get_task("file", path="test.parquet", train_path="train.parquet", grader="math", prompt="paper_math")
    task = get_task("file", path="code.jsonl", grader="code", question_field="prompt",
                    test_field="test", entry_point_field="entry_point")

Options:
    path / train_path / hub / config / hub_split / hub_train_split / split_field / test_fraction /
    validation_fraction / split_seed     where the rows come from and how they split (tasks/datafiles.py;
                                         `split=` is accepted for hub_split)
    question_field (question), answer_field (answer), id_field (none: ids from a hash of the question)
    prompt      a template with {question} and any other {field} ({{ }} for literal braces; \\boxed{} is
                kept as written), or a preset: plain, paper_math, reference_math
    grader      math (answer_pattern=), number, exact (answer_pattern=), choice (num_choices_field=),
                code (test_field=, entry_point_field=, timeout=, memory_mb=, sandbox=)

GRPO trains on the train split with this same grader as its reward. Before any work the task
reads every split, checks that each field it needs (and each one the template names) is in the
file, and that the grader can read every gold answer: otherwise one line names the file, the
field or the count of unreadable answers with one example.
"""

from __future__ import annotations

from sharpen.errors import UsageError
from .base import Task, take
from .code import code_prompt
from .datafiles import DataSource, Row, missing, question_id, render, template_fields
from .graders import Grader, get_grader

# The paper's wording (reference implementation, `format_prompt` with cot=True).
PAPER_MATH = ("Can you solve the following math problem? {question} Please reason step by step, and put your "
              "final answer within \\boxed{}.")
# The reference's exact text: its constants hold "\\boxed{{}}" in a plain (never formatted) string, so the
# model sees two pairs of braces.
REFERENCE_MATH = ("Can you solve the following math problem? {question} Please reason step by step, and put your "
                  "final answer within \\boxed{{{{}}}}.")
PROMPT_PRESETS = {"plain": "{question}", "paper_math": PAPER_MATH, "reference_math": REFERENCE_MATH}


def resolve_template(prompt: str) -> str:
    """A preset's template, or `prompt` itself when it names fields; UsageError otherwise."""
    if prompt in PROMPT_PRESETS:
        return PROMPT_PRESETS[prompt]
    if not isinstance(prompt, str) or not template_fields(prompt):
        raise UsageError(f"unknown prompt preset {prompt!r}: give one of {', '.join(PROMPT_PRESETS)}, or a template "
                         f"naming fields as {{question}}")
    return prompt


class DataTask(Task):
    """A task whose problems are rows of a DataSource, prompted by a template and graded by a Grader.

    Subclasses (gpqa, math, gsm8k) fix the fields and the grader and override `gold_text` (how a
    row states its answer) or `problem_of` (what a problem holds).
    """

    grader_revision = 1

    def __init__(self, source: DataSource, grader: Grader, *, question_field: str = "question",
                 answer_field: str = "answer", id_field: str | None = None, prompt: str = "plain",
                 extra_fields: dict[str, str] | None = None):
        self.source, self.grader = source, grader
        self.question_field, self.answer_field, self.id_field = question_field, answer_field, id_field
        self.template = resolve_template(prompt)
        self.extra_fields = extra_fields or {}  # problem key -> row field (the code grader's test, ...)
        self.grader_libraries = grader.libraries
        self._loaded: dict[str, list[dict]] = {}

    @property
    def splits(self) -> tuple[str, ...]:
        return self.source.splits()

    @property
    def grader_version(self) -> str:
        return f"{super().grader_version} grader={self.grader.describe()}"

    def required_fields(self) -> dict[str, str]:
        """Row field -> what it is, for every field a problem is made from."""
        fields = {self.question_field: "question", self.answer_field: "answer"}
        if self.id_field:
            fields[self.id_field] = "id"
        fields |= {field: key for key, field in self.extra_fields.items()}
        return fields

    def load(self, limit=None, seed=0, split="test"):
        self.check_split(split)
        if split not in self._loaded:
            rows = self.rows(split)
            if not rows:
                where = self.source.path or self.source.hub
                raise UsageError(f"{where}: split '{split}' holds no rows (splits here: {', '.join(self.splits)})")
            self._loaded[split] = self._problems(rows)
        return take(self._loaded[split], limit)

    def rows(self, split: str) -> list[Row]:
        return self.source.rows(split)

    def _problems(self, rows: list[Row]) -> list[dict]:
        for field, what in self.required_fields().items():
            self.source.require_field(rows, field, what)
        made = [(row, self.problem_of(row)) for row in rows]
        unreadable = [row for row, problem in made if problem["answer"] is None]
        self._check_template(made)
        if unreadable:
            first = unreadable[0]
            written = str(first.values.get(self.answer_field))
            shown = written if len(written) <= 80 else "..." + written[-77:]  # a worked answer ends with it
            raise UsageError(f"{first.where}: the {self.grader.name} grader cannot read the answer "
                             f"('{self.answer_field}') of {len(unreadable)} of {len(rows)} rows, e.g. row "
                             f"{first.index + 1}: {shown!r}; choose another grader= or fix the data")
        return [problem for _, problem in made]

    def _check_template(self, made: list[tuple[Row, dict]]) -> None:
        """Every field the prompt template names has a value in every problem."""
        where = made[0][0].where
        available = sorted({k for _, p in made for k in p["fields"]} | {"question"})
        for name in template_fields(self.template):
            if name == "question":
                continue
            if name not in available:
                raise UsageError(f"{where}: the prompt template names the field '{name}', which is not in "
                                 f"the file; its fields are {', '.join(available)}")
            lacking = [row for row, p in made if name not in p["fields"]]
            if lacking:
                raise UsageError(f"{where}: {len(lacking)} of {len(made)} rows have no value for '{name}' "
                                 f"(named by the prompt template), e.g. row {lacking[0].index + 1}")

    def gold_text(self, row: Row):
        """The row's answer as written (before the grader reads it)."""
        return row.values.get(self.answer_field)

    def problem_of(self, row: Row) -> dict:
        """One problem: id, question, answer (as the grader reads it, None when it cannot) and the other fields."""
        values = row.values
        question = str(values[self.question_field])
        problem = {key: values[field] for key, field in self.extra_fields.items()}
        problem |= {"id": str(values[self.id_field]) if self.id_field else question_id(question),
                    "question": question, "answer": self.grader.gold(self.gold_text(row)),
                    "fields": {k: v for k, v in values.items() if not missing(v)}}
        return problem

    def prompt_text(self, problem):
        return render(self.template, problem["fields"] | {"question": problem["question"]})

    def extract_answer(self, completion):
        return self.grader.extract(completion)

    def grade(self, problem, completion):
        return self.grader.grade(problem, completion)


class FileTask(DataTask):
    name = "file"

    def __init__(self, path: str | None = None, train_path: str | None = None, hub: str | None = None,
                 config: str | None = None, split: str | None = None, hub_split: str | None = None,
                 hub_train_split: str | None = "train", split_field: str | None = None,
                 test_fraction: float | None = None, validation_fraction: float = 0.0, split_seed: int = 0,
                 question_field: str = "question", answer_field: str = "answer", id_field: str | None = None,
                 prompt: str = "plain", grader: str = "exact", answer_pattern: str | None = None,
                 num_choices_field: str | None = None, test_field: str | None = None,
                 entry_point_field: str | None = None, timeout: float | None = None, memory_mb: int | None = None,
                 sandbox: str | None = None, data_path: str | None = None):
        if data_path is not None:  # the math500 spelling
            if path is not None:
                raise UsageError("give path= or its alias data_path=, not both")
            path = data_path
        if split is not None and hub_split is not None:
            raise UsageError("give hub_split= or its alias split=, not both")
        source = DataSource(path=path, train_path=train_path, hub=hub, config=config,
                            hub_split=hub_split or split or "test",
                            hub_train_split=None if hub_train_split in (None, "none") else hub_train_split,
                            split_field=split_field, test_fraction=test_fraction,
                            validation_fraction=validation_fraction, split_seed=split_seed,
                            question_field=question_field)
        extra = {}
        if grader == "code":
            if not test_field or not entry_point_field:
                raise UsageError("grader=code needs test_field= (the tests) and entry_point_field= (the function "
                                 "the tests call)")
            extra = {"test": test_field, "entry_point": entry_point_field, "prompt": question_field}
        elif test_field or entry_point_field:
            raise UsageError("test_field= and entry_point_field= go with grader=code")
        if num_choices_field:
            if grader != "choice":
                raise UsageError("num_choices_field= goes with grader=choice")
            extra["num_choices"] = num_choices_field
        options = {"answer_pattern": answer_pattern, "timeout": timeout, "memory_mb": memory_mb, "sandbox": sandbox}
        super().__init__(source, get_grader(grader, **options), question_field=question_field,
                         answer_field=answer_field, id_field=id_field, prompt=prompt, extra_fields=extra)

    def required_fields(self):
        fields = super().required_fields()
        if self.grader.name == "code":
            fields.pop(self.answer_field, None)  # code is graded by its tests: a reference solution is optional
        return fields

    def prompt(self, problem, tokenizer=None, chat=False):
        if self.grader.name == "code" and self.template == PROMPT_PRESETS["plain"]:

            return code_prompt(problem["prompt"], tokenizer, chat)  # as HumanEval prompts it
        return super().prompt(problem, tokenizer, chat)
