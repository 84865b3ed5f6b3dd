"""Accuracy at equal compute: majority vote over k-subsets against enumeration, k with the prompt prefilled
once, the rows, and their bad inputs.

    python -m pytest -q tests/test_equal_compute.py
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sharpen.analysis.equal_compute import (equal_compute_row, equal_compute_rows, interpolate, majority_curve,
                                            prompt_tokens, training_forward_tokens)
from sharpen.analysis.metrics import compute_metrics
from sharpen.analysis.outcomes import Outcomes
from sharpen.analysis.report import render_report
from sharpen.analysis.stats import majority_vote_score
from sharpen.sampling.methods import get_method, registered_methods
from test_large_k import make_run, records


def problem(answers, correct, forward=10.0) -> tuple[list, np.ndarray, np.ndarray]:
    return list(answers), np.array(correct, dtype=bool), np.full(len(answers), forward)


def make(name, kind, problems: dict, forward=10.0) -> Outcomes:
    """{pid: (answers, correct)} -> Outcomes with `forward` tokens per completion."""
    pids = list(problems)
    return Outcomes(name, kind, pids, [np.array(c, dtype=bool) for _, c in problems.values()],
                    [list(a) for a, _ in problems.values()],
                    [np.full(len(a), np.nan if forward is None else forward) for a, _ in problems.values()],
                    {p: i for i, p in enumerate(pids)})


def exact_majority(answers, correct, k) -> float:
    """Mean of majority_vote_score over every k-subset (no answer in a subset scores 0)."""
    scores = [majority_vote_score([answers[i] for i in s], [correct[i] for i in s])
              for s in itertools.combinations(range(len(answers)), k)]
    return float(np.mean([0.0 if v is None else v for v in scores]))


PROBLEMS = {
    "p0": (["4", "4", "5", "6", None, "4"], [1, 1, 0, 0, 0, 1]),
    "p1": (["7", "8", "8", None, None, "9"], [1, 0, 0, 0, 0, 0]),  # the right answer is the rare one
    "p2": (["1", "2", "3", "1", "2", "3"], [0, 1, 0, 0, 1, 0]),  # three-way ties
}


def test_majority_curve_matches_enumeration_of_all_subsets():
    o = make("base", "base", PROBLEMS)
    curve = majority_curve(o, 6, subsets=4000, seed=1)
    for row, (answers, correct) in enumerate(PROBLEMS.values()):
        for k in range(1, 7):
            assert curve[row, k - 1] == pytest.approx(exact_majority(answers, correct, k), abs=0.02), (row, k)
        assert curve[row, 5] == pytest.approx(majority_vote_score(answers, correct), abs=1e-12)  # k = n: exact
    # Deterministic: the same seed gives the same numbers, another seed others (but close).
    assert np.array_equal(majority_curve(o, 6, seed=3), majority_curve(o, 6, seed=3))
    assert not np.array_equal(majority_curve(o, 6, seed=3), majority_curve(o, 6, seed=4))


def test_subsets_are_drawn_without_replacement():
    # Answers a, a, b with a right: every 3-subset of 3 samples votes a. Drawing with replacement (a
    # bootstrap of the samples) would give P(at least two a of three) = 20/27 instead: the broken variant.
    o = make("base", "base", {"p": (["a", "a", "b"], [1, 1, 0])})
    curve = majority_curve(o, 3, subsets=2000)
    assert curve[0, 2] == 1.0
    assert curve[0, 1] == pytest.approx(exact_majority(["a", "a", "b"], [1, 1, 0], 2), abs=0.03)  # 2/3 + 1/3 * 1/2
    assert abs(curve[0, 2] - 20 / 27) > 0.2


def test_interpolation_between_integers():
    values = np.array([[0.0, 1.0, 0.5]])
    assert interpolate(values, 1.5)[0] == pytest.approx(0.5)
    assert interpolate(values, 2.0)[0] == 1.0 and interpolate(values, 0.3)[0] == 0.0  # k < 1 reads k = 1


def test_row_at_fractional_k_with_a_paired_verdict():
    base = make("base", "base", PROBLEMS, forward=10.0)  # a 4-token prompt + 6 forward tokens per sample
    prompts = [np.full(6, 4.0)] * len(PROBLEMS)
    sampler = make("power_mh", "power_mh", {p: (["x"] * 4, [1] * 4) for p in PROBLEMS}, forward=19.0)
    row = equal_compute_row(sampler, base, reference_prompts=prompts, n_resamples=500)
    assert row["status"] == "ok" and row["k"] == pytest.approx(2.5) and row["reference_samples"] == 6  # (19-4)/6
    assert row["k_prompt_per_sample"] == pytest.approx(1.9) and "cost_note" not in row
    want = np.mean([0.5 * exact_majority(a, c, 2) + 0.5 * exact_majority(a, c, 3) for a, c in PROBLEMS.values()])
    assert row["majority_vote"]["value"] == pytest.approx(want, abs=0.08)  # 64 subsets per problem
    assert row["accuracy"]["value"] == 1.0 and row["beats_voting"] == "yes"
    assert row["difference"]["value"] == pytest.approx(1.0 - row["majority_vote"]["value"])
    from sharpen.analysis.stats import pass_at_k_matrix

    n, c = [6, 6, 6], [3, 1, 2]
    exact_pass = 0.5 * pass_at_k_matrix(n, c, [2]).mean() + 0.5 * pass_at_k_matrix(n, c, [3]).mean()
    assert row["pass_at_k"]["value"] == pytest.approx(exact_pass)
    # A sampler that is always wrong does not beat voting.
    wrong = make("power_mh", "power_mh", {p: (["x"] * 4, [0] * 4) for p in PROBLEMS}, forward=19.0)
    assert equal_compute_row(wrong, base, reference_prompts=prompts, n_resamples=500)["beats_voting"] == "no"


def test_k_beyond_the_references_samples_is_marked_not_extrapolated():
    base = make("base", "base", PROBLEMS, forward=10.0)
    costly = make("power_mh", "power_mh", {p: (["x"], [1]) for p in PROBLEMS}, forward=1000.0)
    row = equal_compute_row(costly, base)
    assert row["status"].startswith("k > n") and row["k"] == pytest.approx(100.0)
    assert "majority_vote" not in row and "pass_at_k" not in row and "beats_voting" not in row


def test_records_without_forward_tokens_say_so():
    base = make("base", "base", PROBLEMS, forward=None)
    sampler = make("power_mh", "power_mh", {p: (["x"], [1]) for p in PROBLEMS}, forward=25.0)
    row = equal_compute_row(sampler, base)
    assert row["status"] == "no forward tokens in base's 18 record(s) (cost.forward_tokens): not computed"
    assert "k" not in row and "majority_vote" not in row


def test_training_forward_tokens():
    assert training_forward_tokens({"trained_tokens": 1000, "num_iterations": 2}) == (1500.0, None)
    assert training_forward_tokens({"rollout_tokens": 700})[0] == 700.0
    assert training_forward_tokens({"wall_seconds": 3.0}) == (None, None)
    assert training_forward_tokens(None) == (None, None)


# ------------------------------------------------------------------------------- k with the prompt once


def plain_records(name: str, prompts: dict[str, int], lengths: list[int], forward=None) -> list[dict]:
    """Records of plain decoding: problem p has a prompts[p]-token prompt, sample s has lengths[s] tokens, so
    forward_tokens = prompt + num_tokens - 1 (or `forward` for every record, for a sampler)."""
    out = []
    for pid, prompt in prompts.items():
        for s, n in enumerate(lengths):
            out.append({"method": name, "problem_id": pid, "sample_idx": s, "prompt": "q" * prompt, "correct": s == 0,
                        "extracted_answer": "right" if s == 0 else f"wrong{s % 3}", "num_tokens": n,
                        "completion_ids": [5] * n,
                        "cost": {"forward_tokens": prompt + n - 1 if forward is None else forward}})
    return out


def grouped(records: list[dict]) -> dict[str, list[dict]]:
    groups = {}
    for r in records:
        groups.setdefault(r["problem_id"], []).append(r)
    return groups


def test_k_counts_the_references_prompt_once():
    # base: prompts of 80 and 120 tokens (mean 100), completions of 11..41 tokens, so 10..40 forward tokens
    # each beyond the prompt (mean 25): C_R = 125. The sampler spends C_S = 250 per completion, prompt included.
    prompts, lengths = {"p0": 80, "p1": 120}, [11, 21, 31, 41] * 2
    records = {"base": grouped(plain_records("base", prompts, lengths)),
               "power_mh": grouped(plain_records("power_mh", prompts, [7, 7], forward=250.0))}
    outcomes = {name: Outcomes.from_groups(name, name, g) for name, g in records.items()}
    rows = equal_compute_rows(outcomes, records=records, n_resamples=200)
    assert len(rows) == 1
    row = rows[0]
    assert row["reference_prompt_tokens"] == pytest.approx(100.0)
    assert row["reference_completion_forward"] == pytest.approx(25.0)
    # k samples of one prompt with a shared prefix: prompt + k * 25 forward tokens = 250 -> k = 6.
    assert row["k"] == pytest.approx(6.0) and row["status"] == "ok" and "cost_note" not in row
    per_token = np.mean([n - 1 for n in lengths])  # forward tokens of one sample after the prompt's prefill
    assert np.mean([p + 6 * per_token for p in prompts.values()]) == pytest.approx(250.0)  # one prefill per problem
    # The old accounting prefills the prompt for each sample: 6 samples would cost 6 * 125 = 750, so k = 250 / 125.
    assert np.mean([6 * (p + per_token) for p in prompts.values()]) == pytest.approx(750.0)
    assert row["k_prompt_per_sample"] == pytest.approx(2.0)
    # Broken variant: charging the prompt to every reference sample (prompt 0 left over) gives the old k.
    broken = equal_compute_row(outcomes["power_mh"], outcomes["base"],
                               reference_prompts=[np.zeros(8), np.zeros(8)], n_resamples=200)
    assert broken["k"] == pytest.approx(row["k_prompt_per_sample"]) and broken["k"] != pytest.approx(row["k"])
    # Without the records, the row says that each sample was charged its prompt.
    blind = equal_compute_rows(outcomes, n_resamples=200)[0]
    assert blind["k"] == pytest.approx(2.0) and "charged its own prompt" in blind["cost_note"]
    assert "reference_prompt_tokens" not in blind


def test_prompt_tokens_of_a_plain_decoding_record():
    groups = grouped(plain_records("base", {"p0": 9, "p1": 30}, [1, 4, 12]))
    assert [x.tolist() for x in prompt_tokens(groups)] == [[9.0, 9.0, 9.0], [30.0, 30.0, 30.0]]
    # Without num_tokens the completion's ids are counted; a record whose cost is not plain decoding's reads NaN.
    odd = [{"completion_ids": [1, 2, 3], "cost": {"forward_tokens": 12}},
           {"num_tokens": 50, "cost": {"forward_tokens": 12}}, {"num_tokens": 3},
           {"num_tokens": 3, "cost": {"forward_tokens": None}}]
    got = prompt_tokens({"p": odd})[0]
    assert got[0] == 10.0 and np.isnan(got[1:]).all()


def test_prompt_is_recovered_from_what_every_reference_method_records(tiny_model):
    # forward_tokens - num_tokens + 1 must be the prompt for each equal-compute reference's real sampler.
    prompts = [[2, 10, 11, 12], [2] + list(range(10, 27))]
    references = [get_method(name) for name in registered_methods() if get_method(name).equal_compute_reference]
    assert references
    for method in references:
        results = method.run(tiny_model, prompts, method.settings(max_new_tokens=6), seeds=[1, 2])
        groups = {str(i): [{"num_tokens": len(r.token_ids), "cost": r.stats}] for i, r in enumerate(results)}
        assert [x.tolist() for x in prompt_tokens(groups)] == [[4.0], [18.0]], method.name


def test_rows_in_metrics_and_report_with_a_training_row():
    problems = {f"p{i}": (6, 2) for i in range(10)}
    answer = lambda pid, s, ok: "right" if ok else f"wrong{s % 2}"  # noqa: E731

    def reference(name):  # 10 forward tokens = a 5-token prompt + 6 sampled tokens - 1
        return [{**r, "num_tokens": 6} for r in records(name, problems, answer=answer, forward=10.0)]

    run = make_run({"base": ("base", reference("base")), "low_temp": ("low_temp", reference("low_temp")),
                    "power_mh": ("power_mh", records("power_mh", {p: (2, 2) for p in problems}, answer=answer,
                                                     forward=30.0)),
                    "grpo": ("grpo", records("grpo", {p: (2, 2) for p in problems}, answer=answer, forward=10.0)),
                    "power_smc": ("power_smc", records("power_smc", {p: (2, 2) for p in problems}, answer=answer,
                                                       forward=None))})
    training = {"grpo": {"trained_tokens": 100, "num_iterations": 1}}
    metrics = compute_metrics(run, training_costs=training, n_resamples=200)
    rows = {(r["method"], r["reference"], r["training"]): r for r in metrics["equal_compute"]}
    assert set(rows) == {("low_temp", "base", False), ("power_mh", "base", False), ("power_mh", "low_temp", False),
                         ("grpo", "base", False), ("grpo", "low_temp", False), ("grpo", "base", True),
                         ("grpo", "low_temp", True), ("power_smc", "base", False), ("power_smc", "low_temp", False)}
    # power_mh: (30 - 5) / (10 - 5) = 5 base samples (3 with a prefill per sample).
    assert rows["power_mh", "base", False]["k"] == pytest.approx(5.0)
    assert rows["power_mh", "base", False]["k_prompt_per_sample"] == pytest.approx(3.0)
    # grpo: 10 forward tokens per completion + 200 training forward tokens over 10 problems = 30 -> k = 5.
    trained = rows["grpo", "base", True]
    assert trained["forward_per_completion"] == pytest.approx(30.0) and trained["k"] == pytest.approx(5.0)
    assert trained["training_forward_tokens"] == 200.0 and trained["k_prompt_per_sample"] == pytest.approx(3.0)
    assert rows["grpo", "base", False]["k"] == pytest.approx(1.0)
    assert rows["power_smc", "base", False]["status"].startswith("no forward tokens in power_smc's")
    report = render_report(metrics, {}, "/nowhere")
    assert "### Accuracy at equal compute" in report
    assert any(line.startswith("| grpo + training | base | 10 | 30.0 / 10.0 | 5.0 | 5.00 | 3.00 |")
               for line in report.splitlines())
    smc_row = next(line for line in report.splitlines() if line.startswith("| power_smc | base |"))
    assert "no forward tokens in power_smc's 20 record(s)" in smc_row
