"""A weighted method (importance sampling of p^alpha) in the analysis, and whether each sampler reached p^alpha.

    python -m pytest -q tests/test_target.py

Runs are built in memory from synthetic records: hand-computable weights for the estimator, the ESS and
each verdict, and draws from a known proposal over four answers, whose weighted estimate must land near
the exact accuracy of p^alpha while ignoring the weights or dropping the normalisation must not. The
weighted method is a test method registered with weighted=True (sharpen.sampling.methods.Method.weighted).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from sharpen.analysis import AnalysisConfig
from sharpen.analysis.metrics import compute_metrics
from sharpen.analysis.plots import frontier_bands, frontier_points, make_plots
from sharpen.analysis.report import render_report
from sharpen.analysis.runs import InputError, load_run
from sharpen.analysis.target import MIN_ESS, effective_sample_size, importance_weights
from sharpen.analysis.wandb_log import method_summary, target_summary
from sharpen.errors import UsageError
from sharpen.sampling.methods import Method, register_method, unregister_method
from test_large_k import make_run

W = "toy_is"  # the weighted method's kind and instance name


@dataclass
class ToySettings:
    alpha: float = 4.0


def _never_runs(model, prompts, settings, *, seeds, on_result=None):
    raise AssertionError("the analysis never samples")


@pytest.fixture(autouse=True)
def weighted_method():
    method = register_method(Method(W, ToySettings, _never_runs, "weighted draws of p^alpha (a test method)",
                                    weighted=True))
    yield method
    unregister_method(W)


def rec(name: str, pid: str, s: int, correct: bool, lw: float | None = None, forward: float = 10.0) -> dict:
    record = {"method": name, "problem_id": pid, "sample_idx": s, "prompt": f"q {pid}", "completion": f"x{s}",
              "completion_ids": [5, 6 + s % 3, 1], "finish_reason": "eos", "correct": correct,
              "extracted_answer": "right" if correct else f"wrong{s % 2}", "base_logprob_sum": -1.5,
              "temperature": 1.0, "cost": {"forward_tokens": forward, "sampled_tokens": 3}}
    if lw is not None:
        record["importance_log_weight"] = lw
    return record


def weighted(problems: dict[str, list[tuple[bool, float]]]) -> list[dict]:
    """{pid: [(correct, log weight), ...]} -> records of the weighted method."""
    return [rec(W, pid, s, ok, lw, forward=30.0) for pid, draws in problems.items() for s, (ok, lw) in enumerate(draws)]


def plain(name: str, counts: dict[str, tuple[int, int]]) -> list[dict]:
    """{pid: (n, c)} -> records, the first c correct."""
    return [rec(name, pid, s, s < c) for pid, (n, c) in counts.items() for s in range(n)]


# ------------------------------------------------------------------------------------------- estimator


def test_the_estimate_and_ess_by_hand():
    # p0: weights 1, 3, 2 (shifted by -1000: only ratios count) on verdicts 1, 0, 1 -> (1 + 2) / 6 = 0.5;
    # p1: weights 1, 4 on verdicts 0, 1 -> 0.8. Ignoring the weights would give 2/3 and 1/2.
    problems = {"p0": [(True, -1000.0), (False, -1000 + math.log(3)), (True, -1000 + math.log(2))],
                "p1": [(False, 0.0), (True, math.log(4))]}
    metrics = compute_metrics(make_run({W: (W, weighted(problems))}), n_resamples=200)
    m = metrics["methods"][W]
    assert m["weighted"] is True
    assert m["estimates"]["p0"]["estimate"] == pytest.approx(0.5)
    assert m["estimates"]["p1"]["estimate"] == pytest.approx(0.8)
    assert m["accuracy"]["value"] == pytest.approx(0.65)
    assert m["estimates"]["p0"]["ess"] == pytest.approx(36 / 14)
    assert m["estimates"]["p1"]["ess"] == pytest.approx(25 / 17)
    assert m["correct"] == 3 and m["samples"] == 5  # the draws themselves, counted as they are
    assert importance_weights([-1000.0, -1000 + math.log(3)]) == pytest.approx([0.25, 0.75])


def test_the_ess_summary_by_hand():
    problems = {"p0": [(True, 0.0)] * 4,  # equal weights: ESS 4
                "p1": [(False, 0.0)] * 8,  # 8
                "p2": [(True, math.log(3)), (False, 0.0)],  # (3 + 1)^2 / (9 + 1) = 1.6
                "p3": [(True, 1.0)] * 10}  # 10
    ess = compute_metrics(make_run({W: (W, weighted(problems))}), n_resamples=200)["methods"][W]["ess"]
    assert ess == {"median": pytest.approx(6.0), "min": pytest.approx(1.6), "share_below_5": 0.5, "problems": 4}
    assert effective_sample_size([1.0, 0.0, 0.0]) == 1.0


def test_the_estimate_converges_to_the_exact_accuracy_of_p_alpha():
    """Draws from a uniform proposal q over four answers with weights p^alpha / q: the self-normalised estimate
    lands within a bound derived from the exact asymptotic variance and bias; estimates that ignore the weights,
    drop the normalisation or weigh for p instead of p^alpha fall outside it."""
    p, alpha, correct = np.array([0.4, 0.3, 0.2, 0.1]), 3.0, np.array([True, False, False, False])
    q = np.full(4, 0.25)
    target = p ** alpha / (p ** alpha).sum()
    exact = float(target[correct].sum())  # 0.64, against 0.4 under p and 0.25 under q
    problems, n = 100, 64
    rng = np.random.default_rng(7)
    draws = rng.choice(4, size=(problems, n), p=q)
    log_w = alpha * np.log(p) - np.log(q)
    records = weighted({f"p{i}": [(bool(correct[x]), float(log_w[x])) for x in row] for i, row in enumerate(draws)})
    estimate = compute_metrics(make_run({W: (W, records)}), n_resamples=200)["methods"][W]["accuracy"]["value"]
    # Self-normalised IS with n draws: variance sum pi^2/q (f - mu)^2 / n, bias sum pi^2/q (mu - f) / n, per problem.
    f = correct.astype(float)
    variance = float(np.sum(target ** 2 / q * (f - exact) ** 2)) / n / problems
    bias = abs(float(np.sum(target ** 2 / q * (exact - f)))) / n
    bound = bias + 5 * math.sqrt(variance)
    assert abs(estimate - exact) < bound, (estimate, exact, bound)
    ok = correct[draws]
    broken = {"ignoring the weights": ok.mean(),
              "unnormalised weights (no 1 / Z)": (np.exp(log_w[draws]) * ok).mean(),
              "weights for p instead of p^alpha": np.mean([(p[x] / q[x] * c).sum() / (p[x] / q[x]).sum()
                                                           for x, c in zip(draws, ok)])}
    for name, value in broken.items():
        assert abs(value - exact) > bound, name


# ------------------------------------------------------------------------------------------- verdicts


def reached_run(w_problems: int = 30):
    """Weighted: 8 draws a problem, the 2 correct ones weighted 3, the 6 others 1: estimate 0.5 (the raw rate
    is 0.25), ESS 144 / 24 = 6. low_temp (alpha 4) solves half: reached. power_mh (alpha 4) solves all: missed.
    base (no alpha) solves a quarter: the reference. low_temp_a2 has another alpha; grpo samples the RL model."""
    pids = [f"p{i}" for i in range(w_problems)]
    draws = [(True, math.log(3))] * 2 + [(False, 0.0)] * 6
    methods = {"base": ("base", plain("base", {p: (8, 2) for p in pids})),
               "low_temp": ("low_temp", plain("low_temp", {p: (8, 4) for p in pids})),
               "low_temp_a2": ("low_temp", plain("low_temp_a2", {p: (8, 4) for p in pids})),
               "power_mh": ("power_mh", plain("power_mh", {p: (2, 2) for p in pids})),
               "grpo": ("grpo", plain("grpo", {p: (8, 4) for p in pids})),
               W: (W, weighted({p: draws for p in pids}))}
    settings = {"low_temp": {"alpha": 4.0}, "low_temp_a2": {"alpha": 2.0}, "power_mh": {"alpha": 4.0},
                W: {"alpha": 4.0}}
    return make_run(methods, settings)


def test_verdicts_reached_missed_reference_and_skipped():
    metrics = compute_metrics(reached_run(), n_resamples=300)
    rows = {r["method"]: r for r in metrics["target"]}
    assert set(rows) == {"base", "low_temp", "low_temp_a2", "power_mh"}  # grpo samples the RL model: no row
    assert rows["low_temp"]["verdict"] == "reached" and rows["low_temp"]["difference"]["value"] == pytest.approx(0.0)
    assert rows["low_temp"]["estimated_accuracy"]["value"] == pytest.approx(0.5)
    assert rows["low_temp"]["ess_median"] == pytest.approx(6.0) and rows["low_temp"]["problems"] == 30
    assert rows["power_mh"]["verdict"] == "missed" and rows["power_mh"]["difference"]["value"] == pytest.approx(0.5)
    assert rows["base"]["role"] == "reference" and rows["base"]["verdict"] == "missed"
    assert rows["base"]["difference"]["value"] == pytest.approx(-0.25)
    assert rows["low_temp_a2"]["verdict"] is None and "alpha 2 is not toy_is's 4" in rows["low_temp_a2"]["skipped"]
    assert metrics["settings"]["target_tolerance"] == 0.05 and metrics["settings"]["min_ess"] == MIN_ESS


def test_cannot_tell_when_the_ess_is_low_or_the_interval_wide():
    pids = [f"p{i}" for i in range(10)]
    low_ess = make_run({"low_temp": ("low_temp", plain("low_temp", {p: (4, 2) for p in pids})),
                        W: (W, weighted({p: [(True, 0.0), (True, 0.0), (False, 0.0), (False, 0.0)] for p in pids}))},
                       {"low_temp": {"alpha": 4.0}, W: {"alpha": 4.0}})
    (row,) = compute_metrics(low_ess, n_resamples=300)["target"]
    assert row["ess_median"] == pytest.approx(4.0) and row["difference"]["value"] == pytest.approx(0.0)
    assert row["verdict"] == "cannot tell (ESS too low)"
    # Per-problem differences +-0.5, +-0.25 around a mean of 0: the interval covers 0 and reaches far past 0.05.
    pids = [f"p{i}" for i in range(6)]
    draws = [(True, math.log(3))] * 2 + [(False, 0.0)] * 6  # estimate 0.5, ESS 6
    counts = dict(zip(pids, [(8, 8), (8, 0), (8, 8), (8, 0), (8, 6), (8, 2)]))
    wide = make_run({"low_temp": ("low_temp", plain("low_temp", counts)), W: (W, weighted({p: draws for p in pids}))},
                    {"low_temp": {"alpha": 4.0}, W: {"alpha": 4.0}})
    (row,) = compute_metrics(wide, n_resamples=300)["target"]
    assert row["difference"]["low"] < -0.05 and row["difference"]["high"] > 0.05
    assert row["verdict"] == "cannot tell (interval too wide)"
    (row,) = compute_metrics(wide, n_resamples=300, target_tolerance=0.9)["target"]
    assert row["verdict"] == "reached"  # the same interval, within a (silly) tolerance of 0.9


def test_a_resolved_difference_inside_the_tolerance_is_neither_reached_nor_missed():
    """+0.01 on every problem: an interval that excludes 0 but lies within +-0.05 is 'within tolerance' (the rule
    before called it missed, beside -0.3); beyond a tolerance of 0.005 it is missed."""
    pids = [f"p{i}" for i in range(20)]
    draws = [(True, math.log(3))] * 2 + [(False, 0.0)] * 6  # estimate 0.5, ESS 6
    run = make_run({"low_temp": ("low_temp", plain("low_temp", {p: (100, 51) for p in pids})),
                    W: (W, weighted({p: draws for p in pids}))}, {"low_temp": {"alpha": 4.0}, W: {"alpha": 4.0}})
    (row,) = compute_metrics(run, n_resamples=300)["target"]
    assert row["difference"]["low"] > 0 and row["difference"]["value"] == pytest.approx(0.01)
    assert row["verdict"] == "within tolerance"
    (row,) = compute_metrics(run, n_resamples=300, target_tolerance=0.005)["target"]
    assert row["verdict"] == "missed"


# --------------------------------------------------------------------- what is and is not reported


def test_draw_based_numbers_are_not_reported_and_paired_comparisons_use_the_estimate():
    run = reached_run()
    for r in run.methods[W].records:  # base-model scores: the correct draws -1 per token, the others -3
        run.methods[W].scores[(r["problem_id"], r["sample_idx"])] = {
            "model": "m", "logprob_mean": -1.0 if r["correct"] else -3.0, "logprob_sum": -3.0 if r["correct"] else -9.0}
    metrics = compute_metrics(run, n_resamples=300)
    m = metrics["methods"][W]
    for key in ("pass_at_k", "majority_vote", "diversity", "entropy", "support", "coverage"):
        assert m[key] is None, key
    assert {"pass_at_k", "equal_compute", "crossover", "boundary"} <= set(m["not_reported"])
    assert all(r["method"] != W and r["reference"] != W for r in metrics["equal_compute"])
    assert any(r["method"] == "power_mh" for r in metrics["equal_compute"])
    assert all(e["b"] != W for e in metrics["crossover"])
    assert all(W not in (e["a"], e["b"]) for e in metrics["boundary"])
    assert metrics["methods"]["base"]["pass_at_k"] is not None and metrics["methods"]["base"]["coverage"] is not None
    # Paired comparisons compare the estimate (0.5), not the raw fraction of correct draws (0.25).
    pair = next(e for e in metrics["paired"] if {e["a"], e["b"]} == {"low_temp", W})
    assert pair["diff"] == pytest.approx(0.0)
    pair = next(e for e in metrics["paired"] if {e["a"], e["b"]} == {"base", W})
    assert abs(pair["diff"]) == pytest.approx(0.25)
    # Base-model scores are weighted means under p^alpha: (2 x 3 x -1 + 6 x -3) / 12 = -2, not the draws' -2.5.
    scores = m["base_scores"]
    assert scores["weighted"] and scores["logprob_mean"]["value"] == pytest.approx(-2.0)
    assert scores["logprob_mean"]["mean_correct"] == pytest.approx(-1.0)
    assert scores["logprob_sum"]["value"] == pytest.approx(-6.0)
    # wandb: the ESS in the weighted method's run, each verdict in the run of the method it judges.
    summary = method_summary(m)
    assert summary["ess/median"] == pytest.approx(6.0) and not any(k.startswith("pass@") for k in summary)
    judged = target_summary(metrics, "power_mh")
    assert judged["target/toy_is/verdict"] == "missed" and judged["target/toy_is/difference"] == pytest.approx(0.5)
    assert target_summary(metrics, "grpo") == {}


def test_the_report_section_and_the_frontier_band(tmp_path):
    metrics = compute_metrics(reached_run(10), n_resamples=200)
    metrics["run_dir"] = str(tmp_path)
    report = render_report(metrics, {}, tmp_path)
    assert "## Did the samplers reach p^alpha?" in report
    lines = report.splitlines()
    assert any(line.startswith("| low_temp | toy_is | 10 |") and line.endswith("| **reached** |") for line in lines)
    assert any(line.startswith("| base (reference, p) | toy_is |") for line in lines)
    assert any(line.startswith("| toy_is (IS estimate of p^alpha, median ESS 6.0) | 10 | 20 / 80 | 0.500") and
               line.endswith("| — | — | — |") for line in lines)
    assert "`low_temp_a2` (against `toy_is`): its alpha 2 is not toy_is's 4" in report
    assert "high acceptance rate is not evidence" in report
    assert W not in {p["name"] for points in frontier_points(metrics).values() for p in points}
    assert [b["name"] for b in frontier_bands(metrics)] == [W]
    paths = make_plots(reached_run(10), metrics, tmp_path / "plots")
    assert paths["frontier"].stat().st_size > 0 and paths["pass_at_k"].stat().st_size > 0
    # Without a weighted method: no target rows, no section.
    plain_run = make_run({"base": ("base", plain("base", {"p0": (4, 2)}))})
    metrics = compute_metrics(plain_run, n_resamples=200)
    assert metrics["target"] == [] and "reach p^alpha" not in render_report(metrics, {}, tmp_path)


def test_a_weighted_record_without_its_weight_is_refused(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    records = weighted({"p0": [(True, 0.0), (False, 0.5)]})
    del records[1]["importance_log_weight"]
    (samples / f"{W}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (samples / f"{W}.config.json").write_text(json.dumps({"method": W, "settings": {"alpha": 4.0}}))
    with pytest.raises(InputError, match=r"toy_is.jsonl:2 has no importance_log_weight \(1 record"):
        load_run(tmp_path)
    records[1]["importance_log_weight"] = float("nan")
    (samples / f"{W}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError, match="importance_log_weight must be a finite number"):
        load_run(tmp_path)


def test_the_tolerance_is_a_checked_analysis_setting():
    assert AnalysisConfig().target_tolerance == 0.05
    with pytest.raises(UsageError, match=r"target_tolerance must be in \(0, 1\), got 0"):
        AnalysisConfig(target_tolerance=0)


def test_power_is_records_are_read_as_weighted_through_its_trait():
    draws = [(True, math.log(3))] * 2 + [(False, 0.0)] * 6
    records = [rec("power_is", "p0", s, ok, lw) for s, (ok, lw) in enumerate(draws)]
    metrics = compute_metrics(make_run({"power_is": ("power_is", records)}, {"power_is": {"alpha": 4.0}}),
                              n_resamples=200)
    m = metrics["methods"]["power_is"]
    assert m["weighted"] and m["accuracy"]["value"] == pytest.approx(0.5) and m["pass_at_k"] is None
