r"""A completion as a program: the HumanEval prompt form, and the code it adds after a function stub.

    >>> program_body("add", "    return a + b\ndef unrelated():\n    pass")
    '    return a + b'
    >>> program_body("add", "Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.")
    '\ndef add(a, b):\n    return a + b\n'

Shared by the `humaneval` task and the `code` grader of user files (sharpen/tasks/graders.py);
the program then runs in the sandbox of sharpen/tasks/sandbox.py.
"""

from __future__ import annotations

import re

from .base import apply_chat

# Codex's stop sequences, plus a closing code fence (instruct models close their block).
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")
FENCED_BLOCK = re.compile(r"```(?:[ \t]*[A-Za-z0-9_+-]*)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def code_prompt(prompt: str, tokenizer=None, chat: bool = False) -> str:
    """A function stub as a raw prompt (a base model continues its body), or as a chat request for the
    whole function in one code block."""
    if not chat:
        return prompt
    text = ("Complete the following Python function. Reply with the whole function in one "
            f"```python code block.\n\n```python\n{prompt}```")
    return apply_chat(tokenizer, text)


def program_body(entry_point: str, completion: str) -> str:
    """The code appended to a problem's prompt: a continuation cut at the stop sequences, or a full
    solution (a fenced block that defines `entry_point`) placed after the prompt."""
    block = FENCED_BLOCK.search(completion)
    if block is not None:
        code = block.group(1)
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
            # A full solution redefines the function after the prompt's stub (a def whose
            # body is only its docstring is valid Python), keeping the prompt's imports.
            return "\n" + code
        completion = code
    for stop in STOP_SEQUENCES:
        cut = completion.find(stop)
        if cut != -1:
            completion = completion[:cut]
    return completion
