"""Large k: pass@k grids up to each method's own n, coverage at the largest shared n, the crossover k.

    python -m pytest -q tests/test_large_k.py

Runs are built in memory from records whose correct counts are chosen so that every
pass@k, coverage and crossover is known by hand.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np
import pytest

from sharpen.analysis.large_k import crossover, crossover_grid, first_crossover
from sharpen.analysis.metrics import compute_metrics
from sharpen.analysis.outcomes import Outcomes
from sharpen.analysis.report import render_report
from sharpen.analysis.runs import MethodRecords, Run
from sharpen.analysis.stats import k_grid, pass_at_k, pass_at_k_matrix


def records(name: str, counts: dict[str, tuple[int, int]], *, answer=None, forward: float | None = 10.0) -> list[dict]:
    """{problem: (n, c)} -> records; the first c samples of a problem are the correct ones."""
    out = []
    for pid, (n, c) in counts.items():
        for s in range(n):
            record = {"method": name, "problem_id": pid, "sample_idx": s, "prompt": f"q {pid}", "completion": "x",
                      "completion_ids": [5, 6, 1], "finish_reason": "eos", "correct": s < c,
                      "extracted_answer": None if answer is None else answer(pid, s, s < c),
                      "base_logprob_sum": -1.5, "temperature": 1.0}
            if forward is not None:
                record["cost"] = {"forward_tokens": forward, "sampled_tokens": 3}
            out.append(record)
    return out


def make_run(methods: dict[str, tuple[str, list[dict]]], settings: dict | None = None) -> Run:
    """{name: (kind, records)} -> a Run, records sorted as load_run sorts them."""
    found = {}
    for name, (kind, recs) in methods.items():
        recs = sorted(recs, key=lambda r: (str(r["problem_id"]), r["sample_idx"]))
        found[name] = MethodRecords(name, Path(f"/nowhere/samples/{name}.jsonl"), recs, list(range(1, len(recs) + 1)),
                                    {"method": kind, "settings": (settings or {}).get(name, {})}, "0" * 64)
    return Run(Path("/nowhere"), found, [])


def outcomes(name: str, kind: str, counts: dict[str, tuple[int, int]]) -> Outcomes:
    recs = records(name, counts)
    groups = {}
    for r in recs:
        groups.setdefault(r["problem_id"], []).append(r)
    return Outcomes.from_groups(name, kind, groups)


# ------------------------------------------------------------------------------------------- estimators


def test_vectorised_pass_at_k_equals_enumeration_over_mixed_sample_counts():
    n = [5, 7, 5, 6, 7]
    c = [0, 3, 5, 1, 7]
    ks = [1, 2, 3, 5]
    got = pass_at_k_matrix(n, c, ks)
    for p, (n_p, c_p) in enumerate(zip(n, c)):
        outcomes_ = [1] * c_p + [0] * (n_p - c_p)
        for j, k in enumerate(ks):
            subsets = list(itertools.combinations(outcomes_, k))
            assert got[p, j] == pytest.approx(sum(any(s) for s in subsets) / len(subsets), abs=1e-12)
            assert got[p, j] == pytest.approx(pass_at_k(n_p, c_p, k), abs=1e-12)
    # The with-replacement shortcut 1 - (1 - c/n)^k is biased low: the enumeration tells them apart.
    biased = 1 - (1 - 3 / 7) ** 3
    assert abs(biased - got[1, 2]) > 0.05


def test_k_grid_is_dense_then_logarithmic_and_ends_at_n():
    assert k_grid(1) == [1] and k_grid(16) == list(range(1, 17))
    grid = k_grid(1024)
    assert grid[:16] == list(range(1, 17)) and grid[-1] == 1024
    assert all(2 ** j in grid for j in range(11)) and len(grid) < 40
    assert k_grid(1000)[-1] == 1000 and 1024 not in k_grid(1000)


# ------------------------------------------------------------------------------------------------ crossover


def test_first_crossover_cases():
    ks = np.arange(1, 5)
    assert first_crossover(np.array([-0.2, -0.1, 0.0, 0.1]), ks) == 3  # a tie counts as caught up
    assert first_crossover(np.array([0.0, -0.1, -0.1, -0.1]), ks) == math.inf  # below from k=2 on, never back
    assert first_crossover(np.array([0.1, 0.0, 0.2, 0.0]), ks) == 0  # never below
    assert first_crossover(np.array([-1e-15, 0.1, 0.1, 0.1]), ks) == 0  # rounding is not "below"


def test_crossover_k_is_known_by_hand():
    # Sharpened: all 8 samples right on half the problems, none on the other half: pass@k = 0.5 for every k.
    # Base: 1 of 8 right everywhere: pass@k = k / 8, below 0.5 until k = 4, equal at 4.
    problems = [f"p{i}" for i in range(40)]
    sharp = outcomes("sharp", "power_mh", {p: (8, 8 if i % 2 else 0) for i, p in enumerate(problems)})
    base = outcomes("base", "base", {p: (8, 1) for p in problems})
    e = crossover(base, sharp, n_resamples=500)
    assert (e["status"], e["value"], e["max_k"], e["problems"]) == ("crossover", 4, 8, 40)
    assert e["low"] <= 4 <= e["high"] and e["draws_crossover"] + e["draws_none"] + e["draws_never_below"] == 1
    # A method that solves everything: base ties it at k = 8 (pass@8 = 1 everywhere) ...
    always = outcomes("always", "grpo", {p: (8, 8) for p in problems})
    e = crossover(base, always, n_resamples=200)
    assert (e["status"], e["value"], e["low"], e["high"]) == ("crossover", 8, 8, 8)
    # ... but not once base has a problem it never solves: no crossover up to n.
    weaker = outcomes("base", "base", {p: (8, 0 if p == "p0" else 1) for p in problems})
    e = crossover(weaker, always, n_resamples=1000)
    assert (e["status"], e["value"], e["low"], e["high"]) == ("none up to n", None, 8, None)
    # A resample without p0 ties at k = 8 again: that happens with probability (39/40)^40, and the draws say so.
    assert e["draws_none"] == pytest.approx(1 - (39 / 40) ** 40, abs=0.05)
    assert e["draws_crossover"] == pytest.approx(1 - e["draws_none"]) and e["draws_never_below"] == 0
    # One that solves less than base even at k = 1: base is never below.
    never = outcomes("never", "low_temp", {p: (8, 0) for p in problems})
    e = crossover(base, never, n_resamples=200)
    assert (e["status"], e["value"], e["low"], e["high"]) == ("base never below", 0, 0, 0)


def test_crossover_uses_the_shared_problems_and_the_smaller_n():
    base = outcomes("base", "base", {**{f"p{i}": (64, 1) for i in range(10)}, "extra": (64, 64)})
    sharp = outcomes("sharp", "power_mh", {f"p{i}": (16, 16 if i < 5 else 0) for i in range(10)})
    e = crossover(base, sharp, n_resamples=200)
    # On p0..p9 with n = 16: base pass@k = k / 64 < 0.5 up to 16, and "extra" (base only) does not count.
    assert e["problems"] == 10 and e["max_k"] == 16 and e["status"] == "none up to n"


def test_crossover_grid_is_every_k_then_geometric():
    grid = crossover_grid(1024)
    assert grid[:128].tolist() == list(range(1, 129)) and grid[-1] == 1024
    assert np.all(np.diff(grid[128:]) / grid[128:-1] < 0.05)  # steps of under 5% above the dense part


# ------------------------------------------------------------------------------------- in compute_metrics


def unequal_run() -> Run:
    """base and grpo: 64 samples on the first 4 problems; power_mh: 4 samples on all 8."""
    first, all_ = [f"p{i}" for i in range(4)], [f"p{i}" for i in range(8)]
    return make_run({"base": ("base", records("base", {p: (64, 8) for p in first})),
                     "power_mh": ("power_mh", records("power_mh", {p: (4, 4 if p < "p2" else 0) for p in all_})),
                     "grpo": ("grpo", records("grpo", {p: (64, 48) for p in first}))})


def test_each_curve_goes_to_its_own_n_and_coverage_uses_the_largest_shared_n():
    metrics = compute_metrics(unequal_run(), n_resamples=200)
    methods = metrics["methods"]
    assert methods["base"]["pass_at_k"]["k"] == k_grid(64) and methods["power_mh"]["pass_at_k"]["k"] == [1, 2, 3, 4]
    assert methods["base"]["pass_at_k"]["value"][-1] == pytest.approx(1.0)
    for name, m in methods.items():
        cov = m["coverage"]
        assert cov["k"] == 4 and cov["problems"] == 4  # n shared by all = 4, problems shared by all = p0..p3
    assert methods["power_mh"]["coverage"]["value"] == pytest.approx(0.5)
    assert methods["base"]["coverage"]["value"] == pytest.approx(1 - math.comb(56, 4) / math.comb(64, 4))
    crossings = {e["b"]: e for e in metrics["crossover"]}
    assert set(crossings) == {"power_mh", "grpo"} and metrics["reference_base"] == "base"
    assert crossings["power_mh"]["max_k"] == 4 and crossings["grpo"]["max_k"] == 64


def test_report_marks_k_beyond_a_methods_samples_and_shows_the_large_k_tables():
    metrics = compute_metrics(unequal_run(), n_resamples=200)
    report = render_report(metrics, {}, "/nowhere")
    power_row = next(line for line in report.splitlines() if line.startswith("| power_mh | 8 |"))
    assert power_row.rstrip(" |").endswith("n<k")  # pass@64 column: 4 samples only, not extrapolated
    header = next(line for line in report.splitlines() if line.startswith("| method | problems | correct"))
    assert "| pass@4 |" in header and header.rstrip().endswith("| pass@64 |")
    assert "### Coverage and crossover" in report and "coverage (pass@4)" in report
    # base (8 of 64 right) reaches grpo (48 of 64) only where both are 1: from k = 57 on, on every resample.
    grpo_row = next(line for line in report.splitlines() if line.startswith("| grpo | 64 |"))
    assert "| 57 [57, 57] |" in grpo_row
    power_row = next(line for line in report.splitlines() if line.startswith("| power_mh | 4 |"))
    assert "none up to 4" in power_row


def test_no_shared_problem_is_a_warning_and_no_coverage():
    run = make_run({"base": ("base", records("base", {"a": (4, 1)})),
                    "power_mh": ("power_mh", records("power_mh", {"b": (4, 4)}))})
    metrics = compute_metrics(run, n_resamples=200)
    assert any("share no problem" in w for w in metrics["warnings"])
    assert any("no problem is shared by every method" in w for w in metrics["warnings"])
    assert metrics["methods"]["base"]["coverage"] is None
    (e,) = metrics["crossover"]
    assert e["status"] == "no shared problem" and e["problems"] == 0
    report = render_report(metrics, {}, "/nowhere")
    assert "no shared problem" in report


def test_large_runs_analyse_in_seconds():
    """500 problems x 1024 samples: the large-k parts are vectorised (records are built outside the timing)."""
    rng = np.random.default_rng(0)
    P, n = 500, 1024
    base = Outcomes("base", "base", [f"p{i}" for i in range(P)],
                    [rng.random(n) < r for r in rng.beta(0.5, 2, P)], [[None] * n] * P, [np.full(n, 10.0)] * P,
                    {f"p{i}": i for i in range(P)})
    sharp = Outcomes("sharp", "grpo", base.pids, [rng.random(n) < r for r in rng.beta(2, 0.5, P)], base.answers,
                     base.forward, base._rows)
    started = time.process_time()
    e = crossover(base, sharp, n_resamples=2000)
    assert e["max_k"] == n and time.process_time() - started < 10
