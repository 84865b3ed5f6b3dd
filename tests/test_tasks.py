"""Tasks: data, prompts and graders of MATH500, HumanEval and reasoning-gym."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from sharpen.errors import UsageError
from sharpen.tasks import get_task
from sharpen.tasks.math500 import answers_match, last_boxed

MATH500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "MATH500.json"
if not MATH500.exists():  # the data ships beside the repository; tests may also run elsewhere
    MATH500 = Path("/work/shared/data/MATH500.json")


def test_get_task_rejects_unknown_names_and_options():
    with pytest.raises(UsageError, match="valid tasks are .*humaneval"):
        get_task("nope")
    with pytest.raises(UsageError, match="no option colour"):
        get_task("humaneval", colour="red")


# ---- MATH500 ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def math500():
    return get_task("math500", data_path=str(MATH500))


def test_every_math500_gold_answer_grades_correct_when_boxed(math500):
    problems = math500.load()
    assert len(problems) == 500 and len({p["id"] for p in problems}) == 500
    wrong = [p["id"] for p in problems if math500.grade(p, f"So the answer is $\\boxed{{{p['answer']}}}$.") != 1.0]
    assert wrong == []


@pytest.mark.parametrize("gold,predicted,expected", [
    ("\\frac12", "0.5", True),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
    ("\\frac{1}{2}", " \\frac {1} {2} ", True),
    ("3\\sqrt{2}", "3 \\sqrt 2", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("\\frac12", "\\frac13", False),
    ("10", "100", False),
    ("x^2+1", "x^2-1", False),
])
def test_equivalent_forms(gold, predicted, expected):
    assert answers_match(gold, predicted) is expected


def test_math500_extraction_and_wrong_answers(math500):
    problem = {"id": "t", "question": "?", "answer": "\\frac{1}{2}"}
    assert last_boxed("first \\boxed{3} then \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert last_boxed("no answer here") is None
    assert last_boxed("cut \\boxed{\\frac{1}{") is None
    assert math500.grade(problem, "The answer is \\boxed{\\frac{1}{2}}") == 1.0
    assert math500.grade(problem, "The answer is \\boxed{2}") == 0.0
    assert math500.grade(problem, "The answer is 1/2") == 0.0  # the paper's rule: the last \boxed{}
    assert "Please reason step by step" in math500.prompt(math500.load(limit=1)[0])


def test_math500_grading_off_the_main_thread_is_bounded():
    verdicts = []
    worker = threading.Thread(target=lambda: verdicts.extend([answers_match("\\frac12", "0.5"),
                                                               answers_match("2", "3")]))
    worker.start()
    worker.join(timeout=60)
    assert verdicts == [True, False]


def test_math500_bad_data_files(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        get_task("math500", data_path=str(tmp_path / "missing.json")).load()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        get_task("math500", data_path=str(bad)).load()
    bad.write_text(json.dumps([{"prompt": "1+1?"}]))
    with pytest.raises(UsageError, match="answer"):
        get_task("math500", data_path=str(bad)).load()
    bad.write_text("[]")
    with pytest.raises(UsageError, match="no problems"):
        get_task("math500", data_path=str(bad)).load()
    jsonl = tmp_path / "ok.jsonl"
    jsonl.write_text(json.dumps({"problem": "1+1?", "answer": "2", "unique_id": "a"}) + "\n")
    assert get_task("math500", data_path=str(jsonl)).load() == [{"id": "a", "question": "1+1?", "answer": "2"}]


# ---- HumanEval ----------------------------------------------------------------------------
# In tests/test_code_sandbox.py: canonical solutions, wrong ones, gaming programs, sandbox escapes.


# ---- reasoning-gym ------------------------------------------------------------------------

def test_reasoning_gym_splits_are_disjoint_and_seeded():
    task = get_task("basic_arithmetic")
    test, train, validation = task.load(), task.load(split="train"), task.load(split="validation")
    assert test and train and validation
    questions = [{p["question"] for p in split} for split in (test, train, validation)]
    assert not questions[0] & questions[1] and not questions[0] & questions[2] and not questions[1] & questions[2]
    assert len(questions[2]) < len(questions[0]) < len(questions[1])
    assert [p["question"] for p in task.load(limit=20)] == [p["question"] for p in get_task("basic_arithmetic").load(limit=20)]
    assert [p["question"] for p in task.load(limit=20, seed=1)] != [p["question"] for p in task.load(limit=20)]


def test_reasoning_gym_grading_uses_the_last_number():
    task = get_task("basic_arithmetic")
    problem = task.load(limit=1)[0]
    answer = problem["answer"]
    assert task.grade(problem, f"Let me think. 1 + 1 = 2, so the result is {answer}") == 1.0
    assert task.grade(problem, f"{answer} is wrong, it is {int(answer) + 1}") == 0.0
    assert task.grade(problem, "no idea") == 0.0
    assert task.extract_answer("x = -12.") == "-12"


def test_strict_extraction_needs_the_declared_final_answer():
    strict = get_task("basic_arithmetic", answer_format="answer_is", extraction="strict")
    flexible = get_task("basic_arithmetic", answer_format="answer_is")
    problem = strict.load(limit=1)[0]
    answer = problem["answer"]
    assert strict.prompt_text(problem).endswith('Finish with "The answer is <number>."')
    assert flexible.prompt_text(problem) == strict.prompt_text(problem)
    assert get_task("basic_arithmetic").prompt_text(problem) == problem["question"]  # the bare question by default
    # The rambling case from a GRPO rollout: text cut off at the length limit whose last number matches.
    rambling = f"4 feet. My step is 1.7% over 10 feet. So the distance is {answer}"
    assert flexible.grade(problem, rambling) == 1.0 and strict.grade(problem, rambling) == 0.0
    assert strict.grade_all(problem, rambling) == {"flexible": 1.0, "strict": 0.0}
    assert strict.grade(problem, f"First 1 + 1 = 2. The answer is {answer}.") == 1.0
    assert strict.grade(problem, f"The answer is {answer}. No wait, the answer is {int(answer) + 1}.") == 0.0
    assert strict.extract_answer(f"The answer is: {answer}") == answer
    boxed = get_task("basic_arithmetic", answer_format="boxed", extraction="strict")
    assert boxed.grade(problem, f"so \\boxed{{{answer}}}") == 1.0 and boxed.grade(problem, answer) == 0.0
    assert get_task("basic_arithmetic").grade_all(problem, answer) == {}  # one extraction: no verdicts
    for options, message in (({"extraction": "strict"}, "needs an answer_format"),
                             ({"answer_format": "latex"}, "unknown answer_format 'latex'"),
                             ({"extraction": "loose"}, "unknown extraction 'loose'")):
        with pytest.raises(UsageError, match=message):
            get_task("basic_arithmetic", **options)


def test_reasoning_gym_families_and_options():
    chain = get_task("reasoning_gym", dataset="chain_sum", min_terms=2, max_terms=3)
    problem = chain.load(limit=1)[0]
    assert chain.grade(problem, problem["answer"]) == 1.0
    with pytest.raises(UsageError, match="unknown reasoning-gym dataset"):
        get_task("reasoning_gym", dataset="nope")
    with pytest.raises(UsageError, match="no split"):
        get_task("humaneval").load(split="train")


def test_missing_reasoning_gym_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import now raises ImportError
    with pytest.raises(UsageError, match="pip install reasoning-gym"):
        get_task("basic_arithmetic")


def test_chat_prompts(tokenizer):
    task = get_task("basic_arithmetic")
    problem = task.load(limit=1)[0]
    assert task.prompt(problem) == problem["question"]
    with pytest.raises(UsageError, match="chat template"):
        task.prompt(problem, tokenizer, chat=True)  # the character tokenizer has no template
    tokenizer.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    assert task.prompt(problem, tokenizer, chat=True) == f"<{problem['question']}>"
