"""Scalable power sampling (SPS): token-level look-ahead rollouts towards p(x)^alpha (Ji et al. 2026).

    from sharpen.sampling import load_model
    from sharpen.sampling.sps import SPSConfig, sps_sample
    model, tok = load_model("smollm2-135m")
    cfg = SPSConfig(alpha=4.0, num_candidates=8, num_rollouts=8, block_size=16, max_new_tokens=512)
    results = sps_sample(model, [tok("2+3=")["input_ids"]], cfg, seed=0)  # one completion per prompt entry
    results[0].token_ids, results[0].logprobs, results[0].stats  # rollout_tokens, decisions, forward_tokens

Identity (Theorem 3.1 of arXiv 2601.21590). Under pi(x) proportional to p(x | c)^alpha over
completions x (ending with EOS or cut at `max_new_tokens`), the next token given a prefix is

    pi(x_t | prefix) proportional to p(x_t | prefix)^alpha * zeta(x_t),
    zeta(x_t) = sum over futures f of p(f | prefix, x_t)^alpha = E_{f ~ p(. | prefix, x_t)}[p(f)^(alpha - 1)],

so sampling token by token from it is exact. Token-level low temperature is the same rule with
zeta = 1, which is why it is not p^alpha over sequences.

Algorithm. At each position t, for every completion being generated:
1. candidates: the `num_candidates` (K) most likely tokens of p(. | prefix);
2. rollouts: from each candidate that is not EOS, `num_rollouts` (M) futures drawn from the base
   model at temperature 1, each stopped at EOS or at the horizon (below); S_{k,r} = log p of future r;
3. zeta_hat(k) = mean_r exp((alpha - 1) * S_{k,r}) (1 for EOS and for a candidate with no room left),
   p_hat(k) proportional to p(k)^alpha * zeta_hat(k) over the K candidates;
4. jackknife (the paper's bias correction): zeta_hat enters a normalised ratio, so p_hat is biased
   by O(1/M). With p_hat_{-s} the same distribution computed without rollout s of every candidate,
       p_jk = M * p_hat - (M - 1) / M * sum_s p_hat_{-s},
   which cancels the O(1/M) term; entries that come out negative are set to 0 and p_jk renormalised;
5. the token is drawn from p_jk; its base log p (temperature 1) is what `logprobs` reports.

Horizon. By default (`block_size` None) rollouts run to the end of the token budget: the full
look-ahead. `horizon="sliding"` (default): rollouts run up to `block_size` tokens past the candidate
(the paper's truncated look-ahead H_t, 16 tokens there: `profile: reference`); `horizon="block"`: they stop at the end of the current block
(block boundaries at multiples of `block_size`), so the last token of each block is chosen without
look-ahead (zeta = 1). Either way rollouts stop at `max_new_tokens`, so the last decisions see a
shorter future, and the last token (no future left) is drawn from p^alpha over the candidates,
which is exact. With block_size >= max_new_tokens both are the full look-ahead.

What it approximates, for finite settings:
- the candidate cut: each token is drawn from p^alpha's own next-token law, whose zeta sums over
  every future (rollouts draw from the whole vocabulary), renormalised over the K candidates. The
  product of these cut conditionals is not p^alpha restricted to the completions made of top-K
  tokens (that law would weigh each candidate by its top-K futures only); it is exact when K >=
  vocabulary size;
- finite rollouts: p_jk is a ratio estimate; the jackknife leaves an O(1/M^2) bias in the token
  law (and clipping a little more); it vanishes as M grows;
- a horizon shorter than the rest of the completion: zeta is replaced by the sum of p^alpha over
  futures cut at the horizon, so the sampler targets a short-sighted law (the per-token rule above
  with that zeta), not p^alpha. No look-ahead at all (horizon="block", block_size=1: zeta = 1) is
  token-level low temperature over the candidates, and the paper's sliding horizon of 16 weighs each
  candidate by at most 16 tokens of its future, however long the completion. The fixed-block
  horizon is the worse of the two: on the enumerated test model its exact law (infinite rollouts)
  with blocks of 2 is farther from p^4 than low temperature is. Each completion's
  `stats["lookahead"]` is the mean look-ahead of its decisions (tokens a rollout may draw past the
  candidate); sharpen.analysis.mixing compares it with the completions' length.
With the full look-ahead, K = vocabulary and M -> infinity the output law is p^alpha
(tests/test_sps.py checks the exact law, and the sampler against it, by enumeration).

Cost. Each decision feeds up to K candidate tokens (one batched forward) and draws up to K * M
rollouts of up to `block_size` tokens: about T * K * M * B tokens sampled for a completion of T
tokens with the sliding horizon of B (half that with fixed blocks); `stats` counts them all:
sampled_tokens (the completion's tokens and every rollout token), forward_tokens (every token fed
through the model: prompt, candidates, rollout tokens but each rollout's last), rollout_tokens,
rollouts, decisions (tokens chosen, = len(token_ids)), lookahead (above) and wall_seconds (this
completion's share of each batched step's time, split by the rows it had in that step). The prompt + prefix is run once:
candidates and rollouts start from copies of its KV cache rows (no prefix is recomputed; each copy
is one read/write of the prefix cache), and the chosen candidate's row becomes the next prefix.
Memory: up to batch_size * K * M rows of prompt + prefix + horizon KV entries at a time, so
batch_size counts completions, not rows. `batch_size` completions advance together (one decision
each per round); rows that finish leave the batch at once, but finished completions are not
replaced until the whole batch is done.

Randomness. Entry j draws every rollout token and its decisions from its own torch.Generator seeded
with seeds[j] (default derive_seed(seed, j)), in an order fixed by its own rollouts only, so its
output does not depend on which entries share its batch.

Supported models: decoder-only models with full attention on every layer (cache rows are copied as
plain key/value tensors; sliding-window layers are refused).

On the vLLM engine (`load_model(spec, engine="vllm")`) the candidates are the engine's top-K log-probs and each
rollout is a request continuing prompt + prefix + candidate, all rollouts of a round in one engine call
(sharpen/sampling/vllm_samplers.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from .draw import check_alpha, check_integers, make_generator, row_seeds
from .generate import SampleResult, check_prompts, left_pad
from .models import cached_forward, check_full_attention, eos_token_ids
from .timeshare import TimeShare
from .vllm_engine import VllmModel

HORIZONS = ("sliding", "block")


@dataclass
class SPSConfig:
    """Settings of scalable power sampling (token-level look-ahead rollouts, jackknife-corrected)."""

    alpha: float = field(default=4.0, metadata={"help": "Power of the target p(x)^alpha (0.01 to 100)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget of a completion (>= 1)."})
    num_candidates: int = field(default=8, metadata={
        "help": "Candidates per token: the K most likely tokens of p(. | prefix) (>= 1; all tokens if >= vocab)."})
    num_rollouts: int = field(default=8, metadata={
        "help": "Rollouts per candidate, from the base model at temperature 1 (>= 2: the jackknife leaves one out)."})
    block_size: int | None = field(default=None, metadata={
        "help": "Look-ahead length B (>= 1): rollouts run up to B tokens past the candidate (sliding) or "
                "to the end of the current B-token block (block). None: max_new_tokens, the full look-ahead "
                "that targets p^alpha (the paper: 16), resolved when the config is made."})
    horizon: str = field(default="sliding", metadata={
        "help": "sliding: look B tokens ahead of every token (the paper's truncated horizon); block: look "
                "ahead to the end of the current block only (the last token of a block gets no look-ahead)."})
    batch_size: int = field(default=8, metadata={
        "help": "Completions advanced together (>= 1); each uses up to num_candidates * num_rollouts cache rows."})

    def __post_init__(self):
        check_alpha(self.alpha)
        if self.block_size is None:  # the whole completion: a shorter horizon targets a short-sighted law
            self.block_size = self.max_new_tokens
        check_integers(self, {"max_new_tokens": 1, "num_candidates": 1, "num_rollouts": 2, "block_size": 1,
                              "batch_size": 1})
        if self.horizon not in HORIZONS:
            raise ValueError(f"horizon must be one of {', '.join(HORIZONS)}, got '{self.horizon}'")


def decision_probs(alpha: float, cand_logp: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """The jackknifed next-token law over candidates.

    cand_logp: (E, K) log p of each candidate; log_w: (E, K, M) (alpha - 1) * log p of each rollout's
    future (0 for an empty future). Returns (E, K) float64 probabilities.

    >>> logp = torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64))
    >>> exact = torch.log(torch.tensor([0.1, 0.6, 1.0], dtype=torch.float64))  # log zeta, same in every rollout
    >>> p = decision_probs(2.0, logp, exact[None, :, None].expand(1, 3, 4))  # a constant estimate is exact
    >>> torch.allclose(p, torch.softmax(2.0 * logp + exact, -1))
    True
    """
    cand_logp, log_w = cand_logp.double(), log_w.double()
    m = log_w.shape[-1]
    base = alpha * cand_logp
    p_hat = torch.softmax(base + torch.logsumexp(log_w, -1) - math.log(m), -1)  # (E, K)
    # Leave rollout s out of every candidate's estimate: (E, K, M_s, M_r) with the diagonal masked.
    left_out = torch.eye(m, dtype=torch.bool, device=log_w.device)
    loo = log_w[..., None, :].expand(*log_w.shape, m).masked_fill(left_out, -math.inf)
    log_zeta_loo = torch.logsumexp(loo, -1) - math.log(m - 1)  # (E, K, M)
    p_loo = torch.softmax(base[..., None] + log_zeta_loo, dim=1)  # normalised over candidates, per s
    return _jackknife(p_hat, p_loo)


def _jackknife(p_hat: torch.Tensor, p_loo: torch.Tensor) -> torch.Tensor:
    """(E, K) full estimate and (E, K, M) leave-one-out estimates -> the clipped, renormalised jackknife."""
    m = p_loo.shape[-1]
    p = (m * p_hat - (m - 1) / m * p_loo.sum(-1)).clamp_(min=0.0)  # sums to 1 before clipping
    return p / p.sum(-1, keepdim=True)


class _Entry:
    """One completion being generated: its tokens, generator and cost counters."""

    def __init__(self, index: int, prompt: list[int], seed: int, budget: int):
        self.index, self.prompt, self.budget = index, prompt, budget
        self.generator = make_generator(seed)
        self.tokens: list[int] = []
        self.logp: list[float] = []
        self.stats = {"sampled_tokens": 0, "forward_tokens": 0, "rollout_tokens": 0, "rollouts": 0, "decisions": 0,
                      "wall_seconds": 0.0}
        self.lookahead = 0  # summed over decisions: tokens a rollout may draw past the candidate

    def horizon_end(self, cfg: SPSConfig) -> int:
        """Completion length at which the rollouts of the current decision stop."""
        t = len(self.tokens)
        end = (t // cfg.block_size + 1) * cfg.block_size if cfg.horizon == "block" else t + 1 + cfg.block_size
        return min(end, self.budget)

    def result(self, eos: set[int]) -> SampleResult:
        ended = bool(self.tokens) and self.tokens[-1] in eos
        stats = dict(self.stats, lookahead=self.lookahead / max(self.stats["decisions"], 1))
        return SampleResult(list(self.tokens), list(self.logp), "eos" if ended else "length", stats)


@torch.no_grad()
def sps_sample(model, prompts: list[list[int]], cfg: SPSConfig | None = None, *, seed: int = 0,
               seeds: list[int] | None = None,
               on_result: Callable[[int, SampleResult], None] | None = None) -> list[SampleResult]:
    """One completion per prompt entry (a list of token ids; entries may repeat), by scalable power sampling.

    Entry j draws from its own generator seeded with `seeds[j]` (default derive_seed(seed, j)).
    `on_result(j, result)` is called as soon as entry j finishes.
    """
    cfg = cfg or SPSConfig()
    seeds = row_seeds(seed, seeds, len(prompts))
    limit = check_prompts(model, prompts)
    if isinstance(model, VllmModel):
        # imported here: vllm_samplers builds on this module
        from .vllm_samplers import sps_vllm
        return sps_vllm(model, prompts, cfg, seeds=seeds, on_result=on_result)
    check_full_attention(model, "sps_sample")
    eos = set(eos_token_ids(model))
    entries = [_Entry(j, list(p), seeds[j], cfg.max_new_tokens if limit is None
                      else min(cfg.max_new_tokens, limit - len(p))) for j, p in enumerate(prompts)]
    results: list[SampleResult | None] = [None] * len(prompts)
    clock = TimeShare()

    def done(entry: _Entry) -> None:
        results[entry.index] = entry.result(eos)
        if on_result is not None:
            on_result(entry.index, results[entry.index])
        clock.skip()  # the caller's time in on_result is not sampling time

    for start in range(0, len(entries), cfg.batch_size):
        _run_batch(model, entries[start:start + cfg.batch_size], cfg, eos, clock, done)
    return results  # type: ignore[return-value]


def _select(cache: DynamicCache, index: torch.Tensor) -> DynamicCache:
    """A new cache holding rows `index` of `cache` (repeats allowed): copies, the source is left as it is."""
    return DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, index), layer.values.index_select(0, index))
                                        for layer in cache.layers])


def _charge(clock: TimeShare, entries: list[_Entry], owner: torch.Tensor) -> None:
    """Split the time since the last charge among the batch rows; `owner` (R,) gives each row's entry."""
    counts = torch.bincount(owner.cpu(), minlength=len(entries)).tolist()
    clock.charge(list(itertools.chain.from_iterable([e.stats] * n for e, n in zip(entries, counts))))


def _draw_rows(logits: torch.Tensor, owner: torch.Tensor, entries: list[_Entry]):
    """One token per row of (R, V) logits; rows must be grouped by entry (owner non-decreasing).

    Entry e draws the uniforms of its rows in one call on its own generator, in row order.
    Returns (tokens (R,), log p at temperature 1 (R,)).
    """
    counts = torch.bincount(owner.cpu(), minlength=len(entries)).tolist()
    uniforms = torch.cat([torch.rand(n, generator=e.generator, dtype=torch.float64)
                          for e, n in zip(entries, counts) if n]).to(logits.device)
    logp = torch.log_softmax(logits.float(), dim=-1)
    tokens = torch.empty(len(logits), dtype=torch.long, device=logits.device)
    step = max(1, (1 << 25) // logits.shape[-1])  # rows per chunk: bounds the float64 CDF's memory
    for i in range(0, len(logits), step):
        cdf = logp[i:i + step].double().exp().cumsum(-1)
        u = uniforms[i:i + step] * cdf[:, -1]  # scale by the total so rounding cannot overshoot
        tokens[i:i + step] = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1)
    tokens.clamp_(max=logits.shape[-1] - 1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def _run_batch(model, entries: list[_Entry], cfg: SPSConfig, eos: set[int], clock: TimeShare, done) -> None:
    """Generate `entries` together: one decision per entry per round, until every entry is done."""
    device = next(model.parameters()).device
    eos_list = torch.tensor(sorted(eos) or [-1], device=device)
    ids, mask, positions = left_pad([e.prompt for e in entries], next(iter(eos), 0), device)
    cache = DynamicCache()
    logits = cached_forward(model, ids, mask, positions, cache, logits_to_keep=1).logits[:, -1, :]  # (B, V)
    next_pos = positions[:, -1] + 1  # (B,) position of the token to decide
    for e in entries:
        e.stats["forward_tokens"] += len(e.prompt)
    clock.charge([e.stats for e in entries])
    active = list(entries)
    while active:
        b_count = len(active)
        logp_all = torch.log_softmax(logits.float(), dim=-1)
        cand_logp, cand = torch.topk(logp_all, min(cfg.num_candidates, logp_all.shape[-1]), dim=-1)  # (B, K)
        k_count = cand.shape[1]
        # Candidate rows: every non-EOS candidate of an entry with room for a token after it.
        room = torch.tensor([len(e.tokens) + 1 < e.budget for e in active], device=device)
        for e in active:
            e.lookahead += e.horizon_end(cfg) - len(e.tokens) - 1
        expand = ~torch.isin(cand, eos_list) & room[:, None]  # (B, K)
        rows_b, rows_k = expand.nonzero(as_tuple=True)  # grouped by entry, candidates in rank order
        log_w = torch.zeros((b_count, k_count, cfg.num_rollouts), dtype=torch.float64, device=device)
        if len(rows_b):
            c_cache = _select(cache, rows_b)
            c_mask = torch.cat([mask[rows_b], mask.new_ones((len(rows_b), 1))], dim=1)
            c_pos = next_pos[rows_b]
            c_logits = cached_forward(model, cand[rows_b, rows_k][:, None], c_mask, c_pos[:, None], c_cache,
                                      logits_to_keep=1).logits[:, -1, :]
            cache = mask = None  # the next prefix will be one of the candidate rows
            for b, n in enumerate(torch.bincount(rows_b.cpu(), minlength=b_count).tolist()):
                active[b].stats["forward_tokens"] += n
            _charge(clock, active, rows_b)
            allowed = torch.tensor([e.horizon_end(cfg) - len(e.tokens) - 1 for e in active], device=device)[rows_b]
            sums = _rollouts(model, c_cache, c_mask, c_logits, c_pos + 1, rows_b, allowed, active, cfg, eos_list,
                             clock)  # (R, M)
            log_w[rows_b, rows_k] = (cfg.alpha - 1.0) * sums
        probs = decision_probs(cfg.alpha, cand_logp, log_w)  # (B, K)
        uniforms = torch.stack([torch.rand((), generator=e.generator, dtype=torch.float64) for e in active])
        cdf = probs.cpu().cumsum(-1)
        choice = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(-1)
        choice = choice.clamp_(max=k_count - 1).to(device)
        tokens = cand.gather(1, choice[:, None]).squeeze(1).tolist()
        token_logp = cand_logp.gather(1, choice[:, None]).squeeze(1).tolist()
        keep_b, keep_rows = [], []
        row_of = {(b, k): r for r, (b, k) in enumerate(zip(rows_b.tolist(), rows_k.tolist()))}
        for b, e in enumerate(active):
            e.tokens.append(tokens[b])
            e.logp.append(token_logp[b])
            e.stats["sampled_tokens"] += 1
            e.stats["decisions"] += 1
        clock.charge([e.stats for e in active])
        for b, e in enumerate(active):
            if tokens[b] in eos or len(e.tokens) >= e.budget:
                done(e)
            else:
                keep_b.append(b)
                keep_rows.append(row_of[(b, int(choice[b]))])
        if not keep_b:
            break
        # The chosen candidate's row (prefix + chosen token, and its next-token logits) is the new prefix.
        keep = torch.tensor(keep_rows, device=device)
        cache, mask, logits = _select(c_cache, keep), c_mask[keep], c_logits[keep]
        next_pos = c_pos[keep] + 1
        active = [active[b] for b in keep_b]


def _rollouts(model, c_cache, c_mask, c_logits, first_pos, cand_owner, allowed, entries, cfg: SPSConfig, eos_list,
              clock: TimeShare) -> torch.Tensor:
    """M rollouts from every candidate row; return their summed base log p, (R, M) float64 (0 if empty).

    Candidate row r (owned by entry cand_owner[r]) has `allowed[r]` tokens of room; its rollouts stop
    there or at EOS. Rollout (r, m) is row r * M + m, so rows stay grouped by entry.
    """
    device = c_logits.device
    m_count = cfg.num_rollouts
    sums = torch.zeros((len(cand_owner), m_count), dtype=torch.float64, device=device)
    src = (allowed > 0).nonzero(as_tuple=True)[0]  # candidate rows with room for a future
    if not len(src):
        return sums
    index = src.repeat_interleave(m_count)  # (N,) source candidate row of each rollout
    slot = torch.arange(len(index), device=device) % m_count + index * m_count  # flat (r, m) of each rollout
    owner, room = cand_owner[index], allowed[index]
    for b, n in enumerate(torch.bincount(owner.cpu(), minlength=len(entries)).tolist()):
        entries[b].stats["rollouts"] += n
    logits, pos = c_logits[index], first_pos[index]
    cache, mask = None, c_mask[index]
    flat = sums.view(-1)
    length = 0
    while True:
        tokens, logp = _draw_rows(logits, owner, entries)
        flat.index_add_(0, slot, logp.double())
        length += 1
        counts = torch.bincount(owner.cpu(), minlength=len(entries)).tolist()
        for e, n in zip(entries, counts):
            e.stats["rollout_tokens"] += n
            e.stats["sampled_tokens"] += n
        alive = ~torch.isin(tokens, eos_list) & (room > length)
        _charge(clock, entries, owner)
        if not bool(alive.any()):
            return sums
        if cache is None:  # first feed: copy the candidate rows' caches M times (only for rollouts that go on)
            cache = _select(c_cache, index[alive])
        elif not bool(alive.all()):
            cache.batch_select_indices(alive.nonzero(as_tuple=True)[0])
        if not bool(alive.all()):
            tokens, pos, mask = tokens[alive], pos[alive], mask[alive]
            owner, room, slot = owner[alive], room[alive], slot[alive]
        mask = torch.cat([mask, mask.new_ones((len(mask), 1))], dim=1)
        logits = cached_forward(model, tokens[:, None], mask, pos[:, None], cache, logits_to_keep=1).logits[:, -1, :]
        pos = pos + 1
        for e, n in zip(entries, torch.bincount(owner.cpu(), minlength=len(entries)).tolist()):
            e.stats["forward_tokens"] += n
