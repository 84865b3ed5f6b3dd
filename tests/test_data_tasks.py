"""Data tasks from files: `file` (any fields, prompt, grader), gpqa, math, gsm8k; loading, splits, grading, bad input.

    python -m pytest -q tests/test_data_tasks.py       # ~2 minutes on 2 cores (GRPO through a file task included)

Every test writes its own small files in the real formats (a GPQA-style CSV, MATH- and GSM8K-style
JSONL, Parquet, a CSV with missing fields), so nothing depends on the network.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from sharpen.errors import UsageError
from sharpen.cli import main
from sharpen.tasks import get_task
from sharpen.tasks.graders import get_grader
from conftest import char_tokenizer, tiny_llama
from test_hardening import cli_error

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def gpqa_csv(path: Path, n: int = 20) -> Path:
    header = ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
              "Incorrect Answer 3", "Subdomain"]
    rows = [[f"rec{i:03d}", f"Which value is right for item {i}?", f"right {i}", f"wrong {i}a", f"wrong {i}b",
             f"wrong {i}c", "Physics"] for i in range(n)]
    return write_csv(path, header, rows)


def math_rows(split: str, n: int) -> list[dict]:
    return [{"problem": f"{split} problem {i}: compute {i} / {i + 2}.",
             "solution": f"Divide: the answer is $\\boxed{{\\frac{{{i}}}{{{i + 2}}}}}$.",
             "level": f"Level {1 + i % 5}", "type": "Algebra" if i % 2 else "Number Theory"} for i in range(n)]


def gsm8k_rows(split: str, n: int) -> list[dict]:
    return [{"question": f"{split}: Ann has {i} apples and buys {1000 + i}. How many now?",
             "answer": f"She has {i} + {1000 + i} = {1000 + 2 * i} apples.\n#### {1000 + 2 * i:,}"} for i in range(n)]


# ---- loading and splits ------------------------------------------------------------------------

def test_a_file_with_a_split_field_two_files_or_a_hash_split(tmp_path):
    rows = [{"q": f"what is {i} + {i}?", "a": str(2 * i), "part": "train" if i % 4 else "test"} for i in range(40)]
    by_field = get_task("file", path=str(write_jsonl(tmp_path / "qa.jsonl", rows)), question_field="q",
                        answer_field="a", split_field="part", grader="number")
    assert by_field.splits == ("test", "train")
    test, train = by_field.load(split="test"), by_field.load(split="train")
    assert [p["question"] for p in test] == [r["q"] for r in rows if r["part"] == "test"]
    assert len(train) == 30 and not {p["id"] for p in test} & {p["id"] for p in train}

    two = get_task("file", path=str(write_jsonl(tmp_path / "test.jsonl", rows[:5])),
                   train_path=str(write_jsonl(tmp_path / "train.jsonl", rows[5:])), question_field="q",
                   answer_field="a", grader="number")
    assert [len(two.load(split=s)) for s in ("test", "train")] == [5, 35]

    many = [{"question": f"question number {i}", "answer": "x"} for i in range(2000)]
    path = write_jsonl(tmp_path / "many.jsonl", many)
    hashed = get_task("file", path=str(path), test_fraction=0.2, validation_fraction=0.1)
    sizes = {s: len(hashed.load(split=s)) for s in hashed.splits}
    assert hashed.splits == ("test", "validation", "train") and sum(sizes.values()) == 2000
    assert abs(sizes["test"] - 400) < 60 and abs(sizes["validation"] - 200) < 45  # ~4 sigma
    # A row's split depends on its question alone: the same split from a shuffled file, another from another seed.
    shuffled = get_task("file", path=str(write_jsonl(tmp_path / "shuffled.jsonl", many[::-1])), test_fraction=0.2,
                        validation_fraction=0.1)
    assert {p["id"] for p in shuffled.load(split="test")} == {p["id"] for p in hashed.load(split="test")}
    reseeded = get_task("file", path=str(path), test_fraction=0.2, validation_fraction=0.1, split_seed=1)
    assert {p["id"] for p in reseeded.load(split="test")} != {p["id"] for p in hashed.load(split="test")}
    # A single file without a split rule is all test: evaluating it never drops a row.
    whole = get_task("file", path=str(path))
    assert whole.splits == ("test",) and len(whole.load()) == 2000


def test_every_format_loads_the_same_problems(tmp_path):
    import pandas as pd

    rows = [{"id": f"p{i}", "question": f"Spell {i}", "answer": f"00{i}"} for i in range(6)]
    frame = pd.DataFrame(rows)
    files = {"jsonl": write_jsonl(tmp_path / "a.jsonl", rows), "json": tmp_path / "a.json",
             "csv": tmp_path / "a.csv", "parquet": tmp_path / "a.parquet"}
    files["json"].write_text(json.dumps(rows))
    frame.to_csv(files["csv"], index=False)
    frame.to_parquet(files["parquet"])
    loaded = {kind: get_task("file", path=str(f), id_field="id").load() for kind, f in files.items()}
    for kind, problems in loaded.items():
        # CSV cells stay strings: "001" is not read as the number 1.
        assert [(p["id"], p["question"], p["answer"]) for p in problems] == \
               [(r["id"], r["question"], r["answer"]) for r in rows], kind


def test_ids_come_from_a_hash_of_the_question_and_the_template_reads_any_field(tmp_path):
    rows = [{"question": "2+2?", "answer": "4", "topic": "sums"}, {"question": "3+3?", "answer": "6", "topic": "sums"}]
    task = get_task("file", path=str(write_jsonl(tmp_path / "a.jsonl", rows)), grader="number",
                    prompt="[{topic}] {question} Put it in \\boxed{} and use {{braces}}.")
    first = task.load()
    again = get_task("file", path=str(write_jsonl(tmp_path / "b.jsonl", rows[::-1])), grader="number").load()
    assert {p["id"] for p in first} == {p["id"] for p in again} and first[0]["id"] != first[1]["id"]
    assert task.prompt(first[0]) == "[sums] 2+2? Put it in \\boxed{} and use {braces}."
    assert get_task("file", path=str(tmp_path / "a.jsonl"), prompt="paper_math").prompt(first[0]) == (
        "Can you solve the following math problem? 2+2? Please reason step by step, and put your final answer "
        "within \\boxed{}.")
    # The reference code's literal text: its constant "\\boxed{{}}" was never formatted.
    assert get_task("file", path=str(tmp_path / "a.jsonl"), prompt="reference_math").prompt(first[0]).endswith(
        "within \\boxed{{}}.")


def test_gpqa_shuffles_choices_per_problem_uniformly_and_stably(tmp_path):
    task = get_task("gpqa", path=str(gpqa_csv(tmp_path / "gpqa_diamond.csv")))
    problems = task.load()
    assert len(problems) == 20 and problems[0]["id"] == "rec000"
    for p in problems:
        prompt = task.prompt(p)
        # The gold letter labels the correct answer's text, and every choice is offered once.
        assert f"{p['answer']}) right {p['id'][3:].lstrip('0') or '0'}\n" in prompt + "\n"
        assert prompt.startswith("Answer the following multiple choice question.") and "'\\boxed{A}'" in prompt
    # Stable: the same letters from a file in another order; selectable by folder + subset name.
    rows = list(csv.reader(open(tmp_path / "gpqa_diamond.csv")))
    write_csv(tmp_path / "shuffled.csv", rows[0], rows[1:][::-1])
    shuffled = {p["id"]: p["answer"] for p in get_task("gpqa", path=str(tmp_path / "shuffled.csv")).load()}
    assert shuffled == {p["id"]: p["answer"] for p in problems}
    assert get_task("gpqa", path=str(tmp_path), subset="diamond").load() == problems
    # Uniform: over 800 problems each letter is gold about 200 times (chi-square, 3 degrees of freedom).
    from scipy.stats import chisquare

    many = get_task("gpqa", path=str(gpqa_csv(tmp_path / "many.csv", 800))).load()
    counts = Counter(p["answer"] for p in many)
    assert set(counts) == set("ABCD") and chisquare([counts[c] for c in "ABCD"]).pvalue > 1e-3
    # A broken variant (gold always first, as an unshuffled file would be) is what the test rejects.
    assert chisquare([800, 0, 0, 0]).pvalue < 1e-3


def test_math_gold_is_the_last_boxed_and_exclude_drops_math500_problems(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", math_rows("test", 6))
    train_rows = math_rows("train", 10)
    math500 = tmp_path / "math500.json"
    # Two train problems are MATH500 problems (white space differs): exclude=math500 drops exactly those.
    math500.write_text(json.dumps([{"problem": "  " + train_rows[3]["problem"].replace(" ", "  "), "answer": "x",
                                    "unique_id": "a"}, {"problem": train_rows[7]["problem"], "answer": "y",
                                                        "unique_id": "b"}]))
    train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    task = get_task("math", path=str(test), train_path=str(train))
    assert [p["answer"] for p in task.load()][:2] == ["\\frac{0}{2}", "\\frac{1}{3}"]
    assert len(task.load(split="train")) == 10
    kept = get_task("math", path=str(test), train_path=str(train), exclude="math500", math500_path=str(math500))
    questions = [p["question"] for p in kept.load(split="train")]
    assert len(questions) == 8 and train_rows[3]["problem"] not in questions and kept.excluded == 2
    assert len(kept.load(split="test")) == 6  # the rule touches the train split only
    levels = get_task("math", path=str(test), train_path=str(train), levels=[1, 2], subjects=["algebra"])
    assert [p["level"] for p in levels.load(split="train")] == ["Level 2", "Level 1"]  # rows 1 and 5
    # Graded by math500's grader: equivalent forms agree.
    problem = task.load()[1]
    assert task.grade(problem, "so \\boxed{\\dfrac{1}{3}}") == 1.0 and task.grade(problem, "\\boxed{0.3}") == 0.0
    assert task.prompt(problem).startswith("Can you solve the following math problem? test problem 1")


def test_gsm8k_gold_follows_the_hashes_and_is_graded_by_number(tmp_path):
    task = get_task("gsm8k", path=str(write_jsonl(tmp_path / "test.jsonl", gsm8k_rows("test", 4))),
                    train_path=str(write_jsonl(tmp_path / "train.jsonl", gsm8k_rows("train", 8))))
    problems = task.load()
    assert [p["answer"] for p in problems] == ["1000", "1002", "1004", "1006"] and len(task.load(split="train")) == 8
    assert task.grade(problems[1], "1 + 1001 = 1,002 apples") == 1.0
    assert task.grade(problems[1], "The answer is 1002.00") == 1.0
    assert task.grade(problems[1], "1002 apples, minus 1 eaten: 1001") == 0.0  # the last number counts


# ---- graders -------------------------------------------------------------------------------------

@pytest.mark.parametrize("grader, gold, completion, expected", [
    ("math", "\\frac{1}{2}", "so \\boxed{0.5}", 1.0),
    ("math", "\\frac{1}{2}", "so \\boxed{\\frac{1}{3}}", 0.0),
    ("math", "3", "no box: 3", 0.0),
    ("number", "1024", "total: 1,024.", 1.0),
    ("number", "-3", "it is -3", 1.0),
    ("number", "12.5", "$12.50", 1.0),
    ("number", "7", "7 then 8", 0.0),
    ("exact", "Paris", "The answer is paris.", 1.0),
    ("exact", "Paris", "\\boxed{ PARIS }", 1.0),
    ("exact", "Paris", "The answer is Lyon", 0.0),
    ("choice", "C", "Thinking...\n\\boxed{C}", 1.0),
    ("choice", "C", "so the answer is (C).", 1.0),
    ("choice", "C", "A ball falls. B) is wrong, (C) fits", 1.0),
    ("choice", "A", "A ball falls; nothing chosen", 0.0),  # an article is not a choice
    ("choice", "C", "\\boxed{B}", 0.0),
])
def test_graders_on_right_wrong_and_equivalent_answers(grader, gold, completion, expected):
    g = get_grader(grader)
    assert g.grade({"answer": g.gold(gold)}, completion) == expected


def test_the_code_grader_runs_the_tests_in_the_sandbox(tmp_path):
    rows = [{"prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "test": "def check(f):\n    assert f(2, 3) == 5\n",
             "entry_point": "add"}]
    task = get_task("file", path=str(write_jsonl(tmp_path / "code.jsonl", rows)), grader="code",
                    question_field="prompt", test_field="test", entry_point_field="entry_point")
    problem = task.load()[0]
    assert task.prompt(problem) == rows[0]["prompt"]  # a base model continues the function body
    assert task.grade(problem, "    return a + b\n") == 1.0
    assert task.grade(problem, "    return a - b\n") == 0.0
    assert task.grade(problem, "    print('passed')\n    return 0\n") == 0.0  # printing decides nothing
    assert "grader=code sandbox=" in task.grader_version


def test_a_custom_answer_pattern_reads_the_answer(tmp_path):
    grader = get_grader("math", answer_pattern=r"Final: (\S+)")
    assert grader.grade({"answer": "4"}, "Final: 3 ... Final: 4") == 1.0
    assert grader.grade({"answer": "4"}, "\\boxed{4}") == 0.0


# ---- bad input -----------------------------------------------------------------------------------

def test_bad_files_and_options_are_one_line_errors(tmp_path):
    missing = write_csv(tmp_path / "missing.csv", ["question", "answer", "note"],
                        [["1+1?", "2", "x"], ["2+2?", "", "y"], ["3+3?", "6", ""]])
    complete = write_csv(tmp_path / "complete.csv", ["question", "answer", "note"], [["1+1?", "2", "x"], ["3+3?", "6", ""]])
    cases = [
        (dict(path=str(tmp_path / "nope.jsonl")), "does not exist"),
        (dict(path=str(write_jsonl(tmp_path / "x.txt", []))), "accepted formats"),
        (dict(path=str(missing), question_field="prompt"), "no field 'prompt' (the question field); its fields are "
                                                           "answer, note, question"),
        (dict(path=str(missing)), "1 of 3 rows have no value for 'answer'"),
        (dict(path=str(complete), prompt="{question} ({note})"), "1 of 2 rows have no value for 'note' (named by "
                                                                  "the prompt template), e.g. row 2"),
        (dict(path=str(complete), prompt="{question} {level}"), "names the field 'level', which is not in the file; "
                                                                "its fields are answer, note, question"),
        (dict(path=str(missing), grader="nope"), "unknown grader 'nope': valid graders are math, number"),
        (dict(path=str(missing), prompt="nope"), "unknown prompt preset 'nope'"),
        (dict(path=str(missing), test_fraction=1.5), "test_fraction must be"),
        (dict(path=str(missing), split_field="question", train_path=str(missing)), "one way to split"),
    ]
    for options, message in cases:
        with pytest.raises(UsageError, match=None) as err:
            get_task("file", **options).load()
        assert message in str(err.value) and "\n" not in str(err.value), (options, str(err.value))
    words = write_jsonl(tmp_path / "words.jsonl", [{"question": "q", "answer": "seven"}, {"question": "r",
                                                                                         "answer": "8"}])
    with pytest.raises(UsageError, match=r"number grader cannot read the answer \('answer'\) of 1 of 2 rows, "
                                         r"e.g. row 1: 'seven'"):
        get_task("file", path=str(words), grader="number").load()
    with pytest.raises(UsageError, match="the split field 'answer' names none of test, validation, train"):
        get_task("file", path=str(words), split_field="answer").load(split="test")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UsageError, match="split 'train' holds no rows"):
        get_task("file", path=str(words), train_path=str(tmp_path / "empty.jsonl")).load(split="train")
    nobox = write_jsonl(tmp_path / "nobox.jsonl", [{"problem": "p", "solution": "no box here"}])
    with pytest.raises(UsageError, match="math grader cannot read the answer"):
        get_task("math", path=str(nobox)).load()


def test_the_cli_refuses_bad_data_before_writing_anything(tmp_path, tiny_checkpoint, capsys):
    data = write_csv(tmp_path / "qa.csv", ["question", "answer"], [["1+1?", "2"]])
    out = tmp_path / "run"
    for extra, needle in ((["grader=number", "question_field=q"], "no field 'q'"),
                          (["grader=shout"], "unknown grader 'shout'")):
        cli_error(capsys, "sample", "--model", tiny_checkpoint, "--task", "file", "--task-args", f"path={data}",
                  *extra, "--output-dir", out, needles=(needle,))
    assert not out.exists()


# ---- end to end: sharpen sample and sharpen study on each task -----------------------------------

def task_files(tmp_path: Path) -> dict[str, dict]:
    """Task arguments for each data task, from small files in its real format."""
    qa = [{"question": f"{i}+{i}=", "answer": str(2 * i), "split": "train" if i % 2 else "test"} for i in range(8)]
    return {
        "file": {"path": str(write_jsonl(tmp_path / "qa.jsonl", qa)), "split_field": "split", "grader": "number"},
        "gpqa": {"path": str(gpqa_csv(tmp_path / "gpqa.csv", 4))},
        "math": {"path": str(write_jsonl(tmp_path / "mt.jsonl", math_rows("test", 3))),
                 "train_path": str(write_jsonl(tmp_path / "mtr.jsonl", math_rows("train", 3)))},
        "gsm8k": {"path": str(write_jsonl(tmp_path / "gt.jsonl", gsm8k_rows("test", 3))),
                  "train_path": str(write_jsonl(tmp_path / "gtr.jsonl", gsm8k_rows("train", 3)))},
    }


@pytest.fixture
def long_checkpoint(tmp_path):
    """A tiny model whose context holds GPQA's long prompt (over 300 characters)."""
    path = tmp_path / "tiny-long"
    tiny_llama(max_position_embeddings=1024).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("task", ["file", "gpqa", "math", "gsm8k"])
def test_sample_and_study_run_on_each_data_task(tmp_path, long_checkpoint, task, capsys):
    import yaml

    from sharpen.runs.records import read_records

    args = task_files(tmp_path)[task]
    out = tmp_path / "sample"
    code = main(["sample", "--model", str(long_checkpoint), "--task", task, "--task-args",
                 *[f"{k}={v}" for k, v in args.items()], "--num-problems", "2", "--num-samples", "2",
                 "--max-new-tokens", "4", "--output-dir", str(out)])
    records = read_records(out / "samples" / "base.jsonl")
    assert code == 0 and len(records) == 4 and records[0]["grader"].startswith(f"{task}/")
    assert records[0]["profile"] == "default"
    config = {"name": f"s-{task}", "model": str(long_checkpoint), "task": task, "task_args": args,
              "methods": ["base", "low_temp"], "num_problems": 2, "num_samples": 2, "max_new_tokens": 4,
              "output_dir": str(tmp_path / "study"), "analysis": {"embeddings": "off"}, "wandb": {"mode": "off"}}
    if task == "math":
        config["profile"] = "reference"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    assert main(["study", "--config", str(tmp_path / "study.yaml")]) == 0
    metrics = json.loads((tmp_path / "study" / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"base", "low_temp"}
    studied = read_records(tmp_path / "study" / "samples" / "low_temp.jsonl")
    saved = json.loads((tmp_path / "study" / "samples" / "low_temp.config.json").read_text())
    if task == "math":  # each record says which profile made it; the profile's choices reached the sampler
        assert {r["profile"] for r in studied} == {"reference"} and saved["settings"]["top_k"] == 50
        assert studied[0]["prompt"].endswith("within \\boxed{{}}.")
    else:
        assert {r["profile"] for r in studied} == {"default"} and saved["settings"]["top_k"] is None


def test_a_study_trains_grpo_on_another_tasks_train_split(tmp_path):
    """grpo.task: evaluate on a test-only task (math500), train on math's train split, checked before work."""
    from sharpen.study.config import load_study_config

    files = task_files(tmp_path)
    math500 = tmp_path / "m500.json"
    math500.write_text(json.dumps([{"problem": "1+1?", "answer": "2", "unique_id": "a"}]))
    base = {"name": "s", "model": "testbed", "task": "math500", "task_args": {"path": str(math500)},
            "methods": ["base", "grpo"], "profile": "reference"}
    (tmp_path / "a.yaml").write_text(json.dumps(base | {"grpo": {"task": "math", "task_args": files["math"]}}))
    config = load_study_config(str(tmp_path / "a.yaml"))
    assert config.grpo_task == ("math", files["math"] | {"prompt": "reference_math"})
    assert config.task_args["prompt"] == "reference_math" and config.grpo_chat is True
    chats = {i.name: (i.chat, i.settings.top_k) for i in config.instances}
    assert chats == {"base": (False, 50), "grpo": (True, 50)}
    from sharpen.study.pipeline import preflight

    # grpo.config: a `sharpen grpo --config` file under the section's own keys.
    (tmp_path / "c.yaml").write_text(json.dumps(base | {"grpo": {"task": "math", "config": "grpo_gpu",
                                                                 "max_steps": 7}}))
    settings = load_study_config(str(tmp_path / "c.yaml")).grpo.settings
    assert settings["learning_rate"] == 5e-7 and settings["max_steps"] == 7
    (tmp_path / "b.yaml").write_text(json.dumps(base))
    with pytest.raises(UsageError, match="give grpo.task"):
        preflight(load_study_config(str(tmp_path / "b.yaml")))


def test_grpo_trains_on_the_testbed_through_a_file_task(tmp_path, testbed_dir):
    """The generic task's grader is GRPO's reward: on the testbed model (which solves about half) it flows."""
    from sharpen.rl import grade_reward

    testbed = get_task("testbed")
    rows = [{"question": testbed.prompt_text(p), "answer": p["answer"]} for p in testbed.load(limit=16, split="train")]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    task_args = [f"path={path}", f"train_path={path}", "grader=exact", "answer_pattern=answer (\\S+)"]
    task = get_task("file", path=str(path), train_path=str(path), grader="exact", answer_pattern=r"answer (\S+)")
    problems = task.load(split="train")
    reward = grade_reward(task.grade, problems)
    right = f"work +1 answer {problems[0]['answer']}"
    assert reward(completions=[right, "answer none"], problem_index=[0, 0], prompts=["p"] * 2,
                  completion_ids=[[1]] * 2) == [1.0, 0.0]
    out = tmp_path / "grpo"
    code = main(["grpo", "--model", str(testbed_dir), "--task", "file", "--task-args", *task_args,
                 "--output-dir", str(out), "--max_steps", "3", "--num_generations", "4",
                 "--per_device_train_batch_size", "8", "--max_completion_length", "24", "--report_to", "none",
                 "--log_completions", "false", "--logging_steps", "1"])
    assert code == 0
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    steps = [row for row in history if "reward" in row]
    assert len(steps) == 3 and sum(row["reward"] for row in steps) > 0 and any(row["reward_std"] > 0 for row in steps)
