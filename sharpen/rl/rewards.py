"""A task's grader as a TRL reward function, so the GRPO reward and the evaluation verdict are one function.

    reward = grade_reward(task.grade, problems, name="correct")
    GRPOTrainer(..., reward_funcs=reward, train_dataset=Dataset.from_dict(
        {"prompt": prompts, "problem_index": list(range(len(problems)))}))

TRL calls a reward function with the decoded `completions` and every dataset column
as a keyword argument (one value per completion), and wants one float per completion.
The dataset carries only the index of each problem: the problem dicts themselves stay
in Python (their nested metadata need not fit an Arrow schema) and reach `grade`
exactly as evaluation passes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def completion_text(completion) -> str:
    """The generated text of one completion: a string, or the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"completion must be a string or a list of chat messages, got {type(completion).__name__}")


def grade_reward(grade: Callable[[dict, str], float], problems: Sequence[dict], name: str = "correct"):
    """Wrap `grade(problem, completion) -> float` as a TRL reward reading the `problem_index` column.

    >>> problems = [{"answer": "4"}, {"answer": "7"}]
    >>> reward = grade_reward(lambda p, c: float(c.strip() == p["answer"]), problems)
    >>> reward(completions=["4", " 5", "7"], problem_index=[0, 0, 1])
    [1.0, 0.0, 1.0]
    >>> reward.__name__
    'correct'
    """

    def reward(completions: list, problem_index: list[int], **kwargs) -> list[float]:
        pairs = zip(completions, problem_index, strict=True)
        return [float(grade(problems[int(i)], completion_text(c))) for c, i in pairs]

    # TRL names the reward's metrics after the function (`rewards/<name>/mean`).
    reward.__name__ = reward.__qualname__ = name
    return reward
