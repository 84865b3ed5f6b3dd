"""The reasoning boundary: problems solved by only one side of a pair, as counts with intervals, and its plot.

    python -m pytest -q tests/test_boundary.py
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sharpen.analysis.boundary import boundary, only_matrix
from sharpen.analysis.metrics import compute_metrics
from sharpen.analysis.plots import make_plots
from sharpen.analysis.report import render_report
from test_large_k import make_run, outcomes, records


def test_set_counts_when_both_have_exactly_k_samples():
    # A solves p0, p1, p2 (some sample right), B solves p2, p3; p4, p5 nobody.
    a = outcomes("a", "base", {"p0": (4, 4), "p1": (4, 1), "p2": (4, 2), "p3": (4, 0), "p4": (4, 0), "p5": (4, 0)})
    b = outcomes("b", "grpo", {"p0": (4, 0), "p1": (4, 0), "p2": (4, 4), "p3": (4, 3), "p4": (4, 0), "p5": (4, 0)})
    e = boundary(a, b, n_resamples=500)
    assert e["k"] == 4 and e["problems"] == 6
    got = {name: e[name]["value"] for name in ("only_a", "only_b", "both", "neither", "net")}
    assert got == {"only_a": 2.0, "only_b": 1.0, "both": 1.0, "neither": 2.0, "net": -1.0}
    for name in ("only_a", "only_b", "both", "neither"):
        assert 0 <= e[name]["low"] <= e[name]["value"] <= e[name]["high"] <= 6
    assert e["net"]["low"] < 0  # the net's interval is over the same resamples as its parts
    assert sum(got[n] for n in ("only_a", "only_b", "both", "neither")) == 6


def test_more_samples_on_one_side_average_over_its_k_subsets():
    # A has 8 samples (2 right) on p0, B has 4 (none right): at k = 4 "only A" is the share of A's
    # 4-subsets holding a right sample, counted by enumeration.
    a = outcomes("a", "base", {"p0": (8, 2), "p1": (8, 8)})
    b = outcomes("b", "grpo", {"p0": (4, 0), "p1": (4, 4)})
    e = boundary(a, b, n_resamples=200)
    subsets = list(itertools.combinations([1, 1, 0, 0, 0, 0, 0, 0], 4))
    share = sum(any(s) for s in subsets) / len(subsets)
    assert share == pytest.approx(1 - math.comb(6, 4) / math.comb(8, 4))
    assert e["k"] == 4 and e["only_a"]["value"] == pytest.approx(share) and e["both"]["value"] == pytest.approx(1.0)
    # Counting only A's first 4 samples instead (its right ones come first here) would say 1: the luck of order.
    assert abs(e["only_a"]["value"] - 1.0) > 0.2


def test_no_shared_problem_gives_an_empty_entry_and_the_report_says_so():
    a = outcomes("a", "base", {"p0": (2, 1)})
    b = outcomes("b", "grpo", {"q0": (2, 1)})
    e = boundary(a, b)
    assert e == {"a": "a", "b": "b", "problems": 0}
    assert np.isnan(only_matrix([e], ["a", "b"])).all()


def test_boundary_reaches_metrics_report_and_plot(tmp_path):
    problems = [f"p{i}" for i in range(6)]
    run = make_run({"base": ("base", records("base", {p: (4, 1 if i < 4 else 0) for i, p in enumerate(problems)})),
                    "grpo": ("grpo", records("grpo", {p: (4, 4 if i in (0, 4) else 0)
                                                      for i, p in enumerate(problems)})),
                    "power_mh": ("power_mh", records("power_mh", {"x": (2, 1)}))})
    metrics = compute_metrics(run, n_resamples=200)
    entry = next(e for e in metrics["boundary"] if (e["a"], e["b"]) == ("base", "grpo"))
    assert (entry["only_a"]["value"], entry["only_b"]["value"], entry["both"]["value"]) == (3.0, 1.0, 1.0)
    assert {(e["a"], e["b"], e["problems"]) for e in metrics["boundary"] if e["problems"] == 0} == {
        ("base", "power_mh", 0), ("grpo", "power_mh", 0)}
    plots = make_plots(run, metrics, tmp_path / "plots")
    assert plots["boundary"].stat().st_size > 1000
    report = render_report(metrics, plots, tmp_path)
    assert "## Reasoning boundary" in report and "plots/boundary.png" in report
    row = next(line for line in report.splitlines() if line.startswith("| base | grpo | 4 | 6 |"))
    assert "| 3.0 [" in row and "| 1.0 [" in row
    assert "| base | power_mh | — | 0 | no shared problem |" in report
    matrix = only_matrix(metrics["boundary"], list(metrics["methods"]))
    assert matrix[0, 1] == 3.0 and matrix[1, 0] == 1.0 and np.isnan(matrix[0, 2])
