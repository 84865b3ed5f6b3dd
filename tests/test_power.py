"""Power-MH sampler: API and defaults, bad input, batching, prefix reuse, and `sharpen sample --method power_mh`.

    python -m pytest -q tests/test_power.py

Exactness (the target distribution) is checked by enumeration in tests/test_power_exactness.py;
here the batched implementation is checked against the one-chain-at-a-time reference, which
shares the acceptance rule and the random stream but recomputes every prefix from scratch.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_llama
from sharpen.cli import main
from sharpen.sampling import PowerSamplingConfig, derive_seed, get_method, power_sample, sample
from sharpen.sampling import power as power_module

EOS = 1
PROMPTS = [[2, 5, 6], [2], [2, 7, 8, 9, 10, 11, 3], [3, 4]]


def small(**overrides) -> PowerSamplingConfig:
    settings = dict(alpha=2.0, block_size=5, mcmc_steps=3, max_new_tokens=12)
    settings.update(overrides)
    return PowerSamplingConfig(**settings)


@pytest.fixture(scope="module")
def model():
    # 12 tokens, sharpened: chains end in EOS often enough to exercise every length.
    return tiny_llama(vocab_size=12, logit_scale=3.0)


def test_defaults_reach_the_target_and_the_papers_are_its_reference_settings():
    cfg = PowerSamplingConfig()
    assert (cfg.alpha, cfg.block_size, cfg.mcmc_steps, cfg.max_new_tokens) == (4.0, 192, 10, 3072)
    assert cfg.proposal_temperature == 0.5 and cfg.top_k is None and cfg.top_p is None  # 1/sqrt(alpha)
    assert cfg.stop_on_eos is False and cfg.implementation == "batched"
    assert PowerSamplingConfig(alpha=2.0).proposal_temperature == pytest.approx(2 ** -0.5)
    # the paper's Algorithm 1, which `profile: reference` applies where a study leaves them unset
    paper = get_method("power_mh").paper_settings({"alpha": 2.0})
    assert paper == {"proposal_temperature": 0.5, "stop_on_eos": True}


@pytest.mark.parametrize("field,value,accepted", [
    ("alpha", 0.0, "[0.01, 100]"), ("alpha", -1.0, "[0.01, 100]"), ("block_size", 0, ">= 1"), ("mcmc_steps", -1, ">= 0"),
    ("max_new_tokens", 0, ">= 1"), ("proposal_temperature", 0.0, "[0.01, 100]"), ("top_p", 0.0, "(0, 1]"),
    ("top_p", 1.5, "(0, 1]"), ("top_k", 0, ">= 1"), ("implementation", "fast", "batched, reference"),
])
def test_bad_settings_name_the_field_and_the_range(field, value, accepted):
    with pytest.raises(ValueError) as err:
        PowerSamplingConfig(**{field: value})
    assert field in str(err.value) and accepted in str(err.value)


def test_prompts_without_room_are_refused_before_any_work(model):
    called = []
    long_prompt = [3] * 128  # tiny_llama's context is 128 positions
    with pytest.raises(ValueError, match="context"):
        power_sample(model, [[2, 3], long_prompt], small(), on_result=lambda i, r: called.append(i))
    with pytest.raises(ValueError, match="empty"):
        power_sample(model, [[2, 3], []], small(), on_result=lambda i, r: called.append(i))
    assert called == []
    with pytest.raises(ValueError, match="seeds"):
        power_sample(model, PROMPTS, small(), seeds=[1, 2])


def test_context_caps_the_completion():
    model = tiny_llama(vocab_size=12, logit_scale=3.0, max_position_embeddings=16)
    results = power_sample(model, [[3] * 12], small(max_new_tokens=10), seed=0)
    assert len(results[0].token_ids) <= 4


def test_results_are_completions_with_base_logprobs(model):
    results = power_sample(model, PROMPTS, small(), seed=3)
    assert len(results) == len(PROMPTS)
    for prompt, r in zip(PROMPTS, results):
        assert 1 <= len(r.token_ids) <= 12
        assert EOS not in r.token_ids[:-1]
        assert r.finish_reason == ("eos" if r.token_ids[-1] == EOS else "length")
        if r.finish_reason == "length":
            assert len(r.token_ids) == 12
        # logprobs are log p under the base model at temperature 1, whatever the proposal temperature
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + r.token_ids])).logits[0, len(prompt) - 1:-1]
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(r.logprobs), expected, atol=1e-4)
        stats = r.stats
        assert {"proposals", "accepted", "acceptance_rate", "sampled_tokens", "forward_tokens"} <= set(stats)
        assert 0 <= stats["accepted"] <= stats["proposals"] and stats["proposals"] > 0
        assert stats["acceptance_rate"] == pytest.approx(stats["accepted"] / stats["proposals"])
        assert stats["sampled_tokens"] >= len(r.token_ids)
    assert any(r.finish_reason == "eos" for r in results) and any(r.stats["accepted"] < r.stats["proposals"]
                                                                    for r in results)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_batched_equals_reference_and_reuses_prefixes(attention):
    """Same chains, same acceptance decisions; the batched one never recomputes a kept prefix."""
    model = tiny_llama(vocab_size=12, logit_scale=3.0)
    model.set_attn_implementation(attention)
    prompts = PROMPTS * 3
    # batch_size 5 < 12 chains: chains join the batch as others finish (compaction and prefill paths)
    batched = power_sample(model, prompts, small(batch_size=5), seed=11)
    reference = power_sample(model, prompts, small(implementation="reference"), seed=11)
    for prompt, b, r in zip(prompts, batched, reference):
        assert b.token_ids == r.token_ids and b.finish_reason == r.finish_reason
        assert b.logprobs == pytest.approx(r.logprobs, abs=1e-5)
        for key in ("proposals", "accepted", "sampled_tokens"):
            assert b.stats[key] == r.stats[key]
        # every position run through the model: the prompt once, then one per sampled token
        assert b.stats["forward_tokens"] == len(prompt) - 1 + b.stats["sampled_tokens"]
        # the reference re-runs prompt + kept prefix for every proposal: at least P - 1 more tokens each
        assert r.stats["forward_tokens"] - b.stats["forward_tokens"] >= b.stats["proposals"] * (len(prompt) - 1)
    assert sum(r.stats["forward_tokens"] for r in reference) > 1.5 * sum(b.stats["forward_tokens"] for b in batched)


def counts(result) -> dict:
    """A result's token and proposal counts: everything in stats but its measured wall time."""
    return {k: v for k, v in result.stats.items() if k != "wall_seconds"}


def test_compacting_the_cache_mid_operation_changes_nothing(model, monkeypatch):
    normal = power_sample(model, PROMPTS * 2, small(batch_size=3), seed=8)
    monkeypatch.setattr(power_module, "_slack", lambda longest: 1)  # compact whenever 2 slots are dead
    compacted = power_sample(model, PROMPTS * 2, small(batch_size=3), seed=8)
    assert [r.token_ids for r in compacted] == [r.token_ids for r in normal]
    assert [counts(r) for r in compacted] == [counts(r) for r in normal]


def test_a_chain_does_not_depend_on_its_batch(model):
    seeds = [derive_seed(5, i) for i in range(len(PROMPTS))]
    together = power_sample(model, PROMPTS, small(), seeds=seeds)
    in_pairs = power_sample(model, PROMPTS, small(batch_size=2), seeds=seeds)
    for i, prompt in enumerate(PROMPTS):
        alone = power_sample(model, [prompt], small(), seeds=[seeds[i]])[0]
        assert together[i].token_ids == alone.token_ids == in_pairs[i].token_ids
        assert counts(together[i]) == counts(alone) == counts(in_pairs[i])


def test_seeds_make_runs_repeatable_and_distinct(model):
    first = [r.token_ids for r in power_sample(model, PROMPTS, small(), seed=0)]
    again = [r.token_ids for r in power_sample(model, PROMPTS, small(), seed=0)]
    other = [r.token_ids for r in power_sample(model, PROMPTS, small(), seed=1)]
    assert first == again and first != other


def test_without_mh_steps_it_is_plain_sampling_at_the_proposal_temperature(model):
    power = power_sample(model, PROMPTS, small(mcmc_steps=0, proposal_temperature=0.7), seed=2)
    plain = sample(model, PROMPTS, temperature=0.7, max_new_tokens=12, seed=2)
    assert [r.token_ids for r in power] == [r.token_ids for r in plain]
    assert all(r.stats["proposals"] == 0 and r.stats["acceptance_rate"] is None for r in power)


@pytest.mark.parametrize("block_size", [4, 5, 12])
def test_block_schedule(model, block_size):
    """Every block runs mcmc_steps steps; blocks of 5 over 12 tokens end with a shorter one."""
    blocks = math.ceil(12 / block_size)
    exact = power_sample(model, PROMPTS * 2, small(block_size=block_size, stop_on_eos=False), seed=4)
    # stop_on_eos=False: a chain that ended in EOS keeps taking the later blocks' steps
    assert all(r.stats["proposals"] == 3 * blocks for r in exact)
    paper = power_sample(model, PROMPTS * 2, small(block_size=block_size, stop_on_eos=True), seed=4)
    for r in paper:  # stop_on_eos=True: a chain stops after the block in which its state ended in EOS
        ran = r.stats["proposals"] // 3
        assert r.stats["proposals"] % 3 == 0 and math.ceil(len(r.token_ids) / block_size) <= ran <= blocks
        if r.finish_reason == "length":
            assert ran == blocks
    if block_size < 12:
        assert any(r.stats["proposals"] < 3 * blocks for r in paper)


def test_top_k_one_makes_every_chain_greedy(model):
    power = power_sample(model, PROMPTS, small(top_k=1), seed=0)
    greedy = sample(model, PROMPTS, temperature=1.0, top_k=1, max_new_tokens=12, seed=9)
    assert [r.token_ids for r in power] == [r.token_ids for r in greedy]
    assert all(r.stats["accepted"] == r.stats["proposals"] for r in power)  # same suffix, same length: A = 1


def test_top_p_is_passed_to_the_proposal(model):
    narrow = power_sample(model, PROMPTS * 4, small(top_p=0.3, mcmc_steps=1), seed=0)
    wide = power_sample(model, PROMPTS * 4, small(mcmc_steps=1), seed=0)
    assert len({tuple(r.token_ids) for r in narrow}) < len({tuple(r.token_ids) for r in wide})


def test_on_result_reports_each_chain_once(model):
    seen = {}
    results = power_sample(model, PROMPTS, small(batch_size=2), seed=0, on_result=lambda i, r: seen.setdefault(i, r))
    assert sorted(seen) == list(range(len(PROMPTS))) and all(seen[i] is results[i] for i in seen)


def test_sliding_window_models_are_refused():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, sliding_window=4)
    with pytest.raises(ValueError, match="sliding-window"):
        power_sample(MistralForCausalLM(config).eval(), [[2, 3]], small())


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_power_mh_end_to_end_and_resume(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["sample", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--method", "power_mh",
            "--num-problems", "3", "--num-samples", "2", "--max-new-tokens", "8", "--block-size", "3",
            "--mcmc-steps", "2", "--alpha", "2", "--output-dir", str(out)]
    assert main(argv) == 0
    path = out / "samples" / "power_mh.jsonl"
    records = _records(path)
    assert len(records) == 6 and {r["method"] for r in records} == {"power_mh"}
    for r in records:
        cost = r["cost"]
        assert cost["proposals"] == 2 * math.ceil(8 / 3) or r["finish_reason"] == "eos"
        assert cost["acceptance_rate"] == pytest.approx(cost["accepted"] / cost["proposals"])
        assert cost["sampled_tokens"] >= r["num_tokens"] and cost["forward_tokens"] > 0
        # the default proposal, 1/sqrt(alpha); chains run on after EOS (stop_on_eos false by default)
        assert r["temperature"] == pytest.approx(2 ** -0.5) and len(r["token_logprobs"]) == r["num_tokens"]
        assert cost["proposals"] == 2 * math.ceil(8 / 3)
    saved = json.loads((out / "samples" / "power_mh.config.json").read_text())["identity"]["settings"]
    assert (saved["block_size"], saved["mcmc_steps"], saved["stop_on_eos"]) == (3, 2, False)
    assert saved["proposal_temperature"] == pytest.approx(2 ** -0.5)

    # Resume: the lost records come back identical (seeds derive from problem and sample index).
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    assert main(argv) == 0
    again = _records(path)
    key = lambda r: (r["problem_id"], r["sample_idx"])
    assert sorted(map(key, again)) == sorted(map(key, records))
    before = {key(r): r["completion_ids"] for r in records}
    assert all(before[key(r)] == r["completion_ids"] for r in again)

    # Other settings in the same directory are refused; bad flags end in one line, exit status 2.
    capsys.readouterr()
    assert main(argv[:-2] + ["--mcmc-steps", "3", "--output-dir", str(out)]) == 2
    assert main(argv[:-2] + ["--output-dir", str(tmp_path / "x"), "--block-size", "0"]) == 2
    assert main(argv[:-2] + ["--output-dir", str(tmp_path / "y"), "--temperature", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--block-size must be" in err[1] and "--proposal-temperature" in err[2]
    assert not (tmp_path / "x").exists()
