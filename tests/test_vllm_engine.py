"""The vLLM engine samples exactly what the transformers engine does: the exact tempered law, by enumeration.

    make test-vllm          # in .venv-vllm (the project plus vLLM's CPU build); about a minute
    .venv-vllm/bin/python -m pytest -q tests/test_vllm_engine.py

Skipped as a whole where vLLM is not installed (the project's .venv). One engine serves the whole
module: a tiny random Llama (6-token vocabulary, EOS = 1, 2 heads of size 32, the smallest head vLLM's CPU
attention takes) saved without tokenizer files, so it loads with tokenizer None and token-id prompts.
Completions of at most 3 tokens: 1 + 5 + 25 end in EOS and 125 are cut, 156 in all, whose exact
probabilities at temperature T come from the transformers model's conditionals. 3000 engine draws
must pass a chi-square test against the law at their temperature (p > 1e-3) and fail it against the
law at the other temperature (p < 1e-6), so the test has the power to fail.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from transformers import AutoModelForCausalLM

pytest.importorskip("vllm")  # an optional engine: `make test-vllm` runs these tests in .venv-vllm

from conftest import char_tokenizer, tiny_llama  # noqa: E402
from test_power_exactness import chi_square, detectable_tv, processed  # noqa: E402
from sharpen.errors import UsageError  # noqa: E402
from sharpen.sampling import ModelLoadError, load_model, sample  # noqa: E402
from sharpen.sampling.importance import ImportanceSamplingConfig, importance_sample  # noqa: E402
from sharpen.sampling.methods import get_method, register_method, unregister_method  # noqa: E402
from sharpen.sampling.vllm_engine import BLOCK_SIZE, VllmModel  # noqa: E402
from sharpen.study.sample import SampleRunArgs, run  # noqa: E402

VOCAB, EOS, MAX_NEW, N = 6, 1, 3, 3000
PROMPT = [2, 3]
CONTEXT = 128


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # Seed and scale chosen so that the law at T = 1 and at T = 1/2 are far apart (TV 0.27) and neither is flat
    # (effective sizes 6.9 and 4.4 completions). Measured: p = 0.75 / 0.35 at T = 1 / 1/2, the other law < 1e-200.
    path = tmp_path_factory.mktemp("tiny_vllm")
    tiny_llama(vocab_size=VOCAB, eos_token_id=EOS, seed=1, hidden_size=64, logit_scale=8.0,
               max_position_embeddings=CONTEXT).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(checkpoint):
    set_num_threads = torch.set_num_threads
    model, tokenizer = load_model(str(checkpoint), engine="vllm")
    assert isinstance(model, VllmModel) and tokenizer is None  # no tokenizer files: token-id prompts
    assert torch.set_num_threads is set_num_threads  # vLLM's CPU worker replaces it; the engine gives it back
    yield model
    model.close()  # the next module's engine needs the memory


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    # the saved weights through transformers (load_model's hf engine wants tokenizer files)
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def completions() -> list[tuple[int, ...]]:
    body = [t for t in range(VOCAB) if t != EOS]
    ended = [x + (EOS,) for n in range(MAX_NEW) for x in itertools.product(body, repeat=n)]
    return ended + list(itertools.product(body, repeat=MAX_NEW))


def exact_law(model, temperature, top_k=None, top_p=None) -> np.ndarray:
    """Probability of each of completions() when every token is drawn at `temperature`, then top-k, then top-p
    (written out independently of sharpen and of vLLM in test_power_exactness.processed)."""
    states = completions()
    width = len(PROMPT) + MAX_NEW  # right padding: a causal model's earlier positions do not see it
    with torch.no_grad():
        ids = torch.tensor([(PROMPT + list(x) + [0] * MAX_NEW)[:width] for x in states])
        logits = model(input_ids=ids).logits.double()
    start = len(PROMPT) - 1
    return np.array([float(np.exp(sum(processed(logits[k, start + j], temperature, top_k, top_p)[t].item()
                                      for j, t in enumerate(x)))) for k, x in enumerate(states)])


@pytest.mark.parametrize("temperature, other", [(1.0, 0.5), (0.5, 1.0)])
def test_samples_follow_the_exact_tempered_law(engine, hf_model, temperature, other):
    results = sample(engine, [PROMPT] * N, temperature=temperature, max_new_tokens=MAX_NEW, seed=7, batch_size=N)
    draws = [tuple(r.token_ids) for r in results]
    states, law, wrong = completions(), exact_law(hf_model, temperature), exact_law(hf_model, other)
    assert abs(law.sum() - 1) < 1e-9
    assert detectable_tv(law, N) < 0.08  # the test sees any error of TV 0.08 or more (probability 0.9)
    p_right, _ = chi_square(draws, states, law)
    p_wrong, _ = chi_square(draws, states, wrong)
    assert p_right > 1e-3 and p_wrong < 1e-6, (p_right, p_wrong)
    assert {r.finish_reason for r in results} == {"eos", "length"}
    assert all((r.finish_reason == "eos") == (r.token_ids[-1] == EOS) for r in results)


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.7)])
def test_top_k_and_top_p_follow_the_exact_cut_law(engine, hf_model, top_k, top_p):
    """The cut law passes; the uncut one (0.28 / 0.39 away in TV) is rejected."""
    results = sample(engine, [PROMPT] * N, max_new_tokens=MAX_NEW, top_k=top_k, top_p=top_p, seed=9, batch_size=N)
    draws = [tuple(r.token_ids) for r in results]
    law = exact_law(hf_model, 1.0, top_k, top_p)
    assert detectable_tv(law, N) < 0.06
    p_right, _ = chi_square(draws, completions(), law)
    p_uncut, _ = chi_square(draws, completions(), exact_law(hf_model, 1.0))
    assert p_right > 1e-3 and p_uncut < 1e-6, (p_right, p_uncut)


def mixture_law(model, temperatures) -> np.ndarray:
    return np.mean([exact_law(model, t) for t in temperatures], axis=0)


def test_power_is_draws_each_completion_from_its_proposal(engine, hf_model):
    """Sample index s draws at temperature s mod 2 (1/4, 1/2 at alpha 4): N draws, half at each, follow the
    equal mixture (measured p = 0.71); all drawn at the sharpest proposal (TV 0.073 away) is rejected (p 3e-244).
    Their self-normalised weights bring them within TV 0.05 of p^4 (measured 0.0005, ESS 1323 of 3000; the
    draws themselves are 0.57 away, the broken weights of tests/test_importance.py 0.22 or more)."""
    settings = ImportanceSamplingConfig(alpha=4.0, max_new_tokens=MAX_NEW, batch_size=N)
    results = importance_sample(engine, [PROMPT] * N, settings, seed=5)
    draws = [tuple(r.token_ids) for r in results]
    temperatures = settings.proposal_temperatures
    assert [r.fields["proposal_temperature"] for r in results[:4]] == temperatures * 2
    law = mixture_law(hf_model, temperatures)
    p_right, _ = chi_square(draws, completions(), law)
    p_wrong, _ = chi_square(draws, completions(), exact_law(hf_model, temperatures[0]))
    assert p_right > 1e-3 and p_wrong < 1e-6, (p_right, p_wrong)
    target = exact_law(hf_model, 1.0) ** settings.alpha
    weights = np.exp(np.array([r.fields["importance_log_weight"] for r in results]) - max(
        r.fields["importance_log_weight"] for r in results))
    index = {x: k for k, x in enumerate(completions())}
    estimate = np.bincount([index[x] for x in draws], weights=weights, minlength=len(index))
    assert 0.5 * np.abs(estimate / estimate.sum() - target / target.sum()).sum() < 0.05


def test_power_is_weights_match_transformers(engine, hf_model):
    """Each completion's weight alpha log p(x) - log q_mix(x), scored by transformers under every proposal,
    within 1e-4; a weight from the drawing proposal's log q alone (no mixture) is far off."""
    settings = ImportanceSamplingConfig(alpha=4.0, max_new_tokens=MAX_NEW)
    prompts = [PROMPT, [2, 4, 5, 0]] * 12
    results = importance_sample(engine, prompts, settings, seed=8)
    temperatures = settings.proposal_temperatures
    gaps, own_only = [], []
    for prompt, r in zip(prompts, results):
        with torch.no_grad():
            logits = hf_model(input_ids=torch.tensor([prompt + r.token_ids])).logits[0].double()
        rows = logits[len(prompt) - 1:len(prompt) - 1 + len(r.token_ids)]
        taken = torch.tensor(r.token_ids)[:, None]
        log_q = [float(torch.log_softmax(rows / t, -1).gather(-1, taken).sum()) for t in temperatures]
        log_p = float(torch.log_softmax(rows, -1).gather(-1, taken).sum())
        exact = settings.alpha * log_p - (logsumexp(log_q) - np.log(len(log_q)))
        gaps.append(abs(r.fields["importance_log_weight"] - exact))
        own = log_q[temperatures.index(r.fields["proposal_temperature"])]
        own_only.append(abs(settings.alpha * log_p - own - exact))
    assert max(gaps) < 1e-4
    assert max(own_only) > 0.1  # the comparison would catch weights that leave the other proposal out


def test_logprobs_are_the_models_at_temperature_one(engine, hf_model):
    """Sampled at T = 1/2, each token's log p is still the model's at T = 1, within 1e-4 of transformers."""
    results = sample(engine, [PROMPT, [2, 4, 5, 0]] * 8, temperature=0.5, max_new_tokens=MAX_NEW, seed=3)
    for prompt, r in zip([PROMPT, [2, 4, 5, 0]] * 8, results):
        with torch.no_grad():
            log_p = torch.log_softmax(hf_model(input_ids=torch.tensor([prompt + r.token_ids])).logits[0].float(), -1)
        expected = [log_p[len(prompt) - 1 + j, t].item() for j, t in enumerate(r.token_ids)]
        assert np.abs(np.array(r.logprobs) - expected).max() < 1e-4


def test_seeds_fix_each_completion_whatever_its_batch(engine):
    prompts, seeds = [PROMPT] * 6, [11, 12, 13, 14, 15, 16]
    together = sample(engine, prompts, max_new_tokens=MAX_NEW, seeds=seeds, batch_size=6)
    apart = sample(engine, prompts, max_new_tokens=MAX_NEW, seeds=seeds, batch_size=1)
    assert [r.token_ids for r in together] == [r.token_ids for r in apart]
    other = sample(engine, prompts, max_new_tokens=MAX_NEW, seeds=[s + 100 for s in seeds])
    assert [r.token_ids for r in other] != [r.token_ids for r in together]


def test_cached_prompt_tokens_are_not_counted_as_computed(engine):
    """A prompt of 40 tokens sampled twice: the second time its first block (32 tokens) comes from the cache."""
    prompt = [2] + [3, 4, 5, 0] * 9 + [3, 4, 5]
    first, = sample(engine, [prompt], max_new_tokens=MAX_NEW, seeds=[1])
    second, = sample(engine, [prompt], max_new_tokens=MAX_NEW, seeds=[2])
    assert first.stats["cached_prompt_tokens"] in (0, BLOCK_SIZE)  # 32 when an earlier test left it cached
    assert second.stats["cached_prompt_tokens"] == BLOCK_SIZE
    for r in (first, second):
        assert r.stats["forward_tokens"] == len(prompt) - r.stats["cached_prompt_tokens"] + len(r.token_ids) - 1
        assert r.stats["sampled_tokens"] == len(r.token_ids) and r.stats["wall_seconds"] > 0


def test_budget_beyond_the_engines_context_is_refused_before_sampling(engine, tmp_path):
    assert engine.max_model_len == CONTEXT
    with pytest.raises(ValueError, match="does not fit engine vllm's max_model_len 128"):
        sample(engine, [PROMPT], max_new_tokens=CONTEXT)
    args = SampleRunArgs(model="unused", task="basic_arithmetic", output_dir=str(tmp_path / "out"), engine="vllm",
                         num_problems=1)
    with pytest.raises(UsageError, match="max_new_tokens 500 does not fit"):
        run(args, get_method("base").make_settings(max_new_tokens=500), model=engine, tokenizer=char_tokenizer(),
            progress=False)
    assert not (tmp_path / "out" / "samples").exists()


def test_a_model_vllm_cannot_load_is_one_line(checkpoint, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    config = (checkpoint / "config.json").read_text().replace("LlamaForCausalLM", "NoSuchModelForCausalLM")
    (bad / "config.json").write_text(config)
    with pytest.raises(ModelLoadError, match="engine vllm cannot load model") as err:
        load_model(str(bad), engine="vllm")
    assert "\n" not in str(err.value)


def test_methods_without_a_vllm_sampler_are_refused(tmp_path):
    assert all("vllm" in get_method(m).engines for m in ("base", "low_temp", "power_is", "power_mh", "power_smc",
                                                         "power_sps", "grpo", "grpo_self", "power_distill"))
    # a plug-in method declares its engines (hf only by default): refused on vllm before any work
    register_method(dataclasses.replace(get_method("power_mh"), name="mh_hf_only", engines=("hf",)))
    try:
        with pytest.raises(UsageError, match="engine vllm does not support method mh_hf_only yet"):
            SampleRunArgs(model="m", task="basic_arithmetic", output_dir=str(tmp_path), method="mh_hf_only",
                          engine="vllm")
    finally:
        unregister_method("mh_hf_only")
