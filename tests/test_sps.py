"""Scalable power sampling (sharpen/sampling/sps.py): exact laws by enumeration, the sampler against them, seeds, batching.

    nice -n 19 env OMP_NUM_THREADS=1 python -m pytest -q tests/test_sps.py    # about 40 s on one core

The model is `power_model` of tests/test_power_exactness.py (a random 4-token Llama, EOS = 1,
seed 123, logit scale 16) with prompt [2, 0] and 4 new tokens: 121 completions, whose p^4 keeps
most of its mass on four of them. Three laws per setting, all computed from the model's enumerated
conditionals:

- p^4, the target; token-level temperature 1/4 is 0.310 from it (TV);
- the exact law of SPS with exact zeta (infinite rollouts), the per-token rule of sharpen/sampling/sps.py
  with zeta enumerated and fed to `sps.decision_probs`: it separates what the method approximates
  (candidate cut, horizon) from rollout noise. With the full look-ahead and all 4 tokens as
  candidates it must be p^4 (to 1e-12);
- the expected law at M rollouts: E over rollouts of the jackknifed token law, estimated per prefix
  by an independent numpy implementation of the estimator (20000 simulated sets of M <= 8 rollouts per prefix, 5000 of 32,
  futures drawn from the enumerated conditionals). Rollouts at different positions are independent
  given the prefix, so the completion law is the product of the expected token laws. This is the
  law the sampler must follow, whatever M.

3000 completions per setting are compared with the expected law by a chi-square test (cells with
< 5 expected samples pooled; `detectable_tv` as in tests/test_power_exactness.py: every setting
detects TV >= 0.05 at p < 1e-3 with probability 0.9). Seeds are fixed, so outcomes are deterministic.
Figures (TV from p^4; sampled = 3000 completions; p = chi-square p-value against the expected law):

  setting                          exact zeta  expected at M  sampled  p (expected)  p (vs p^4)
  full look-ahead, K 4, M 2          0           0.0099         0.017    0.08          3e-17 (rare cells)
  full look-ahead, K 4, M 8          0           0.0028         0.021    0.31          0.21
  full look-ahead, K 4, M 32         0           0.0003         0.015    0.17          0.17
  full look-ahead, K 2, M 8          0.332       0.332          0.332    0.61          0
  sliding horizon 2, M 8             0.142       0.142          0.143    0.49          1e-126
  fixed blocks of 2, M 8             0.400       0.400          0.393    0.62          0
  broken: no jackknife, full, M 2    -           0.095          -        1e-17         -
  broken: zeta omitted, full         0.310       0.310          0.314    -             0
  low temperature 1/4                0.310

The full look-ahead is well below low temperature's 0.310 at every M (asserted: < half). The two
broken variants, injected by monkeypatching sharpen.sampling.sps, fail at p < 1e-12 the tests that the
right rule passes.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax

from conftest import tiny_llama
from sharpen.sampling import derive_seed, get_method, sps
from sharpen.sampling.sps import SPSConfig, decision_probs, sps_sample
from test_power_exactness import (EOS, PROMPT, T, VOCAB, chi_square, completions, conditionals_of, detectable_tv,
                                  finals, target)

ALPHA = 4.0
N = 3000
PASS, FAIL = 1e-3, 1e-12
MC_DRAWS = 160000  # simulated rollouts per candidate and prefix for the expected law (20000 sets of 8)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=VOCAB, eos_token_id=EOS, seed=123, logit_scale=16.0, hidden_size=16,
                      max_position_embeddings=32)


@pytest.fixture(scope="module")
def logp(model):
    """EOS-free prefix (< T tokens) -> (V,) float64 log p of the next token."""
    return {x: torch.log_softmax(row, -1).numpy() for x, row in conditionals_of(model).items()}


@pytest.fixture(scope="module")
def p_alpha(model):
    return target(conditionals_of(model), ALPHA)[1]


def config(**overrides) -> SPSConfig:
    settings = dict(alpha=ALPHA, max_new_tokens=T, num_candidates=VOCAB, num_rollouts=8, block_size=T,
                    horizon="block", batch_size=1000)
    settings.update(overrides)
    return SPSConfig(**settings)


def tv(a, b) -> float:
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


# ---------------------------------------------------------------------------------------------
# Exact laws by enumeration, written independently of sharpen/sampling/sps.py (except `decision_probs`,
# the formula under test, in the exact-zeta law).


def horizon_end(t: int, cfg: SPSConfig) -> int:
    if cfg.horizon == "block":
        return min((t // cfg.block_size + 1) * cfg.block_size, T)
    return min(t + 1 + cfg.block_size, T)


def futures(logp, prefix: tuple, room: int) -> tuple[list[tuple], np.ndarray]:
    """Every future of at most `room` tokens after `prefix` (ending with EOS or cut), and its log p."""
    if room <= 0 or prefix[-1] == EOS:
        return [()], np.zeros(1)
    out, sums = [], []

    def grow(z, s):
        for v in range(VOCAB):
            w, s2 = z + (v,), s + logp[z][v]
            if v == EOS or len(w) - len(prefix) == room:
                out.append(w[len(prefix):])
                sums.append(s2)
            else:
                grow(w, s2)

    grow(prefix, 0.0)
    return out, np.array(sums)


def candidates(logp, prefix, k) -> np.ndarray:
    return np.argsort(-logp[prefix], kind="stable")[:k]


def law_from(token_law) -> np.ndarray:
    """Completion law from `token_law(prefix) -> (candidates, probabilities)`, over completions(T)."""
    laws = {}
    out = []
    for x in completions(T):
        pr = 1.0
        for t in range(len(x)):
            if x[:t] not in laws:
                laws[x[:t]] = token_law(x[:t])
            cand, probs = laws[x[:t]]
            pr *= float(probs[list(cand).index(x[t])]) if x[t] in cand else 0.0
        out.append(pr)
    return np.array(out)


def exact_zeta_law(logp, cfg: SPSConfig) -> np.ndarray:
    """SPS's law with zeta enumerated (infinite rollouts): the exact zeta, repeated as every rollout's estimate."""
    def token_law(prefix):
        cand = candidates(logp, prefix, cfg.num_candidates)
        room = horizon_end(len(prefix), cfg) - len(prefix) - 1
        log_zeta = [logsumexp(ALPHA * futures(logp, prefix + (int(c),), room)[1]) for c in cand]
        log_w = torch.tensor(log_zeta, dtype=torch.float64)[None, :, None].expand(1, len(cand), 3)
        return cand, decision_probs(ALPHA, torch.tensor(logp[prefix][cand])[None], log_w)[0].numpy()
    return law_from(token_law)


def expected_law(logp, cfg: SPSConfig, jackknife=True, seed=0) -> np.ndarray:
    """E over rollouts of the (jackknifed) token law, by simulating the estimator with numpy."""
    rng = np.random.default_rng(seed)
    m = cfg.num_rollouts
    draws = MC_DRAWS // max(m, 8)  # (fewer sets of more rollouts: each set's estimate varies less)

    def token_law(prefix):
        cand = candidates(logp, prefix, cfg.num_candidates)
        room = horizon_end(len(prefix), cfg) - len(prefix) - 1
        log_w = np.zeros((draws, len(cand), m))
        for j, c in enumerate(cand):
            _, sums = futures(logp, prefix + (int(c),), room)
            log_w[:, j] = (ALPHA - 1) * sums[rng.choice(len(sums), size=(draws, m), p=np.exp(sums))]
        base = ALPHA * logp[prefix][cand]
        p_hat = softmax(base + logsumexp(log_w, axis=2) - math.log(m), axis=1)  # (D, K)
        if not jackknife:
            return cand, p_hat.mean(0)
        # Leave-one-out sums from running log-sums on both sides of s: (D, K, M).
        none = np.full(log_w.shape[:2] + (1,), -np.inf)
        before = np.concatenate([none, np.logaddexp.accumulate(log_w, axis=2)[..., :-1]], axis=2)
        after = np.concatenate([np.logaddexp.accumulate(log_w[..., ::-1], axis=2)[..., -2::-1], none], axis=2)
        p_loo = softmax(base[:, None] + np.logaddexp(before, after) - math.log(m - 1), axis=1)
        p_jk = np.clip(m * p_hat - (m - 1) / m * p_loo.sum(2), 0.0, None)
        return cand, (p_jk / p_jk.sum(1, keepdims=True)).mean(0)
    return law_from(token_law)


def low_temperature_law(logp) -> np.ndarray:
    return law_from(lambda prefix: (np.arange(VOCAB), softmax(ALPHA * logp[prefix])))


def run(model, cfg, n=N, seed=0):
    return sps_sample(model, [PROMPT] * n, cfg, seed=seed)


# ---------------------------------------------------------------------------------------------
# The formula: exact with exact zeta and the full look-ahead; what each truncation costs.


def test_exact_zeta_with_full_look_ahead_is_p_alpha(logp, p_alpha):
    """Theorem 3.1: p^alpha(x_t | prefix) is p^alpha * zeta over all tokens; so the per-token rule is exact."""
    assert np.abs(exact_zeta_law(logp, config()) - p_alpha).max() < 1e-12
    assert np.abs(exact_zeta_law(logp, config(horizon="sliding", block_size=T - 1)) - p_alpha).max() < 1e-12


APPROXIMATIONS = {  # id: (settings, exact TV from p^4 with exact zeta, to 3 decimals)
    "two-candidates": (dict(num_candidates=2), 0.332),
    "sliding-horizon-2": (dict(horizon="sliding", block_size=2), 0.142),
    "sliding-horizon-1": (dict(horizon="sliding", block_size=1), 0.359),
    "blocks-of-2": (dict(block_size=2), 0.400),
    "blocks-of-1 (= low temperature)": (dict(block_size=1), 0.310),
}


@pytest.mark.parametrize("setting", list(APPROXIMATIONS))
def test_truncations_have_their_exact_cost(logp, p_alpha, setting):
    """Infinite rollouts, finite look-ahead or candidates: the exact law and its distance from p^4.

    Blocks of 1 give zeta = 1 everywhere, i.e. token-level low temperature (0.310). Fixed blocks of 2
    are farther from p^4 than low temperature: the last token of every block is chosen without looking ahead.
    """
    overrides, expected_tv = APPROXIMATIONS[setting]
    law = exact_zeta_law(logp, config(**overrides))
    assert abs(law.sum() - 1) < 1e-12
    assert round(tv(law, p_alpha), 3) == expected_tv
    if setting.startswith("blocks-of-1"):
        assert np.abs(law - low_temperature_law(logp)).max() < 1e-12


def test_jackknife_reduces_the_bias_of_two_rollouts(logp, p_alpha):
    """The expected law at M = 2: 0.0099 from p^4 with the jackknife, 0.095 without (M = 8: 0.0028 / 0.019)."""
    with_jk = tv(expected_law(logp, config(num_rollouts=2)), p_alpha)
    without = tv(expected_law(logp, config(num_rollouts=2), jackknife=False), p_alpha)
    assert with_jk < 0.015 and without > 0.08, (with_jk, without)


# ---------------------------------------------------------------------------------------------
# The sampler against its expected law.


SETTINGS = {  # id: settings; 3000 completions each
    "full-M2": dict(num_rollouts=2),
    "full-M8": dict(num_rollouts=8),
    "full-M32": dict(num_rollouts=32, batch_size=500),
    "two-candidates-M8": dict(num_candidates=2),
    "sliding-horizon-2-M8": dict(horizon="sliding", block_size=2),
    "blocks-of-2-M8": dict(block_size=2),
}


@pytest.fixture(scope="module")
def samples(model):
    cache = {}

    def get(setting):
        if setting not in cache:
            cache[setting] = run(model, config(**SETTINGS[setting]))
        return cache[setting]
    return get


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_samples_follow_the_expected_law(logp, p_alpha, samples, setting):
    """3000 completions against the expected law of their setting (p > 1e-3); figures in the module docstring."""
    cfg = config(**SETTINGS[setting])
    expected = expected_law(logp, cfg)
    states = completions(T)
    results = samples(setting)
    p_value, sampled_tv = chi_square(finals(results), states, expected)
    p_target, tv_target = chi_square(finals(results), states, p_alpha)
    low_temp = tv(low_temperature_law(logp), p_alpha)
    print(f"\n{setting}: TV from p^4: exact zeta {tv(exact_zeta_law(logp, cfg), p_alpha):.4f}, expected "
          f"{tv(expected, p_alpha):.4f}, sampled {tv_target:.4f} (chi-square p={p_target:.2g}); low temperature "
          f"{low_temp:.3f}. Against the expected law: TV {sampled_tv:.4f}, p={p_value:.2g}")
    assert p_value > PASS, f"p={p_value:.2e}, TV={sampled_tv:.3f}"
    assert detectable_tv(expected, N) < 0.05
    if setting.startswith("full"):
        assert tv_target < 0.5 * low_temp


def test_many_rollouts_pass_as_p_alpha(p_alpha, samples):
    """Full look-ahead, all candidates, 32 rollouts: indistinguishable from p^4 itself (expected TV 0.0003)."""
    p_value, tv_target = chi_square(finals(samples("full-M32")), completions(T), p_alpha)
    assert p_value > PASS, f"p={p_value:.2e}, TV={tv_target:.3f}"


def test_without_the_jackknife_the_sampler_is_rejected(model, logp, monkeypatch):
    """The plain ratio estimate (p_hat, no jackknife) at M = 2 fails the test that the right rule passes."""
    monkeypatch.setattr(sps, "_jackknife", lambda p_hat, p_loo: p_hat)
    cfg = config(num_rollouts=2)
    results = run(model, cfg)
    p_value, sampled_tv = chi_square(finals(results), completions(T), expected_law(logp, cfg))
    print(f"\nno jackknife, M 2: p={p_value:.2g} against the expected law (TV {sampled_tv:.3f})")
    assert p_value < FAIL, f"p={p_value:.2e}, TV={sampled_tv:.3f}"


def test_without_zeta_the_sampler_is_low_temperature_and_rejected(model, logp, p_alpha, monkeypatch):
    """zeta omitted (every rollout estimate 1): token-level low temperature, 0.31 from p^4, rejected."""
    monkeypatch.setattr(sps, "decision_probs", lambda alpha, cand_logp, log_w:
                        decision_probs(alpha, cand_logp, torch.zeros_like(log_w)))
    results = run(model, config(num_rollouts=2))
    p_value, sampled_tv = chi_square(finals(results), completions(T), p_alpha)
    print(f"\nzeta omitted: p={p_value:.2g} against p^4 (TV {sampled_tv:.3f})")
    assert p_value < FAIL, f"p={p_value:.2e}, TV={sampled_tv:.3f}"
    assert chi_square(finals(results), completions(T), low_temperature_law(logp))[0] > PASS


# ---------------------------------------------------------------------------------------------
# API: seeds, batching, cache reuse, cost counters, bad input.

PROMPTS = [[2, 5, 6], [2], [2, 7, 8, 9, 10, 11, 3], [3, 4]]


@pytest.fixture(scope="module")
def wide_model():
    return tiny_llama(vocab_size=12, logit_scale=3.0)  # 12 tokens, EOS = 1: every length occurs


def small(**overrides) -> SPSConfig:
    settings = dict(alpha=4.0, max_new_tokens=8, num_candidates=4, num_rollouts=3, block_size=3, batch_size=64)
    settings.update(overrides)
    return SPSConfig(**settings)


def counts(result) -> dict:
    return {k: v for k, v in result.stats.items() if k != "wall_seconds"}


@pytest.mark.parametrize("horizon", ["sliding", "block"])
def test_output_does_not_depend_on_the_batch(wide_model, horizon):
    """Mixed prompt lengths: one batch, batches of 5, and one entry at a time give the same completions."""
    prompts = [PROMPTS[j % len(PROMPTS)] for j in range(24)]
    together = sps_sample(wide_model, prompts, small(horizon=horizon), seed=3)
    for batch_size in (5, 1):
        apart = sps_sample(wide_model, prompts, small(horizon=horizon, batch_size=batch_size), seed=3)
        assert [r.token_ids for r in apart] == [r.token_ids for r in together]
        assert [counts(r) for r in apart] == [counts(r) for r in together]
        assert all(np.allclose(a.logprobs, b.logprobs, atol=1e-5) for a, b in zip(apart, together))
    alone = sps_sample(wide_model, [prompts[7]], small(horizon=horizon), seeds=[derive_seed(3, 7)])
    assert alone[0].token_ids == together[7].token_ids
    assert len({tuple(r.token_ids) for r in together}) > 8  # entries with the same prompt differ


def test_seeds_are_deterministic_and_matter(wide_model):
    prompts = [PROMPTS[0]] * 16
    first = sps_sample(wide_model, prompts, small(), seed=0)
    assert [r.token_ids for r in sps_sample(wide_model, prompts, small(), seed=0)] == [r.token_ids for r in first]
    other = sps_sample(wide_model, prompts, small(), seed=1)
    assert sum(a.token_ids != b.token_ids for a, b in zip(first, other)) > 4
    given = sps_sample(wide_model, prompts[:2], small(), seeds=[derive_seed(0, 5), derive_seed(0, 9)])
    assert [r.token_ids for r in given] == [first[5].token_ids, first[9].token_ids]


def test_logprobs_lengths_and_counters(wide_model):
    """logprobs are the base model's (a from-scratch forward), and every counter adds up."""
    cfg = small(max_new_tokens=7)
    seen = []
    start = time.perf_counter()
    results = sps_sample(wide_model, PROMPTS * 3, cfg, seed=0, on_result=lambda i, r: seen.append((i, r)))
    elapsed = time.perf_counter() - start
    assert sorted(i for i, _ in seen) == list(range(len(results))) and all(results[i] is r for i, r in seen)
    for prompt, r in zip(PROMPTS * 3, results):
        ids = torch.tensor([prompt + r.token_ids])
        with torch.no_grad():
            full = torch.log_softmax(wide_model(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), -1)
        assert np.allclose(full.gather(-1, torch.tensor(r.token_ids)[:, None]).squeeze(-1), r.logprobs, atol=1e-5)
        assert 1 <= len(r.token_ids) <= cfg.max_new_tokens
        assert r.finish_reason == ("eos" if r.token_ids[-1] == EOS else "length")
        assert EOS not in r.token_ids[:-1]
        s, d = r.stats, len(r.token_ids)
        assert s["decisions"] == d and s["sampled_tokens"] == d + s["rollout_tokens"]
        # Fed: the prompt, up to K candidates per decision with room after it, and every rollout token but its last.
        candidates_fed = s["forward_tokens"] - len(prompt) - (s["rollout_tokens"] - s["rollouts"])
        with_room = d if r.finish_reason == "eos" else d - 1
        assert with_room * (cfg.num_candidates - 1) <= candidates_fed <= with_room * cfg.num_candidates
        assert s["rollouts"] % cfg.num_rollouts == 0 and s["rollouts"] <= with_room * cfg.num_candidates * cfg.num_rollouts
        assert s["wall_seconds"] > 0
    assert sum(r.stats["wall_seconds"] for r in results) <= elapsed


def test_the_last_token_gets_no_rollouts(wide_model):
    """One new token: no future, so no rollouts; the token is drawn from p^alpha over the candidates."""
    results = sps_sample(wide_model, [PROMPTS[0]] * 4, small(max_new_tokens=1), seed=0)
    assert all(r.stats["rollouts"] == 0 and r.stats["forward_tokens"] == len(PROMPTS[0]) for r in results)


def test_budget_is_cut_by_the_context(wide_model):
    """tiny_llama's context is 128 positions: a 125-token prompt leaves room for 3 new tokens."""
    results = sps_sample(wide_model, [[3] * 125] * 4, small(max_new_tokens=8), seed=0)
    assert all(len(r.token_ids) <= 3 for r in results)


@pytest.mark.parametrize("name,value,accepted", [
    ("alpha", 0.0, "[0.01, 100]"), ("alpha", -1.0, "[0.01, 100]"), ("alpha", math.inf, "[0.01, 100]"),
    ("alpha", math.nan, "[0.01, 100]"),
    ("num_candidates", 0, ">= 1"), ("num_rollouts", 1, ">= 2"), ("block_size", 0, ">= 1"),
    ("max_new_tokens", 0, ">= 1"), ("batch_size", 0, ">= 1"), ("num_rollouts", 2.5, ">= 2"),
    ("horizon", "fixed", "sliding, block"),
])
def test_bad_settings_name_the_field_and_the_range(name, value, accepted):
    with pytest.raises(ValueError) as err:
        SPSConfig(**{name: value})
    message = str(err.value)
    assert name in message and accepted in message and "\n" not in message


def test_bad_calls_are_refused_before_any_work(wide_model):
    with pytest.raises(ValueError, match="seeds has 1 entries for 2 prompts"):
        sps_sample(wide_model, [[2], [3]], small(), seeds=[0])
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        sps_sample(wide_model, [[2], []], small())
    with pytest.raises(ValueError, match="shorter than the context"):
        sps_sample(wide_model, [[3] * 128], small())


def test_sliding_window_models_are_refused():
    from transformers import MistralConfig, MistralForCausalLM

    config_ = MistralConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, sliding_window=4)
    with pytest.raises(ValueError, match="sliding-window"):
        sps_sample(MistralForCausalLM(config_).eval(), [[2, 3]], small())


def test_defaults():
    cfg = SPSConfig()
    assert (cfg.alpha, cfg.max_new_tokens, cfg.num_candidates, cfg.num_rollouts, cfg.block_size, cfg.horizon) == (
        4.0, 512, 8, 8, 512, "sliding")  # the full look-ahead: block_size None resolves to max_new_tokens
    assert SPSConfig(max_new_tokens=40).block_size == 40
    assert get_method("power_sps").paper_settings({}) == {"block_size": 16}  # the paper's truncated horizon
    assert replace(cfg, alpha=2.0).alpha == 2.0
