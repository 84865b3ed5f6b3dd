"""Importance sampling of p(x)^alpha: independent completions from tempered proposals, each with its weight.

    sharpen sample --model smollm2-135m --task basic_arithmetic --method power_is --chat \\
        --alpha 4 --proposal-temperatures 0.25 0.5 --num-samples 16 --max-new-tokens 160 --output-dir runs/demo

    from sharpen.sampling import load_model
    from sharpen.sampling.importance import ImportanceSamplingConfig, importance_sample
    model, tok = load_model("smollm2-135m")
    cfg = ImportanceSamplingConfig(alpha=4.0, max_new_tokens=64)  # proposal temperatures 1/4 and 1/2
    results = importance_sample(model, [tok("2+3=")["input_ids"]] * 8, cfg, seed=0)  # sample indices 0..7
    results[0].fields  # {"importance_log_weight": ..., "proposal_temperature": 0.25}

Nothing here draws from p^alpha itself: each completion x (its generated tokens, EOS included, or cut at
`max_new_tokens`) is drawn by plain decoding from a tempered proposal of the base model, and its
record carries the log importance weight of the whole completion

    importance_log_weight = alpha * log p(x) - log q_mix(x),   q_mix(x) = sum_m c_m q_m(x),

where p is the base model at temperature 1 and q_m(x) = prod_t softmax(logits_t / T_m)[x_t] the
proposal at temperature T_m (no top-k / top-p: pure temperature proposals keep q exact). The
analysis self-normalises the weights per problem, w_s / sum w, to estimate expectations under
p^alpha (accuracy) and reports the effective sample size (sum w)^2 / sum w^2.

Allocation (the balance heuristic of Veach & Guibas 1995, with equal allocation): the completion
with sample index s is drawn at T_m with m = s mod M, and every weight uses the mixture of all M
proposals with c_m = 1/M, whichever component drew it. The M values log q_m(x) come from the same
forward passes that produced x (the raw logits of each step, scaled by each 1/T_m), so a weight
costs no extra forward. Default temperatures: 1/alpha (the target's per-token sharpness) and
1/sqrt(alpha) (the geometric midpoint between it and p), deduplicated: 1/4 and 1/2 at alpha 4.
Without `sample_indices` (benchmarks, notebooks), a completion's index is its position in `prompts`.

Exactness. When a problem's sample count is a multiple of M, the numerator and the denominator of
the self-normalised estimate sum_s w_s f(x_s) / sum_s w_s are unbiased (for n Z E_{p^alpha}[f] and
n Z, Z = sum_x p(x)^alpha), so the estimate is consistent with an O(1/n) bias per problem; with other
counts the shares drawn differ from the c_m weighed by (by at most one sample per component), which
adds O(1/n) and stays consistent. The ESS says how many exact draws of p^alpha the estimate is
worth: near n when the proposals cover p^alpha, near 1 when one completion carries all the weight
(then the estimate is that completion's verdict).

Cost: one decode per completion, as low_temp (records' `temperature` is the lowest proposal
temperature); each step adds M log-softmaxes over the vocabulary, nothing next to the forward.
`stats`: sampled_tokens, forward_tokens (prompt + completion - 1) and wall_seconds (this completion's
share of each batched step). Rows leave the batch as they finish; each row draws from its own
generator seeded with seeds[i], so a completion does not depend on the batch it shares.

On the vLLM engine (`load_model(spec, engine="vllm")`) each completion is one request at its own proposal's
temperature, and the engine reports log q_m of every sampled token under all M proposals from the normalisers
of the logits it was drawn from (see sharpen/sampling/vllm_engine.py for why a logits processor records them):
the same weights, no extra forward pass; tests/test_vllm_engine.py checks them against transformers.

tests/test_importance.py checks it on enumerable tiny models: the self-normalised weighted law of
6000 (alpha 4) / 12000 (alpha 2) completions is within a bound derived from the exact
chi^2(p^alpha || q_mix) of the exact p^alpha (measured TV 0.008 / 0.020 against bounds 0.055 / 0.085),
and weights at the wrong temperature, unnormalised weights and weights for p instead of p^alpha are
all 0.22 or more away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .draw import TEMPERATURE_RANGE, check_alpha, check_in_range, check_integers, draw_from_logprobs, \
    default_proposal_temperature, make_generator, proposal_logprobs, row_seeds
from .generate import DEFAULT_BATCH_SIZE, SampleResult, check_budget, check_prompts, decode_rows, decode_vllm, \
    run_in_batches, token_budgets
from .vllm_engine import VllmModel


def default_temperatures(alpha: float) -> list[float]:
    """1/alpha and 1/sqrt(alpha), deduplicated and sorted.

    >>> default_temperatures(4.0)
    [0.25, 0.5]
    >>> default_temperatures(1.0)
    [1.0]
    """
    return sorted({1.0 / alpha, default_proposal_temperature(alpha)})


@dataclass
class ImportanceSamplingConfig:
    """Settings of importance sampling of p^alpha from a mixture of tempered proposals."""

    alpha: float = field(default=4.0, metadata={"help": "Power of the target p(x)^alpha (0.01 to 100)."})
    proposal_temperatures: list[float] | None = field(default=None, metadata={
        "help": "Temperatures of the proposals (each 0.01 to 100); sample s uses the (s mod M)-th, sorted ascending, "
                "duplicates dropped. None: 1/alpha and 1/sqrt(alpha), resolved when the settings are made."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget of a completion (>= 1)."})
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata={"help": "Completions decoded together (>= 1)."})

    def __post_init__(self):
        check_alpha(self.alpha)
        check_integers(self, {"max_new_tokens": 1, "batch_size": 1})
        if self.proposal_temperatures is None:
            self.proposal_temperatures = default_temperatures(self.alpha)
            return
        low, high = TEMPERATURE_RANGE
        accepted = f"a non-empty list of numbers in [{low:g}, {high:g}]"
        if not isinstance(self.proposal_temperatures, (list, tuple)) or not self.proposal_temperatures:
            raise ValueError(f"proposal_temperatures must be {accepted}, got {self.proposal_temperatures!r}")
        for t in self.proposal_temperatures:
            check_in_range(t, "proposal_temperatures", TEMPERATURE_RANGE)
        self.proposal_temperatures = sorted({float(t) for t in self.proposal_temperatures})


def mixture_log_weight(alpha: float, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """alpha * log p(x) - log q_mix(x), with q_mix the equal-share mixture of the M proposals.

    log_p: (...,) log p of whole completions; log_q: (..., M) their log q_m under each proposal.

    >>> w = mixture_log_weight(2.0, torch.tensor(-1.0), torch.log(torch.tensor([0.2, 0.6])))
    >>> round(w.item(), 4)  # 2 * (-1) - log((0.2 + 0.6) / 2)
    -1.0837
    """
    return alpha * log_p - (torch.logsumexp(log_q, -1) - math.log(log_q.shape[-1]))


def weight_fields(alpha: float, result: SampleResult, log_q: torch.Tensor, temperature: float) -> dict:
    """A completion's record fields: its importance log-weight (log p summed in float64 from its token log-probs,
    log_q: (M,) its log q under each proposal) and the temperature it was drawn at."""
    log_p_x = torch.tensor(math.fsum(result.logprobs), dtype=torch.float64)
    return {"importance_log_weight": float(mixture_log_weight(alpha, log_p_x, log_q)), "proposal_temperature": temperature}


@torch.no_grad()
def importance_sample(model, prompts: list[list[int]], settings: ImportanceSamplingConfig, *, seed: int = 0,
                      seeds: list[int] | None = None, sample_indices: list[int] | None = None,
                      on_result: Callable[[int, SampleResult], None] | None = None) -> list[SampleResult]:
    """One weighted completion per prompt; entry i is drawn at proposal (sample_indices[i] mod M).

    Row i draws from its own generator seeded with `seeds[i]` (default derive_seed(seed, i));
    `sample_indices` default to 0, 1, ... (positions in `prompts`). `on_result(i, result)` is called as
    soon as row i finishes; result.fields holds importance_log_weight and proposal_temperature.
    """
    seeds = row_seeds(seed, seeds, len(prompts))
    indices = list(range(len(prompts))) if sample_indices is None else list(sample_indices)
    if len(indices) != len(prompts):
        raise ValueError(f"sample_indices has {len(indices)} entries for {len(prompts)} prompts")
    limit = check_prompts(model, prompts)
    on_vllm = isinstance(model, VllmModel)
    if on_vllm:
        check_budget(model, settings.max_new_tokens)

    def run_batch(index: list[int]):
        return (_weighted_vllm_batch if on_vllm else _weighted_batch)(
            model, [prompts[i] for i in index], [seeds[i] for i in index], [indices[i] for i in index], settings,
            token_budgets(prompts, index, settings.max_new_tokens, limit))
    return run_in_batches(len(prompts), settings.batch_size, run_batch, on_result)


def _weighted_vllm_batch(model, prompts, seeds, sample_indices, settings, budgets):
    """_weighted_batch on the vLLM engine: one request per row at its own proposal's temperature; the engine
    reports each token's log q under every proposal (vllm_engine.py: the normalisers of the same logits)."""
    temperatures = settings.proposal_temperatures
    own = [temperatures[s % len(temperatures)] for s in sample_indices]
    done = decode_vllm(model, prompts, budgets, seeds, temperature=own, score_temperatures=temperatures)
    for row, (result, completion) in enumerate(done):
        log_q = torch.tensor(completion.log_q, dtype=torch.float64).sum(0)  # (M,) log q_m of the whole completion
        result.fields = weight_fields(settings.alpha, result, log_q, own[row])
        yield row, result


def _weighted_batch(model, prompts, seeds, sample_indices, settings, budgets):
    """Yield (row, SampleResult) for one batch as each row finishes, its weight in result.fields.

    Each row draws from its own proposal; every proposal's log q of the drawn token comes from the same
    logits, summed per row for the mixture's density.
    """
    device = next(model.parameters()).device
    generators = [make_generator(s) for s in seeds]
    temperatures = settings.proposal_temperatures
    scale = torch.tensor(temperatures, dtype=torch.float32, device=device)[None, :, None]  # (1, M, 1)
    component = torch.tensor([s % len(temperatures) for s in sample_indices], device=device)  # (B,) m of each row
    log_q_sums = torch.zeros((len(prompts), len(temperatures)), dtype=torch.float64)  # (B, M) log q_m(prefix)

    def draw(logits, rows):
        logits = logits.float()  # (b, V)
        log_q_all = proposal_logprobs(logits[:, None, :], scale)  # (b, M, V): every proposal, same logits
        slots = torch.arange(len(rows), device=device)
        new_tokens = draw_from_logprobs(log_q_all[slots, component[rows]], [generators[r] for r in rows])  # own T_m
        log_q = log_q_all.gather(-1, new_tokens[:, None, None].expand(-1, len(temperatures), 1)).squeeze(-1)
        log_q_sums[rows] += log_q.double().cpu()
        return new_tokens, torch.log_softmax(logits, dim=-1).gather(-1, new_tokens[:, None]).squeeze(-1)  # T = 1

    for row, result in decode_rows(model, prompts, budgets, draw):
        result.fields = weight_fields(settings.alpha, result, log_q_sums[row],
                                      temperatures[sample_indices[row] % len(temperatures)])
        yield row, result
