"""Plain sampling and the power samplers on transformers (hf) and vLLM, side by side: same prompts, same seeds.

    make install-vllm && .venv-vllm/bin/python -m benchmarks.bench_engines      # SmolLM2, 16 prompts x 64 tokens
    .venv-vllm/bin/python -m benchmarks.bench_engines --prompts 32 --max-new-tokens 128 --rounds 3
    OMP_NUM_THREADS=1 .venv-vllm/bin/python -m benchmarks.bench_engines --prompts 8 --power-prompts 8 \
        --power-tokens 32          # plus power_mh, power_smc, power_sps on both engines (about 10 minutes on 2 cores)

Needs .venv-vllm (the hf engine runs there too, on its transformers). Each engine samples the same
`prompts` basic_arithmetic prompts (chat template), one completion each at `temperature`, row i seeded
derive_seed(0, i), in one batch (the same seed draws other tokens on each engine: each has its own random
stream, so the token counts differ a little); rounds alternate the engines' order so that other load on the machine
falls on both. It prints per engine the load time, each round's sampled tokens/s (sampled tokens over
the call's wall time, after an untimed warm-up; vLLM's prefix cache is emptied before each round, so
prompts shared within a round are all it reuses) and the best, and, as a check that the
engines sample the same model, the largest |log p| difference between vLLM's reported log p of its
sampled tokens and transformers' float32 rescoring of them.

Power samplers (`--power-prompts` > 0): power_mh, power_smc and power_sps with small settings
(`POWER_SETTINGS`: alpha 4, `power_tokens` new tokens) on the first `power_prompts` prompts, one call
per sampler and engine (engines alternating; vLLM's prefix cache emptied first), after a plain-sampling
call of the same prompts and budget on the same engine as the baseline. Per sampler and engine it
prints the completion tokens and the forward tokens per completion (what the engine computed; on vLLM
the prompt tokens read from its prefix cache are counted apart), forward tokens/s, seconds per
completion (the call's wall time over its completions) and that latency as a multiple of plain sampling
on the same engine: the cost of the sampler, free of how fast each engine decodes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from sharpen.cli.args import ArgumentParser
from sharpen.sampling import (PowerSamplingConfig, SMCConfig, SPSConfig, derive_seed, load_model, power_sample, sample,
                              smc_sample, sps_sample)
from sharpen.tasks import get_task

# Small settings so that a run fits ~10 minutes on 2 CPU cores: what a sampler costs per completion relative to
# plain sampling, not its accuracy. MH: blocks of 16, 2 steps each; SMC: 8 particles, ESS checked every 16 tokens;
# SPS: 4 candidates x 2 rollouts looking 8 tokens ahead.
POWER_SETTINGS = {
    "power_mh": (power_sample, lambda n: PowerSamplingConfig(alpha=4.0, block_size=16, mcmc_steps=2, max_new_tokens=n)),
    "power_smc": (smc_sample, lambda n: SMCConfig(alpha=4.0, num_particles=8, resample_every=16, max_new_tokens=n)),
    "power_sps": (sps_sample, lambda n: SPSConfig(alpha=4.0, num_candidates=4, num_rollouts=2, block_size=8,
                                                  max_new_tokens=n)),
}


@dataclass
class BenchConfig:
    model: str = field(default="smollm2-135m", metadata={"help": "Model spec (both engines load it)."})
    prompts: int = field(default=16, metadata={"help": "Prompts sampled together (one completion each)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Token budget of each completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    rounds: int = field(default=2, metadata={"help": "Timed passes per engine, alternating the engines."})
    power_prompts: int = field(default=0, metadata={
        "help": "Prompts the power samplers run on, the first of `prompts` (0: plain sampling only)."})
    power_tokens: int = field(default=32, metadata={"help": "Token budget of each power sampler's completion."})


def timed_sample(model, prompt_ids, cfg: BenchConfig):
    """(results, seconds) of one batch of plain sampling."""
    seeds = [derive_seed(0, i) for i in range(len(prompt_ids))]
    started = time.perf_counter()
    results = sample(model, prompt_ids, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                     seeds=seeds, batch_size=len(prompt_ids))
    return results, time.perf_counter() - started


@torch.no_grad()
def largest_logprob_gap(hf_model, prompt_ids, results) -> float:
    """max |log p reported - log p from a transformers float32 forward pass| over every sampled token."""
    gap = 0.0
    for prompt, r in zip(prompt_ids, results):
        logits = hf_model(input_ids=torch.tensor([prompt + r.token_ids])).logits[0].float()
        log_p = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(-1, torch.tensor(r.token_ids)[:, None])
        gap = max(gap, float((log_p.squeeze(-1) - torch.tensor(r.logprobs)).abs().max()))
    return gap


def main(argv: list[str] | None = None) -> int:
    (cfg,) = ArgumentParser(BenchConfig, prog="python -m benchmarks.bench_engines").parse_args_into_dataclasses(argv)
    models, load_seconds = {}, {}
    for engine in ("hf", "vllm"):
        started = time.perf_counter()
        kwargs = {"device": "cpu", "dtype": torch.float32} if engine == "hf" else {}
        models[engine], tokenizer = load_model(cfg.model, engine=engine, **kwargs)
        load_seconds[engine] = time.perf_counter() - started
    task = get_task("basic_arithmetic")
    problems = task.load(limit=cfg.prompts, seed=0, split="test")
    prompt_ids = [tokenizer(task.prompt(p, tokenizer, chat=True), add_special_tokens=False)["input_ids"]
                  for p in problems]
    print(f"{cfg.model}: {len(prompt_ids)} prompts x {cfg.max_new_tokens} tokens at T {cfg.temperature}, "
          f"{cfg.rounds} rounds, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    for engine in models:  # warm-up, untimed: vLLM's first call sets up its kernels
        sample(models[engine], prompt_ids[:2], max_new_tokens=4, seeds=[1, 2])
    rates: dict[str, list[float]] = {"hf": [], "vllm": []}
    last, loads = {}, []
    for round_ in range(cfg.rounds):
        for engine in ("hf", "vllm") if round_ % 2 == 0 else ("vllm", "hf"):
            if engine == "vllm":
                models[engine].llm.reset_prefix_cache()  # every round starts cold: no prompt cached by the last
            last[engine], seconds = timed_sample(models[engine], prompt_ids, cfg)
            rates[engine].append(sum(r.stats["sampled_tokens"] for r in last[engine]) / seconds)
            loads.append(os.getloadavg()[0])
    print(f"\n{'engine':7s} {'load s':>7s} " + " ".join(f"round {i + 1:<3d}" for i in range(cfg.rounds)) + "   best")
    for engine in rates:
        print(f"{engine:7s} {load_seconds[engine]:7.1f} " + " ".join(f"{x:9.1f}" for x in rates[engine])
              + f" {max(rates[engine]):6.1f}")
    print(f"sampled tokens/s; 1-minute load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    cached = sum(r.stats.get("cached_prompt_tokens", 0) for r in last["vllm"])
    print(f"vllm, last round: {cached} prompt tokens read from the prefix cache, of "
          f"{sum(len(p) for p in prompt_ids)}")
    print(f"largest |log p vllm - log p hf| over vllm's sampled tokens: "
          f"{largest_logprob_gap(models['hf'], prompt_ids, last['vllm']):.2e}")
    if cfg.power_prompts:
        bench_power_samplers(models, prompt_ids[:cfg.power_prompts], cfg.power_tokens)
    return 0


def timed_power(model, prompt_ids, name: str, budget: int):
    """(results, seconds) of one call of a power sampler (or "plain": T 1), row i seeded derive_seed(0, i)."""
    seeds = [derive_seed(0, i) for i in range(len(prompt_ids))]
    if not isinstance(model, torch.nn.Module):
        model.llm.reset_prefix_cache()  # cold: only what this call shares within itself is cached
    started = time.perf_counter()
    if name == "plain":
        results = sample(model, prompt_ids, max_new_tokens=budget, seeds=seeds, batch_size=len(prompt_ids))
    else:
        run, settings = POWER_SETTINGS[name]
        results = run(model, prompt_ids, settings(budget), seeds=seeds)
    return results, time.perf_counter() - started


def bench_power_samplers(models: dict, prompt_ids: list[list[int]], budget: int) -> None:
    """Each power sampler on both engines (alternating their order), against plain sampling on the same engine."""
    rows, plain_latency = [], {}
    for i, name in enumerate(["plain", *POWER_SETTINGS]):
        for engine in ("hf", "vllm") if i % 2 == 0 else ("vllm", "hf"):
            results, seconds = timed_power(models[engine], prompt_ids, name, budget)
            latency = seconds / len(results)
            plain_latency.setdefault(engine, latency)
            forward = sum(r.stats["forward_tokens"] for r in results)
            rows.append((name, engine, sum(len(r.token_ids) for r in results) / len(results), forward / len(results),
                         sum(r.stats.get("cached_prompt_tokens", 0) for r in results) / len(results),
                         forward / seconds, latency, latency / plain_latency[engine], os.getloadavg()[0]))
    print(f"\npower samplers: {len(prompt_ids)} prompts x {budget} tokens, alpha 4 (POWER_SETTINGS)")
    print(f"{'sampler':10s} {'engine':6s} {'tokens':>7s} {'forward':>8s} {'cached':>7s} {'fwd tok/s':>9s} "
          f"{'s/compl':>8s} {'x plain':>8s} {'load':>5s}")
    order = ["plain", *POWER_SETTINGS]
    for name, engine, tokens, forward, cached, rate, latency, multiple, load in sorted(
            rows, key=lambda r: (order.index(r[0]), r[1])):
        print(f"{name:10s} {engine:6s} {tokens:7.1f} {forward:8.1f} {cached:7.1f} {rate:9.1f} {latency:8.2f} "
              f"{multiple:8.2f} {load:5.1f}")
    print("per completion: completion tokens, forward tokens (computed), prompt tokens read from vLLM's prefix cache; "
          "forward tokens/s; seconds (the call's wall time / completions) and as a multiple of plain sampling on the "
          "same engine; 1-minute load average after the call")


if __name__ == "__main__":
    raise SystemExit(main())
