"""Tests of sharpen/analysis/: pass@k against enumeration, interval coverage, paired tests, diversity, base-model scores.

    python -m pytest -q tests/test_analysis.py
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import sacrebleu
import torch
from scipy import stats as sstats

from sharpen.analysis import diversity as div
from sharpen.analysis.scoring import score_completions
from sharpen.analysis.stats import (accuracy_interval, holm, majority_vote_score, paired_comparison, pass_at_k,
                            pass_at_k_curve, pass_at_k_matrix, sign_flip_test)

# ---------------------------------------------------------------------------------------------- pass@k


def test_pass_at_k_equals_enumeration_of_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [1] * c + [0] * (n - c)
            ks = list(range(1, n + 1))
            row = pass_at_k_matrix([n], [c], ks)[0]
            for k in ks:
                subsets = list(itertools.combinations(outcomes, k))
                exact = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
                assert row[k - 1] == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    n, c = 1000, 3
    for k in (1, 10, 500, 997, 998):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-10, abs=1e-15)
        assert pass_at_k_matrix([n], [c], [k])[0, 0] == pytest.approx(float(exact), rel=1e-10, abs=1e-15)


def test_pass_at_k_refuses_k_above_n():
    with pytest.raises(ValueError, match="at least 4 samples"):
        pass_at_k_matrix([4, 3], [1, 1], [1, 4])
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_pass_at_one_of_the_curve_is_the_accuracy_interval():
    n, c = [4, 4, 4, 4, 4], [0, 1, 2, 4, 3]
    curve = pass_at_k_curve(n, c, [1, 2, 4])
    scores = [[1.0] * ci + [0.0] * (ni - ci) for ni, ci in zip(n, c)]
    assert (curve["value"][0], curve["low"][0], curve["high"][0]) == accuracy_interval(scores)
    assert all(lo <= v <= hi for v, lo, hi in zip(curve["value"], curve["low"], curve["high"]))


# ------------------------------------------------------------------------------------ interval coverage


def test_bootstrap_intervals_cover_the_truth_at_about_the_nominal_rate():
    """200 synthetic studies: 60 problems with rates ~ Beta(2, 3), 4 Bernoulli samples each."""
    rng = np.random.default_rng(1)
    a, b = 2.0, 3.0
    truth = {1: a / (a + b), 2: 1 - sstats.beta(b, a).moment(2), 4: 1 - sstats.beta(b, a).moment(4)}
    covered = {1: 0, 2: 0, 4: 0}
    wilson = 0
    replicates = 200
    for _ in range(replicates):
        p = rng.beta(a, b, size=60)
        c = rng.binomial(4, p)
        curve = pass_at_k_curve([4] * 60, c.tolist(), [1, 2, 4], n_resamples=1000)
        for i, k in enumerate(curve["k"]):
            covered[k] += curve["low"][i] <= truth[k] <= curve["high"][i]
        one = rng.binomial(1, p)
        _, low, high = accuracy_interval([[float(x)] for x in one])  # one sample per problem: Wilson
        wilson += low <= truth[1] <= high
    for k, hits in covered.items():
        assert 0.90 <= hits / replicates <= 0.99, (k, hits / replicates)
    assert 0.90 <= wilson / replicates <= 0.99, wilson / replicates


# ------------------------------------------------------------------------------------------ paired tests


def _rates(rng, p, n):
    return rng.binomial(n, p) / n


def test_paired_test_detects_a_planted_difference():
    rng = np.random.default_rng(2)
    p = rng.beta(2, 3, size=150)
    q = np.clip(p + 0.15, 0, 1)
    result = paired_comparison(_rates(rng, p, 4), _rates(rng, q, 4), binary=False)
    assert result["test"] == "permutation" and result["permutation"] == "monte_carlo" and result["flips"] == 20000
    assert result["p_value"] < 1e-3 and result["wilcoxon_p"] < 1e-3
    assert result["low"] <= (q - p).mean() <= result["high"] and result["low"] > 0
    assert result["b_better"] > result["a_better"]


def test_mcnemar_detects_a_planted_difference_with_one_sample_per_problem():
    rng = np.random.default_rng(3)
    a = rng.binomial(1, 0.3, size=300).astype(float)
    b = np.maximum(a, rng.binomial(1, 0.3, size=300))  # b solves all a solves, and more
    result = paired_comparison(a, b, binary=True)
    assert result["a_better"] == 0 and result["b_better"] == int((b > a).sum())
    assert result["mcnemar_p"] == pytest.approx(2 * 0.5 ** result["b_better"])
    # With 0/1 outcomes every nonzero difference is +-1: the permutation test is the exact McNemar test.
    assert result["test"] == "permutation" and result["permutation"] == "binomial"
    assert result["p_value"] == pytest.approx(result["mcnemar_p"], rel=1e-9)
    assert result["only_b_solves"] == result["b_better"]


def test_paired_test_does_not_flag_copies_of_the_same_method():
    rng = np.random.default_rng(4)
    same = _rates(rng, rng.beta(2, 3, size=100), 4)
    copy = paired_comparison(same, same.copy(), binary=False)
    assert copy["p_value"] == 1.0 and copy["wilcoxon_p"] == 1.0 and copy["permutation"] == "exact"
    assert copy["diff"] == 0.0 and copy["low"] == copy["high"] == 0.0


def _pairs(gains: int, losses: int, ties: int, gain: float = 1.0, loss: float = 0.25):
    """Pass rates (a, b) of 4-sample problems: `gains` problems b - a = +gain, `losses` with -loss, `ties` equal."""
    a = np.array([0.0] * gains + [loss] * losses + [0.5] * ties)
    b = np.array([gain] * gains + [0.0] * losses + [0.5] * ties)
    return a, b


# (a, b) cases: a mean carried by few large gains against many small losses (signed ranks nearly balance),
# a weaker one whose interval covers 0, and many equal small losses (all |d| equal); each also mirrored.
PAIRED_CASES = [_pairs(16, 24, 20), _pairs(10, 30, 20), _pairs(12, 24, 24), _pairs(5, 40, 15, gain=0.25)]
PAIRED_CASES += [(b, a) for a, b in PAIRED_CASES]


def _one_sided(d, flips=20000, seed=0):
    """Broken variant: p = P(T* >= T) for the signed sum, which only sees gains of b."""
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(flips, d.size)) * 2 - 1
    return (1 + int(np.sum(signs @ np.abs(d) >= d.sum() - 1e-9))) / (1 + flips)


def _agree(p_of) -> list[bool]:
    """Per case: whether `p_of(d) < 0.05` exactly when the paired bootstrap interval of the mean excludes 0."""
    out = []
    for a, b in PAIRED_CASES:
        e = paired_comparison(a, b, binary=False, n_resamples=2000)
        out.append((e["low"] > 0 or e["high"] < 0) == (p_of(b - a) < 0.05))
    return out


def test_permutation_p_agrees_with_the_interval_of_the_mean_where_wilcoxon_does_not():
    a, b = PAIRED_CASES[0]
    e = paired_comparison(a, b, binary=False)
    # The situation met in a run: diff +0.167 with an interval above 0, Wilcoxon p far from significant.
    assert e["diff"] == pytest.approx(1 / 6) and e["low"] > 0 and e["p_value"] < 0.05 and e["wilcoxon_p"] > 0.1
    assert all(_agree(lambda d: paired_comparison(np.zeros_like(d), d, binary=False)["p_value"]))
    assert not all(_agree(lambda d: paired_comparison(np.zeros_like(d), d, binary=False)["wilcoxon_p"]))
    assert not all(_agree(_one_sided))  # a one-sided test misses every mirrored (negative) difference
    # p depends on |mean| only: mirroring a case keeps its p.
    assert sign_flip_test(b - a) == sign_flip_test(a - b)


def test_exact_enumeration_equals_monte_carlo_and_the_binomial_shortcut():
    rng = np.random.default_rng(5)
    d = np.concatenate([rng.normal(0.35, 1.0, size=16), np.zeros(5)])  # 16 distinct nonzero differences
    exact, how = sign_flip_test(d)
    assert how == "exact" and 0.01 < exact < 0.5
    # By hand: the share of the 2^16 sign patterns whose |sum| reaches the observed one.
    patterns = np.array(list(itertools.product([-1, 1], repeat=16)))
    assert exact == pytest.approx(np.mean(np.abs(patterns @ np.abs(d[:16])) >= abs(d.sum()) - 1e-9))
    for seed in (0, 1):
        estimate, how = sign_flip_test(d, exact_max=0, seed=seed)
        assert how == "monte_carlo" and abs(estimate - exact) < 4 * math.sqrt(exact * (1 - exact) / 20000) + 1e-4
    assert sign_flip_test(d, exact_max=0, seed=0) != sign_flip_test(d, exact_max=0, seed=1)
    assert sign_flip_test(d, exact_max=0, seed=0) == sign_flip_test(d, exact_max=0, seed=0)
    # All |d| equal: the sum is a binomial count, and the shortcut equals the enumeration and the sign test.
    signs = np.array([0.25] * 11 + [-0.25] * 3 + [0.0] * 4)
    exact, how = sign_flip_test(signs)
    shortcut, how_shortcut = sign_flip_test(signs, exact_max=0)
    assert (how, how_shortcut) == ("exact", "binomial")
    assert shortcut == pytest.approx(exact, rel=1e-12) == pytest.approx(sstats.binomtest(11, 14).pvalue, rel=1e-12)
    assert sign_flip_test(np.zeros(7)) == (1.0, "exact")


def _unpaired(d_a, d_b, perms=1000, seed=0):
    """Broken variant: permute the method labels across all 2P values, ignoring which problem each belongs to."""
    rng = np.random.default_rng(seed)
    pooled, size = np.concatenate([d_a, d_b]), d_a.size
    x = pooled[rng.permuted(np.broadcast_to(np.arange(2 * size), (perms, 2 * size)), axis=1)]
    t = np.abs(x[:, size:].mean(1) - x[:, :size].mean(1))
    return (1 + int(np.sum(t >= abs(d_b.mean() - d_a.mean()) - 1e-12))) / (1 + perms)


def test_permutation_p_values_are_uniform_under_the_null():
    # 500 null datasets: problems of very different difficulty, the two methods exchangeable on each, so
    # every difference is symmetric about 0. Half have 14 problems (enumerated), half 40 (Monte Carlo).
    rng = np.random.default_rng(7)
    runs = 500
    low, high = sstats.binom.ppf(5e-4, runs, 0.05), sstats.binom.isf(5e-4, runs, 0.05)  # 25 expected: [9, 43]
    p, unpaired, rates, how = [], [], [], set()
    for i in range(runs):
        size = 14 if i % 2 else 40
        level = rng.normal(0, 3, size=size)
        a, b = level + rng.normal(size=size), level + rng.normal(size=size)
        value, kind = sign_flip_test(b - a)
        p.append(value)
        how.add(kind)
        unpaired.append(_unpaired(a, b))
        q = rng.beta(1, 1, size=size)  # pass rates of 8 samples: ties make the test conservative, never liberal
        rates.append(sign_flip_test(_rates(rng, q, 8) - _rates(rng, q, 8))[0])
    p, unpaired, rates = np.array(p), np.array(unpaired), np.array(rates)
    assert how == {"exact", "monte_carlo"}
    assert low <= np.sum(p < 0.05) <= high
    assert sstats.kstest(p, "uniform").pvalue > 1e-3  # uniform elsewhere too
    assert np.sum(rates < 0.05) <= high
    # Ignoring the pairing: the spread between problems swamps the null, and the test almost never rejects.
    assert np.sum(unpaired < 0.05) < low


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_majority_vote():
    assert majority_vote_score(["4", " 4", "5", None], [1, 1, 0, 0]) == 1.0
    assert majority_vote_score(["5", "5", "4"], [0, 0, 1]) == 0.0
    assert majority_vote_score(["4", "5"], [1, 0]) == 0.5
    assert majority_vote_score([None, None], [0, 0]) is None


# --------------------------------------------------------------------------------------------- diversity


def test_diversity_is_minimal_for_identical_samples_and_maximal_for_disjoint_ones():
    m = 4
    sample = list(range(10, 30))  # no n-gram repeats inside the sample
    identical = [sample] * m
    disjoint = [list(range(100 * i, 100 * i + 20)) for i in range(m)]
    for n in range(1, 5):
        assert div.distinct_n(identical, n) == pytest.approx(1 / m)
        assert div.distinct_n(disjoint, n) == 1.0
    assert div.self_bleu(identical) == pytest.approx(1.0)
    assert div.self_bleu(disjoint) == 0.0
    assert div.distinct_answers(["7", "7 ", "7", "7"]) == 1
    assert div.distinct_answers(["1", "2", "3", None]) == 3
    assert div.distinct_answers([None, None]) is None
    same = np.tile(np.array([[0.6, 0.8, 0.0]]), (m, 1))
    distance, vendi = div.embedding_diversity(same)
    assert distance == pytest.approx(0.0, abs=1e-12) and vendi == pytest.approx(1.0)
    distance, vendi = div.embedding_diversity(np.eye(m))
    assert distance == pytest.approx(1.0) and vendi == pytest.approx(m)
    # In between, partial overlap lands strictly between the extremes.
    partial = [sample, sample[:10] + list(range(200, 210))]
    assert 0.5 < div.distinct_n(partial, 1) < 1.0
    assert 0.0 < div.self_bleu(partial) < 1.0
    assert div.self_bleu([sample]) is None and div.embedding_diversity(np.eye(3)[:1]) is None


def test_self_bleu_equals_sacrebleu_sentence_bleu():
    rng = np.random.default_rng(5)
    for _ in range(20):  # lengths 0..14: empty samples and effective orders below 4 included
        samples = [rng.integers(0, 6, size=rng.integers(0, 15)).tolist() for _ in range(5)]
        strings = [" ".join(map(str, s)) for s in samples]
        expected = np.mean([sacrebleu.sentence_bleu(strings[i], strings[:i] + strings[i + 1:], tokenize="none").score
                            for i in range(len(strings))]) / 100
        assert div.self_bleu(samples) == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------------------- base-model scores


def _direct_scores(model, prompt, completion):
    """One unbatched forward pass over prompt + completion, statistics in float64."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].double()  # (T, V) predicting completion
    log_p = torch.log_softmax(logits, -1)
    p = log_p.exp()
    token = log_p[torch.arange(len(completion)), torch.tensor(completion)]
    vocab = logits.shape[-1]
    return {"logprob_sum": token.sum().item(), "logprob_mean": token.mean().item(),
            "confidence": (p * log_p).sum(-1).mean().item(),
            "self_certainty": (-math.log(vocab) - log_p.mean(-1)).mean().item()}


def test_scores_match_a_direct_forward_pass(tiny_model):
    from sharpen.sampling import sample

    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 40, (int(n),), generator=gen).tolist() for n in (3, 9, 5, 1, 12, 6)]
    completions = [torch.randint(3, 40, (int(n),), generator=gen).tolist() for n in (7, 1, 15, 4, 2, 0)]
    with torch.no_grad():
        for batch_tokens in (1, 20, 10_000):  # one row per batch, mixed, everything in one batch
            reported = []
            scores = score_completions(tiny_model, prompts, completions, batch_tokens=batch_tokens,
                                       chunk_tokens=5, on_result=lambda i, s: reported.append((i, s)))
            assert scores[-1] is None  # an empty completion has nothing to score
            # Each result is reported once, as soon as it exists (so a caller can store it at once).
            assert sorted(i for i, _ in reported) == list(range(len(prompts)))
            assert all(scores[i] == s for i, s in reported)
            for prompt, completion, got in zip(prompts[:-1], completions[:-1], scores[:-1]):
                want = _direct_scores(tiny_model, prompt, completion)
                assert got["num_tokens"] == len(completion)
                for name, value in want.items():
                    assert got[name] == pytest.approx(value, abs=1e-4), name
                assert got["confidence"] <= 0 <= got["self_certainty"]
        # The log-probs the sampler recorded while drawing agree with the scorer's.
        drawn = sample(tiny_model, prompts[:3], temperature=1.0, max_new_tokens=8, seed=7)
        rescored = score_completions(tiny_model, prompts[:3], [r.token_ids for r in drawn])
        for r, s in zip(drawn, rescored):
            assert s["logprob_sum"] == pytest.approx(sum(r.logprobs), abs=1e-4)


def test_a_sharper_base_model_is_more_confident():
    from conftest import tiny_llama

    prompts, completions = [[5, 6, 7]] * 3, [[8, 9, 10, 11], [12], [3, 3, 3]]
    with torch.no_grad():
        flat = score_completions(tiny_llama(logit_scale=1.0), prompts, completions)
        sharp = score_completions(tiny_llama(logit_scale=8.0), prompts, completions)
    for f, s in zip(flat, sharp):
        assert s["confidence"] > f["confidence"] and s["self_certainty"] > f["self_certainty"]


def test_scoring_refuses_tokens_outside_the_vocabulary(tiny_model):
    reported = []
    with pytest.raises(ValueError, match="outside the base model's vocabulary"):
        # The bad record comes last: nothing is reported before every record was checked.
        score_completions(tiny_model, [[3, 4], [3], [3, 4]], [[5], [], [5, 10_000]],
                          on_result=lambda i, s: reported.append(i))
    assert reported == []
    with pytest.raises(ValueError, match="empty prompt"):
        score_completions(tiny_model, [[]], [[5]])
