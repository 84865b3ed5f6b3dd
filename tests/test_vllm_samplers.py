"""power_mh, power_smc and power_sps on the vLLM engine reach p^alpha, by enumeration; each with a broken variant.

    make test-vllm          # in .venv-vllm (the project plus vLLM's CPU build)
    OMP_NUM_THREADS=1 .venv-vllm/bin/python -m pytest -q tests/test_vllm_samplers.py

Skipped as a whole where vLLM is not installed. One engine serves the module: a tiny random Llama
(6-token vocabulary, EOS = 1, seed 0, logit scale 6) saved without tokenizer files, prompt [2, 3],
completions of at most 3 tokens (156 of them, as in tests/test_vllm_engine.py, whose enumeration this
module reuses). The target is p^2 over them (effective size 3.4 completions; p itself is 0.38 away in TV,
the proposal at T 1/sqrt(2) 0.23). Chi-square tests pool cells with fewer than 5 expected draws.

- power_mh: one block of 3 tokens, chains that keep running after EOS, 20 MH steps from the proposal:
  the exact 20-step output law (the MH kernel written out here over the 156 completions) is within TV
  0.002 of p^2, so 2000 chains must pass as p^2 (p > 1e-3); the acceptance ratio with alpha 1 in place
  of 2 (the chains then target p) must fail the same test (p < 1e-6).
- power_smc: exact at every particle count in a weighted sense: E[Z_hat 1{output = x}] = p(x)^alpha,
  Z_hat = exp(log_z) (Del Moral's unbiasedness), whatever the resampling. So the outputs of 2000 runs of 8
  particles, each weighed by Z_hat / Z, estimate p^2 cell by cell without bias; a Wald (Hotelling)
  statistic with the estimates' sample covariance is chi-square with one degree per cell. Settings that
  exercise everything: proposal at T 1, ESS threshold 1 and a check every token (resampling at every
  step but the last), and an alpha ramp over 4 tokens (longer than the budget: every bridge term and the
  final correction count). Token weights that forget alpha (alpha_t log p -> log p) must fail (p < 1e-6).
- power_sps: the full look-ahead with all 6 tokens as candidates is p^alpha with exact zeta (Theorem
  3.1); 4 rollouts with the jackknife leave a bias that 2000 completions cannot see; zeta omitted
  (token-level low temperature over the candidates) must fail.

Measured (seeds fixed, so outcomes are deterministic; about 100 s on 2 cores with OMP_NUM_THREADS=1):

  sampler     right rule                                   broken variant
  power_mh    2000 chains: p = 0.75 (TV 0.030)             alpha 1 in the ratio, 600 chains: p = 0 (TV 0.397)
  power_smc   2000 runs x 8 particles, weighted: p = 0.79  token weights without alpha, 1000 runs: p = 0
              (the same outputs unweighted: p = 8e-4,
              TV 0.058: the bias of 8 particles)
  power_sps   2000 completions, M 4: p = 0.40 (TV 0.034)   zeta omitted, 1000 completions (M 2): p = 2e-39 (TV 0.218)

Each sampler's draws from the same seeds do not depend on the batch they share (checked on a few).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2
from transformers import AutoModelForCausalLM

pytest.importorskip("vllm")  # an optional engine: `make test-vllm` runs these tests in .venv-vllm

from conftest import tiny_llama  # noqa: E402
from test_power_exactness import cells, chi_square, detectable_tv  # noqa: E402
from test_vllm_engine import EOS, MAX_NEW, PROMPT, VOCAB, completions, exact_law  # noqa: E402
from sharpen.sampling import (PowerSamplingConfig, SMCConfig, SPSConfig, load_model, power, power_sample,  # noqa: E402
                              smc, smc_sample, sps, sps_sample)
from sharpen.sampling.vllm_engine import VllmModel  # noqa: E402

ALPHA, N = 2.0, 2000
PASS, FAIL = 1e-3, 1e-6
MH_TEMPERATURE, MH_STEPS = 2 ** -0.5, 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # Seed and scale chosen by enumeration: p^2 spreads over a few completions of every length and MH chains at
    # T 1/sqrt(2) mix within 20 steps (exact TV 0.0015 from p^2), while the broken variants stay 0.38 away.
    path = tmp_path_factory.mktemp("tiny_vllm_samplers")
    tiny_llama(vocab_size=VOCAB, eos_token_id=EOS, seed=0, hidden_size=64, logit_scale=6.0,
               max_position_embeddings=128).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(checkpoint):
    model, _ = load_model(str(checkpoint), engine="vllm")
    assert isinstance(model, VllmModel)
    yield model
    model.close()  # the next module's engine needs the memory


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def target(hf_model):
    """p^alpha over completions(), normalised, and log Z = log sum p(x)^alpha."""
    w = exact_law(hf_model, 1.0) ** ALPHA
    return w / w.sum(), math.log(w.sum())


def finals(results):
    return [tuple(r.token_ids) for r in results]


def mh_output_law(hf_model, steps: int) -> np.ndarray:
    """Exact law of a chain's output: grown with q, then `steps` uniform-position MH steps (power.py's rule)."""
    states = completions()
    index = {x: k for k, x in enumerate(states)}
    log_p = np.log(exact_law(hf_model, 1.0))
    log_q = np.log(exact_law(hf_model, MH_TEMPERATURE))

    def suffix(law_of, x, i):
        # log-prob of regenerating x[i:] from x[:i]: the completion's log-prob minus its prefix's (marginals)
        return law_of[index[x]] - prefix_log(law_of, x[:i])

    prefix_cache = {}

    def prefix_log(law_of, prefix):
        key = (id(law_of), prefix)
        if key not in prefix_cache:
            prefix_cache[key] = np.log(sum(np.exp(law_of[index[y]]) for y in states if y[:len(prefix)] == prefix))
        return prefix_cache[key]

    K = np.zeros((len(states), len(states)))
    for x in states:
        for i in range(len(x)):
            for y in states:
                if len(y) <= i or y[:i] != x[:i]:
                    continue
                log_a = (ALPHA * (suffix(log_p, y, i) - suffix(log_p, x, i)) + suffix(log_q, x, i)
                         - suffix(log_q, y, i) + math.log(len(x)) - math.log(len(y)))
                K[index[x], index[y]] += math.exp(suffix(log_q, y, i)) / len(x) * math.exp(min(log_a, 0.0))
        K[index[x], index[x]] += 1.0 - K[index[x]].sum()
    return np.exp(log_q) @ np.linalg.matrix_power(K, steps)


def mh_config(**overrides) -> PowerSamplingConfig:
    settings = dict(alpha=ALPHA, proposal_temperature=MH_TEMPERATURE, block_size=MAX_NEW, mcmc_steps=MH_STEPS,
                    max_new_tokens=MAX_NEW, stop_on_eos=False, batch_size=N)
    settings.update(overrides)
    return PowerSamplingConfig(**settings)


def test_power_mh_reaches_p_alpha(engine, hf_model, target):
    pi, _ = target
    assert 0.5 * np.abs(mh_output_law(hf_model, MH_STEPS) - pi).sum() < 0.002  # the settings reach p^2
    assert detectable_tv(pi, N) < 0.07  # any sampler error of TV 0.07 fails (probability 0.9)
    results = power_sample(engine, [PROMPT] * N, mh_config(), seed=3)
    p_value, tv = chi_square(finals(results), completions(), pi)
    print(f"\npower_mh, {N} chains: p={p_value:.2g} (TV {tv:.3f}) against p^2")
    assert p_value > PASS, (p_value, tv)
    assert all(r.stats["proposals"] == MH_STEPS for r in results)
    assert sum(r.stats["accepted"] for r in results) > N  # chains move
    assert all(s.stats["forward_tokens"] > 0 and "cached_prompt_tokens" in s.stats for s in results)


def test_power_mh_with_alpha_1_in_the_ratio_is_rejected(engine, target, monkeypatch):
    ratio = power._log_accept_ratio
    monkeypatch.setattr(power, "_log_accept_ratio", lambda alpha, *rest: ratio(1.0, *rest))
    results = power_sample(engine, [PROMPT] * 600, mh_config(batch_size=600), seed=4)
    p_value, tv = chi_square(finals(results), completions(), target[0])
    print(f"\npower_mh, alpha 1 in the ratio, 600 chains: p={p_value:.2g} (TV {tv:.3f}) against p^2")
    assert p_value < FAIL, (p_value, tv)


def test_power_mh_logprobs_seeds_and_batches(engine, hf_model):
    """Returned log-probs are the model's at T = 1; a chain's output depends on its seed only, not its batch."""
    seeds = [21, 22, 23, 24]
    together = power_sample(engine, [PROMPT] * 4, mh_config(mcmc_steps=3), seeds=seeds)
    apart = power_sample(engine, [PROMPT] * 4, mh_config(mcmc_steps=3, batch_size=1), seeds=seeds)
    assert finals(together) == finals(apart)
    law = {x: p for x, p in zip(completions(), exact_law(hf_model, 1.0))}
    from_base = power_sample(engine, [PROMPT] * 4, mh_config(mcmc_steps=3, init="base"), seeds=seeds)
    assert {r.fields["init"] for r in from_base} == {"base"} and finals(from_base) != finals(together)
    for r in together + from_base:
        assert abs(math.fsum(r.logprobs) - math.log(law[tuple(r.token_ids)])) < 1e-4


@pytest.mark.parametrize("settings, message", [
    (dict(top_k=2), "leave top_k and top_p unset"),
    (dict(position="entropy"), "supports position uniform only"),
    (dict(implementation="reference"), "one implementation, batched"),
])
def test_power_mh_settings_vllm_cannot_honour_are_one_line_errors(engine, settings, message):
    with pytest.raises(ValueError, match=message) as err:
        power_sample(engine, [PROMPT], mh_config(**settings))
    assert "\n" not in str(err.value)


def test_power_smc_top_k_is_a_one_line_error(engine):
    with pytest.raises(ValueError, match="power_smc on engine vllm takes pure temperature proposals") as err:
        smc_sample(engine, [PROMPT], SMCConfig(max_new_tokens=MAX_NEW, top_k=2))
    assert "\n" not in str(err.value)


def weighted_test(results, pi, log_z) -> tuple[float, float]:
    """(p-value, largest |estimate - pi| over cells) of the Z_hat-weighted outputs against p^alpha.

    Y_r = (Z_hat_r / Z) 1{output of run r in cell c}: E[Y_r] = pi_c exactly; the Wald statistic
    n (Ybar - pi)' S^-1 (Ybar - pi), S the sample covariance of Y, is chi-square with one degree per cell.
    """
    big, wanted = cells(pi, len(results))
    index = {x: k for k, x in enumerate(completions())}
    cell_of = np.cumsum(big) - 1  # completion -> its cell; pooled ones -> the last cell
    cell_of[~big] = big.sum()
    y = np.zeros((len(results), len(wanted)))
    for r, result in enumerate(results):
        c = cell_of[index[tuple(result.token_ids)]]
        if c < len(wanted):
            y[r, c] = math.exp(result.stats["log_z"] - log_z)
    gap = y.mean(0) - wanted
    statistic = len(results) * gap @ np.linalg.pinv(np.cov(y, rowvar=False)) @ gap
    return float(chi2.sf(statistic, len(wanted))), float(np.abs(gap).max())


def smc_config(runs: int) -> SMCConfig:
    return SMCConfig(alpha=ALPHA, num_particles=8, max_new_tokens=MAX_NEW, proposal_temperature=1.0,
                     ess_threshold=1.0, resample_every=1, ramp_tokens=4, batch_size=runs * 8)


def test_power_smc_weighted_outputs_are_p_alpha(engine, hf_model, target):
    results = smc_sample(engine, [PROMPT] * N, smc_config(N), seed=5)
    p_value, gap = weighted_test(results, *target)
    plain_p, plain_tv = chi_square(finals(results), completions(), target[0])
    print(f"\npower_smc, {N} runs of 8 particles: weighted p={p_value:.2g} (largest cell gap {gap:.3f}); "
          f"the outputs unweighted: p={plain_p:.2g} (TV {plain_tv:.3f})")
    assert p_value > PASS, (p_value, gap)
    assert sum(r.stats["resamples"] for r in results) >= N  # resampling (and continuing by prefix) happened
    law = {x: p for x, p in zip(completions(), exact_law(hf_model, 1.0))}
    assert all(abs(math.fsum(r.logprobs) - math.log(law[tuple(r.token_ids)])) < 1e-4 for r in results[:50])
    ratios = np.exp([r.stats["log_z"] - target[1] for r in results])
    assert abs(ratios.mean() - 1) < 4 * ratios.std() / math.sqrt(N)  # Z_hat is unbiased


def test_power_smc_token_weights_without_alpha_are_rejected(engine, target, monkeypatch):
    monkeypatch.setattr(smc, "_token_log_weight", lambda alpha_t, log_p, log_q: log_p - log_q)
    results = smc_sample(engine, [PROMPT] * 1000, smc_config(1000), seed=6)
    p_value, gap = weighted_test(results, *target)
    print(f"\npower_smc, token weights without alpha, 1000 runs: weighted p={p_value:.2g} (largest cell gap {gap:.3f})")
    assert p_value < FAIL, (p_value, gap)


def test_power_smc_seeds_fix_each_run_whatever_its_batch(engine):
    cfg = smc_config(4)
    together = smc_sample(engine, [PROMPT] * 4, cfg, seeds=[1, 2, 3, 4])
    apart = smc_sample(engine, [PROMPT] * 4, SMCConfig(**{**cfg.__dict__, "batch_size": 8}), seeds=[1, 2, 3, 4])
    assert [(r.token_ids, r.stats["log_z"]) for r in together] == [(r.token_ids, r.stats["log_z"]) for r in apart]


def sps_config(**overrides) -> SPSConfig:
    settings = dict(alpha=ALPHA, max_new_tokens=MAX_NEW, num_candidates=VOCAB, num_rollouts=4, block_size=MAX_NEW,
                    horizon="block", batch_size=N)
    settings.update(overrides)
    return SPSConfig(**settings)


def test_power_sps_full_look_ahead_is_p_alpha(engine, target):
    results = sps_sample(engine, [PROMPT] * N, sps_config(), seed=7)
    p_value, tv = chi_square(finals(results), completions(), target[0])
    print(f"\npower_sps, {N} completions, K 6, M 4: p={p_value:.2g} (TV {tv:.3f}) against p^2")
    assert p_value > PASS, (p_value, tv)
    r = results[0]
    assert r.stats["decisions"] == len(r.token_ids) and r.stats["rollouts"] > 0
    assert r.stats["sampled_tokens"] == len(r.token_ids) + r.stats["rollout_tokens"]


def test_power_sps_without_zeta_is_rejected(engine, target, monkeypatch):
    rule = sps.decision_probs
    monkeypatch.setattr(sps, "decision_probs", lambda alpha, cand_logp, log_w: rule(alpha, cand_logp,
                                                                                   torch.zeros_like(log_w)))
    results = sps_sample(engine, [PROMPT] * 1000, sps_config(num_rollouts=2), seed=8)
    p_value, tv = chi_square(finals(results), completions(), target[0])
    print(f"\npower_sps, zeta omitted, 1000 completions: p={p_value:.2g} (TV {tv:.3f}) against p^2")
    assert p_value < FAIL, (p_value, tv)


def test_power_sps_seeds_fix_each_completion_whatever_its_batch(engine):
    together = sps_sample(engine, [PROMPT] * 4, sps_config(batch_size=4), seeds=[1, 2, 3, 4])
    apart = sps_sample(engine, [PROMPT] * 4, sps_config(batch_size=1), seeds=[1, 2, 3, 4])
    assert finals(together) == finals(apart)
    assert len(set(finals(sps_sample(engine, [PROMPT] * 8, sps_config(), seed=9)))) > 1
