"""wandb that compares methods: what sharpen hands to wandb, one run per method instance with the same keys.

    python -m pytest -q tests/test_wandb_runs.py

The analysis of test_analysis_cli's run directory (instances base, low_temp, power_mh_a2,
grpo) plus a low_temp instance with 2 samples per problem is logged in mode offline with
`wandb.init` replaced by a recorder: the tests check what sharpen passes to wandb (the
arguments of each wandb.init, the summary it updates, what it logs, that it finishes each
run), not the files wandb writes from them (its private format). wandb's own Table, Histogram,
Image and line_series objects are built for real, so their public attributes are checked too.
Mode off must never import wandb.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from sharpen.analysis import AnalysisConfig, analyze
from sharpen.analysis.pipeline import study_name
from sharpen.analysis.runs import load_run
from sharpen.analysis.wandb_log import SAMPLES_PER_METHOD, flatten, log_method_runs, method_summary
from sharpen.runs.tracking import RUN_IDS_FILE, WandbConfig
from test_analysis_cli import (FAST, NAMES, _copy, checkpoint, sample_records, sampled_run,  # noqa: F401
                               write_method)


class RecordedRun:
    """Stands in for the run wandb.init returns; keeps what sharpen hands to it."""

    def __init__(self, init: dict):
        self.init = init  # wandb.init's keyword arguments
        self.id = init["id"]
        self.dir = str(Path(init["dir"]) / "wandb" / f"recorded-{self.id}" / "files")
        self.summary: dict = {}
        self.logged: list[dict] = []
        self.finished = False

    def log(self, data: dict, *args, **kwargs):
        assert not self.finished, "logged into a finished run"
        self.logged.append(dict(data))

    def finish(self, *args, **kwargs):
        self.finished = True

    @property
    def final(self) -> dict:
        """What wandb's summary would hold: the summary updates, then the last value of each logged key."""
        out = dict(self.summary)
        for data in self.logged:
            out.update(data)
        return out


def record_wandb(monkeypatch) -> list[RecordedRun]:
    import wandb

    runs = []

    def init(**kwargs):
        runs.append(RecordedRun(kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    return runs


@pytest.fixture
def wandb_runs(monkeypatch):
    return record_wandb(monkeypatch)


@pytest.fixture(scope="module")
def logged_run(sampled_run, checkpoint, tmp_path_factory):
    """test_analysis_cli's run + low_temp_n2 (2 samples per problem) + power_mh_a2 with its real settings,
    analysed with wandb offline into a recorder."""
    from sharpen.sampling.methods import get_method

    run_dir = _copy(sampled_run, tmp_path_factory.mktemp("wandb"))
    write_method(run_dir, "low_temp_n2", "low_temp", sample_records(checkpoint, "low_temp_n2", 0.25, samples=2),
                 str(checkpoint), temperature=0.25)
    path = run_dir / "samples" / "power_mh_a2.config.json"
    config = json.loads(path.read_text())
    settings = dataclasses.asdict(get_method("power_mh").settings(alpha=2.0, mcmc_steps=3))
    config.update(settings=settings, run=dict(config["run"], num_samples=4, num_problems=5, split="test"))
    path.write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as patch:
        runs = record_wandb(patch)
        metrics = analyze(run_dir, AnalysisConfig(**FAST), wandb=WandbConfig(mode="offline", group="study-x"),
                          progress=False)
    return run_dir, metrics, settings, runs


def test_one_run_per_method_with_the_same_summary_keys_and_its_settings_as_config(logged_run):
    import wandb

    run_dir, metrics, settings, runs = logged_run
    saved = json.loads((run_dir / "metrics.json").read_text())
    names = list(saved["methods"])
    assert names == ["base", "low_temp", "low_temp_n2", "power_mh_a2", "grpo"]
    methods = {r.init["config"]["instance"]: r for r in runs if r.init["job_type"] == "method"}
    (analysis,) = [r for r in runs if r.init["job_type"] == "analysis"]
    assert len(runs) == len(names) + 1 and sorted(methods) == sorted(names)
    assert [r.init["name"] for r in runs] == [f"demo-{n}" for n in names] + ["demo-analysis"]  # methods first
    ids = json.loads((run_dir / RUN_IDS_FILE).read_text())
    assert metrics["wandb_runs"] == {**{n: ids[f"demo-{n}"] for n in names}, "analysis": ids["demo-analysis"]}
    project = os.environ.get("WANDB_PROJECT", "sharpen")
    for r in runs:  # every run: offline, in the run directory, resumable under its kept id, and finished
        assert r.init["mode"] == "offline" and r.init["dir"] == str(run_dir) and r.init["project"] == project
        assert r.init["id"] == ids[r.init["name"]] and r.init["resume"] == "allow" and r.finished

    for name, r in methods.items():
        m = saved["methods"][name]
        assert r.init["name"] == f"demo-{name}" and r.init["group"] == "study-x"
        assert r.id == metrics["wandb_runs"][name]
        assert r.init["settings"].silent  # one banner per method run would drown the terminal
        config = r.init["config"]
        assert config["method"] == m["kind"] and config["study"] == "demo"
        assert config["task"] == "toy" and config["num_problems"] == 5
        assert config["num_samples"] == m["samples_per_problem"]["max"]
        assert config["base_model"] == saved["base_model"]
        s = r.final
        assert s["accuracy"] == pytest.approx(m["accuracy"]["value"])
        assert s["accuracy_low"] == pytest.approx(m["accuracy"]["low"])
        assert [s[f"pass@{k}"] for k in m["pass_at_k"]["k"]] == pytest.approx(m["pass_at_k"]["value"])
        assert s["base_logprob_mean"] == pytest.approx(m["base_scores"]["logprob_mean"]["value"])
        assert s["base_confidence"] == pytest.approx(m["base_scores"]["confidence"]["value"])
        assert s["diversity/self_bleu"] == pytest.approx(m["diversity"]["self_bleu"]["value"])
        assert s["cost/forward_tokens"] == pytest.approx(m["cost"]["forward_tokens"]["total"])
        assert s["cost/forward_tokens_per_completion"] == pytest.approx(m["cost"]["forward_tokens"]["per_sample"])
        assert s["cost/wall_seconds"] == pytest.approx(m["cost"]["wall_seconds"]["total"])
        assert s["problems"] == 5 and s["samples"] == m["samples"]
        # The media: a histogram of every scored record, and a table of the first samples, one row each.
        histogram = s["histograms/base_logprob_mean"]
        assert isinstance(histogram, wandb.Histogram) and sum(histogram.histogram) == m["base_scores"]["scored"]
        table = s["tables/samples"]
        assert isinstance(table, wandb.Table) and table.columns[:3] == ["method", "problem_id", "sample_idx"]
        assert len(table.data) == min(m["samples"], SAMPLES_PER_METHOD) and {row[0] for row in table.data} == {name}

    # The settings are flat config keys, named as in the settings dataclass.
    power = methods["power_mh_a2"].init["config"]
    assert {k: power[k] for k in settings} == settings
    assert power["alpha"] == 2.0 and power["mcmc_steps"] == 3 and power["split"] == "test"
    assert methods["low_temp"].init["config"]["temperature"] == 0.25
    assert "alpha" not in methods["base"].init["config"]

    # Every method run has the same summary keys: only pass@k beyond a method's samples per
    # problem, GRPO's training cost, and what does not apply (support against base, for base itself;
    # token entropy where the records hold no log-probs of the sampled distribution) are missing or added.
    not_everywhere = ("cost/training_", "support/", "entropy/token")

    def comparable(r):
        n = saved["methods"][r.init["config"]["instance"]]["samples_per_problem"]["min"]
        return {k for k in r.final if not k.startswith(not_everywhere)} | {f"pass@{k}" for k in range(n + 1, 5)}

    assert "support/retention" in methods["low_temp"].final and "entropy/token" in methods["base"].final
    assert "entropy/answer" in methods["power_mh_a2"].final

    keys = comparable(methods["base"])
    for name, r in methods.items():
        assert comparable(r) == keys, (name, comparable(r) ^ keys)
    assert {"accuracy", "accuracy_low", "accuracy_high", "pass@1", "pass@4", "majority_vote", "base_logprob_mean",
            "base_confidence", "base_self_certainty", "diversity/distinct_2", "cost/sampled_tokens",
            "cost/forward_tokens", "cost/forward_tokens_per_completion", "cost/wall_seconds",
            "histograms/base_logprob_mean", "tables/samples"} <= keys
    assert "pass@3" not in methods["low_temp_n2"].final
    assert methods["grpo"].final["cost/training_rollout_tokens"] == 4096

    # The analysis run keeps the paired tests and every method as <method>/<key>, and draws pass@k
    # as one line per method over that method's own ks.
    s = analysis.final
    assert analysis.init["name"] == "demo-analysis" and analysis.init["group"] == "study-x"
    assert analysis.init["config"] == {"run_dir": str(run_dir), "study": "demo", "methods": names,
                                       **saved["settings"]}
    assert metrics["wandb_dir"] == analysis.dir
    pair = next(e for e in saved["paired"] if (e["a"], e["b"]) == ("base", "power_mh_a2"))
    assert s["paired/power_mh_a2-base/diff"] == pytest.approx(pair["diff"])
    assert s["paired/power_mh_a2-base/p_holm"] == pytest.approx(pair["p_holm"])
    assert {k for k in s if k.startswith("low_temp_n2/")} == {f"low_temp_n2/{k}" for k in
                                                             methods["low_temp_n2"].final
                                                             if not k.startswith(("histograms/", "tables/"))}
    assert {k for k in s if k.startswith("plots/")} == {f"plots/{k}" for k in saved["plots"]}
    assert all(isinstance(s[f"plots/{k}"], wandb.Image) for k in saved["plots"])
    chart = s["charts/pass_at_k"]
    assert chart.spec.spec_name == "wandb/lineseries/v0"
    series = {}
    for k, method, value in (dict(zip(chart.table.columns, row)).values() for row in chart.table.data):
        series.setdefault(method, []).append((k, value))
    assert {m: [k for k, _ in v] for m, v in series.items()} == {m: saved["methods"][m]["pass_at_k"]["k"]
                                                                for m in names}
    assert [v for _, v in series["grpo"]] == pytest.approx(saved["methods"]["grpo"]["pass_at_k"]["value"])
    table = s["tables/pass_at_k"]
    assert table.columns == ["method", "k", "pass_at_k", "low", "high"]
    assert len(table.data) == sum(len(m["pass_at_k"]["k"]) for m in saved["methods"].values())


def test_analysing_again_resumes_the_same_runs(logged_run, tmp_path, wandb_runs):
    run_dir = _copy(logged_run[0], tmp_path)
    before = {r.init["name"]: r for r in logged_run[3]}
    kept = json.loads((run_dir / RUN_IDS_FILE).read_text())
    analyze(run_dir, AnalysisConfig(**FAST), wandb=WandbConfig(mode="offline", group="study-x"), progress=False)
    # Each run starts again under its kept id with resume allowed: online, the one run is updated in place.
    assert {r.init["name"]: r.id for r in wandb_runs} == {name: r.id for name, r in before.items()} == kept
    assert all(r.init["resume"] == "allow" and r.finished for r in wandb_runs)
    assert json.loads((run_dir / RUN_IDS_FILE).read_text()) == kept
    for second in wandb_runs:
        first = before[second.init["name"]]
        assert set(first.final) == set(second.final), set(first.final) ^ set(second.final)
        same = lambda config: {k: v for k, v in config.items() if k != "run_dir"}  # noqa: E731 (a copy)
        assert same(first.init["config"]) == same(second.init["config"])


def test_the_analysis_run_is_named_and_grouped_and_off_never_imports_wandb(sampled_run, tmp_path, monkeypatch,
                                                                          wandb_runs):
    run_dir = _copy(sampled_run, tmp_path)
    metrics = analyze(run_dir, AnalysisConfig(**FAST), wandb=WandbConfig(mode="offline", group="study-x"),
                      wandb_name="my-analysis", progress=False)
    # One run per method instance plus the analysis run, which carries the name asked for.
    assert len(wandb_runs) == len(NAMES) + 1
    (analysis,) = [r for r in wandb_runs if r.init["job_type"] == "analysis"]
    assert analysis.init["name"] == "my-analysis" and analysis.init["group"] == "study-x"
    assert analysis.init["mode"] == "offline" and analysis.finished
    assert metrics["wandb_dir"] == analysis.dir and metrics["wandb_runs"]["analysis"] == analysis.id
    assert json.loads((run_dir / RUN_IDS_FILE).read_text())["my-analysis"] == analysis.id
    # Off, or no wandb config at all: wandb is never imported (an import of it here would fail).
    monkeypatch.setitem(sys.modules, "wandb", None)
    for wandb in (None, WandbConfig(mode="off")):
        assert analyze(run_dir, AnalysisConfig(**FAST), wandb=wandb, progress=False)["wandb_dir"] is None
    assert len(wandb_runs) == len(NAMES) + 1 and not (run_dir / "wandb").exists()


def test_method_summary_logs_the_interval_entries_it_finds_and_skips_missing_ones():
    entry = lambda v: {"value": v, "low": v - 0.1, "high": v + 0.1}  # noqa: E731
    m = {"problems": 3, "samples": 12, "accuracy": entry(0.5),
         "pass_at_k": {"k": [1, 2, 4, 8, 16, 1024], "value": [0.5, 0.6, 0.7, 0.8, 0.85, 0.99]},
         "majority_vote": entry(0.55), "base_scores": {"logprob_mean": entry(-1.0), "confidence": None},
         "diversity": {"samples_per_problem": 4, "self_bleu": entry(0.3), "vendi": None},
         "coverage": dict(entry(0.9), k=1024), "entropy": {"token": entry(1.5), "answer": None},
         "support": {"retention": entry(0.8), "new_correct_answers": entry(2.0)},
         "cost": {"records": 12, "forward_tokens": {"total": 120.0, "per_sample": 10.0, "samples": 12},
                  "acceptance_rate": 0.4, "sessions": {"elapsed_seconds": 3.0},
                  "training": {"wall_seconds": 9.0, "optimizer_steps": 8}}}
    assert method_summary(m) == {
        "problems": 3, "samples": 12, "accuracy": 0.5, "accuracy_low": 0.4, "accuracy_high": 0.6,
        "pass@1": 0.5, "pass@2": 0.6, "pass@4": 0.7, "pass@8": 0.8, "pass@16": 0.85, "pass@1024": 0.99,
        "majority_vote": 0.55, "base_logprob_mean": -1.0, "diversity/self_bleu": 0.3, "coverage": 0.9,
        "entropy/token": 1.5, "support/retention": 0.8, "support/new_correct_answers": 2.0,
        "cost/forward_tokens": 120.0, "cost/forward_tokens_per_completion": 10.0, "cost/acceptance_rate": 0.4,
        "cost/sampling_elapsed_seconds": 3.0, "cost/training_wall_seconds": 9.0, "cost/training_optimizer_steps": 8}
    # Without the newer entries the same function gives the older keys only; the analysis run prefixes them.
    old = {k: v for k, v in m.items() if k not in ("coverage", "entropy", "support")}
    assert set(method_summary(m)) - set(method_summary(old)) == {"coverage", "entropy/token", "support/retention",
                                                                 "support/new_correct_answers"}
    assert flatten({"methods": {"power_mh": old}, "paired": []}) == {
        f"power_mh/{k}": v for k, v in method_summary(old).items()}


def test_wandb_off_logs_nothing_imports_nothing_and_keeps_no_ids(sampled_run, tmp_path, monkeypatch):
    run_dir = _copy(sampled_run, tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import of wandb would fail
    metrics = {"methods": {"base": {"kind": "base", "problems": 5}}, "paired": []}
    assert log_method_runs(WandbConfig(mode="off"), metrics, load_run(run_dir), study="demo", dir=run_dir) == {}
    assert not (run_dir / RUN_IDS_FILE).exists() and not (run_dir / "wandb").exists()


def test_the_study_name_comes_from_study_json_else_the_directory(tmp_path):
    assert study_name(tmp_path) == tmp_path.name
    (tmp_path / "study.json").write_text(json.dumps({"identity": {}, "config": {"name": "alpha-sweep"}}))
    assert study_name(tmp_path) == "alpha-sweep"


def test_a_studys_grpo_run_joins_the_studys_group_with_its_name_in_the_config(monkeypatch, wandb_runs, tmp_path):
    """Issue 22, item 9: the study handed GRPO its own wandb section, without the study's group."""
    from types import SimpleNamespace

    from sharpen.rl import grpo
    from sharpen.runs.processes import Shard
    from sharpen.study import pipeline
    from sharpen.study.config import load_study_config

    config = load_study_config("testbed", ["wandb.mode=offline", f"output_dir={tmp_path / 'study'}"])
    handed = {}
    monkeypatch.setattr(pipeline, "train_grpo", lambda settings, **kwargs: handed.update(kwargs))
    monkeypatch.setattr(pipeline, "grpo_model_spec", lambda out: str(out))
    pipeline.grpo_stage(config, "base-model", tmp_path / "study", Shard())
    assert handed["wandb"].group == config.wandb_group == config.name and handed["wandb"].mode == "offline"
    # ... and the training run that group reaches carries the study's name in its config
    grpo._start_wandb(handed["wandb"], SimpleNamespace(process_index=0, run_name=handed["run_name"]), tmp_path / "g")
    (run,) = wandb_runs
    assert run.init["group"] == config.name and run.init["config"] == {"study": config.name}
    assert run.init["job_type"] == "grpo" and run.init["name"] == f"{config.name}-grpo-training"
