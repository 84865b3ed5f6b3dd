"""Plain and low-temperature sampling, batched with a KV cache, one RNG stream per prompt.

    from sharpen.sampling import load_model, sample
    model, tok = load_model("smollm2-135m")
    results = sample(model, [tok("2+3=")["input_ids"]], temperature=0.25, max_new_tokens=32)
    results[0].token_ids, results[0].logprobs, results[0].stats

Unlike `model.generate`, rows that reach EOS leave the batch at once (their cache rows
are dropped), so a batch costs the sum of its completions' lengths, not B times the
longest; and top-k / top-p are applied only when asked, never inherited from the
model's generation_config.

On a VllmModel (`load_model(spec, engine="vllm")`) each batch is one call of the engine with one
request per row (its own seed); log p of each token and the token counts come from the engine
(`sample_vllm` and `decode_vllm`, which power_is shares; vllm_engine.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from transformers import DynamicCache

from .draw import draw_tokens, make_generator, row_seeds, validate_processing
from .models import cached_forward, context_length, eos_token_ids
from .timeshare import TimeShare
from .vllm_engine import Completion, VllmModel


# Completions decoded together unless a caller says otherwise: sample() here, base and low_temp's
# settings, and a study's `batch_size` (which every instance with that setting inherits). It changes
# memory and speed, not what a seed draws; outside a study power_mh (64) and power_sps (8) keep their own.
DEFAULT_BATCH_SIZE = 32


@dataclass
class SampleResult:
    """One completion: generated tokens only, per-token base log-probs, and its cost."""

    token_ids: list[int]
    logprobs: list[float]  # log p(token | prefix) under the base model at temperature 1
    finish_reason: str  # "eos" (ended with an EOS token) or "length" (hit the token budget)
    # sampled_tokens, forward_tokens, wall_seconds (this completion's share of the sampler's time;
    # shares add up to the sampler's elapsed time), power-MH: proposals, accepted, acceptance_rate
    stats: dict = field(default_factory=dict)
    # Extra record fields a sampler gives each completion (e.g. power_is's importance_log_weight, power_mh's
    # init): written into the completion's record as they are, beside the standard ones.
    fields: dict = field(default_factory=dict)


def check_prompts(model, prompts: list[list[int]]) -> int | None:
    """Refuse empty prompts and prompts that leave no room in the context; return the context.

    Messages count prompts from 1, as a person reads a list.
    """
    limit = context_length(model)
    for number, prompt in enumerate(prompts, 1):
        if len(prompt) == 0:
            raise ValueError(f"prompt {number} is empty: every prompt needs at least one token")
        if limit is not None and len(prompt) >= limit:
            raise ValueError(
                f"prompt {number} has {len(prompt)} tokens but the model's context is {limit}: "
                f"prompts must be shorter than the context"
            )
    return limit


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists; return input_ids, attention_mask and position_ids, each (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[b, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


@torch.no_grad()
def sample(model, prompts: list[list[int]], *, temperature: float = 1.0, max_new_tokens: int,
           top_k: int | None = None, top_p: float | None = None, seed: int = 0,
           seeds: list[int] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
           on_result: Callable[[int, SampleResult], None] | None = None) -> list[SampleResult]:
    """Sample one completion per prompt (a list of token ids) from the model at `temperature`.

    Row i draws from its own generator seeded with `seeds[i]` (default: derive_seed(seed, i)),
    so callers that pass seeds derived from (seed, problem, sample index) get results that do
    not depend on batching. `on_result(i, result)` is called as soon as row i finishes.
    """
    validate_processing(temperature, top_k, top_p)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    seeds = row_seeds(seed, seeds, len(prompts))
    limit = check_prompts(model, prompts)
    if isinstance(model, VllmModel):
        return sample_vllm(model, prompts, temperature=temperature, max_new_tokens=max_new_tokens, top_k=top_k,
                           top_p=top_p, seeds=seeds, batch_size=batch_size, on_result=on_result)

    def run_batch(index: list[int]):
        generators = [make_generator(seeds[i]) for i in index]

        def draw(logits, rows):
            new_tokens, _, log_p = draw_tokens(logits, [generators[r] for r in rows], temperature, top_k, top_p)
            return new_tokens, log_p
        return decode_rows(model, [prompts[i] for i in index], token_budgets(prompts, index, max_new_tokens, limit),
                           draw)
    return run_in_batches(len(prompts), batch_size, run_batch, on_result)


def check_budget(model, max_new_tokens: int) -> None:
    """ValueError when an engine's max_model_len leaves no room for `max_new_tokens` (transformers models: none)."""
    if isinstance(model, VllmModel) and max_new_tokens >= model.max_model_len:
        raise ValueError(f"max_new_tokens {max_new_tokens} does not fit engine vllm's max_model_len "
                         f"{model.max_model_len} for this model: ask for fewer than {model.max_model_len} new tokens")


def sample_vllm(model: VllmModel, prompts: list[list[int]], *, temperature: float, max_new_tokens: int,
                top_k: int | None, top_p: float | None, seeds: list[int], batch_size: int,
                on_result: Callable[[int, SampleResult], None] | None) -> list[SampleResult]:
    """sample() on the vLLM engine: `batch_size` requests per engine call, one per row with its own seed."""
    check_budget(model, max_new_tokens)
    limit = context_length(model)

    def run_batch(index: list[int]):
        done = decode_vllm(model, [prompts[i] for i in index], token_budgets(prompts, index, max_new_tokens, limit),
                           [seeds[i] for i in index], temperature=temperature, top_k=top_k, top_p=top_p)
        for row, (result, _) in enumerate(done):
            yield row, result
    return run_in_batches(len(prompts), batch_size, run_batch, on_result)


def decode_vllm(model: VllmModel, prompts: list[list[int]], budgets: list[int], seeds: list[int],
                **params) -> list[tuple[SampleResult, Completion]]:
    """One engine call, one request per row (VllmModel.generate's `params`): each row's SampleResult and the
    engine's Completion (which holds log q under score_temperatures when asked).

    stats: forward_tokens counts the tokens the engine computed (prompt tokens not found in its prefix
    cache, plus the completion but its last token), cached_prompt_tokens those it reused; each row's
    wall_seconds is the call's time split in proportion to its forward tokens.
    """
    eos = eos_token_ids(model)
    started = time.perf_counter()
    done = model.generate(prompts, seeds=seeds, max_new_tokens=budgets, eos=eos, **params)
    elapsed = time.perf_counter() - started
    computed = [len(p) - c.cached_prompt_tokens + len(c.token_ids) - 1 for p, c in zip(prompts, done)]
    results = []
    for c, forward in zip(done, computed):
        reason = "eos" if c.token_ids[-1] in eos else "length"
        stats = {"sampled_tokens": len(c.token_ids), "forward_tokens": forward,
                 "cached_prompt_tokens": c.cached_prompt_tokens,
                 "wall_seconds": elapsed * forward / max(sum(computed), 1)}
        results.append((SampleResult(c.token_ids, c.logprobs, reason, stats), c))
    return results


def run_in_batches(count: int, batch_size: int, run_batch: Callable[[list[int]], Iterator[tuple[int, SampleResult]]],
                   on_result: Callable[[int, SampleResult], None] | None) -> list[SampleResult]:
    """Results of entries 0..count-1, `batch_size` at a time: run_batch(index) yields (position in index,
    result) as each row finishes, and on_result(entry, result) hears of it at once."""
    results: list[SampleResult | None] = [None] * count
    for start in range(0, count, batch_size):
        index = list(range(start, min(start + batch_size, count)))
        for i, result in run_batch(index):
            results[index[i]] = result
            if on_result is not None:
                on_result(index[i], result)
    return results  # type: ignore[return-value]


def token_budgets(prompts: list[list[int]], index: list[int], max_new_tokens: int, limit: int | None) -> list[int]:
    """Each entry's token budget: max_new_tokens, cut where the prompt would outgrow the context."""
    return [max_new_tokens if limit is None else min(max_new_tokens, limit - len(prompts[i])) for i in index]


def decode_rows(model, prompts: list[list[int]], budgets: list[int],
                draw: Callable[[torch.Tensor, list[int]], tuple[torch.Tensor, torch.Tensor]]
                ) -> Iterator[tuple[int, SampleResult]]:
    """Decode one batch token by token; yield (row, SampleResult) as each row finishes (EOS or its budget).

    draw(logits, rows) returns the next token of each active row (logits: (b, V) at the last position, rows:
    the batch rows they belong to, in order) and its log p at temperature 1. A sampler with its own proposal
    (power_is) keeps its per-row state keyed by row. Finished rows leave the batch at once.
    """
    clock = TimeShare()
    device = next(model.parameters()).device
    eos = set(eos_token_ids(model))
    pad_id = next(iter(eos), 0)
    tokens: list[list[int]] = [[] for _ in prompts]
    logprobs: list[list[float]] = [[] for _ in prompts]

    walls = [{"wall_seconds": 0.0} for _ in prompts]
    ids, mask, positions = left_pad(prompts, pad_id, device)
    cache = DynamicCache(config=model.config)
    out = cached_forward(model, ids, mask, positions, cache, logits_to_keep=1)
    active = list(range(len(prompts)))  # batch slot -> row
    next_pos = positions[:, -1] + 1
    while active:
        new_tokens, log_p = draw(out.logits[:, -1, :], active)
        log_p = log_p.cpu()
        clock.charge([walls[r] for r in active])  # this step (and the forward before it) served these rows
        keep_slots = []
        for slot, row in enumerate(active):
            token = int(new_tokens[slot])
            tokens[row].append(token)
            logprobs[row].append(float(log_p[slot]))
            if token in eos or len(tokens[row]) >= budgets[row]:
                reason = "eos" if token in eos else "length"
                stats = {"sampled_tokens": len(tokens[row]),
                         "forward_tokens": len(prompts[row]) + len(tokens[row]) - 1,
                         "wall_seconds": walls[row]["wall_seconds"]}
                yield row, SampleResult(tokens[row], logprobs[row], reason, stats)
                clock.skip()  # the consumer's time between yields is not sampling time
            else:
                keep_slots.append(slot)
        if not keep_slots:
            break
        if len(keep_slots) < len(active):
            # Finished rows leave the batch: their cache rows would only cost compute.
            keep = torch.tensor(keep_slots, device=device)
            cache.batch_select_indices(keep)
            mask, next_pos, new_tokens = mask[keep], next_pos[keep], new_tokens[keep]
            active = [active[s] for s in keep_slots]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
        out = cached_forward(model, new_tokens[:, None], mask, next_pos[:, None], cache)
        next_pos = next_pos + 1
