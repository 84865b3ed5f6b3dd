"""wandb that compares methods: one run per method instance with the same summary keys, read back offline.

    python -m pytest -q tests/test_wandb_runs.py

The analysis of test_analysis_cli's run directory (instances base, low_temp, power_mh_a2,
grpo) plus a low_temp instance with 2 samples per problem is logged offline; the test reads
RUN_DIR/wandb/offline-run-*/run-<id>.wandb (wandb's LevelDB-style log of protobuf records,
which offline mode writes instead of config.yaml / wandb-summary.json) and checks the runs,
their config and their keys.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import sys
from pathlib import Path

import pytest

from sharpen.analysis import AnalysisConfig, analyze
from sharpen.analysis.pipeline import study_name
from sharpen.analysis.runs import load_run
from sharpen.analysis.wandb_log import flatten, log_method_runs, method_summary
from sharpen.runs.tracking import RUN_IDS_FILE, WandbConfig
from test_analysis_cli import FAST, _copy, checkpoint, sample_records, sampled_run, write_method  # noqa: F401

BLOCK = 32768  # the log's block size; a record never straddles a block's 7-byte header


def wandb_records(path: Path):
    """The protobuf Records of one .wandb file (header ':W&B' + magic + version, then log blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # a full record
            yield pb.Record.FromString(chunk)
        elif kind in (2, 3):  # first, middle
            pending += chunk
        elif kind == 4:  # last
            yield pb.Record.FromString(pending + chunk)
            pending = b""


def read_offline_run(run_dir: Path) -> dict:
    """One offline run directory as {id, name, job_type, group, config, summary, charts}."""
    (log,) = run_dir.glob("run-*.wandb")
    out = {"config": {}, "summary": {}, "charts": {}}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(id=run.run_id, name=run.display_name, job_type=run.job_type, group=run.run_group)
            out["config"].update({i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"})
        elif kind == "config":
            for item in record.config.update:
                if list(item.nested_key[:2]) == ["_wandb", "visualize"]:  # a custom chart such as line_series
                    out["charts"][item.nested_key[2]] = json.loads(item.value_json)
                elif item.key and item.key != "_wandb":
                    out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:  # a logged table or histogram comes as nested keys
                key = item.key or item.nested_key[0]
                if not key.startswith("_"):
                    out["summary"][key] = json.loads(item.value_json) if item.key else "media"
    return out


def offline_runs(run_dir: Path) -> list[dict]:
    return [dict(read_offline_run(d), dir=d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]


@pytest.fixture(scope="module")
def logged_run(sampled_run, checkpoint, tmp_path_factory):
    """test_analysis_cli's run + low_temp_n2 (2 samples per problem) + power_mh_a2 with its real settings,
    analysed with wandb offline."""
    from sharpen.sampling.methods import get_method

    run_dir = _copy(sampled_run, tmp_path_factory.mktemp("wandb"))
    write_method(run_dir, "low_temp_n2", "low_temp", sample_records(checkpoint, "low_temp_n2", 0.25, samples=2),
                 str(checkpoint), temperature=0.25)
    path = run_dir / "samples" / "power_mh_a2.config.json"
    config = json.loads(path.read_text())
    settings = dataclasses.asdict(get_method("power_mh").settings(alpha=2.0, mcmc_steps=3))
    config.update(settings=settings, run=dict(config["run"], num_samples=4, num_problems=5, split="test"))
    path.write_text(json.dumps(config))
    metrics = analyze(run_dir, AnalysisConfig(**FAST), wandb=WandbConfig(mode="offline", group="study-x"),
                      progress=False)
    return run_dir, metrics, settings


def test_one_run_per_method_with_the_same_summary_keys_and_its_settings_as_config(logged_run):
    run_dir, metrics, settings = logged_run
    saved = json.loads((run_dir / "metrics.json").read_text())
    names = list(saved["methods"])
    assert names == ["base", "low_temp", "low_temp_n2", "power_mh_a2", "grpo"]
    runs = offline_runs(run_dir)
    methods = {r["config"]["instance"]: r for r in runs if r["job_type"] == "method"}
    (analysis,) = [r for r in runs if r["job_type"] == "analysis"]
    assert len(runs) == len(names) + 1 and sorted(methods) == sorted(names)
    ids = json.loads((run_dir / RUN_IDS_FILE).read_text())
    assert metrics["wandb_runs"] == {**{n: ids[f"demo-{n}"] for n in names}, "analysis": ids["demo-analysis"]}

    for name, r in methods.items():
        m = saved["methods"][name]
        assert r["name"] == f"demo-{name}" and r["group"] == "study-x" and r["id"] == metrics["wandb_runs"][name]
        assert r["dir"].name.endswith(r["id"])
        assert r["config"]["method"] == m["kind"] and r["config"]["study"] == "demo"
        assert r["config"]["task"] == "toy" and r["config"]["num_problems"] == 5
        assert r["config"]["num_samples"] == m["samples_per_problem"]["max"]
        assert r["config"]["base_model"] == saved["base_model"]
        s = r["summary"]
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

    # The settings are flat config keys, named as in the settings dataclass.
    power = methods["power_mh_a2"]["config"]
    assert {k: power[k] for k in settings} == settings
    assert power["alpha"] == 2.0 and power["mcmc_steps"] == 3 and power["split"] == "test"
    assert methods["low_temp"]["config"]["temperature"] == 0.25 and "alpha" not in methods["base"]["config"]

    # Every method run has the same summary keys: only pass@k beyond a method's samples per
    # problem, GRPO's training cost, and what does not apply (support against base, for base itself;
    # token entropy where the records hold no log-probs of the sampled distribution) are missing or added.
    not_everywhere = ("cost/training_", "support/", "entropy/token")

    def comparable(r):
        n = saved["methods"][r["config"]["instance"]]["samples_per_problem"]["min"]
        return {k for k in r["summary"] if not k.startswith(not_everywhere)} | {f"pass@{k}" for k in range(n + 1, 5)}

    assert "support/retention" in methods["low_temp"]["summary"] and "entropy/token" in methods["base"]["summary"]
    assert "entropy/answer" in methods["power_mh_a2"]["summary"]

    keys = comparable(methods["base"])
    for name, r in methods.items():
        assert comparable(r) == keys, (name, comparable(r) ^ keys)
    assert {"accuracy", "accuracy_low", "accuracy_high", "pass@1", "pass@4", "majority_vote", "base_logprob_mean",
            "base_confidence", "base_self_certainty", "diversity/distinct_2", "cost/sampled_tokens",
            "cost/forward_tokens", "cost/forward_tokens_per_completion", "cost/wall_seconds",
            "histograms/base_logprob_mean", "tables/samples"} <= keys
    assert "pass@3" not in methods["low_temp_n2"]["summary"]
    assert methods["grpo"]["summary"]["cost/training_rollout_tokens"] == 4096

    # The analysis run keeps the paired tests and every method as <method>/<key>, and draws pass@k
    # as one line per method over that method's own ks.
    s = analysis["summary"]
    assert analysis["name"] == "demo-analysis" and analysis["group"] == "study-x"
    pair = next(e for e in saved["paired"] if (e["a"], e["b"]) == ("base", "power_mh_a2"))
    assert s["paired/power_mh_a2-base/diff"] == pytest.approx(pair["diff"])
    assert s["paired/power_mh_a2-base/p_holm"] == pytest.approx(pair["p_holm"])
    assert {k for k in s if k.startswith("low_temp_n2/")} == {f"low_temp_n2/{k}" for k in
                                                             methods["low_temp_n2"]["summary"]
                                                             if not k.startswith(("histograms/", "tables/"))}
    chart = analysis["charts"]["charts/pass_at_k"]
    assert chart["panel_config"]["panelDefId"] == "wandb/lineseries/v0"
    (table_file,) = (analysis["dir"] / "files" / "media" / "table" / "charts").glob("pass_at_k_table_*.table.json")
    table = json.loads(table_file.read_text())
    series = {}
    for k, method, value in (dict(zip(table["columns"], row)).values() for row in table["data"]):
        series.setdefault(method, []).append((k, value))
    assert {m: [k for k, _ in v] for m, v in series.items()} == {m: saved["methods"][m]["pass_at_k"]["k"]
                                                                for m in names}
    assert [v for _, v in series["grpo"]] == pytest.approx(saved["methods"]["grpo"]["pass_at_k"]["value"])


def test_analysing_again_resumes_the_same_runs(logged_run, tmp_path):
    run_dir = _copy(logged_run[0], tmp_path)
    before = {r["id"] for r in offline_runs(run_dir)}
    kept = json.loads((run_dir / RUN_IDS_FILE).read_text())
    analyze(run_dir, AnalysisConfig(**FAST), wandb=WandbConfig(mode="offline", group="study-x"), progress=False)
    runs = offline_runs(run_dir)
    # Offline, each analysis writes its own directory per run, with the run's kept id (online: one run).
    assert len(runs) == 2 * len(before) and {r["id"] for r in runs} == before == set(kept.values())
    assert json.loads((run_dir / RUN_IDS_FILE).read_text()) == kept
    for run_id in before:
        first, second = (r for r in runs if r["id"] == run_id)
        assert set(first["summary"]) == set(second["summary"]), set(first["summary"]) ^ set(second["summary"])
        same = lambda config: {k: v for k, v in config.items() if k != "run_dir"}  # noqa: E731 (a copy)
        assert same(first["config"]) == same(second["config"])


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
