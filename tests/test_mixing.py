"""Convergence diagnostics (sharpen.analysis.mixing) and power_mh's two starts.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_mixing.py     # about 12 s on one core

Three parts:
- power_mh's `init`: chains grown from the base model (p on q's support) are plain p when they take no MH
  step; under init "both" even sample indices start from the proposal, odd ones from p; by exact enumeration
  (the models and helpers of tests/test_power_exactness.py) the base start converges to the same law as the
  proposal start, and after 1 step its output is measurably another law: the difference the diagnostic detects.
- the two-start diagnostic on synthetic records: starts drawn from one law are flagged at about the nominal
  rate (200 synthetic runs), starts from different laws are flagged; R-hat near 1 vs large; the SMC and
  look-ahead summaries on hand-made records.
- a real `sharpen sample --method power_mh --init both` run on a tiny model, analysed: records carry `init`,
  metrics.json's mixing entry and the report's "Mixing diagnostics" section are there.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import tiny_llama
from sharpen.analysis import AnalysisConfig, analyze
from sharpen.analysis.mixing import (
    LOG_Z_SD_LIMIT, MIXING_P, RHAT_LIMIT, lookahead, mixing_diagnostics, mixing_scalars, two_starts,
)
from sharpen.cli import main
from sharpen.sampling import PowerSamplingConfig, power_sample, sample, smc_sample, sps_sample
from sharpen.sampling.draw import proposal_logprobs
from sharpen.sampling.smc import SMCConfig
from sharpen.sampling.sps import SPSConfig
from test_power import PROMPTS, small
from test_power_exactness import (  # noqa: F401  (power_model: a fixture)
    FAIL, PASS, chains_to_reject, chi_square, conditionals_of, config, detectable_tv, exact_kernel, finals,
    per_token, power_model, run_chains, tables, target,
)

# ---------------------------------------------------------------------------------------------
# power_mh's starts


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=12, logit_scale=3.0)


def test_base_start_without_mh_steps_is_plain_sampling_at_temperature_1(model):
    """Every block's growth draws from p itself (the proposal's temperature 1/2 does not apply); log q is still q's."""
    cfg = small(mcmc_steps=0, init="base")  # blocks of 5 over 12 tokens: growth resumes in each block
    power = power_sample(model, PROMPTS * 2, cfg, seed=2)
    plain = sample(model, PROMPTS * 2, temperature=1.0, max_new_tokens=12, seed=2)
    assert [r.token_ids for r in power] == [r.token_ids for r in plain]
    assert all(r.fields == {"init": "base"} for r in power)
    proposal = power_sample(model, PROMPTS * 2, small(mcmc_steps=0), seed=2)
    assert [r.token_ids for r in proposal] != [r.token_ids for r in power]


def test_base_start_stays_on_the_proposal_support(model, monkeypatch):
    """With top-p the base start draws from p renormalised on q's nucleus: no grown token is one q cannot draw
    (such a state could never be left), though top-p of p at temperature 1 would often give one."""
    from sharpen.sampling import power as power_module

    logq = []
    finish_op = power_module._Chain.finish_op

    def recording(chain):
        if chain.op == "grow":
            logq.extend(chain.plogq)
        return finish_op(chain)

    monkeypatch.setattr(power_module._Chain, "finish_op", recording)
    cfg = small(mcmc_steps=1, init="base", top_p=0.5)  # q at temperature 1/2
    results = power_sample(model, PROMPTS * 8, cfg, seed=0)
    assert logq and all(math.isfinite(v) for v in logq)
    assert all(r.fields["init"] == "base" for r in results)
    # At temperature 1/2 q's nucleus is narrower than top-p 0.5 of p at temperature 1 after these prompts: the
    # restriction is doing something.
    import torch
    with torch.no_grad():
        logits = torch.cat([model(input_ids=torch.tensor([p])).logits[0, -1:] for p in PROMPTS])
    kept_q = (proposal_logprobs(logits, 0.5, None, 0.5) > -math.inf).sum(-1)
    kept_p = (proposal_logprobs(logits, 1.0, None, 0.5) > -math.inf).sum(-1)
    assert (kept_q <= kept_p).all() and (kept_q < kept_p).any()


def test_both_starts_alternate_by_sample_index(model):
    """init both: sample index even -> the proposal's chain, odd -> the base start's, with the same seeds."""
    seeds = list(range(100, 100 + len(PROMPTS)))
    both = power_sample(model, PROMPTS, small(init="both"), seeds=seeds, sample_indices=[3, 0, 5, 8])
    alone = {s: power_sample(model, PROMPTS, small(init=s), seeds=seeds) for s in ("proposal", "base")}
    for j, (index, r) in enumerate(zip([3, 0, 5, 8], both)):
        start = "proposal" if index % 2 == 0 else "base"
        assert r.fields == {"init": start} and r.token_ids == alone[start][j].token_ids
    assert [r.fields["init"] for r in power_sample(model, PROMPTS, small(init="both"), seeds=seeds)] == \
        ["proposal", "base", "proposal", "base"]  # no sample_indices: the position in the list
    with pytest.raises(ValueError, match="sample_indices has 1 entries for 4 prompts"):
        power_sample(model, PROMPTS, small(init="both"), sample_indices=[0])


BASE_START = dict(alpha=4.0, temperature=0.5)  # power_model: p and q differ by 0.36 in TV over completions


def start_laws(power_model, steps):
    """Exact output laws after `steps` MH steps (one block) from the proposal and from p, and p^alpha."""
    table = conditionals_of(power_model)
    states, pi = target(table, BASE_START["alpha"])
    logp, q = tables(table, BASE_START["temperature"])
    K = np.linalg.matrix_power(exact_kernel(table, states, BASE_START["alpha"], BASE_START["temperature"]), steps)
    starts = [np.array([math.exp(sum(per_token(t, x))) for x in states]) for t in (q, logp)]
    return states, starts[0] @ K, starts[1] @ K, pi


def as_records(results, problem="p") -> list[dict]:
    """Records of the two-start diagnostic from chains: the completion as the answer, its base log-likelihood."""
    return [{"problem_id": problem, "sample_idx": j, "init": r.fields["init"], "extracted_answer": str(r.token_ids),
             "base_logprob_sum": sum(r.logprobs), "completion_ids": r.token_ids} for j, r in enumerate(results)]


def halves(results):
    return [r for j, r in enumerate(results) if j % 2 == 0], [r for j, r in enumerate(results) if j % 2 == 1]


def tv(a, b) -> float:
    return 0.5 * float(np.abs(a - b).sum())


def test_one_step_from_each_start_follows_its_own_law_and_the_diagnostic_sees_it(power_model):
    """After 1 MH step the two starts are 0.19 apart (exact): 2000 chains from each follow their own law, the base
    start's chains fail the proposal start's law (p < 1e-12), and the two-start diagnostic says "not mixed"."""
    states, law_q, law_p, _ = start_laws(power_model, 1)
    assert tv(law_q, law_p) > 0.18
    n = 2 * chains_to_reject(law_q, tv(law_q, law_p))
    cfg = config(BASE_START["alpha"], BASE_START["temperature"], steps=1)
    results = run_chains(power_model, PowerSamplingConfig(**{**cfg.__dict__, "init": "both"}), n=n)
    from_q, from_p = halves(results)
    assert {r.fields["init"] for r in from_q} == {"proposal"} and {r.fields["init"] for r in from_p} == {"base"}
    for chains, law in ((from_q, law_q), (from_p, law_p)):
        p_value, distance = chi_square(finals(chains), states, law)
        assert p_value > PASS, f"p={p_value:.2e}, TV={distance:.3f}"
    p_value, distance = chi_square(finals(from_p), states, law_q)
    assert p_value < FAIL, f"p={p_value:.2e}, TV={distance:.3f}"
    entry = two_starts({"p": as_records(results)}, permutations=500)
    assert entry["mixed"] is False and entry["p_value"] < MIXING_P


def test_base_start_converges_to_the_same_law(power_model):
    """After 20 steps the base start's exact law is 0.004 from the proposal start's and 0.02 from p^4; 1000 chains
    from each start follow it, and the diagnostic finds no sign of non-mixing."""
    states, law_q, law_p, pi = start_laws(power_model, 20)
    assert tv(law_q, law_p) < 0.005 and tv(law_p, pi) < 0.02
    cfg = config(BASE_START["alpha"], BASE_START["temperature"], steps=20)
    results = run_chains(power_model, PowerSamplingConfig(**{**cfg.__dict__, "init": "both"}), n=2000)
    from_q, from_p = halves(results)
    for chains, law in ((from_p, law_p), (from_p, pi), (from_q, law_q)):
        p_value, distance = chi_square(finals(chains), states, law)
        assert p_value > PASS, f"p={p_value:.2e}, TV={distance:.3f}"
    assert detectable_tv(law_p, 1000) < 0.09
    entry = two_starts({"p": as_records(results)}, permutations=500)
    assert entry["mixed"] is True, entry


# ---------------------------------------------------------------------------------------------
# The two-start diagnostic on synthetic records


def synthetic(rng, problems=20, per_start=4, shift=0.0, answers_base=None) -> dict[str, list[dict]]:
    """Records of `problems` problems, `per_start` chains from each start: log-likelihoods normal around a
    per-problem mean (the base start's moved by `shift` sd), answers from a per-problem categorical law
    (the base start's from `answers_base` when given)."""
    groups = {}
    for j in range(problems):
        mean, sd = rng.normal(-50, 20), rng.uniform(1, 10)
        law = rng.dirichlet([1.0] * 4)
        records = []
        for k in range(2 * per_start):
            start = "base" if k % 2 else "proposal"
            probs = answers_base if start == "base" and answers_base is not None else law
            records.append({"problem_id": f"q{j}", "sample_idx": k, "init": start,
                            "extracted_answer": ["1", "2", "3", None][rng.choice(4, p=probs)],
                            "base_logprob_sum": rng.normal(mean + (shift * sd if start == "base" else 0), sd),
                            "completion_ids": [1] * 10})
        groups[f"q{j}"] = records
    return groups


def test_starts_from_one_law_are_flagged_at_about_the_nominal_rate():
    """200 synthetic runs (20 problems x 4 + 4 chains) with both starts from one law: p-values about uniform
    and few flags (nominal: <= 0.01 from the tests, Bonferroni, plus R-hat's rare excursions)."""
    rng = np.random.default_rng(0)
    entries = [two_starts(synthetic(rng), permutations=400, seed=s) for s in range(200)]
    flagged = np.mean([e["mixed"] is False for e in entries])
    loglik = np.array([e["loglik"]["p_value"] for e in entries])
    answers = np.array([e["answers"]["p_value"] for e in entries])
    rhat = np.array([e["rhat"]["pooled"] for e in entries])
    print(f"\nfalse-flag rate {flagged:.3f}; P(p_loglik < 0.05) {np.mean(loglik < 0.05):.3f}, "
          f"P(p_answers < 0.05) {np.mean(answers < 0.05):.3f}; pooled R-hat median {np.median(rhat):.3f}, "
          f"max {rhat.max():.3f}, share > {RHAT_LIMIT}: {np.mean(rhat > RHAT_LIMIT):.3f}")
    assert flagged <= 0.04
    for p in (loglik, answers):  # a valid test that is not idle: about 5% below 0.05, about half below 0.5
        assert 0.015 <= np.mean(p < 0.05) <= 0.10 and 0.35 <= np.mean(p < 0.5) <= 0.65
    assert abs(np.median(rhat) - 1.0) < 0.03
    shares = [e["loglik"]["share_problems_below"] for e in entries]
    assert 0.03 <= np.mean(shares) <= 0.07  # per-problem p-values too


@pytest.mark.parametrize("case", ["loglik", "answers"])
def test_starts_from_different_laws_are_flagged(case):
    """Every one of 20 synthetic runs is flagged when the base start's log-likelihood is 1.5 sd higher (20 problems),
    or when it answers "1" 70% of the time (40 problems). (At 1 sd, 20 problems: 94% of 50 runs; answering "1" 50%
    of the time, 20 problems: 58%.)"""
    rng = np.random.default_rng(1)
    if case == "loglik":
        entries = [two_starts(synthetic(rng, shift=1.5), permutations=400, seed=s) for s in range(20)]
    else:
        entries = [two_starts(synthetic(rng, problems=40, answers_base=[0.7, 0.1, 0.1, 0.1]), permutations=400,
                              seed=s) for s in range(20)]
    assert all(e["mixed"] is False and e["verdict"] == "not mixed" for e in entries)
    assert all(e[case]["p_value"] < MIXING_P for e in entries)


def test_rhat_is_about_one_for_one_law_and_large_for_two():
    rng = np.random.default_rng(2)
    same = two_starts(synthetic(rng, problems=50, per_start=8), permutations=200)["rhat"]
    apart = two_starts(synthetic(rng, problems=50, per_start=8, shift=2.0), permutations=200)["rhat"]
    assert abs(same["pooled"] - 1) < 0.05 and same["median"] < 1.1 and same["problems"] == 50
    assert apart["pooled"] > 1.3 and apart["median"] > RHAT_LIMIT
    # The definition, by hand, on one problem: two sequences of k = 3 values.
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])
    records = [{"problem_id": "p", "sample_idx": i, "init": s, "extracted_answer": None, "base_logprob_sum": v,
                "completion_ids": [1]} for i, (s, v) in enumerate(zip(["proposal", "base"] * 3, np.ravel([a, b], "F")))]
    w = (a.var(ddof=1) + b.var(ddof=1)) / 2
    v = 2 / 3 * w + (a.mean() - b.mean()) ** 2 / 2
    entry = two_starts({"p": records}, permutations=100)
    assert entry["rhat"]["median"] == pytest.approx(math.sqrt(v / w)) == pytest.approx(entry["rhat"]["pooled"])
    assert entry["answers"] is None and entry["p_value"] == entry["loglik"]["p_value"]


def test_one_start_only_says_the_diagnostic_needs_both():
    groups = synthetic(np.random.default_rng(3), problems=3)
    for records in groups.values():
        for r in records:
            r["init"] = "proposal"
    entry = mixing_diagnostics(groups)
    assert entry["diagnostic"] == "two_starts" and entry["mixed"] is None and "init: both" in entry["status"]
    # Older power_mh records carry no init, but their cost counts MH proposals: the same answer.
    for records in groups.values():
        for r in records:
            del r["init"]
            r["cost"] = {"proposals": 10, "accepted": 4}
    assert "init: both" in mixing_diagnostics(groups)["status"]
    assert mixing_diagnostics({"p": [{"completion_ids": [1], "cost": {"sampled_tokens": 1}}]}) is None  # plain


# ---------------------------------------------------------------------------------------------
# SMC and look-ahead summaries


def smc_record(problem, log_z, resamples, min_ess, mean_frac, final_frac, n=64):
    return {"problem_id": problem, "completion_ids": [1, 2], "cost": {
        "log_z": log_z, "resamples": resamples, "min_ess": min_ess, "mean_ess_fraction": mean_frac,
        "final_ess_fraction": final_frac, "num_particles": n}}


def test_smc_summary_on_hand_made_records():
    groups = {"a": [smc_record("a", -10.0, 3, 16.0, 0.6, 0.3), smc_record("a", -12.0, 5, 8.0, 0.4, 0.1)],
              "b": [smc_record("b", -20.0, 4, 32.0, 0.8, 0.5), smc_record("b", -20.5, 2, 4.0, None, 0.2),
                    smc_record("b", -19.5, 9, 64.0, 0.9, 0.9)],
              "c": [smc_record("c", -5.0, 1, 2.0, 0.2, 0.05)]}  # one run: no spread
    entry = mixing_diagnostics(groups)
    assert entry["diagnostic"] == "smc" and entry["runs"] == 6 and entry["num_particles"] == 64
    assert entry["resamples_median"] == 3.5
    assert entry["min_ess_fraction_median"] == pytest.approx(np.median([16, 8, 32, 4, 64, 2]) / 64)
    assert entry["mean_ess_fraction_median"] == pytest.approx(0.6)  # None left out
    assert entry["final_ess_fraction_median"] == pytest.approx(0.25)
    assert entry["log_z_sd_problems"] == 2
    assert entry["log_z_sd_median"] == pytest.approx(np.median([np.std([-10, -12], ddof=1), 0.5]))
    assert entry["few_particles"] is (entry["log_z_sd_median"] > LOG_Z_SD_LIMIT) is False
    groups["a"][1]["cost"]["log_z"] = -40.0
    groups["b"][1]["cost"]["log_z"] = -30.0
    assert mixing_diagnostics(groups)["verdict"] == "particle count too small"
    assert set(mixing_scalars(entry)) == {"resamples_median", "min_ess_fraction_median", "mean_ess_fraction_median",
                                          "final_ess_fraction_median", "log_z_sd_median", "few_particles"}


def test_lookahead_summary_on_hand_made_records():
    records = [{"problem_id": "a", "completion_ids": [1] * n, "cost": {"lookahead": h}}
               for n, h in ((40, 16.0), (20, 15.0), (60, 16.0))]
    entry = mixing_diagnostics({"a": records})
    assert entry["diagnostic"] == "lookahead" and entry["source"] == "records"
    assert entry["ratio"] == pytest.approx((47 / 3) / 40) and entry["short_sighted"] is True
    assert entry["verdict"] == "short-sighted"
    short = [{"problem_id": "a", "completion_ids": [1] * 8, "cost": {}}]
    assert lookahead({"a": short}, {"horizon": "sliding", "block_size": 16})["short_sighted"] is False
    assert lookahead({"a": short}, {"horizon": "block", "block_size": 16})["lookahead"] == 7.5  # settings only
    assert lookahead({"a": short}, {"block_size": 16}) is None  # a block size is no look-ahead (power_mh's)


def test_samplers_record_what_the_diagnostics_read(model):
    smc = smc_sample(model, PROMPTS, SMCConfig(alpha=2.0, num_particles=8, max_new_tokens=12, resample_every=3),
                     seed=0)
    for r in smc:
        c = r.stats
        assert 0 < c["final_ess_fraction"] <= 1 and c["min_ess"] / 8 <= c["final_ess_fraction"] + 1e-12
        assert c["ess_checks"] == (0 if c["mean_ess_fraction"] is None else c["ess_checks"])
        assert c["ess_checks"] <= 12 // 3
        if c["ess_checks"]:
            assert c["min_ess"] / 8 - 1e-12 <= c["mean_ess_fraction"] <= 1
    sps = sps_sample(model, PROMPTS, SPSConfig(alpha=2.0, num_candidates=3, num_rollouts=2, block_size=4,
                                                max_new_tokens=12), seed=0)
    for r in sps:
        # sliding look-ahead of 4 tokens past the candidate, less near the budget (12 tokens)
        room = [min(t + 1 + 4, 12) - t - 1 for t in range(len(r.token_ids))]
        assert r.stats["lookahead"] == pytest.approx(np.mean(room))


# ---------------------------------------------------------------------------------------------
# A real run


def test_power_mh_with_both_starts_end_to_end(tiny_checkpoint, tmp_path):
    """`sharpen sample --method power_mh --init both`, then `sharpen analyze`'s pipeline: records carry init by
    sample index, metrics.json holds the two-start diagnostic, the report its row."""
    out = tmp_path / "run"
    argv = ["sample", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--method", "power_mh",
            "--num-problems", "3", "--num-samples", "4", "--max-new-tokens", "6", "--block-size", "3",
            "--mcmc-steps", "2", "--alpha", "2", "--init", "both", "--output-dir", str(out)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "samples" / "power_mh.jsonl").read_text().splitlines()]
    assert len(records) == 12
    assert all(r["init"] == ("proposal" if r["sample_idx"] % 2 == 0 else "base") for r in records)
    saved = json.loads((out / "samples" / "power_mh.config.json").read_text())["identity"]["settings"]
    assert saved["init"] == "both"
    metrics = analyze(out, AnalysisConfig(score=False, bootstrap=200, embeddings="off"), progress=False)
    entry = metrics["methods"]["power_mh"]["mixing"]
    assert entry["diagnostic"] == "two_starts" and entry["status"] == "ok" and entry["problems"] == 3
    assert entry["starts"] == {"proposal": 6, "base": 6} and isinstance(entry["mixed"], bool)
    report = (out / "report.md").read_text()
    assert "## Mixing diagnostics" in report and "A high MH acceptance rate is not a mixing diagnostic" in report
    assert "two starts (proposal / base)" in report
