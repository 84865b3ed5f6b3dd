"""Replicate seeds (issue 26): a study over seeds, the same problems in each, resumable, pooled with two-level intervals.

    python -m pytest -q tests/test_seeds.py       # ~1 min on 2 cores

- the two-level bootstrap: with no between-seed spread its interval is the problem-level one; a seed
  effect widens it; and over simulated studies whose seeds really differ it covers the true mean about as
  often as it says, where the problem-only bootstrap (the broken variant: seeds ignored) falls far short;
- a testbed study with seeds=0,1: one directory per seed with the same problems and other samples, each
  trained arm trained per seed, replicate 0 identical to the study without seeds; more seeds extend it,
  fewer are refused; bad seed lists are one line, exit status 2, before any work; wandb's method runs
  carry the replicate as `seed`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sharpen.analysis.seeds import analyze_seeds, two_level_bootstrap
from sharpen.analysis.stats import bootstrap_means
from sharpen.analysis.wandb_log import method_config
from sharpen.cli import main
from sharpen.runs.records import read_records
from sharpen.study.config import load_study_config


def interval(values, n_resamples=2000, seed=0):
    means = two_level_bootstrap(values, n_resamples, seed)
    return np.quantile(means, [0.025, 0.975])


def test_the_interval_widens_with_seed_spread_and_matches_the_problem_bootstrap_without_it():
    rng = np.random.default_rng(0)
    problems = rng.uniform(0, 1, size=200)
    same = np.tile(problems, (3, 1))  # three seeds that agree on every problem
    low, high = interval(same)
    plain = np.quantile(bootstrap_means(problems[:, None], 2000, 0)[:, 0], [0.025, 0.975])
    assert abs((high - low) - (plain[1] - plain[0])) < 0.15 * (plain[1] - plain[0])
    shifted = same + np.array([[-0.1], [0.0], [0.1]])  # a seed effect of +-0.1
    low_s, high_s = interval(shifted)
    assert high_s - low_s > 2 * (high - low)


def test_two_level_intervals_cover_the_true_mean_where_a_problem_bootstrap_does_not():
    """Simulated studies of 5 seeds x 100 problems with a seed effect (sd 0.1) beside the problem spread: the
    two-level 95% interval must cover the true mean in most studies, the problems-only one (seeds pooled as if
    they were samples) in far fewer."""
    rng = np.random.default_rng(1)
    studies, covered, covered_flat = 200, 0, 0
    for i in range(studies):
        values = rng.normal(0.5, 0.2, size=(1, 100)) + rng.normal(0, 0.1, size=(5, 1)) \
            + rng.normal(0, 0.05, size=(5, 100))
        low, high = interval(values, 400, i)
        covered += low <= 0.5 <= high
        flat = np.quantile(bootstrap_means(values.mean(axis=0)[:, None], 400, i)[:, 0], [0.025, 0.975])
        covered_flat += flat[0] <= 0.5 <= flat[1]
    # 5 resampled seeds understate the seed spread a little (the bootstrap's n/(n-1)); still well above the broken one
    assert covered / studies > 0.8 and covered_flat / studies < 0.65, (covered, covered_flat)


def test_each_seeds_reach_and_mixing_verdicts_are_listed_not_pooled(tmp_path):
    """analyze_seeds reads every seed's own `target` rows and mixing verdicts and lists them side by side."""
    verdicts = {0: ("reached", -0.01, 0.02), 1: ("missed", 0.08, 0.20)}
    for seed, (verdict, low, high) in verdicts.items():
        pids = {f"p{i}": [4, (i + seed) % 5] for i in range(6)}
        metrics = {"per_problem": {"power_mh": pids, "power_is": pids},
                   "methods": {"power_mh": {"kind": "power_mh", "accuracy": {"value": 0.4},
                                            "mixing": {"verdict": f"verdict {seed}"}},
                               "power_is": {"kind": "power_is", "weighted": True, "accuracy": {"value": 0.5}}},
                   "target": [{"estimate": "power_is", "method": "power_mh", "role": "sampler", "verdict": verdict,
                               "difference": {"value": (low + high) / 2, "low": low, "high": high}}]}
        (tmp_path / f"seed_{seed}").mkdir()
        (tmp_path / f"seed_{seed}" / "metrics.json").write_text(json.dumps(metrics))
    metrics = analyze_seeds(tmp_path, [0, 1])
    (row,) = metrics["target"]
    assert {s: c["verdict"] for s, c in row["per_seed"].items()} == {"0": "reached", "1": "missed"}
    assert metrics["mixing"] == {"power_mh": {"0": "verdict 0", "1": "verdict 1"}}
    assert set(metrics["methods"]) == {"power_mh"} and metrics["weighted"]["power_is"]["mean"] == 0.5
    report = (tmp_path / "report.md").read_text()
    assert "| power_mh | power_is | reached: +0.005 [-0.010, +0.020] | missed: +0.140 [+0.080, +0.200] | " \
           "1 of 2 seeds |" in report
    assert "power_mh mixing, per seed: seed 0 verdict 0; seed 1 verdict 1." in report


TINY = ["num_problems=4", "num_samples=2", "methods=[base, grpo]", "grpo.max_steps=1", "analysis.bootstrap=100",
        "wandb.mode=off"]  # wandb: method_config is checked directly below


def study(out, *extra) -> int:
    return main(["study", "--config", "testbed", "--output-dir", str(out), *TINY, *extra])


def test_a_study_over_seeds_samples_the_same_problems_anew_and_extends(testbed_dir, tmp_path, capsys):
    out = tmp_path / "seeds"
    assert study(out, "seeds=0,1") == 0
    runs = {s: {n: read_records(out / f"seed_{s}" / "samples" / f"{n}.jsonl") for n in ("base", "grpo")}
            for s in (0, 1)}
    problems = {s: sorted({r["problem_id"] for r in runs[s]["base"]}) for s in (0, 1)}
    assert problems[0] == problems[1] and len(problems[0]) == 4  # the same problems: `seed` picks them
    completions = {s: [r["completion_ids"] for r in runs[s]["base"]] for s in (0, 1)}
    assert completions[0] != completions[1]  # sampled anew
    trained = {s: json.loads((out / f"seed_{s}" / "grpo" / "grpo_config.json").read_text())["seed"] for s in (0, 1)}
    assert trained == {0: 0, 1: 1}  # each replicate trains its own GRPO run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1] and set(metrics["methods"]) == {"base", "grpo"}
    for name, m in metrics["methods"].items():
        own = [json.loads((out / f"seed_{s}" / "metrics.json").read_text())["methods"][name]["accuracy"]["value"]
               for s in (0, 1)]
        assert list(m["per_seed"].values()) == pytest.approx(own)
        assert m["accuracy"]["value"] == pytest.approx(np.mean(own))
        assert m["accuracy"]["low"] <= m["accuracy"]["value"] <= m["accuracy"]["high"]
    assert metrics["methods"]["grpo"]["trained"] and not metrics["methods"]["base"]["trained"]
    report = (out / "report.md").read_text()
    assert "# Study over 2 replicate seeds" in report and (out / "plots" / "seeds_accuracy.png").exists()

    # The replicate whose seed is the study's seed samples what the study without seeds samples.
    single = tmp_path / "single"
    assert main(["study", "--config", "testbed", "--output-dir", str(single), *TINY, "methods=[base]"]) == 0
    assert [r["completion_ids"] for r in read_records(single / "samples" / "base.jsonl")] == completions[0]

    # More seeds extend the study; seed 0 and 1 are left as they are.
    before = (out / "seed_0" / "samples" / "base.jsonl").read_bytes()
    assert study(out, "seeds=0,1,2") == 0
    assert (out / "seed_0" / "samples" / "base.jsonl").read_bytes() == before
    assert json.loads((out / "metrics.json").read_text())["seeds"] == [0, 1, 2]
    # Fewer (or other) seeds than the directory holds: refused before any work.
    assert study(out, "seeds=0,1") == 2
    assert study(out) == 2  # the same study without seeds is another study
    # A replicate's directory that is a file: one line, before the replicates that could run are run.
    (out / "seed_3").write_text("")
    report = (out / "report.md").read_bytes()
    assert study(out, "seeds=0,1,2,3") == 2
    assert "seed_3' is a file: give a directory" in capsys.readouterr().err
    assert (out / "report.md").read_bytes() == report and json.loads((out / "study.json").read_text())[
        "identity"]["seeds"] == [0, 1, 2]

    config = json.loads((out / "seed_1" / "samples" / "base.config.json").read_text())
    wandb_config = method_config("base", type("R", (), {"config": config, "kind": "base", "model": None})(),
                                 {"kind": "base"}, study="testbed-seed1")
    assert wandb_config["seed"] == 1 and wandb_config["problem_seed"] == 0 and wandb_config["study"] == "testbed"


@pytest.mark.parametrize("extra, message", [
    (["seeds=[]"], "seeds is empty"),
    (["seeds=[0, 1, 0]"], "seeds lists 0 more than once"),
    (["seeds=a,b"], "seeds must be integers >= 0"),
    (["seeds=[0, -1]"], "seeds must be integers >= 0"),
    (["seeds=0,1", "grpo.seed=3"], "grpo.seed is set, and so is seeds"),
])
def test_bad_seed_lists_are_one_line_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "study"
    assert study(out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("preset", ["testbed_seeds", "smollm2_seeds"])
def test_the_seeds_presets_load(preset):
    config = load_study_config(preset)
    replicate = config.replicate(2)
    assert config.seeds == [0, 1, 2] and replicate.grpo.settings["seed"] == 2 and replicate.seed == config.seed
    assert replicate.output_dir.endswith("seed_2") and replicate.identity()["replicate"] == 2
    # power_distill's fine-tuning takes the replicate's seed too (GRPO's arrives in its settings, above)
    assert replicate.training_seed == 2 and config.training_seed == config.seed == config.replicate(0).training_seed
