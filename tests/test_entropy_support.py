"""Entropy of each method's own samples (tokens, answers) and support retention against base.

    python -m pytest -q tests/test_entropy_support.py

The token entropy estimate is checked against the exact per-position entropy of a tiny
real model along its own samples (the scorer's confidence), and refused where the records
do not hold the log-probs of the distribution the tokens came from.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharpen.analysis.entropy import answer_entropy, shannon, support, token_entropy
from sharpen.analysis.metrics import compute_metrics
from sharpen.analysis.report import render_report
from test_equal_compute import make
from test_large_k import make_run, records


def test_shannon_entropy_in_nats():
    assert shannon(["a"] * 5) == 0.0
    assert shannon(["a", "b", "c", "d"]) == pytest.approx(math.log(4))
    assert shannon(["a", "a", "b", None]) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_answer_entropy_compares_methods_at_the_same_number_of_samples():
    # Four distinct answers in the first 4 samples, then 4 more: over 8 the entropy would be log 8.
    spread = make("base", "base", {"p0": ([str(i) for i in range(8)], [0] * 8)})
    entry = answer_entropy(spread, samples=4)
    assert entry["value"] == pytest.approx(math.log(4)) and entry["samples"] == 4 and entry["unit"] == "nats"
    assert answer_entropy(spread, samples=8)["value"] == pytest.approx(math.log(8))
    assert answer_entropy(spread, samples=16) is None  # fewer samples than asked
    assert answer_entropy(make("x", "power_mh", {"p0": ([None] * 4, [0] * 4)}), samples=4) is None  # no answers


def test_token_entropy_where_the_records_hold_the_sampling_log_probs():
    groups = {"p0": records("base", {"p0": (4, 1)}), "p1": records("base", {"p1": (2, 0)})}
    # Every record: base_logprob_sum -1.5 over 3 tokens -> 0.5 nats per token.
    entry, note = token_entropy("base", {}, groups)
    assert entry["value"] == pytest.approx(0.5) and entry["unit"] == "nats per token" and "temperature 1" in note
    per_token = [dict(r, token_logprobs=[-0.1, -0.2, -0.3]) for r in groups["p0"]]
    assert token_entropy("grpo", {}, {"p0": per_token})[0]["value"] == pytest.approx(0.2)
    own = [dict(r, sampling_logprobs=[-1.0, -1.0, -1.0]) for r in groups["p0"]]
    assert token_entropy("low_temp", {}, {"p0": own})[0]["value"] == pytest.approx(1.0)  # log q given: used


def test_token_entropy_is_refused_without_log_q():
    groups = {"p0": records("x", {"p0": (2, 1)})}
    for kind, settings, recs, why in (
            ("low_temp", {}, groups, "temperature T < 1"),
            ("power_mh", {}, groups, "whole completions"),
            ("base", {"top_k": 5}, groups, "top_k"),
            ("grpo", {}, {"p0": [dict(r, temperature=0.25) for r in groups["p0"]]}, "temperature [0.25]")):
        entry, note = token_entropy(kind, settings, recs)
        assert entry is None and note.startswith("not available") and why in note, (kind, note)


def test_token_entropy_estimates_the_exact_entropy_of_a_real_model(tiny_model):
    """Samples at temperature 1 from a tiny Llama: the Monte-Carlo estimate against the exact entropies
    of its next-token distributions along the same completions (the scorer's -confidence)."""
    from sharpen.analysis.scoring import score_completions
    from sharpen.sampling import sample

    prompts = [[5, 6, 7], [8, 9]]
    with torch.no_grad():
        drawn = sample(tiny_model, [prompts[i % 2] for i in range(400)], temperature=1.0, max_new_tokens=8,
                       seeds=list(range(400)))
        scores = score_completions(tiny_model, [prompts[i % 2] for i in range(400)], [r.token_ids for r in drawn])
    groups = {"p0": [], "p1": []}
    exact = {"p0": [0.0, 0], "p1": [0.0, 0]}
    for i, (r, s) in enumerate(zip(drawn, scores)):
        pid = f"p{i % 2}"
        groups[pid].append({"completion_ids": r.token_ids, "token_logprobs": r.logprobs, "temperature": 1.0})
        exact[pid][0] += -s["confidence"] * s["num_tokens"]  # sum over positions of the exact entropy
        exact[pid][1] += s["num_tokens"]
    entry, _ = token_entropy("base", {}, groups)
    truth = np.mean([total / tokens for total, tokens in exact.values()])
    assert entry["value"] == pytest.approx(truth, rel=0.03)
    assert entry["low"] < truth < entry["high"] or abs(entry["value"] - truth) < 0.03 * truth


def test_support_retention_and_new_correct_answers_known_by_hand():
    # p0: base gives two correct forms (1/2, 0.5) in its first 4 samples and a third (2/4) only later,
    # which the equal-m rule must ignore; the method keeps 0.5 and finds 4/8, which base never wrote.
    base = make("base", "base", {"p0": (["1/2", "0.5", "3", "3", "2/4", "2/4"], [1, 1, 0, 0, 1, 1]),
                                 "p1": (["7", "8", "8", "8", "8", "8"], [1, 0, 0, 0, 0, 0]),
                                 "p2": (["1", "1", "1", "1", "1", "1"], [0] * 6)})
    method = make("m", "grpo", {"p0": (["0.5", "0.5", "4/8", "2/4"], [1, 1, 1, 1]),
                                "p1": (["8", "8", "8", "8"], [0, 0, 0, 0]),
                                "p2": (["5", "5", "5", "5"], [1, 1, 1, 1])})
    s = support(base, method, n_resamples=200)
    assert s["samples"] == 4 and s["problems"] == 3
    # retention: p0 keeps 1 of {1/2, 0.5}; p1 keeps 0 of {7}; p2 has no correct base answer (left out).
    assert s["retention"]["value"] == pytest.approx((0.5 + 0.0) / 2) and s["retention"]["problems"] == 2
    # new correct answers: p0 {4/8, 2/4} (2/4 is base's only after sample 4), p1 none, p2 {5}.
    assert s["new_correct_answers"]["value"] == pytest.approx(3 / 3) and s["new_correct_answers"]["total"] == 3


def test_entropy_and_support_reach_metrics_and_report():
    problems = {f"p{i}": (4, 2) for i in range(6)}
    answer = lambda pid, s, ok: "right" if ok else f"wrong{s}"  # noqa: E731
    run = make_run({"base": ("base", records("base", problems, answer=answer)),
                    "low_temp": ("low_temp", records("low_temp", {p: (4, 4) for p in problems}, answer=answer)),
                    "power_mh": ("power_mh", records("power_mh", {p: (2, 2) for p in problems}))})
    metrics = compute_metrics(run, n_resamples=200)
    methods = metrics["methods"]
    assert metrics["settings"]["entropy_samples_per_problem"] == 2
    assert methods["base"]["support"] is None  # the reference itself
    assert methods["base"]["entropy"]["token"]["value"] == pytest.approx(0.5)
    assert methods["low_temp"]["entropy"]["token"] is None and "T < 1" in methods["low_temp"]["entropy"]["token_note"]
    # First 2 samples: base "right", "right" (entropy 0); the same for low_temp.
    assert methods["base"]["entropy"]["answer"]["value"] == 0.0
    assert methods["low_temp"]["support"]["retention"]["value"] == 1.0
    assert methods["low_temp"]["support"]["new_correct_answers"]["value"] == 0.0
    assert methods["power_mh"]["support"] is None and methods["power_mh"]["entropy"]["answer"] is None  # no answers
    report = render_report(metrics, {}, "/nowhere")
    assert "### Entropy and support" in report
    row = next(line for line in report.splitlines() if line.startswith("| low_temp | — |"))
    assert "not available" in row and "1.000 [1.000, 1.000]" in row
    base_row = next(line for line in report.splitlines() if line.startswith("| base |") and "temperature 1" in line)
    assert base_row.startswith("| base | 0.500 [0.500, 0.500] | 0.000 [0.000, 0.000] | reference |")
