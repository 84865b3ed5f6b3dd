"""The GPU check: sharpen's samplers, throughput, GRPO and a study on one CUDA device, in one timed run.

    bash benchmarks/gpu_check.sh                          # on the device machine: installs carried wheels, then this
    python -m benchmarks.gpu_check --out DIR              # the check itself (about 8 minutes on one H200)
    python -m benchmarks.gpu_check --tiny --out DIR       # the dry run at tiny sizes (implied without CUDA)

It writes DIR/gpu_check.json (every figure, per section, rewritten after each section so that a
run cut short keeps what it measured) and DIR/gpu_check.md (one table), stamped with the date, the
device and the versions (torch, CUDA, transformers, TRL, sharpen's git commit). Each section is
timed, runs under its own time limit and ends ok, failed (with a one-line reason) or skipped (with
why); one that fails does not stop the others.

- equality: every registered base-model sampler (base, low_temp, power_mh, power_smc, power_sps and
  plug-ins) on a tiny fp32 Llama, on the device against the CPU, same prompts and seeds. Generators
  live on the CPU (sampling.draw.make_generator), so the random streams are the same on both: token
  ids must be identical (token-exact) and log-probs equal within LOGPROB_TOL (different kernels round
  differently). The device run is repeated at a smaller batch_size (token-exact: results do not depend
  on batching). A bf16 copy on the device is compared too, for information only: bf16 moves the
  probabilities, so its tokens are not promised to match (its law is checked by `enumeration`).
  Without CUDA the "device" is the CPU: the check is then CPU against CPU (determinism).
- enumeration: a 4-token bf16 Llama (tests/test_power_exactness.py's setting: prompt [2, 0], 4 new
  tokens, 121 completions) whose exact laws are enumerated from its own bf16 logits in float64; the
  samplers compute their ratios in fp32 (draw.draw_tokens upcasts). Chi-square (rare cells pooled)
  and TV of: plain sampling at T 1 and 1/2 against the tempered laws, power_mh (alpha 2, T 1,
  20 MH steps, no stop) against p^2, power_smc (alpha 2, 256 particles) against p^2, power_sps
  (alpha 4, all 4 candidates, 32 rollouts, full look-ahead) against p^4; each must pass at p > 1e-3.
  A negative control (token-level T 1/2 against p^2) must fail at p < 1e-6 (full size only).
- throughput: a randomly initialised Llama-3.2-1B-shaped model (LlamaConfig, built on the device in
  bf16, ~1.24e9 parameters): plain sampling, sharpen's `sample` against transformers `generate`, at
  batch 64, tokens/s; the latency of one completion of power_mh, power_smc and power_sps as a
  multiple of plain sampling's; model forward tokens/s (8 sequences of 2048 tokens, logits at every
  position) and the fraction of the H200's bf16 peak (PEAK_TFLOPS, 2 x parameters FLOPs per token; the
  attention scores' FLOPs are left out, so the fraction is a lower bound) it reaches; peak GPU memory.
- grpo: a few GRPO steps (sharpen.rl.grpo_train, full fine-tuning, bf16 on CUDA) on SmolLM2-135M
  (--smollm2 DIR: a checkpoint directory; config and tokenizer alone give the same shapes with random
  weights; absent: the testbed model) on the testbed task; seconds per step; loss and rewards finite.
  Skipped when TRL cannot be imported.
- study: sharpen.run_study on the testbed preset at a few problems with every registered method
  (grpo left out, and said so, when TRL cannot be imported), wandb off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sharpen.cli.args import ArgumentParser
from sharpen.sampling import derive_seed, get_method, registered_methods

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("equality", "enumeration", "throughput", "grpo", "study")
# Seconds each section may run at full size (the dry run's are far shorter); together under 8 minutes.
LIMITS = {"equality": 45, "enumeration": 90, "throughput": 120, "grpo": 90, "study": 105}
PEAK_TFLOPS = 790.0  # bf16 matrix products measured on the device machine (KINDS.md: 769 to 798)
LOGPROB_TOL = 1e-4  # fp32 log-probs, CPU kernels against CUDA kernels
PASS, CONTROL_FAIL = 1e-3, 1e-6

# The enumerated model (tests/test_power_exactness.py): 4 tokens, EOS = 1, prompt [2, 0], 4 new tokens.
EOS, VOCAB, T = 1, 4, 4
PROMPT = [2, 0]


class Failed(Exception):
    """A section's own check failed: the message is the one-line reason."""


class Skipped(Exception):
    """A section cannot run here: the message says why."""


@dataclass
class CheckConfig:
    out: str = field(default="gpu_check_out", metadata={"help": "Directory for gpu_check.json and gpu_check.md."})
    tiny: bool = field(default=False, metadata={"help": "Tiny sizes (the dry run); implied when CUDA is absent."})
    smollm2: str | None = field(default=None, metadata={
        "help": "SmolLM2-135M checkpoint directory for the grpo section (config.json and tokenizer; weights "
                "optional: without them the same shapes are randomly initialised). None: the testbed model."})
    sections: list[str] = field(default_factory=lambda: list(SECTIONS), metadata={
        "help": f"Sections to run, in this order: {', '.join(SECTIONS)}."})
    seed: int = field(default=0, metadata={"help": "Seed of every model init and sampler run."})

    def __post_init__(self):
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown section {', '.join(unknown)}: sections are {', '.join(SECTIONS)}")


# ---- models ------------------------------------------------------------------------------------

def tiny_llama(vocab_size: int, seed: int, logit_scale: float = 1.0, hidden_size: int = 32,
               max_position_embeddings: int = 128):
    """A 2-layer random Llama (fp32, CPU), EOS = 1: tests/conftest.py's tiny_llama."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=max_position_embeddings, eos_token_id=EOS, bos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    model.generation_config = GenerationConfig(eos_token_id=EOS, pad_token_id=0, bos_token_id=2)
    return model.eval()


def llama_1b_config(tiny: bool):
    """Llama-3.2-1B's shape (16 layers, 2048 wide, GQA 32/8 heads, 128256 tokens, tied embeddings), or a tiny one."""
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       bos_token_id=128000, eos_token_id=128001, pad_token_id=128001)


def random_model(config, device: torch.device, dtype: torch.dtype, seed: int):
    """A randomly initialised causal LM of `config`, built directly on `device` in `dtype`, eval mode."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(seed)
    with device:  # parameters are created (and initialised) on the device: no 5 GB copy from the CPU
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                                               bos_token_id=config.bos_token_id)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ---- equality: the device against the CPU, same seeds -------------------------------------------

EQUALITY_PROMPTS = [[2, 5, 6], [2], [2, 7, 8, 9, 10, 11, 3], [3, 4]] * 2
EQUALITY_SIZES = {"alpha": 2.0, "max_new_tokens": 12, "block_size": 5, "mcmc_steps": 3, "num_particles": 8,
                  "num_candidates": 4, "num_rollouts": 2}


def base_methods() -> dict[str, object]:
    """name -> settings of every registered sampler of the base model, at the equality check's sizes."""
    out = {}
    for name in registered_methods():
        method = get_method(name)
        if method.model == "base":
            out[name] = method.settings_from(EQUALITY_SIZES)
    return out


def small_batch(settings):
    """The same settings at a small batch_size: SMC needs its particles' rows, the others take 3 (SPS 1)."""
    if not hasattr(settings, "batch_size"):
        return settings
    size = getattr(settings, "num_particles", None) or (1 if hasattr(settings, "num_rollouts") else 3)
    return dataclasses.replace(settings, batch_size=size)


def compare(reference, other) -> dict:
    """Token-exact share of completions and the largest log-prob gap over the identical ones."""
    same = [a.token_ids == b.token_ids for a, b in zip(reference, other)]
    gaps = [max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs)), default=0.0)
            for a, b, s in zip(reference, other, same) if s]
    return {"identical": sum(same), "completions": len(same), "max_logprob_gap": max(gaps, default=None)}


def section_equality(cfg: CheckConfig, device: torch.device, tiny: bool) -> dict:
    cpu_model = tiny_llama(vocab_size=12, seed=cfg.seed, logit_scale=3.0)
    dev_model = tiny_llama(vocab_size=12, seed=cfg.seed, logit_scale=3.0).to(device)
    bf16_model = tiny_llama(vocab_size=12, seed=cfg.seed, logit_scale=3.0).to(device=device, dtype=torch.bfloat16)
    seeds = [derive_seed(cfg.seed, "equality", i) for i in range(len(EQUALITY_PROMPTS))]
    rows, checks = {}, {}
    with torch.no_grad():
        for name, settings in base_methods().items():
            run = get_method(name).run
            reference = run(cpu_model, EQUALITY_PROMPTS, settings, seeds=seeds)
            on_device = compare(reference, run(dev_model, EQUALITY_PROMPTS, settings, seeds=seeds))
            rebatched = compare(reference, run(dev_model, EQUALITY_PROMPTS, small_batch(settings), seeds=seeds))
            bf16 = compare(reference, run(bf16_model, EQUALITY_PROMPTS, settings, seeds=seeds))
            rows[name] = {"fp32": on_device, "fp32_small_batch": rebatched, "bf16_info": bf16}
            for what, r in (("fp32", on_device), ("small_batch", rebatched)):
                checks[f"{name} {what} token-exact"] = r["identical"] == r["completions"]
                checks[f"{name} {what} logprobs within {LOGPROB_TOL:g}"] = (r["max_logprob_gap"] is not None
                                                                            and r["max_logprob_gap"] <= LOGPROB_TOL)
    against = "CUDA" if device.type == "cuda" else "CPU (no CUDA: CPU against CPU)"
    summary = "; ".join(f"{n} {r['fp32']['identical']}/{r['fp32']['completions']} exact "
                        f"(bf16 {r['bf16_info']['identical']})" for n, r in rows.items())
    return {"compared": f"CPU fp32 against {against}", "promise": "token ids identical, log-probs within "
            f"{LOGPROB_TOL:g} (fp32); bf16 reported only", "methods": rows, "checks": checks,
            "summary": summary}


# ---- enumeration: samplers on a bf16 model against its exact laws ------------------------------

def completions(length: int = T) -> list[tuple[int, ...]]:
    """Every completion of at most `length` tokens: ends with EOS, or has exactly `length` tokens."""
    out = []

    def grow(prefix):
        for t in range(VOCAB):
            x = prefix + (t,)
            if t == EOS or len(x) == length:
                out.append(x)
            else:
                grow(x)

    grow(())
    return out


def log_conditionals(model, device) -> dict:
    """EOS-free prefix (< T tokens) -> (V,) float64 log p of the next token, from the model's own logits."""
    table, prefixes = {}, [()]
    for _ in range(T):
        ids = torch.tensor([PROMPT + list(x) for x in prefixes], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, -1].double().cpu()
        for x, row in zip(prefixes, logits):
            table[x] = row
        prefixes = [x + (t,) for x in prefixes for t in range(VOCAB) if t != EOS]
    return table


def law(logits: dict, power: float = 1.0, temperature: float | None = None):
    """(states, probabilities): p^power over whole completions, or token-level temperature (one factor per token)."""
    import numpy as np

    states = completions()
    scores = []
    for x in states:
        total = 0.0
        for j in range(len(x)):
            row = logits[x[:j]] / (temperature or 1.0)
            total += float(torch.log_softmax(row, -1)[x[j]])
        scores.append(total * (power if temperature is None else 1.0))
    w = np.exp(np.array(scores) - max(scores))
    return states, w / w.sum()


def chi_square(samples, states, expected) -> tuple[float, float]:
    """(p-value, TV) of samples against expected; cells with < 5 expected samples pooled into one."""
    import numpy as np
    from scipy.stats import chisquare

    index = {x: k for k, x in enumerate(states)}
    counts = np.bincount([index[tuple(x)] for x in samples], minlength=len(states)).astype(float)
    n = counts.sum()
    big = expected * n >= 5
    observed = np.append(counts[big], counts[~big].sum())
    wanted = np.append(expected[big], expected[~big].sum()) * n
    if wanted[-1] == 0:
        observed, wanted = observed[:-1], wanted[:-1]
    return float(chisquare(observed, wanted).pvalue), 0.5 * float(np.abs(counts / n - expected).sum())


def section_enumeration(cfg: CheckConfig, device: torch.device, tiny: bool) -> dict:
    n = 300 if tiny else 3000
    smc_runs, particles, rollouts = (200, 32, 8) if tiny else (2000, 256, 32)
    mh_model = tiny_llama(VOCAB, seed=13, logit_scale=12.0, hidden_size=16, max_position_embeddings=32)
    sps_model = tiny_llama(VOCAB, seed=123, logit_scale=16.0, hidden_size=16, max_position_embeddings=32)
    mh_model, sps_model = (m.to(device=device, dtype=torch.bfloat16) for m in (mh_model, sps_model))
    mh_logits, sps_logits = log_conditionals(mh_model, device), log_conditionals(sps_model, device)
    seeds = [derive_seed(cfg.seed, "enumeration", j) for j in range(n)]
    cases = {  # name: (method, settings, model, prompts, (states, law)); law is exact for the model's bf16 logits
        "base T 1": ("base", dict(max_new_tokens=T, batch_size=n), mh_model, n, law(mh_logits, temperature=1.0)),
        "low_temp T 1/2": ("low_temp", dict(alpha=2.0, max_new_tokens=T, batch_size=n), mh_model, n,
                           law(mh_logits, temperature=0.5)),
        "power_mh alpha 2": ("power_mh", dict(alpha=2.0, proposal_temperature=1.0, block_size=T, mcmc_steps=20,
                                              max_new_tokens=T, stop_on_eos=False, batch_size=n),
                             mh_model, n, law(mh_logits, 2.0)),
        "power_smc alpha 2": ("power_smc", dict(alpha=2.0, num_particles=particles, max_new_tokens=T,
                                                batch_size=smc_runs * particles), mh_model, smc_runs,
                              law(mh_logits, 2.0)),
        "power_sps alpha 4": ("power_sps", dict(alpha=4.0, num_candidates=VOCAB, num_rollouts=rollouts, block_size=T,
                                                horizon="block", max_new_tokens=T, batch_size=min(n, 1000)),
                              sps_model, n, law(sps_logits, 4.0)),
    }
    rows, checks = {}, {}
    for name, (method_name, values, model, count, (states, expected)) in cases.items():
        method = get_method(method_name)
        started = time.perf_counter()
        with torch.no_grad():
            results = method.run(model, [PROMPT] * count, method.make_settings(**values), seeds=seeds[:count])
        p, tv = chi_square([r.token_ids for r in results], states, expected)
        rows[name] = {"samples": count, "p_value": p, "tv": tv, "seconds": time.perf_counter() - started}
        checks[f"{name} p > {PASS:g}"] = p > PASS
    if not tiny:  # the control: token-level temperature 1/2 is not p^2, and the test must see it
        low_temp = get_method("low_temp")
        with torch.no_grad():
            results = low_temp.run(mh_model, [PROMPT] * n, low_temp.make_settings(alpha=2.0, max_new_tokens=T,
                                                                                  batch_size=n), seeds=seeds)
        p, tv = chi_square([r.token_ids for r in results], *law(mh_logits, 2.0))
        rows["control: low_temp T 1/2 vs p^2"] = {"samples": n, "p_value": p, "tv": tv}
        checks[f"control rejected at p < {CONTROL_FAIL:g}"] = p < CONTROL_FAIL
    summary = "; ".join(f"{k} p={r['p_value']:.2g} TV={r['tv']:.3f}" for k, r in rows.items())
    return {"model_dtype": "bfloat16", "ratios": "fp32 (draw.draw_tokens upcasts the logits)",
            "law": "enumerated from the bf16 model's logits in float64", "cases": rows, "checks": checks,
            "summary": summary}


# ---- throughput: a Llama-3.2-1B-shaped model in bf16 --------------------------------------------

def timed(device, fn, repeat: int = 1) -> tuple[float, object]:
    """(seconds per call, last result), the device synchronised around the timed calls."""
    sync(device)
    started = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    sync(device)
    return (time.perf_counter() - started) / repeat, out


def section_throughput(cfg: CheckConfig, device: torch.device, tiny: bool) -> dict:
    from sharpen.sampling import sample

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = llama_1b_config(tiny)
    reset_peak(device)
    model = random_model(config, device, dtype, cfg.seed)
    params = sum(p.numel() for p in model.parameters())
    batch, prompt_len, new = (4, 16, 16) if tiny else (64, 64, 256)
    gen = torch.Generator().manual_seed(cfg.seed)
    # Token ids above the special ones: no prompt holds EOS or padding.
    prompts = torch.randint(3, config.vocab_size, (batch, prompt_len), generator=gen)
    prompt_lists = prompts.tolist()
    seeds = [derive_seed(cfg.seed, "throughput", i) for i in range(batch)]
    out: dict = {"model": f"random Llama, {params / 1e9:.3f}e9 parameters, {dtype}".replace("torch.", ""),
                 "parameters": params, "batch": batch, "prompt_tokens": prompt_len, "new_tokens": new}

    def sharpen_plain():
        return sample(model, prompt_lists, temperature=1.0, max_new_tokens=new, seeds=seeds, batch_size=batch)

    def hf_generate():
        ids = prompts.to(device)
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                              top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                              pad_token_id=config.pad_token_id)

    with torch.no_grad():
        sample(model, prompt_lists[:2], max_new_tokens=4, seeds=seeds[:2])  # warm-up: kernels, allocator
        model.generate(input_ids=prompts[:2].to(device), attention_mask=torch.ones_like(prompts[:2]).to(device),
                       do_sample=True, max_new_tokens=4, pad_token_id=config.pad_token_id)
        reset_peak(device)
        seconds, results = timed(device, sharpen_plain)
        tokens = sum(len(r.token_ids) for r in results)
        out["sharpen_sample"] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                                 "peak_gib": peak_gib(device)}
        reset_peak(device)
        seconds, ids = timed(device, hf_generate)
        tokens = int(ids.shape[0] * (ids.shape[1] - prompt_len))
        out["hf_generate"] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                              "peak_gib": peak_gib(device)}
        out["sample_over_generate"] = out["sharpen_sample"]["tokens_per_s"] / out["hf_generate"]["tokens_per_s"]

        # Latency of one completion: one prompt, the sampler's chains / particles / rollouts batched.
        lat_new = 8 if tiny else 64
        sizes = {"alpha": 4.0, "max_new_tokens": lat_new, "block_size": 4 if tiny else 16, "mcmc_steps": 2,
                 "num_particles": 4 if tiny else 16, "num_candidates": 4, "num_rollouts": 2 if tiny else 4}
        latency = {}
        for name in registered_methods():
            method = get_method(name)
            if method.model != "base":
                continue
            settings = method.settings_from(sizes)
            reset_peak(device)
            seconds, results = timed(device, lambda: method.run(model, prompt_lists[:1], settings, seeds=seeds[:1]))
            latency[name] = {"seconds": seconds, "tokens": len(results[0].token_ids),
                             "forward_tokens": results[0].stats.get("forward_tokens"), "peak_gib": peak_gib(device)}
        plain = next(r for n, r in latency.items() if get_method(n).samples_base_distribution)
        for r in latency.values():
            r["x_plain"] = r["seconds"] / plain["seconds"]
        out["latency"] = {"new_tokens": lat_new, "settings": sizes, "methods": latency}

        # Forward tokens/s of whole sequences (no cache, logits for every position): 2 x parameters FLOPs per token.
        fwd_batch, fwd_len = (2, 64) if tiny else (8, 2048)
        ids = torch.randint(3, config.vocab_size, (fwd_batch, fwd_len), generator=gen).to(device)
        model(input_ids=ids)  # warm-up
        reset_peak(device)
        seconds, _ = timed(device, lambda: model(input_ids=ids), repeat=2 if tiny else 5)
        tokens_per_s = fwd_batch * fwd_len / seconds
        tflops = 2 * params * tokens_per_s / 1e12
        out["forward"] = {"flops_per_token": "2 x parameters (attention scores left out)", "batch": fwd_batch, "tokens": fwd_len, "seconds": seconds, "tokens_per_s": tokens_per_s,
                          "tflops": tflops, "fraction_of_peak": tflops / PEAK_TFLOPS if device.type == "cuda" else None,
                          "peak_tflops": PEAK_TFLOPS, "peak_gib": peak_gib(device)}
    out["peak_gib"] = max((x for x in [out["sharpen_sample"]["peak_gib"], out["hf_generate"]["peak_gib"],
                                       out["forward"]["peak_gib"], *(r["peak_gib"] for r in latency.values())]
                           if x is not None), default=None)
    ratios = ", ".join(f"{n} {r['x_plain']:.1f}x" for n, r in latency.items() if n != "base")
    frac = out["forward"]["fraction_of_peak"]
    out["summary"] = (f"sample {out['sharpen_sample']['tokens_per_s']:.0f} tok/s vs generate "
                      f"{out['hf_generate']['tokens_per_s']:.0f} tok/s at batch {batch}; latency {ratios}; forward "
                      f"{tokens_per_s:.0f} tok/s" + (f" = {frac:.0%} of {PEAK_TFLOPS:.0f} TFLOP/s" if frac else "")
                      + (f"; peak {out['peak_gib']:.1f} GiB" if out["peak_gib"] is not None else ""))
    del model
    return out


# ---- grpo: a few steps in bf16 ------------------------------------------------------------------

def trl_importable() -> str | None:
    """None when trl imports, else the one-line reason."""
    try:
        import trl  # noqa: F401
    except Exception as err:  # ImportError, or a version clash inside trl
        return f"trl cannot be imported ({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})"
    return None


def grpo_model(cfg: CheckConfig, tiny: bool, workdir: Path, device: torch.device) -> tuple[str, str]:
    """(checkpoint directory, what it is) for the grpo section."""
    from sharpen.testbed import build_testbed

    spec = Path(cfg.smollm2).expanduser() if cfg.smollm2 else None
    if tiny or spec is None or not (spec / "config.json").exists():
        why = ("tiny mode" if tiny else "no SmolLM2 checkpoint given" if spec is None
               else f"{spec} has no config.json")
        return str(build_testbed(progress=False)), f"the testbed model ({why})"
    if any(spec.glob("*.safetensors")):
        return str(spec), f"SmolLM2-135M from {spec} (carried weights)"
    from transformers import AutoConfig, AutoTokenizer

    model = random_model(AutoConfig.from_pretrained(spec), torch.device("cpu"), torch.bfloat16, cfg.seed)
    target = workdir / "smollm2-random"
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(spec).save_pretrained(target)
    return str(target), f"SmolLM2-135M's shape with random weights ({spec} holds no weights: they were not carried)"


def section_grpo(cfg: CheckConfig, device: torch.device, tiny: bool) -> dict:
    reason = trl_importable()
    if reason:
        raise Skipped(reason)
    from trl import ModelConfig

    from sharpen.rl import grade_reward, grpo_train
    from sharpen.rl.stage import build_train_set, load_tokenizer
    from sharpen.tasks import get_task

    from .bench_grpo import StepTimer

    cuda = device.type == "cuda"
    reset_peak(device)
    steps = 2 if tiny else 5
    batch, generations, length = (8, 4, 16) if tiny else (32, 8, 64)
    with tempfile.TemporaryDirectory(prefix="gpu_check_grpo.") as tmp:
        path, what = grpo_model(cfg, tiny, Path(tmp), device)
        tokenizer = load_tokenizer(path, path)
        task = get_task("testbed")
        dataset, problems = build_train_set(task, tokenizer, limit=steps * batch // generations * 2, seed=cfg.seed,
                                            chat=False)
        args = {"max_steps": steps, "per_device_train_batch_size": batch, "num_generations": generations,
                "max_completion_length": length, "learning_rate": 1e-5, "logging_steps": 1, "save_strategy": "no",
                "report_to": [], "log_completions": False, "seed": cfg.seed, "bf16": cuda, "use_cpu": not cuda,
                "output_dir": str(Path(tmp) / "run")}
        model_args = ModelConfig(dtype="bfloat16" if cuda else "float32")  # full fine-tuning, weights in bf16
        timer = StepTimer()
        with timer.timing_generation(), contextlib.redirect_stdout(io.StringIO()):
            cost = grpo_train(path, tokenizer, dataset, grade_reward(task.grade, problems, name="correct"), args,
                              model_args=model_args, callbacks=[timer.callback()])
        history = json.loads((Path(tmp) / "run" / "metrics.json").read_text())["log_history"]
    logged = [row for row in history if "loss" in row and "reward" in row]
    losses, rewards = [row["loss"] for row in logged], [row["reward"] for row in logged]
    timed_steps = timer.steps[1:] or timer.steps  # the first step pays for compilation and warm-up
    out = {"model": what, "dtype": "bfloat16" if cuda else "float32", "steps": steps,
           "completions_per_step": batch, "num_generations": generations, "max_completion_length": length,
           "step_seconds": timer.steps, "generation_seconds": timer.generation,
           "seconds_per_step": sum(timed_steps) / len(timed_steps), "losses": losses, "rewards": rewards,
           "rollout_tokens": cost.get("rollout_tokens"), "peak_gib": peak_gib(device)}
    out["checks"] = {"a loss and a reward logged every step": len(logged) == steps,
                     "losses finite": all(math.isfinite(x) for x in losses),
                     "rewards finite": all(math.isfinite(x) for x in rewards)}
    out["summary"] = (f"{what}: {out['seconds_per_step']:.2f} s/step ({batch} completions of <= {length} tokens), "
                      f"loss {losses[-1] if losses else float('nan'):.3g}, reward {sum(rewards) / max(len(rewards), 1):.2f}")
    return out


# ---- study: the testbed preset end to end -------------------------------------------------------

def section_study(cfg: CheckConfig, device: torch.device, tiny: bool) -> dict:
    from sharpen.study import load_study_config, run_study

    trl_missing = trl_importable()
    names = [n for n in registered_methods() if not (trl_missing and get_method(n).model == "rl")]
    left_out = [n for n in registered_methods() if n not in names]
    problems, samples = (2, 1) if tiny else (8, 4)
    overrides = [f"num_problems={problems}", f"num_samples={samples}", f"methods=[{', '.join(names)}]",
                 "power_mh.block_size=4", "power_mh.mcmc_steps=2", f"power_smc.num_particles={4 if tiny else 16}",
                 "power_sps.num_candidates=2", "power_sps.num_rollouts=2", f"grpo.max_steps={1 if tiny else 4}",
                 "grpo.save_steps=2", "grpo.logging_steps=1", "grpo.per_device_train_batch_size=8",
                 "grpo.num_generations=4", "grpo.log_completions=false", "analysis.bootstrap=100", "wandb.mode=off"]
    reset_peak(device)
    with tempfile.TemporaryDirectory(prefix="gpu_check_study.") as tmp:
        config = load_study_config("testbed", overrides + [f"output_dir={tmp}/study"])
        with contextlib.redirect_stdout(io.StringIO()):
            metrics = run_study(config, progress=False)
        report = (Path(tmp) / "study" / "report.md").exists()
    methods = {name: {"accuracy": m["accuracy"]["value"], "problems": m["problems"]}
               for name, m in metrics["methods"].items()}
    out = {"overrides": overrides, "methods": methods, "left_out": left_out, "report_written": report,
           "peak_gib": peak_gib(device),
           "checks": {"every method has records and metrics": set(methods) == set(names), "report.md written": report}}
    out["summary"] = (", ".join(f"{n} {m['accuracy']:.2f}" for n, m in methods.items())
                      + (f" ({', '.join(left_out)} left out: trl cannot be imported)" if left_out else ""))
    return out


# ---- the run ------------------------------------------------------------------------------------

RUNNERS = {"equality": section_equality, "enumeration": section_enumeration, "throughput": section_throughput,
           "grpo": section_grpo, "study": section_study}


@contextlib.contextmanager
def time_limit(seconds: int):
    """TimeoutError in the main thread after `seconds` (SIGALRM; a running CUDA kernel finishes first)."""
    def expire(signum, frame):
        raise TimeoutError(f"ran past its {seconds} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_section(name: str, cfg: CheckConfig, device: torch.device, tiny: bool) -> dict:
    """One section, timed: {status: ok | failed | skipped, seconds, reason, results}."""
    started = time.perf_counter()
    record = {"status": "ok", "reason": None, "results": None}
    try:
        with time_limit(LIMITS[name]):
            results = RUNNERS[name](cfg, device, tiny)
        record["results"] = results
        failed = [check for check, passed in results.get("checks", {}).items() if not passed]
        if failed:
            record["status"], record["reason"] = "failed", f"checks failed: {'; '.join(failed)}"
    except Skipped as err:
        record["status"], record["reason"] = "skipped", str(err)
    except Exception as err:  # the reason in one line; the traceback goes to stderr for whoever reads the log
        traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0][:300]
        record["status"], record["reason"] = "failed", f"{type(err).__name__}: {first}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record["seconds"] = time.perf_counter() - started
    return record


def git_commit() -> str:
    """sharpen's commit (+ '-dirty' with local changes): git, else $SHARPEN_COMMIT (the .sh sets it), else unknown."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("SHARPEN_COMMIT", "unknown")


def environment(device: torch.device) -> dict:
    import transformers

    trl_version = None
    if trl_importable() is None:
        import trl

        trl_version = trl.__version__
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, no CUDA)",
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "trl": trl_version, "sharpen_commit": git_commit()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gib"] = props.total_memory / 2**30
        env["capability"] = f"{props.major}.{props.minor}"
    return env


def format_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# GPU check{' (tiny dry run)' if report['tiny'] else ''}", "",
             f"{env['date']} on {env['device']}: torch {env['torch']} (CUDA {env['cuda']}), transformers "
             f"{env['transformers']}, trl {env['trl'] or 'absent'}, sharpen {env['sharpen_commit']}; "
             f"{report['wall_seconds']:.0f} s in all.", "",
             "| section | status | seconds | result |", "| --- | --- | ---: | --- |"]
    for name, record in report["sections"].items():
        text = record["reason"] if record["status"] != "ok" else (record["results"] or {}).get("summary", "")
        if record["status"] == "failed" and record["results"]:
            text = f"{text} ({record['results'].get('summary', '')})"
        lines.append(f"| {name} | {record['status']} | {record['seconds']:.1f} | {str(text).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(format_markdown(report))


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    parser = ArgumentParser(CheckConfig, prog="python -m benchmarks.gpu_check")
    try:
        (cfg,) = parser.parse_args_into_dataclasses(argv)
    except ValueError as err:  # an unknown section: one line, exit status 2
        parser.error(str(err))
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    tiny = cfg.tiny or not cuda
    started = time.perf_counter()
    report = {"tiny": tiny, "cuda": cuda, "environment": environment(device), "limits_s": LIMITS,
              "sections": {}, "wall_seconds": 0.0}
    out = Path(cfg.out)
    for name in cfg.sections:
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        report["sections"][name] = run_section(name, cfg, device, tiny)
        report["wall_seconds"] = time.perf_counter() - started
        write_report(out, report)  # after every section: a run cut short keeps what it measured
        record = report["sections"][name]
        print(f"gpu_check: {name} {record['status']} in {record['seconds']:.1f} s"
              + (f": {record['reason']}" if record["reason"] else ""), file=sys.stderr, flush=True)
    print(format_markdown(report), flush=True)
    return 0 if all(r["status"] != "failed" for r in report["sections"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
