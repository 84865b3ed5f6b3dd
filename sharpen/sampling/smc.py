"""Power-SMC: sequential Monte Carlo over prefixes, targeting p(x)^alpha (Power-SMC, arXiv 2602.10273).

    from sharpen.sampling import load_model
    from sharpen.sampling.smc import SMCConfig, smc_sample
    model, tok = load_model("smollm2-135m")
    cfg = SMCConfig(alpha=4.0, num_particles=64, max_new_tokens=512)
    results = smc_sample(model, [tok("2+3=")["input_ids"]], cfg, seed=0)  # one SMC run per prompt entry
    results[0].token_ids, results[0].logprobs, results[0].stats  # ... resamples, min_ess, ESS fractions, log_z

Target. pi(x) proportional to p(x | c)^alpha over completions x (generated tokens only) that end
with EOS or stop at `max_new_tokens`; p is the base model at temperature 1. With top-k / top-p,
pi is restricted to the completions the proposal can produce.

Algorithm. A run keeps N = `num_particles` particles, all started from the prompt. Step t draws
token t of every growing particle from the proposal q (the base model at `proposal_temperature`,
default 1/alpha, optionally top-k / top-p; `draw.proposal_logprobs` processes the logits, so log q
is that of the distribution actually sampled from, and log p comes from the same forward pass).
A particle that emits EOS or reaches the token budget is absorbed: it stops growing and keeps its
weight. Every `resample_every` steps, when the effective sample size ESS = (sum w)^2 / sum w^2
falls below `ess_threshold` * N, the run resamples systematically: N particles are drawn with
replacement in proportion to their weights (absorbed ones stay absorbed), histories and KV-cache
rows follow their ancestors, and every log-weight becomes the log of the mean weight. The run ends
when every particle is absorbed; its output is one particle drawn in proportion to the final weights.
`ess_threshold=0` never resamples: self-normalised importance resampling of N whole completions
drawn from q. With N = 1 the output is a plain sample from q.

Weights, with the alpha ramp. `ramp_tokens` = R > 0 raises the exponent linearly from 1 to alpha
over the first R steps, alpha_t = 1 + (alpha - 1) * min(t, R) / R (R = 0: alpha_t = alpha), so
that early resampling is driven by a flatter target. The state of a particle after step t is s_t:
a growing prefix x_{1:t}, or a completion x that was absorbed at step |x| <= t. Step t targets
gamma_t(s) = p(s)^alpha_t (p(s) the product of the conditionals of s's tokens, EOS included);
the kernel extends a growing particle by x_t ~ q(. | x_{<t}) and leaves an absorbed one in place.
The incremental weight gamma_t(s_t) / (gamma_{t-1}(s_{t-1}) K_t(s_t | s_{t-1})) is then

    growing:  (alpha_t - alpha_{t-1}) * log p(x_{1:t-1}) + alpha_t * log p(x_t | x_{<t}) - log q(x_t | x_{<t})
    absorbed: (alpha_t - alpha_{t-1}) * log p(x)

and when the last particle is absorbed at step t_end every weight takes a last factor
(alpha - alpha_{t_end}) * log p(x), bridging gamma_{t_end} to p^alpha: it is not zero only when
the run ends before the ramp does (all particles absorbed before step R). Along any path the
increments add up to alpha * log p(x) - log q(x): the final weights are importance weights of
p^alpha over whole completions whatever the ramp, which only changes the intermediate targets
under which the run resamples. Without the ramp the first terms vanish and, with the default
proposal temperature 1/alpha, a token's weight alpha * log p - log q is log sum_v p(v | x_{<t})^alpha.

What it targets exactly. The weighted particles are a standard SMC sampler (resampling at
adaptive times, Del Moral et al. 2006): as N -> infinity the output is distributed as p^alpha
(any ramp, any threshold), and exp(log_z) is an unbiased estimate of Z = sum_x p(x)^alpha for
every N. At finite N the output is biased, O(1/N) for self-normalised weights, and the direction
of the bias depends on the model and the settings: it is not simply "towards the proposal" (on a
model an audit examined, it favoured long completions). tests/test_smc.py measures the distance by
exact enumeration on a tiny model (alpha 2, 4 new tokens, 3000 runs per cell, TV of the outputs
from p^2; an exact sampler of 3000 draws scores 0.033 there, the noise floor):

    particles                              1      4      16     64     256
    T 1/2, ESS 0.5 (the defaults)        0.312  0.172  0.064  0.040  0.024
    T 1/2, ESS 0.5, ramp over 4 tokens   0.312  0.174  0.068  0.043  0.024
    T 1 (q = p), ESS 0.5                 0.253  0.068  0.039  0.031  0.035
    T 1, ESS 1 (resample every step)     0.253  0.133  0.053  0.044  0.045
    T 1, ESS 1, ramp over 4 tokens       0.253  0.078  0.055  0.036  0.047

Within 4 tokens ESS 0.5 almost never triggers on that model, so those rows are importance
resampling (ess_threshold 0 gives nearly the same figures: 0.173, 0.065, 0.039 at 4, 16, 64).
Resampling at every step costs accuracy at 4 particles and the ramp wins most of it back; with
12000 runs, resampling every step is still measurably off at 64 particles (chi-square p = 0.001,
TV 0.022) and not at 256 (p = 0.86).

When to check the ESS. Resampling at step t selects prefixes by p(x_{1:t})^alpha_t, a short-sighted
intermediate target: a prefix that is likely so far need not begin a likely completion, and
the particles that resampling discards are gone for good. Checking at every token
(`resample_every=1`, the default here) can therefore cost far more accuracy than it saves: on the
model an audit examined, at proposal temperature 1 and 256 particles, the output was TV 0.015 from
p^4 without intermediate resampling and 0.12-0.13 with a check every 1 or 2 tokens. The Power-SMC
authors' code checks every 64 tokens (resample_every=64). How often to check on long completions
of a real model has not been measured here.

Diagnostics in `stats` (cheap scalars, no per-token traces): resamples (how many times the run
resampled), min_ess (the smallest ESS over all steps, final weights included), mean_ess_fraction
(the mean of ESS / N over the checks, each taken before its resampling; None when the run ended
before its first check), ess_checks (how many checks were made), final_ess_fraction (ESS / N of
the final weights, which the output is picked from: near 1 / N, one particle carries the pick),
log_z and num_particles. The spread of log_z over runs of one prompt measures the variance of the
weights: sharpen.analysis.mixing reports it.

Cost. Forward tokens per run = (prompt - 1) + the tokens drawn by all particles (the prompt is
prefilled once, one row per run, and its cache expanded to the N particle rows), i.e. about N
times plain decoding of the same completions; no token is run twice (a resampled particle takes
its ancestor's cache row). Memory: N cache rows per run; a step after which rows leave or
are resampled gathers the cache (index_select), briefly holding both copies.

Batching. Up to `batch_size` particle rows advance together; a run never splits, so a run is
admitted when its N rows fit (always when nothing else runs: max(batch_size, N) rows at most).
Absorbed particles leave the batch at once, so rows free up as a run goes on, and queued runs are
admitted into the freed rows: their prompts are prefilled and their cache rows appended to the
batch's (the shorter side left-padded with masked slots; columns masked in every row are cut off
when they reach a quarter of the width). Runs admitted together advance in lockstep and share
their bookkeeping tensors. Sliding-window attention layers are refused (the padding moves slots
within the window).

Randomness. Run j draws everything (tokens, resampling offsets, the final pick) from its own
torch.Generator seeded with seeds[j] (default derive_seed(seed, j)), one vector of uniforms per
step for its growing particles in particle order, so its output does not depend on which runs
share its batch (up to float rounding of the logits).

On the vLLM engine (`load_model(spec, engine="vllm")`) each stretch between ESS checks is one request per
growing particle, and the weights are replayed token by token with this module's functions
(sharpen/sampling/vllm_samplers.py; top-k / top-p are refused there).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from .draw import (check_alpha, check_integers, default_proposal_temperature, make_generator, proposal_logprobs,
                   row_seeds, validate_processing)
from .generate import SampleResult, check_prompts, left_pad
from .models import cached_forward, check_full_attention, eos_token_ids
from .timeshare import TimeShare
from .vllm_engine import VllmModel


@dataclass
class SMCConfig:
    """Settings of Power-SMC.

    64 particles, ESS threshold 0.5 and an ESS check every 64 tokens are the paper code's; the
    proposal temperature 1/sqrt(alpha) is sharpen's (the paper: 1/alpha, with alpha ramped over 400
    tokens; `profile: reference` in a study applies those): on enumerable models, proposals at 1/alpha
    leave the output far from p^alpha (README, "Defaults that reach the target").
    """

    alpha: float = field(default=4.0, metadata={"help": "Power of the target p(x)^alpha (0.01 to 100)."})
    num_particles: int = field(default=64, metadata={"help": "Particles per run, i.e. per completion (>= 1)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget of a completion (>= 1)."})
    proposal_temperature: float | None = field(
        default=None, metadata={"help": "Temperature of the proposal q (0.01 to 100); None: 1/sqrt(alpha) (the paper: "
                                        "1/alpha), resolved when the config is made (pass None again when changing alpha with replace())."})
    top_k: int | None = field(default=None, metadata={"help": "Proposal keeps the k most likely tokens (None: off)."})
    top_p: float | None = field(default=None, metadata={"help": "Proposal nucleus mass in (0, 1] (None: off)."})
    ess_threshold: float = field(
        default=0.5, metadata={"help": "Resample when ESS < ess_threshold * num_particles, in [0, 1] "
                                       "(0: never, i.e. importance resampling of whole completions)."})
    resample_every: int = field(default=64, metadata={
        "help": "Check the ESS every this many tokens (>= 1; the authors' code: 64). Each check may resample "
                "towards a short-sighted target: see the module docstring."})
    ramp_tokens: int = field(
        default=0, metadata={"help": "Raise the exponent linearly from 1 to alpha over this many tokens "
                                     "(>= 0; 0: no ramp). The output targets p^alpha either way."})
    batch_size: int = field(
        default=64, metadata={"help": "Particle rows advanced together; runs share a batch, a run never splits "
                                      "(so max(batch_size, num_particles) rows at most)."})

    def __post_init__(self):
        check_alpha(self.alpha)
        check_integers(self, {"num_particles": 1, "max_new_tokens": 1, "resample_every": 1, "ramp_tokens": 0,
                              "batch_size": 1})
        if isinstance(self.ess_threshold, bool) or not (isinstance(self.ess_threshold, (int, float))
                                                        and 0 <= self.ess_threshold <= 1):
            raise ValueError(f"ess_threshold must be a number in [0, 1], got {self.ess_threshold!r}")
        if self.proposal_temperature is None:
            self.proposal_temperature = default_proposal_temperature(self.alpha)
        validate_processing(self.proposal_temperature, self.top_k, self.top_p, name="proposal_temperature")


def alpha_at(t: int, cfg: SMCConfig) -> float:
    """Exponent of the intermediate target after t generated tokens (alpha from step ramp_tokens on).

    >>> [alpha_at(t, SMCConfig(alpha=3.0, ramp_tokens=4)) for t in range(6)]
    [1.0, 1.5, 2.0, 2.5, 3.0, 3.0]
    """
    if cfg.ramp_tokens == 0:
        return cfg.alpha
    return 1.0 + (cfg.alpha - 1.0) * min(t, cfg.ramp_tokens) / cfg.ramp_tokens


def _token_log_weight(alpha_t: float, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """The new token's part of a growing particle's incremental log-weight: alpha_t log p - log q."""
    return alpha_t * log_p - log_q


def _bridge_log_weight(alpha_t: float, alpha_prev: float, logp_sum: torch.Tensor) -> torch.Tensor:
    """The ramp's part, for every particle: (alpha_t - alpha_{t-1}) * log p of what it held before the step."""
    return (alpha_t - alpha_prev) * logp_sum


def _finish_log_weight(alpha: float, alpha_t: float, logp_sum: torch.Tensor) -> torch.Tensor:
    """Last factor of a run's weights, taken when its last particle is absorbed: (alpha - alpha_t) log p(x)."""
    return (alpha - alpha_t) * logp_sum


def _source_rows(rank: torch.Tensor, ancestors: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Cache row of each particle growing at the next step (row-major order): its ancestor's row.

    rank: (n, N) batch row of each particle fed at this step (-1 for absorbed ones); ancestors:
    (n, N) index of each particle's ancestor (itself when its run did not resample); alive: (n, N).
    """
    return rank.gather(1, ancestors)[alive]


def _ess(logw: torch.Tensor) -> torch.Tensor:
    """(n, N) log-weights -> (n,) effective sample sizes (sum w)^2 / sum w^2."""
    w = torch.exp(logw - logw.max(dim=1, keepdim=True).values)
    return w.sum(1) ** 2 / (w * w).sum(1)


def _pick(logw: torch.Tensor, uniforms: torch.Tensor, per_row: int) -> torch.Tensor:
    """Inverse-CDF picks in proportion to exp(logw), (n, N) -> (n, per_row) indices.

    uniforms (n,) in [0, 1): one offset per row; per_row > 1 is systematic resampling, offsets
    (u + k) / per_row, k = 0..per_row-1 (sorted ancestors), per_row = 1 a single draw.
    """
    cdf = torch.exp(logw - logw.max(dim=1, keepdim=True).values).cumsum(1)
    points = (uniforms[:, None] + torch.arange(per_row, dtype=torch.float64)[None, :]) / per_row
    return torch.searchsorted(cdf, points * cdf[:, -1:], right=True).clamp_(max=logw.shape[1] - 1)


def _draw(logits: torch.Tensor, uniforms: torch.Tensor, cfg: SMCConfig):
    """One token per row from the processed (R, V) logits with the given (R,) uniforms: (tokens, log q, log p).

    The inverse-CDF draw of draw.draw_from_logprobs, with uniforms drawn per run (one call per run
    and step) rather than per row.
    """
    log_q_all = proposal_logprobs(logits, cfg.proposal_temperature, cfg.top_k, cfg.top_p)
    cdf = log_q_all.double().exp().cumsum(-1)
    points = uniforms.to(cdf.device) * cdf[:, -1]
    tokens = torch.searchsorted(cdf, points[:, None], right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
    log_q = log_q_all.gather(-1, tokens[:, None]).squeeze(-1)
    log_p = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    return tokens.cpu(), log_q.double().cpu(), log_p.double().cpu()


class _Cohort:
    """Runs admitted together: they advance in lockstep, their particles' state in (n, N, ...) tensors.

    The batch's cache holds one row per growing particle, cohorts in admission order, within a
    cohort in row-major (run, particle) order.
    """

    def __init__(self, index: list[int], prompts: list[list[int]], seeds: list[int], budgets: list[int],
                 cfg: SMCConfig, eos: list[int]):
        n, N, longest = len(index), cfg.num_particles, max(budgets)
        self.index, self.prompts, self.cfg = index, prompts, cfg
        self.eos = torch.tensor(eos, dtype=torch.long)
        self.generators = [make_generator(s) for s in seeds]
        self.budget = torch.tensor(budgets)[:, None]  # (n, 1)
        self.prompt_len = torch.tensor([len(p) for p in prompts])
        self.t = 0  # tokens generated so far (decode steps taken)
        self.tokens = torch.zeros((n, N, longest), dtype=torch.long)
        self.logp = torch.zeros((n, N, longest), dtype=torch.float64)  # per-token log p at temperature 1
        self.length = torch.zeros((n, N), dtype=torch.long)
        self.logp_sum = torch.zeros((n, N), dtype=torch.float64)  # log p(x_{1:length})
        self.logw = torch.zeros((n, N), dtype=torch.float64)
        self.alive = torch.ones((n, N), dtype=torch.bool)
        self.finished = torch.zeros(n, dtype=torch.bool)
        self.resamples = torch.zeros(n, dtype=torch.long)
        self.min_ess = torch.full((n,), float(N), dtype=torch.float64)
        self.ess_sum = torch.zeros(n, dtype=torch.float64)  # sum of ESS at the checks (before resampling)
        self.checks = torch.zeros(n, dtype=torch.long)
        self.sampled = torch.zeros(n, dtype=torch.long)
        self.stats = [{"wall_seconds": 0.0} for _ in index]

    def rows(self) -> int:
        return int(self.alive.sum())

    def feed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, positions) fed at the next step, one per growing particle, in row order."""
        if self.t == 0:
            last = torch.tensor([p[-1] for p in self.prompts])[:, None].expand_as(self.alive)
        else:
            last = self.tokens[:, :, self.t - 1]
        positions = (self.prompt_len - 1 + self.t)[:, None].expand_as(self.alive)
        return last[self.alive], positions[self.alive]

    def uniforms(self) -> torch.Tensor:
        """One uniform per growing particle, in row order, each run's from its own generator."""
        counts = self.alive.sum(1).tolist()
        parts = [torch.rand(c, generator=g, dtype=torch.float64) for g, c in zip(self.generators, counts) if c]
        return torch.cat(parts)

    def step(self, tokens: torch.Tensor, log_q: torch.Tensor, log_p: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Take the drawn tokens of the growing particles; update weights, absorb, maybe resample.

        Returns (source rows of the particles growing at the next step, relative to this cohort's
        first row; runs that ended at this step).
        """
        cfg, N = self.cfg, self.cfg.num_particles
        fed = self.alive
        rank = torch.full(fed.shape, -1, dtype=torch.long)
        rank[fed] = torch.arange(int(fed.sum()))
        self.sampled += fed.sum(1)
        alpha_prev, self.t = alpha_at(self.t, cfg), self.t + 1
        alpha_t = alpha_at(self.t, cfg)
        # Every particle is reweighted towards p^alpha_t; growing ones also for their new token.
        self.logw += _bridge_log_weight(alpha_t, alpha_prev, self.logp_sum)
        self.logw[fed] += _token_log_weight(alpha_t, log_p, log_q)
        self.logp_sum[fed] += log_p
        self.tokens[:, :, self.t - 1][fed] = tokens
        self.logp[:, :, self.t - 1][fed] = log_p
        self.length[fed] += 1
        last = self.tokens[:, :, self.t - 1]
        absorbed = fed & (torch.isin(last, self.eos) | (self.length >= self.budget))
        self.alive = fed & ~absorbed
        ancestors = torch.arange(N).expand_as(fed).clone()
        ess = _ess(self.logw)
        self.min_ess = torch.where(self.finished, self.min_ess, torch.minimum(self.min_ess, ess))
        if self.t % cfg.resample_every == 0:
            # Runs with a growing particle only: a finished population is picked from by its weights.
            checked = self.alive.any(1)
            self.ess_sum += torch.where(checked, ess, 0.0)
            self.checks += checked.long()
            resample = (ess < cfg.ess_threshold * N) & checked
            if resample.any():
                runs = resample.nonzero().squeeze(1)
                uniforms = torch.stack([torch.rand((), generator=self.generators[r], dtype=torch.float64)
                                        for r in runs.tolist()])
                picked = _pick(self.logw[runs], uniforms, N)
                ancestors[runs] = picked
                for name in ("tokens", "logp"):
                    values = getattr(self, name)
                    values[runs] = values[runs].gather(1, picked[:, :, None].expand(-1, -1, values.shape[2]))
                for name in ("length", "logp_sum", "alive"):
                    values = getattr(self, name)
                    values[runs] = values[runs].gather(1, picked)
                self.logw[runs] = (torch.logsumexp(self.logw[runs], 1, keepdim=True) - math.log(N)).expand(-1, N)
                self.resamples[runs] += 1
        ended = ~self.alive.any(1) & ~self.finished  # every particle absorbed (resampling can absorb them all)
        if ended.any():
            # Bridge the last intermediate target to p^alpha (nonzero only when the ramp is unfinished).
            self.logw[ended] += _finish_log_weight(cfg.alpha, alpha_t, self.logp_sum[ended])
            self.min_ess[ended] = torch.minimum(self.min_ess[ended], _ess(self.logw[ended]))
        self.finished |= ended
        return _source_rows(rank, ancestors, self.alive), ended.nonzero().squeeze(1).tolist()

    def result(self, r: int, fed_prefix: int) -> SampleResult:
        """Run r's output: one particle drawn in proportion to its final weight."""
        u = torch.rand((1,), generator=self.generators[r], dtype=torch.float64)
        k = int(_pick(self.logw[r:r + 1], u, 1)[0, 0])
        n = int(self.length[r, k])
        tokens = self.tokens[r, k, :n].tolist()
        N, checks = self.cfg.num_particles, int(self.checks[r])
        stats = {"sampled_tokens": int(self.sampled[r]),
                 "forward_tokens": fed_prefix + int(self.sampled[r]),
                 "wall_seconds": self.stats[r]["wall_seconds"],
                 "resamples": int(self.resamples[r]),
                 "min_ess": float(self.min_ess[r]),
                 "mean_ess_fraction": float(self.ess_sum[r]) / (checks * N) if checks else None,
                 "ess_checks": checks,
                 "final_ess_fraction": float(_ess(self.logw[r:r + 1])[0]) / N,
                 "log_z": float(torch.logsumexp(self.logw[r], 0)) - math.log(self.cfg.num_particles),
                 "num_particles": self.cfg.num_particles}
        reason = "eos" if tokens[-1] in self.eos.tolist() else "length"
        return SampleResult(tokens, self.logp[r, k, :n].tolist(), reason, stats)


@torch.no_grad()
def smc_sample(model, prompts: list[list[int]], cfg: SMCConfig | None = None, *, seed: int = 0,
               seeds: list[int] | None = None,
               on_result: Callable[[int, SampleResult], None] | None = None) -> list[SampleResult]:
    """Run one Power-SMC run per prompt (a list of token ids; entries may repeat); return each run's pick.

    Run i draws from its own generator seeded with `seeds[i]` (default derive_seed(seed, i)).
    `on_result(i, result)` is called as soon as run i finishes.
    """
    cfg = cfg or SMCConfig()
    seeds = row_seeds(seed, seeds, len(prompts))
    limit = check_prompts(model, prompts)
    if isinstance(model, VllmModel):
        # imported here: vllm_samplers builds on this module
        from .vllm_samplers import smc_vllm
        return smc_vllm(model, prompts, cfg, seeds=seeds, on_result=on_result)
    check_full_attention(model, "smc_sample")
    eos = eos_token_ids(model)
    budgets = [cfg.max_new_tokens if limit is None else min(cfg.max_new_tokens, limit - len(p)) for p in prompts]
    device = next(model.parameters()).device
    results: list[SampleResult | None] = [None] * len(prompts)
    clock = TimeShare()  # each run's wall_seconds: its share (per row) of the steps it took part in
    queue = deque(range(len(prompts)))
    cohorts: list[_Cohort] = []  # in cache row order
    cache, mask = None, None  # mask: (rows, width) attention mask over the cache's slots
    while queue or cohorts:
        free = cfg.batch_size - sum(c.rows() for c in cohorts)
        admit = max(free // cfg.num_particles, 0 if cohorts else 1)
        if admit and queue:
            index = [queue.popleft() for _ in range(min(admit, len(queue)))]
            cohort = _Cohort(index, [list(prompts[i]) for i in index], [seeds[i] for i in index],
                             [budgets[i] for i in index], cfg, eos)
            cache, mask = _admit(model, cohort, cache, mask, device)
            cohorts.append(cohort)
        feeds = [c.feed() for c in cohorts]
        feed = torch.cat([f[0] for f in feeds])[:, None].to(device)
        positions = torch.cat([f[1] for f in feeds])[:, None].to(device)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        logits = cached_forward(model, feed, mask, positions, cache, logits_to_keep=1).logits[:, -1, :]
        uniforms = torch.cat([c.uniforms() for c in cohorts])
        tokens, log_q, log_p = _draw(logits, uniforms, cfg)
        counts = [c.alive.sum(1).tolist() for c in cohorts]  # growing particles per run, fed at this step
        keep, offset, ended = [], 0, []
        for c in cohorts:
            rows = c.rows()
            src, finished = c.step(tokens[offset:offset + rows], log_q[offset:offset + rows],
                                   log_p[offset:offset + rows])
            keep.append(src + offset)
            ended += [(c, r) for r in finished]
            offset += rows
        _charge_per_row(clock, cohorts, counts)  # this step (and any admission since the last charge)
        for c, r in ended:
            i = c.index[r]
            results[i] = c.result(r, len(c.prompts[r]) - 1)
            if on_result is not None:
                on_result(i, results[i])
            clock.skip()  # the caller's time in on_result is not sampling time
        cohorts = [c for c in cohorts if not bool(c.finished.all())]
        keep = torch.cat(keep)
        if len(keep) == 0:
            cache, mask = None, None
        elif len(keep) != mask.shape[0] or not torch.equal(keep, torch.arange(len(keep))):
            index = keep.to(device)
            cache.batch_select_indices(index)
            mask = mask[index]
        if mask is not None:
            cache, mask = _trim(cache, mask)
    return results  # type: ignore[return-value]


def _charge_per_row(clock: TimeShare, cohorts: list[_Cohort], counts: list[list[int]]) -> None:
    """Split the time since the last charge among the runs in proportion to their rows (`counts`)."""
    step: dict = {}
    clock.charge([step])
    share = step["wall_seconds"] / max(sum(map(sum, counts)), 1)
    for c, per_run in zip(cohorts, counts):
        for stats, k in zip(c.stats, per_run):
            stats["wall_seconds"] += share * k


def _trim(cache, mask):
    """Cut off the leading columns masked in every row once they are a quarter of the width."""
    used = mask.any(0)
    first = int(used.int().argmax())
    if first == 0 or first * 4 < mask.shape[1]:
        return cache, mask
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
    return cache, mask[:, first:]


def _admit(model, cohort: _Cohort, cache, mask, device):
    """Prefill the new runs' prompts (all but the last token, which their first step feeds), one row
    per run; expand each to num_particles rows and append them to the batch's cache, left-padding
    the narrower side with masked zero slots. Returns (cache, mask)."""
    prefix = [p[:-1] for p in cohort.prompts]
    n, N = len(prefix), cohort.cfg.num_particles
    width = max(len(p) for p in prefix)
    fresh, fresh_mask = None, torch.zeros((n, 0), dtype=torch.long, device=device)
    if width:
        # A run with nothing to prefill (a one-token prompt) feeds one dummy token, masked afterwards.
        ids, fresh_mask, positions = left_pad([p or [0] for p in prefix], 0, device)
        fresh = DynamicCache(config=model.config)
        cached_forward(model, ids, fresh_mask, positions, fresh, logits_to_keep=1)
        empty = torch.tensor([not p for p in prefix], device=device)
        fresh_mask = fresh_mask.masked_fill(empty[:, None], 0)
        fresh.batch_repeat_interleave(N)
    fresh_mask = fresh_mask.repeat_interleave(N, dim=0)
    if mask is None:
        return (fresh if fresh is not None else DynamicCache(config=model.config)), fresh_mask
    old_width, new_width = mask.shape[1], fresh_mask.shape[1]
    width = max(old_width, new_width)
    mask = torch.cat([_pad_left(mask, width), _pad_left(fresh_mask, width)])
    if width == 0:
        return cache, mask
    ref = (fresh if new_width else cache).layers
    layers = []
    for layer in range(len(ref)):
        pair = []
        for name in ("keys", "values"):
            like = getattr(ref[layer], name)
            old = getattr(cache.layers[layer], name) if old_width else like.new_zeros(
                (len(mask) - n * N, like.shape[1], 0, like.shape[3]))
            new = getattr(fresh.layers[layer], name) if new_width else like.new_zeros(
                (n * N, like.shape[1], 0, like.shape[3]))
            pair.append(torch.cat([_pad_left(old, width, dim=2), _pad_left(new, width, dim=2)]))
        layers.append(tuple(pair))
    return DynamicCache(ddp_cache_data=layers), mask


def _pad_left(x: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
