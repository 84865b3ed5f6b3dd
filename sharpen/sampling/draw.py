"""One decoding step: raw logits -> proposal log-probs -> a token per row, one RNG stream per row.

Every sampler in this package (plain, low-temperature, power-MH proposals) draws its
tokens here, so they share one definition of temperature / top-k / top-p and of the
log-probabilities they report:

- `log_q`: log-prob of the drawn token under the processed distribution actually sampled
  from (temperature, then top-k, then top-p);
- `log_p`: log-prob of the same token under the base model at temperature 1, from the
  *same* logits (no second forward pass).

Rows draw from their own `torch.Generator`, seeded from (seed, problem, sample index),
so a row's tokens do not depend on which other rows share its batch.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings, stable across runs and machines.

    >>> derive_seed(0, "problem-7", 3) == derive_seed(0, "problem-7", 3) != derive_seed(0, "problem-7", 4)
    True
    """
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_generator(seed: int) -> torch.Generator:
    # Generators live on the CPU: one uniform per row per step is cheap to draw there
    # and the stream is then the same on CPU and GPU machines.
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def row_seeds(seed: int, seeds: list[int] | None, count: int) -> list[int]:
    """Each row's seed: `seeds` as given (one per row), else derive_seed(seed, i) for row i.

    >>> row_seeds(0, None, 2) == [derive_seed(0, 0), derive_seed(0, 1)]
    True
    """
    if seeds is None:
        return [derive_seed(seed, i) for i in range(count)]
    if len(seeds) != count:
        raise ValueError(f"seeds has {len(seeds)} entries for {count} prompts")
    return list(seeds)


# The one range of alpha and of every temperature a sampler accepts (low_temp's temperature, the
# proposal temperatures of power_mh and power_smc; 1/alpha by default, so the two ranges mirror each
# other). Beyond them p^alpha and p^(1/T) are indistinguishable from greedy decoding (or from uniform
# noise) at float32 logits, and alpha * log p of a long completion or logits / T leave the range where
# the MH ratios and importance weights stay finite: alpha 1e300 drew garbage with MH acceptance 0.
ALPHA_RANGE = (0.01, 100.0)
TEMPERATURE_RANGE = (0.01, 100.0)


def check_in_range(value, name: str, bounds: tuple[float, float]) -> None:
    """A number (not a bool) within `bounds`, both ends included; ValueError naming `name` and the range.

    >>> check_in_range(1e300, "alpha", ALPHA_RANGE)
    Traceback (most recent call last):
    ...
    ValueError: alpha must be a number in [0.01, 100], got 1e+300
    """
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:  # NaN: False
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")


def check_alpha(alpha) -> None:
    """The exponent of p^alpha: a number in ALPHA_RANGE."""
    check_in_range(alpha, "alpha", ALPHA_RANGE)


def default_proposal_temperature(alpha: float) -> float:
    """The proposal temperature of power_mh and power_smc when none is given: 1/sqrt(alpha).

    Chosen on enumerable models (exact relaxation times of the MH chain at alpha 4, SMC's distance to
    p^4): 1/alpha, the papers' choice, proposes too sharply to move (up to 58x slower than the best
    temperature, and SMC weights far from uniform); 1/sqrt(alpha) was within 3.2x of the best on every
    model measured. The papers' 1/alpha stays available explicitly or through `profile: reference`.

    >>> default_proposal_temperature(4.0)
    0.5
    """
    return 1.0 / alpha ** 0.5


def check_integers(settings, lowest: dict[str, int]) -> None:
    """Each named field of `settings` an integer (not a bool) at least its lowest value."""
    for name, low in lowest.items():
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def validate_processing(temperature: float, top_k: int | None, top_p: float | None, name: str = "temperature"):
    """A temperature in TEMPERATURE_RANGE, top_k >= 1 and top_p in (0, 1] (None: off); ValueError naming the field."""
    check_in_range(temperature, name, TEMPERATURE_RANGE)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None (off), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None (off), got {top_p}")


def proposal_logprobs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None) -> torch.Tensor:
    """(B, V) raw logits -> (B, V) log-probs of the processed distribution (-inf where cut)."""
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass;
        # the top token is always kept.
        drop_sorted = (cumulative - sorted_scores.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return torch.log_softmax(scores, dim=-1)


def draw_from_logprobs(log_q: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Inverse-CDF draw of one token per row of (B, V) log-probs, row b using generators[b]."""
    uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    cdf = log_q.double().exp().cumsum(-1)  # float64: V ~ 1e5 terms, keep the CDF exact enough
    uniforms = uniforms.to(cdf.device) * cdf[:, -1]  # scale by the total so rounding cannot overshoot
    tokens = torch.searchsorted(cdf, uniforms[:, None], right=True).squeeze(-1)
    return tokens.clamp_(max=log_q.shape[-1] - 1)


def draw_tokens(logits: torch.Tensor, generators: list[torch.Generator], temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None):
    """Draw one token per row; return (tokens (B,), log_q (B,), log_p (B,))."""
    log_q_all = proposal_logprobs(logits, temperature, top_k, top_p)
    tokens = draw_from_logprobs(log_q_all, generators)
    log_q = log_q_all.gather(-1, tokens[:, None]).squeeze(-1)
    log_p = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, log_q, log_p
