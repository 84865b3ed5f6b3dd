"""What every task provides: problems, a prompt, answer extraction and one grader.

The grader is the single definition of "correct": evaluation records it and the GRPO
reward calls the very same `grade`, so the two cannot drift apart.
"""

from __future__ import annotations

from sharpen.errors import UsageError


class Task:
    """A benchmark: `load` problems, build a `prompt`, `extract_answer`, `grade` a completion."""

    name: str = ""
    splits: tuple[str, ...] = ("test",)  # tasks with a training split list "train" too
    # Bump when grade() or extract_answer() changes what they return: records graded under another
    # version are not mixed with new ones (a resumed run under another version is refused).
    grader_revision: int = 1
    grader_libraries: tuple[str, ...] = ()  # packages whose code decides the verdict

    @property
    def grader_version(self) -> str:
        """`<task>/<revision>` plus the versions of the libraries the grader calls (looked up once: every
        record carries it)."""
        if getattr(self, "_grader_version", None) is None:
            self._grader_version = self._library_versions()
        return self._grader_version

    def _library_versions(self) -> str:
        from importlib import metadata

        parts = [f"{self.name}/{self.grader_revision}"]
        for package in self.grader_libraries:
            try:
                parts.append(f"{package}=={metadata.version(package)}")
            except metadata.PackageNotFoundError:
                parts.append(f"{package}==absent")
        return " ".join(parts)

    def load(self, limit: int | None = None, seed: int = 0, split: str = "test") -> list[dict]:
        """Problems as dicts with at least `id` and `answer` (the gold answer)."""
        raise NotImplementedError

    def prompt_text(self, problem: dict) -> str:
        """The instruction for one problem, before any chat template."""
        raise NotImplementedError

    def prompt(self, problem: dict, tokenizer=None, chat: bool = False) -> str:
        """The text fed to the model; chat=True wraps it in the tokenizer's chat template."""
        text = self.prompt_text(problem)
        return apply_chat(tokenizer, text) if chat else text

    def extract_answer(self, completion: str) -> str | None:
        """The final answer a completion commits to (None when it gives none)."""
        raise NotImplementedError

    def grade(self, problem: dict, completion: str) -> float:
        """A score in [0, 1]; 1.0 means correct."""
        raise NotImplementedError

    def grade_all(self, problem: dict, completion: str) -> dict[str, float]:
        """Scores under every answer extraction the task offers ({} when it has one): records keep them
        all so the report can show where the extractions disagree; `grade` is the task's chosen one."""
        return {}

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise UsageError(f"task '{self.name}' has no split '{split}': it has {', '.join(self.splits)}")


def apply_chat(tokenizer, text: str) -> str:
    """`text` as one user turn of the tokenizer's chat template, ready for the reply."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UsageError("chat prompts need a tokenizer with a chat template; this model has none")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def take(problems: list[dict], limit: int | None) -> list[dict]:
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be >= 1 or None, got {limit}")
    return problems if limit is None else problems[:limit]
