"""`sharpen sample` end to end on a tiny checkpoint: records, resume after a kill, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sharpen.cli import main
from sharpen.runs.records import RecordWriter, read_records
from sharpen.sampling import vllm_engine
from sharpen.sampling.methods import get_method, register_method, unregister_method

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args) -> int:
    return main(["sample", *map(str, args)])


def base_args(checkpoint, out, *extra):
    return ["--model", checkpoint, "--task", "basic_arithmetic", "--output-dir", out, "--max-new-tokens", 8, *extra]


def test_sample_writes_graded_records_and_resumes(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(*base_args(tiny_checkpoint, out, "--num-problems", 3, "--num-samples", 2)) == 0
    records = read_records(out / "samples" / "base.jsonl")
    assert len(records) == 6
    for r in records:
        assert set(r) >= {"method", "problem_id", "sample_idx", "seed", "prompt", "completion", "completion_ids",
                          "finish_reason", "extracted_answer", "correct", "score", "num_tokens", "base_logprob_sum",
                          "cost"}
        assert r["num_tokens"] == len(r["completion_ids"]) == len(r["token_logprobs"]) <= 8
        assert r["cost"]["sampled_tokens"] == r["num_tokens"]
    assert "accuracy" in capsys.readouterr().out
    config = json.loads((out / "samples" / "base.config.json").read_text())
    assert config["run"]["model"] == str(tiny_checkpoint) and config["method"] == "base"
    # The default engine is recorded on every record but left out of the identity: older runs resume.
    assert {r["engine"] for r in records} == {"hf"} and "engine" not in config["identity"]
    assert config["grader_version"].startswith("basic_arithmetic/") and config["model_revision"]
    assert config["environment"]["libraries"]["torch"]
    sessions = [json.loads(line) for line in (out / "samples" / "base.sessions.jsonl").read_text().splitlines()]
    assert [s["records_written"] for s in sessions] == [6]

    # Asking for more samples extends the run; nothing is written twice, old lines are kept.
    assert run_cli(*base_args(tiny_checkpoint, out, "--num-problems", 4, "--num-samples", 3)) == 0
    again = read_records(out / "samples" / "base.jsonl")
    assert len(again) == 12 and again[:6] == records
    assert len({(r["problem_id"], r["sample_idx"]) for r in again}) == 12
    seeds = {r["seed"] for r in again}
    assert len(seeds) == 12  # one seed per (problem, sample)

    # Same config, different output: low_temp records go to their own file.
    assert run_cli(*base_args(tiny_checkpoint, out, "--method", "low_temp", "--num-problems", 2)) == 0
    assert {r["temperature"] for r in read_records(out / "samples" / "low_temp.jsonl")} == {0.25}


def test_records_do_not_depend_on_batch_size(tiny_checkpoint, tmp_path):
    for batch in (1, 5):
        assert run_cli(*base_args(tiny_checkpoint, tmp_path / f"b{batch}", "--num-problems", 3, "--num-samples", 2,
                                  "--batch-size", batch)) == 0
    a, b = (read_records(tmp_path / f"b{n}" / "samples" / "base.jsonl") for n in (1, 5))
    key = lambda r: (r["problem_id"], r["sample_idx"])  # noqa: E731
    assert [r["completion_ids"] for r in sorted(a, key=key)] == [r["completion_ids"] for r in sorted(b, key=key)]


def test_a_different_config_is_refused(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(*base_args(tiny_checkpoint, out, "--num-problems", 1)) == 0
    assert run_cli(*base_args(tiny_checkpoint, out, "--num-problems", 1, "--seed", 5)) == 2
    assert "other settings (seed)" in capsys.readouterr().err
    assert run_cli(*base_args(tiny_checkpoint, out, "--num-problems", 1, "--top-k", 3)) == 2
    assert "other settings (top_k)" in capsys.readouterr().err
    assert len(read_records(out / "samples" / "base.jsonl")) == 1
    # The batch size changes no record: resuming under another one is fine.
    assert run_cli(*base_args(tiny_checkpoint, out, "--num-problems", 2, "--batch-size", 1)) == 0


def test_another_grader_version_or_model_revision_is_refused(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from sharpen.tasks.reasoning_gym_tasks import ReasoningGym

    out = tmp_path / "run"
    assert run_cli(*base_args(tiny_checkpoint, out, "--num-problems", 1)) == 0
    monkeypatch.setattr(ReasoningGym, "grader_revision", 99)
    assert run_cli(*base_args(tiny_checkpoint, out, "--num-problems", 2)) == 2
    assert "another grader (basic_arithmetic/1" in capsys.readouterr().err
    monkeypatch.undo()
    config = tiny_checkpoint / "config.json"
    config.write_text(config.read_text().replace("}", ', "sharpen_note": 1}', 1)[::1])
    assert run_cli(*base_args(tiny_checkpoint, out, "--num-problems", 2)) == 2
    assert "another model revision" in capsys.readouterr().err
    assert len(read_records(out / "samples" / "base.jsonl")) == 1


def test_named_instances_keep_their_own_files(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    for name, alpha in (("lt_a2", 2), ("lt_a8", 8)):
        assert run_cli(*base_args(tiny_checkpoint, out, "--method", "low_temp", "--alpha", alpha, "--name", name,
                                  "--num-problems", 2)) == 0
    a2, a8 = (read_records(out / "samples" / f"{n}.jsonl") for n in ("lt_a2", "lt_a8"))
    assert {r["temperature"] for r in a2} == {0.5} and {r["temperature"] for r in a8} == {0.125}
    assert {r["method"] for r in a2} == {"lt_a2"}
    assert json.loads((out / "samples" / "lt_a8.config.json").read_text())["method"] == "low_temp"


@pytest.mark.parametrize("method,extra", [("base", ["--batch-size", "3"]),
                                          ("power_mh", ["--block-size", "4", "--mcmc-steps", "3", "--batch-size", "3"])])
def test_wall_seconds_of_records_add_up_to_the_elapsed_time(tiny_checkpoint, tmp_path, method, extra):
    out = tmp_path / "run"
    assert run_cli(*base_args(tiny_checkpoint, out, "--method", method, "--num-problems", 6, "--num-samples", 3,
                              "--max-new-tokens", 24, *extra)) == 0
    records = read_records(out / "samples" / f"{method}.jsonl")
    (session,) = [json.loads(x) for x in (out / "samples" / f"{method}.sessions.jsonl").read_text().splitlines()]
    total = sum(r["cost"]["wall_seconds"] for r in records)
    assert session["records_written"] == len(records) == 18
    assert abs(total - session["elapsed_seconds"]) <= 0.05 * session["elapsed_seconds"], (total, session)
    # Shares, not copies: the shares differ between records of different lengths.
    assert len({r["cost"]["wall_seconds"] for r in records}) > 1


@pytest.mark.parametrize("args,message", [
    (["--model", "{tmp}/missing"], "does not exist"),
    (["--task", "nope"], "unknown task"),
    (["--method", "nope"], "unknown method 'nope': registered methods are base, low_temp, power_mh, grpo"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
    (["--method", "low_temp", "--temperature", "0"], "--temperature must be a number in [0.01, 100]"),
    (["--method", "low_temp", "--temperature", "-1"], "--temperature must be a number in [0.01, 100]"),
    (["--method", "low_temp", "--alpha", "0"], "--alpha must be a number in [0.01, 100]"),
    (["--method", "power_mh", "--alpha", "inf"], "--alpha must be a number in [0.01, 100]"),
    (["--method", "power_mh", "--block-size", "0"], "--block-size must be an integer >= 1"),
    (["--alpha", "2"], "method base has no setting alpha: its settings are --top-k, --top-p, --max-new-tokens, --batch-size"),
    (["--method", "power_mh", "--temperature", "0.5"], "method power_mh has no setting temperature"),
    (["--name", "../x"], "is not a valid file name"),
    (["--top-p", "2"], "--top-p must be in (0, 1]"),
    (["--task", "humaneval"], "prompts must be shorter than the context"),
    (["--task", "math500", "--task-args", "data_path={tmp}/missing.json"], "does not exist"),
    (["--task-args", "novalue"], "KEY=VALUE"),
    (["--split", "dev"], "no split 'dev': it has test, validation, train"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_checkpoint, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    defaults = {"--model": str(tiny_checkpoint), "--task": "basic_arithmetic"}
    for flag in list(defaults):
        if flag in args:
            defaults.pop(flag)
    argv = [x for kv in defaults.items() for x in kv] + args + ["--output-dir", str(tmp_path / "out")]
    assert main(["sample", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "samples").exists() or not any((tmp_path / "out" / "samples").iterdir())


@pytest.mark.parametrize("installed, args, message", [
    (False, ["--engine", "vllm"], "--engine vllm needs the optional package vLLM, which is not installed here: "
                                  "run `make install-vllm`"),
    # every built-in method samples on vllm; a plug-in method declares its engines (hf only by default)
    (True, ["--engine", "vllm", "--method", "mh_hf_only"], "engine vllm does not support method mh_hf_only yet: "
                                                            "methods on vllm are base, low_temp, power_mh, grpo"),
    (True, ["--engine", "nope"], "unknown --engine 'nope': valid engines are hf, vllm"),
])
def test_engine_errors_are_one_line_exit_2_before_any_work(tiny_checkpoint, tmp_path, capsys, monkeypatch, installed,
                                                            args, message):
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: installed)  # the same answer with vLLM or without
    register_method(dataclasses.replace(get_method("power_mh"), name="mh_hf_only", engines=("hf",)))
    try:
        assert run_cli(*base_args(tiny_checkpoint, tmp_path / "out", *args)) == 2
    finally:
        unregister_method("mh_hf_only")
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(vllm_engine.vllm_installed(), reason="vLLM is installed here (.venv-vllm)")
def test_the_sharpen_command_without_vllm_says_how_to_install_it(tiny_checkpoint, tmp_path, capsys):
    argv = [*map(str, base_args(tiny_checkpoint, tmp_path / "o")), "--engine", "vllm"]
    assert main(["sample", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make install-vllm" in err, err
    assert not (tmp_path / "o").exists()


def test_torn_last_line_is_cut_on_resume(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        w.write({"problem_id": "a", "sample_idx": 0})
    with open(path, "a") as f:
        f.write('{"problem_id": "a", "sample_id')  # a write killed half-way
    writer = RecordWriter(path)
    assert writer.done == {("a", 0)}
    writer.write({"problem_id": "a", "sample_idx": 1})
    writer.close()
    assert [r["sample_idx"] for r in read_records(path)] == [0, 1]


def test_killed_run_resumes_with_every_record_once(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    records = out / "samples" / "base.jsonl"
    cmd = [sys.executable, "-m", "sharpen", "sample", *map(str, base_args(
        tiny_checkpoint, out, "--num-problems", 40, "--num-samples", 4, "--batch-size", 2, "--max-new-tokens", 40))]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not records.exists() or len(records.read_text().splitlines()) < 10):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(read_records(records))
    assert 10 <= partial < 160, "the run should have been killed mid-way"
    # The kill is the real signal (a torn last line is possible); the resume runs in this process,
    # which saves a second start of Python, torch and transformers.
    assert main(cmd[3:]) == 0
    final = read_records(records)
    keys = [(r["problem_id"], r["sample_idx"]) for r in final]
    assert len(keys) == len(set(keys)) == 160


def test_the_vllm_engines_memory_share_is_checked(monkeypatch):
    monkeypatch.delenv(vllm_engine.MEMORY_ENV, raising=False)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert vllm_engine.default_memory_fraction() == vllm_engine.MEMORY_FRACTION[device]
    monkeypatch.setenv(vllm_engine.MEMORY_ENV, "0.3")
    assert vllm_engine.default_memory_fraction() == 0.3
    for bad in ("0", "1.5", "half"):
        monkeypatch.setenv(vllm_engine.MEMORY_ENV, bad)
        with pytest.raises(ValueError, match="is not a fraction in \\(0, 1\\]"):
            vllm_engine.default_memory_fraction()
