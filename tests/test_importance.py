"""power_is is an exact importance sample of p^alpha: checked by enumerating every completion of tiny models.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_importance.py     # about 17 s on one core

The models are the enumerable tiny Llamas of tests/test_power_exactness.py (4-token vocabulary, EOS = 1,
4 new tokens: 121 completions). N completions of one prompt run through the registered method with
sample indices 0..N-1; their self-normalised weights give an estimate of p^alpha over completions,
compared in total variation with p^alpha computed exactly.

The bound. The self-normalised estimate of pi(x) has (delta method, i.i.d. draws from q_mix)
variance V_x = (1/N) sum_y pi(y)^2 / q_mix(y) (1[y = x] - pi(x))^2; stratified draws (N/M per
proposal) have at most that. So E[TV] <= tv_scale = 1/2 sum_x sqrt(V_x), of the order of
sqrt(chi^2(p^alpha || q_mix) / N), and the test asserts TV < 4 tv_scale. In 20000 simulated runs of
the exact estimator (numpy, drawing from the enumerated proposals) none exceeded it at either setting
(3 tv_scale was exceeded 6e-4 of the time at alpha 4); the test repeats that simulation 2000 times.
Figures: chi^2 and the bound exact; TVs measured (the low-temperature proposal's exact), the broken
variants each asserted above twice the bound:

  setting (proposal T)              N      chi^2  sqrt(chi^2/N)  bound  right  low temp  T=1 weights  p  unnormalised
  power_model, alpha 4 (1/4, 1/2)   6000   1.48   0.016          0.055  0.008  0.310     0.285     0.482  0.499
  model, alpha 2 (1/2, 1/sqrt 2)    12000  0.79   0.008          0.085  0.020  0.308     0.220     0.253  0.477

The weighted draws' ESS matches the exact N / (1 + chi^2): 2420 vs 2415 (alpha 4), 6635 vs 6689 (alpha 2).

Broken variants, injected at sharpen.sampling.importance.mixture_log_weight: log q scored at temperature
1 for every proposal (the ignored temperature: weights p^(alpha-1)), alpha dropped (weights for p), and
the estimator without self-normalisation (mean of w 1[x], which estimates p(x)^alpha unnormalised: its
mass is Z = 0.0026 / 0.045). Each lands far outside the bound. Swapping the proposals' temperatures in
the weight is no bug: the balance-heuristic mixture is symmetric in its components.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from conftest import tiny_llama
from test_power_exactness import EOS, PROMPT, T, VOCAB, completions, conditionals_of, make_model, per_token, tables
from sharpen.cli import main
from sharpen.runs.records import read_records
from sharpen.sampling import importance
from sharpen.sampling.draw import derive_seed
from sharpen.sampling.importance import ImportanceSamplingConfig, default_temperatures, importance_sample
from sharpen.sampling.methods import get_method


def power_model():
    # test_power_exactness's power_model: p^4 on four completions of lengths 1, 2 and 4, far from low temperature.
    return tiny_llama(vocab_size=VOCAB, eos_token_id=EOS, seed=123, logit_scale=16.0, hidden_size=16,
                      max_position_embeddings=32)


SETTINGS = {  # id: (model, alpha, N)
    "alpha4": (power_model, 4.0, 6000),
    "alpha2": (make_model, 2.0, 12000),
}


class Exact:
    """p^alpha, the proposals and every completion's weight, by enumeration of the model's conditionals."""

    def __init__(self, model, alpha, n):
        cond = conditionals_of(model)
        self.alpha, self.n, self.temperatures = alpha, n, default_temperatures(alpha)
        self.states = completions(T)
        self.index = {x: k for k, x in enumerate(self.states)}
        logp = {x: torch.log_softmax(row, -1) for x, row in cond.items()}
        self.log_p = np.array([sum(per_token(logp, x)) for x in self.states])
        self.log_q = np.array([[sum(per_token(tables(cond, t)[1], x)) for t in self.temperatures]
                               for x in self.states])  # (states, M)
        self.log_q_mix = logsumexp(self.log_q, 1) - math.log(len(self.temperatures))
        self.log_w = alpha * self.log_p - self.log_q_mix
        self.pi = normalised(np.exp(alpha * self.log_p))
        q_mix = np.exp(self.log_q_mix)
        second = (self.pi ** 2 / q_mix).sum()  # 1 + chi^2(p^alpha || q_mix)
        self.chi2 = second - 1
        variance = (self.pi ** 2 / q_mix * (1 - self.pi) ** 2 + self.pi ** 2 * (second - self.pi ** 2 / q_mix)) / n
        self.bound = 4 * 0.5 * np.sqrt(variance).sum()

    def tv(self, weights_per_state) -> float:
        return 0.5 * float(np.abs(weights_per_state - self.pi).sum())

    def simulated_tvs(self, runs=2000, seed=0) -> np.ndarray:
        """TVs of the exact estimator: stratified draws from the enumerated proposals, self-normalised."""
        rng, m = np.random.default_rng(seed), len(self.temperatures)
        counts = sum(rng.multinomial(len(range(k, self.n, m)), normalised(np.exp(self.log_q[:, k])), size=runs)
                     for k in range(m))
        estimates = counts * np.exp(self.log_w - self.log_w.max())
        return 0.5 * np.abs(estimates / estimates.sum(1, keepdims=True) - self.pi).sum(1)


def normalised(a):
    return a / a.sum()


def run_is(model, alpha, n, batch_size=None, prompts=None):
    method = get_method("power_is")
    settings = method.make_settings(alpha=alpha, max_new_tokens=T, batch_size=batch_size or n)
    return method.run(model, prompts or [PROMPT] * n, settings, seeds=[derive_seed(0, "p", s) for s in range(n)],
                      sample_indices=list(range(n)))


def weighted_law(exact, results, normalise=True) -> np.ndarray:
    """The estimate of p^alpha over exact.states from the records' weights (self-normalised unless told)."""
    log_w = np.array([r.fields["importance_log_weight"] for r in results])
    states = np.array([exact.index[tuple(r.token_ids)] for r in results])
    if not normalise:  # (1/N) sum_s w_s 1[x_s = x]: p(x)^alpha unnormalised
        return np.bincount(states, weights=np.exp(log_w), minlength=len(exact.states)) / len(results)
    return normalised(np.bincount(states, weights=np.exp(log_w - log_w.max()), minlength=len(exact.states)))


@pytest.fixture(scope="module", params=list(SETTINGS))
def setting(request):
    make, alpha, n = SETTINGS[request.param]
    model = make()
    return request.param, model, Exact(model, alpha, n)


@pytest.fixture(scope="module")
def right(setting):
    _, model, exact = setting
    return run_is(model, exact.alpha, exact.n)


def test_weighted_completions_reach_p_alpha(setting, right):
    name, _, exact = setting
    # Every record's weight is alpha log p - log q_mix of its completion, computed from the enumerated conditionals.
    got = np.array([r.fields["importance_log_weight"] for r in right])
    want = np.array([exact.log_w[exact.index[tuple(r.token_ids)]] for r in right])
    assert np.abs(got - want).max() < 1e-4
    assert [r.fields["proposal_temperature"] for r in right[:4]] == exact.temperatures * (4 // len(exact.temperatures))
    assert all(abs(sum(r.logprobs) - exact.log_p[exact.index[tuple(r.token_ids)]]) < 1e-4 for r in right[:200])

    tv = exact.tv(weighted_law(exact, right))
    low_temp = exact.tv(np.exp(exact.log_q[:, 0]))  # the 1/alpha proposal alone
    ess = np.exp(2 * logsumexp(got) - logsumexp(2 * got))
    simulated = exact.simulated_tvs()
    print(f"\n{name}: N {exact.n}, chi^2 {exact.chi2:.3f}, sqrt(chi^2/N) {math.sqrt(exact.chi2 / exact.n):.4f}, "
          f"bound {exact.bound:.4f}, TV {tv:.4f}; ESS {ess:.0f} (exact N/(1+chi^2) {exact.n / (1 + exact.chi2):.0f}); "
          f"low temperature TV {low_temp:.3f}; simulated TV max {simulated.max():.4f}")
    assert tv < exact.bound
    # The bound is meaningful (far below what a wrong law is away) and holds for the exact estimator.
    assert exact.bound < low_temp / 3 and exact.bound < 0.09
    assert (simulated < exact.bound).all()


def ignored_temperature(alpha, log_p, log_q):
    return RIGHT_WEIGHT(alpha, log_p, log_p.expand(log_q.shape))  # log q_m scored at temperature 1 = log p


def alpha_dropped(alpha, log_p, log_q):
    return RIGHT_WEIGHT(1.0, log_p, log_q)  # weights for p, not p^alpha


RIGHT_WEIGHT = importance.mixture_log_weight
BROKEN = {"ignored-temperature": ignored_temperature, "alpha-dropped": alpha_dropped}


@pytest.mark.parametrize("variant", list(BROKEN))
def test_broken_weights_are_rejected(setting, monkeypatch, variant):
    name, model, exact = setting
    monkeypatch.setattr(importance, "mixture_log_weight", BROKEN[variant])
    tv = exact.tv(weighted_law(exact, run_is(model, exact.alpha, exact.n)))
    print(f"\n{name} {variant}: TV {tv:.3f} (bound {exact.bound:.3f})")
    assert tv > 2 * exact.bound


def test_unnormalised_weights_are_rejected(setting, right):
    name, _, exact = setting
    unnormalised = weighted_law(exact, right, normalise=False)
    tv = exact.tv(unnormalised)
    print(f"\n{name} unnormalised: TV {tv:.3f} (its mass {unnormalised.sum():.4f}, bound {exact.bound:.3f})")
    assert tv > 2 * exact.bound


def test_a_completion_does_not_depend_on_its_batch():
    model = make_model()
    prompts = [PROMPT, [3]] * 20  # two prompt lengths: left padding in every batch
    records = {}
    for batch_size in (3, 64):
        results = run_is(model, 4.0, len(prompts), batch_size=batch_size, prompts=prompts)
        records[batch_size] = [(r.token_ids, r.finish_reason, r.fields["proposal_temperature"]) for r in results]
        weights = np.array([r.fields["importance_log_weight"] for r in results])
        records[batch_size].append(weights)
    *small, small_w = records[3]
    *big, big_w = records[64]
    assert small == big and np.abs(small_w - big_w).max() < 1e-5
    assert len({tuple(t) for t, _, _ in small}) > 5  # not one completion repeated


def test_on_result_and_default_sample_indices():
    model = make_model()
    seen = {}
    cfg = ImportanceSamplingConfig(alpha=4.0, max_new_tokens=T, batch_size=4)
    results = importance_sample(model, [PROMPT] * 6, cfg, seed=1, on_result=lambda i, r: seen.setdefault(i, r))
    assert sorted(seen) == list(range(6)) and all(seen[i] is results[i] for i in range(6))
    assert [r.fields["proposal_temperature"] for r in results] == [0.25, 0.5] * 3  # index = position in prompts
    for r in results:
        assert r.stats["sampled_tokens"] == len(r.token_ids) and r.stats["forward_tokens"] == len(PROMPT) + len(
            r.token_ids) - 1
        assert r.finish_reason == ("eos" if r.token_ids[-1] == EOS else "length")
    again = importance_sample(model, [PROMPT] * 6, cfg, seed=1, sample_indices=[0, 1, 2, 3, 4, 5])
    assert [(r.token_ids, r.fields) for r in again] == [(r.token_ids, r.fields) for r in results]


def test_the_registered_method_and_its_traits():
    method = get_method("power_is")
    settings = method.settings()
    assert settings.proposal_temperatures == [0.25, 0.5] and method.temperature(settings) == 0.25
    assert method.weighted and method.takes_sample_index and method.chunked
    assert not method.plain_decoding and not method.equal_compute_reference
    assert method.make_settings(alpha=1.0).proposal_temperatures == [1.0]
    assert method.make_settings(proposal_temperatures=[1, 0.5, 0.5]).proposal_temperatures == [0.5, 1.0]


@pytest.mark.parametrize("value, message", [
    ([], "proposal_temperatures must be a non-empty list of numbers in [0.01, 100], got []"),
    ([0.0], "proposal_temperatures must be a number in [0.01, 100], got 0.0"),
    ([-1], "proposal_temperatures must be a number in [0.01, 100], got -1"),
    (["a"], "proposal_temperatures must be a number in [0.01, 100], got 'a'"),
    ([True], "proposal_temperatures must be a number in [0.01, 100], got True"),
    ([0.5, 1e9], "proposal_temperatures must be a number in [0.01, 100], got 1000000000.0"),
    (0.5, "proposal_temperatures must be a non-empty list of numbers in [0.01, 100], got 0.5"),
])
def test_bad_temperatures_are_refused_in_one_line(value, message):
    with pytest.raises(ValueError) as err:
        ImportanceSamplingConfig(proposal_temperatures=value)
    assert str(err.value) == message


def test_bad_alpha_is_refused():
    with pytest.raises(ValueError, match=r"^alpha must be a number in \[0.01, 100\], got 0$"):
        ImportanceSamplingConfig(alpha=0)


@pytest.mark.parametrize("flags, message", [
    (["--proposal-temperatures", "0"], "--proposal-temperatures must be a number in [0.01, 100], got 0.0"),
    (["--proposal-temperatures", "0.5", "-1"], "--proposal-temperatures must be a number in [0.01, 100], got -1.0"),
    (["--proposal-temperatures", "--seed", "0"], "expected at least one argument"),
    (["--proposal-temperatures", "a"], "invalid float value: 'a'"),
    (["--alpha", "0"], "--alpha must be a number in [0.01, 100], got 0.0"),
])
def test_the_cli_refuses_bad_settings_before_sampling(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code = main(["sample", "--model", str(tmp_path / "never-loaded"), "--task", "basic_arithmetic", "--method",
                 "power_is", "--output-dir", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_sample_writes_weighted_records(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    assert main(["sample", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--method", "power_is",
                 "--output-dir", str(out), "--num-problems", "2", "--num-samples", "3", "--max-new-tokens", "4",
                 "--proposal-temperatures", "0.5", "1", "0.25"]) == 0
    records = read_records(out / "samples" / "power_is.jsonl")
    assert len(records) == 6
    for r in records:
        assert r["proposal_temperature"] == [0.25, 0.5, 1.0][r["sample_idx"] % 3] and r["temperature"] == 0.25
        assert math.isfinite(r["importance_log_weight"])
