"""Power sampling: Metropolis-Hastings over whole completions, targeting p(x)^alpha (Karan & Du 2025).

    from sharpen.sampling import PowerSamplingConfig, load_model, power_sample
    model, tok = load_model("smollm2-135m")
    cfg = PowerSamplingConfig(alpha=4.0, block_size=192, mcmc_steps=10, max_new_tokens=3072)  # the paper's
    results = power_sample(model, [tok("2+3=")["input_ids"]], cfg, seed=0)  # one chain per prompt
    results[0].token_ids, results[0].logprobs, results[0].stats  # proposals, accepted, ... forward_tokens

Target. pi(x) proportional to p(x | c)^alpha over completions x (generated tokens only) that end
with EOS or stop at `max_new_tokens`; p is the base model at temperature 1.

Kernel (Algorithm 1 of the paper, with an exact acceptance rule). Block k has target length
L_k = min(k * block_size, max_new_tokens), so a last block may be shorter. A chain first grows
its state x to L_k (or EOS) with the proposal q (the base model at `proposal_temperature`,
default 1/alpha, optionally top-k / top-p), then takes `mcmc_steps` MH steps. A step picks i
uniformly among the |x| generated tokens of x (EOS included; see also "Position rule"),
regenerates x'[i:] with q until EOS or L_k (a proposal cut at L_k without EOS is a valid
outcome) and accepts with

    log A = alpha * [log p(x'[i:]) - log p(x[i:])] + [log q(x[i:]) - log q(x'[i:])] + log|x| - log|x'|

Both suffixes are taken whole (the reference code truncates the current one to the proposal's
length when the proposal stops early at EOS, which breaks detailed balance), and the last term
is the ratio of the chances of picking i from x' and from x. Per-token log q of the current
state is the value stored when the token was drawn: it depends only on the token's prefix, so
it is the probability of regenerating x[i:] from x[:i]. alpha*log p and log q come from the
same forward pass (`draw.draw_tokens`). Block k's steps leave pi_k (p^alpha over completions of
at most L_k tokens) invariant; this is checked by exact enumeration in tests/test_power_exactness.py.

Position rule. `position="uniform"` (the paper) is the rule above. The other two draw i from
P(i | x) = w_i / W(x), W(x) = sum over j < |x| of w_j, with weights from H_j, the entropy of
p(. | c, x[:j]) (nats, temperature 1; the logits token j was drawn or scored from, so no extra
forward pass):

- `position="entropy_cut"`: the decision-point rule of Zhou, Mehrotra & Liu 2026 ("Cutting at
  Decision Points", arXiv 2605.30327) as their code has it (felix-cfzhou/Reasoning-with-Sampling,
  mcmc_cut.py, cut_power 4): w_i = max(0, H_i - H_{i-1})^4 with H_{-1} = 0, so the first position
  weighs H_0^4. When W(x) = 0 (no entropy rise anywhere, i.e. every H_j = 0: p is a point mass
  along x, in float32 at least) i is uniform, P(i | x) = 1/|x|. The reference code does the same, and
  computes the reverse law the same way over x', so when W(x) = 0 < W(x') its cut ratio has
  log P(i | x') = log(0 / W(x')) = -inf (numpy warns) and the proposal is rejected: that is the
  right MH rule, since x' cannot choose i (w_i = 0 in both states) and the reverse move has
  probability 0. Here the same case gives 1/P(i | x') = inf and a rejection, without warning.
- `position="entropy"`: sharpen's own variant, not the paper's rule: w_i = 0.1 + max(0, H_i -
  H_{i-1}) with H_{-1} = H_0, so positions where the entropy jumps up are resampled most and the
  floor keeps every position possible; the first position gets only the floor. Measured from
  H_{-1} = 0 its jump would be H_0 itself, which on SmolLM2 arithmetic put half the steps at i = 0
  and made a step cost 30% more tokens than uniform (20% fewer from H_{-1} = H_0).

Both are exact: w_i depends on x[:i] only, so the acceptance ratio's position term is log P(i | x')
- log P(i | x) with each state's own law (W(x') takes the proposal's own entropies for x'[i:]); for
w_i > 0 it is log W(x) - log W(x'), and with w = 1 the uniform rule's log|x| - log|x'|. Checked by
exact enumeration, with broken variants, in tests/test_power_entropy.py.

Starts. `init="proposal"` (default, the paper) grows every block with q. `init="base"` grows every
block with the base model at temperature 1 on q's support (the tokens top-k / top-p leave the
proposal, renormalised; with neither, p itself), while the MH proposals stay q and log q of a grown
token is still the proposal's, from the same logits, as the acceptance ratio needs. Only the state
each block's MH steps start from changes, so the target is the same; two starts that disagree after
the steps say that the chains have not mixed (sharpen.analysis.mixing compares them). On q's
support, not top-p of p at temperature 1: that nucleus is wider than the proposal's when T < 1, and
a state holding a token q cannot draw can never be left (its reverse proposal has probability 0).
`init="both"` starts chains with an even sample index (`sample_indices`, else the position in the
prompt list) from the proposal and odd ones from the base model; each result's `fields["init"]`
says which.

`stop_on_eos=True` (the paper) stops a chain after a block whose state ended in EOS; that
freezes early chains under an intermediate target, so the output is not p^alpha even with
infinitely many steps. `stop_on_eos=False` lets a finished chain keep taking the remaining
blocks' MH steps (it does not grow; a proposal may lengthen it): the last block then targets
p^alpha over all completions up to `max_new_tokens`.

Cost. About T + N * T^2 / (4B) tokens are sampled for T generated tokens (a proposal
regenerates half the state on average). `implementation="batched"` (default) advances up to
`batch_size` chains together, each at its own position: a decode step feeds one token per chain,
with per-chain attention masks and position ids over one append-only KV cache. A proposal from
position i attends to the state's cached keys/values before i and re-feeds only token i-1 (whose
logits give x'[i]); the state's later keys/values stay cached, masked out, until the step is
accepted or rejected. So forward tokens = prompt + sampled tokens: no kept prefix is recomputed.
A chain starts its next operation as soon as its last one ends, so rows never wait for each
other. Dead slots are compacted away (a gather) when they exceed ~sqrt(2 * length), when chains
finish (queued chains then take their rows) or when many rows idle. Memory: up to prompt + twice
the block end slots per chain (state and proposal are both kept until the decision).
`implementation="reference"` has the reference code's cost profile (one chain at a time, prompt
and kept prefix re-run for every proposal) with the same acceptance rule and random stream, for
side-by-side benchmarks (benchmarks/bench_power.py).

Randomness. Chain j draws everything (tokens, positions, accept uniforms) from its own
torch.Generator seeded with seeds[j] (default derive_seed(seed, j)), so its output does not
depend on the batch it runs in, and both implementations give the same chains (up to float
rounding of the logits). With mcmc_steps=0 a chain is plain sampling at proposal_temperature.
With top-k / top-p, chains target p^alpha restricted to the completions the proposal can produce.

Supported models: decoder-only models with full attention on every layer (the batched
implementation puts dead slots inside the attention window; sliding-window layers are refused).

On the vLLM engine (`load_model(spec, engine="vllm")`) each operation of a chain is one request that continues
prompt + kept prefix, all chains' operations of a round in one engine call, with the same chains and
acceptance rule (sharpen/sampling/vllm_samplers.py; top-k / top-p, the entropy rules and the reference
implementation are refused there).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from .draw import (
    check_alpha,
    check_integers,
    default_proposal_temperature,
    draw_from_logprobs,
    draw_tokens,
    make_generator,
    proposal_logprobs,
    row_seeds,
    validate_processing,
)
from .generate import SampleResult, check_prompts, left_pad
from .models import cached_forward, check_full_attention, eos_token_ids
from .timeshare import TimeShare
from .vllm_engine import VllmModel

IMPLEMENTATIONS = ("batched", "reference")
POSITIONS = ("uniform", "entropy", "entropy_cut")
ENTROPY_FLOOR = 0.1  # the entropy rule's weight of a position without an entropy jump (nats)
CUT_POWER = 4.0  # entropy_cut's exponent of the entropy rise (cut_power in the decision-point code)
INITS = ("proposal", "base", "both")


@dataclass
class PowerSamplingConfig:
    """Settings of power-MH sampling.

    The defaults are chosen to reach p^alpha (exact relaxation times on enumerable models, README
    "Defaults that reach the target"): proposal temperature 1/sqrt(alpha) and chains that keep running
    after EOS. The paper's Algorithm 1 (proposal 1/alpha, stop after a block that ends in EOS) is
    `profile: reference` in a study, or those two settings given explicitly.
    """

    alpha: float = field(default=4.0, metadata={"help": "Power of the target p(x)^alpha (0.01 to 100)."})
    block_size: int = field(default=192, metadata={"help": "Tokens added per block before its MH steps (>= 1)."})
    mcmc_steps: int = field(default=10, metadata={"help": "MH steps per block (>= 0)."})
    max_new_tokens: int = field(default=3072, metadata={"help": "Token budget of a completion (>= 1)."})
    proposal_temperature: float | None = field(
        default=None, metadata={"help": "Temperature of the proposal q (0.01 to 100); None: 1/sqrt(alpha) (the paper: "
                                        "1/alpha), resolved when the config is made (pass None again when changing alpha with replace())."})
    top_k: int | None = field(default=None, metadata={"help": "Proposal keeps the k most likely tokens (None: off)."})
    top_p: float | None = field(default=None, metadata={"help": "Proposal nucleus mass in (0, 1] (None: off)."})
    stop_on_eos: bool = field(
        default=False, metadata={"help": "Stop a chain after a block whose state ended in EOS (true: the paper, "
                                         "which cuts the chain short of p^alpha); false (default) targets "
                                         "p^alpha exactly."})
    implementation: str = field(
        default="batched", metadata={"help": "batched (prefix reuse, chains batched) or reference (one chain "
                                             "at a time, prefix re-run per proposal; for benchmarks)."})
    batch_size: int = field(default=64, metadata={"help": "Chains advanced together (batched implementation)."})
    position: str = field(
        default="uniform", metadata={"help": "How an MH step picks the position to resample: uniform (the paper), "
                                           "entropy_cut (decision-point MH: weight max(0, rise of the base "
                                           "model's next-token entropy)^4) or entropy (sharpen's variant: 0.1 + "
                                           "the rise). Exact: the choice enters the acceptance ratio."})
    init: str = field(
        default="proposal", metadata={"help": "What grows each block before its MH steps: proposal (q, the "
                                            "paper), base (p at temperature 1 on q's support) or both (even "
                                            "sample index proposal, odd base: the mixing diagnostic's two starts)."})

    def __post_init__(self):
        check_alpha(self.alpha)
        check_integers(self, {"block_size": 1, "mcmc_steps": 0, "max_new_tokens": 1, "batch_size": 1})
        if self.proposal_temperature is None:
            self.proposal_temperature = default_proposal_temperature(self.alpha)
        validate_processing(self.proposal_temperature, self.top_k, self.top_p, name="proposal_temperature")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got '{self.implementation}'")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got '{self.position}'")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got '{self.init}'")


def _log_accept_ratio(alpha: float, cur_logp, cur_logq, prop_logp, prop_logq, n_cur: float, n_prop: float) -> float:
    """log A of replacing the current suffix (cur_*) by the proposed one (prop_*), both whole.

    n_cur, n_prop: 1 / P(i | x) and 1 / P(i | x'), the inverse chances of choosing the position i
    from each state (`_inverse_chance`: |x|, |x'| for the uniform rule; inf when x' cannot choose i,
    which rejects), so log n_cur - log n_prop = log P(i | x') - log P(i | x), the position-choice term.
    """
    return (alpha * (math.fsum(prop_logp) - math.fsum(cur_logp)) + (math.fsum(cur_logq) - math.fsum(prop_logq))
            + math.log(n_cur) - math.log(n_prop))


def _position_weights(position: str, entropy: list[float]) -> list[float]:
    """Unnormalized chances w_j of resampling from position j (P(j | x) = w_j / sum w), given the state's entropies.

    H_j (`entropy[j]`) is the entropy of p(. | c, x[:j]), the distribution token j was drawn from, so
    w_j depends on x[:j] only. uniform: w = 1. entropy (sharpen's variant): ENTROPY_FLOOR + max(0, H_j -
    H_{j-1}) with H_{-1} = H_0. entropy_cut (decision points): max(0, H_j - H_{j-1})^CUT_POWER with
    H_{-1} = 0, and w = 1 everywhere when that is 0 everywhere (no entropy rise).

    >>> _position_weights("entropy_cut", [0.5, 0.2, 1.2]), _position_weights("entropy_cut", [0.0, 0.0])
    ([0.0625, 0.0, 1.0], [1.0, 1.0])
    """
    if position == "uniform":
        return [1.0] * len(entropy)
    if position == "entropy":
        return [ENTROPY_FLOOR + max(0.0, h - prev) for prev, h in zip(entropy[:1] + entropy[:-1], entropy)]
    weights = [max(0.0, h - prev) ** CUT_POWER for prev, h in zip([0.0] + entropy[:-1], entropy)]
    return weights if any(w > 0 for w in weights) else [1.0] * len(entropy)


def _inverse_chance(position: str, entropy: list[float], i: int) -> float:
    """1 / P(i | x) for the state whose entropies are `entropy`: W(x) / w_i (|x| for uniform), inf if w_i = 0."""
    if position == "uniform":
        return len(entropy)
    weights = _position_weights(position, entropy)
    return math.fsum(weights) / weights[i] if weights[i] > 0 else math.inf


class _Chain:
    """One MH chain as a sequence of operations (grow, or one MH proposal), driven by either implementation.

    An operation regenerates the completion from position `start` to the block end (or EOS); the
    driver feeds `feed_token` at `feed_pos` (prompt + completion coordinates), draws a token from the
    logits with this chain's generator and calls `push`; when `push` returns True it calls `finish_op`.
    """

    def __init__(self, index: int, prompt: list[int], seed: int, cfg: PowerSamplingConfig, eos: set[int],
                 budget: int, init: list[int] | None = None, growth: str = "proposal"):
        self.index, self.prompt, self.cfg, self.eos = index, prompt, cfg, eos
        self.growth = growth  # what grows each block: "proposal" (q) or "base" (p on q's support)
        self.generator = make_generator(seed)
        self.ends = [min(k * cfg.block_size, budget) for k in range(1, -(-budget // cfg.block_size) + 1)]
        self.block = 0
        self.init = list(init or [])
        if len(self.init) > self.ends[0]:
            raise ValueError(f"initial state of chain {index} is longer than the first block ({self.ends[0]})")
        self.tokens: list[int] = []
        self.logp: list[float] = []
        self.logq: list[float] = []
        # Entropy of p at each token's prefix (computed for the entropy rules only, 0.0 otherwise)
        self.ent: list[float] = []
        self.phase = "grow"  # grow: the block still has to grow the state; mh: its MH steps are running
        self.mh_left = 0
        self.op = ""
        self.start = 0
        self.ptok: list[int] = []
        self.plogp: list[float] = []
        self.plogq: list[float] = []
        self.pent: list[float] = []
        self.feed_token = 0
        self.feed_pos = 0
        self.done = False
        self.stats = {"proposals": 0, "accepted": 0, "sampled_tokens": 0, "forward_tokens": 0, "wall_seconds": 0.0}

    @property
    def target(self) -> int:
        return self.ends[self.block]

    @property
    def draws_from_base(self) -> bool:
        """The running operation draws its tokens from the base model (a block's growth under init "base")."""
        return self.op == "grow" and self.growth == "base"

    def ended(self) -> bool:
        return bool(self.tokens) and self.tokens[-1] in self.eos

    def begin(self, logp: list[float], logq: list[float], ent: list[float]) -> None:
        """Take the scored initial state (usually empty) and start the first operation."""
        self.tokens, self.logp, self.logq, self.ent = self.init, list(logp), list(logq), list(ent)
        self._next()

    def _next(self) -> None:
        """Start the next operation, or mark the chain done."""
        while True:
            if self.phase == "grow":
                if not self.ended() and len(self.tokens) < self.target:
                    return self._start("grow", len(self.tokens))
                self.phase, self.mh_left = "mh", self.cfg.mcmc_steps
            if self.mh_left > 0:
                self.mh_left -= 1
                return self._start("mh", self._choose_position())
            if (self.cfg.stop_on_eos and self.ended()) or self.block == len(self.ends) - 1:
                self.done = True
                return
            self.block, self.phase = self.block + 1, "grow"

    def _choose_position(self) -> int:
        """Draw the MH step's position i from P(i | x): one draw from the chain's generator."""
        if self.cfg.position == "uniform":
            return int(torch.randint(len(self.tokens), (), generator=self.generator))
        cumulative = list(itertools.accumulate(_position_weights(self.cfg.position, self.ent)))
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        return min(bisect.bisect_right(cumulative, u * cumulative[-1]), len(cumulative) - 1)

    def _start(self, op: str, start: int) -> None:
        self.op, self.start = op, start
        self.ptok, self.plogp, self.plogq, self.pent = [], [], [], []
        # The token before the regenerated part is fed again: its logits give the first new token.
        self.feed_token = self.tokens[start - 1] if start > 0 else self.prompt[-1]
        self.feed_pos = len(self.prompt) + start - 1

    def push(self, token: int, logp: float, logq: float, ent: float) -> bool:
        """Add a drawn token to the running operation; True when the operation is complete."""
        self.ptok.append(token)
        self.plogp.append(logp)
        self.plogq.append(logq)
        self.pent.append(ent)
        self.stats["sampled_tokens"] += 1
        self.feed_token, self.feed_pos = token, self.feed_pos + 1
        return token in self.eos or self.start + len(self.ptok) >= self.target

    def finish_op(self) -> bool:
        """Accept or reject the completed operation (growth is always kept); start the next one."""
        i = self.start
        if self.op == "grow":
            accept = True
            self.phase, self.mh_left = "mh", self.cfg.mcmc_steps
        else:
            # P(i | x') uses x' = x[:i] + proposal: the shared prefix's entropies and the proposal's own.
            log_a = _log_accept_ratio(self.cfg.alpha, self.logp[i:], self.logq[i:], self.plogp, self.plogq,
                                      _inverse_chance(self.cfg.position, self.ent, i),
                                      _inverse_chance(self.cfg.position, self.ent[:i] + self.pent, i))
            u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
            accept = u == 0.0 or math.log(u) < log_a
            self.stats["proposals"] += 1
            self.stats["accepted"] += int(accept)
        if accept:
            self.tokens = self.tokens[:i] + self.ptok
            self.logp = self.logp[:i] + self.plogp
            self.logq = self.logq[:i] + self.plogq
            self.ent = self.ent[:i] + self.pent
        self._next()
        return accept

    def result(self) -> SampleResult:
        stats = dict(self.stats)
        stats["acceptance_rate"] = stats["accepted"] / stats["proposals"] if stats["proposals"] else None
        return SampleResult(list(self.tokens), list(self.logp), "eos" if self.ended() else "length", stats,
                            fields={"init": self.growth})


@torch.no_grad()
def power_sample(model, prompts: list[list[int]], cfg: PowerSamplingConfig | None = None, *, seed: int = 0,
                 seeds: list[int] | None = None, on_result: Callable[[int, SampleResult], None] | None = None,
                 sample_indices: list[int] | None = None) -> list[SampleResult]:
    """Run one power-MH chain per prompt (a list of token ids); return each chain's final state.

    Chain i draws from its own generator seeded with `seeds[i]` (default derive_seed(seed, i)).
    `on_result(i, result)` is called as soon as chain i finishes. `sample_indices[i]`: chain i's
    index among its problem's samples (default i), which picks its start under init="both".
    """
    return _run(model, prompts, cfg or PowerSamplingConfig(), seed=seed, seeds=seeds, on_result=on_result,
                sample_indices=sample_indices)


def chain_start(cfg: PowerSamplingConfig, sample_index: int) -> str:
    """What grows chain `sample_index`'s blocks: "proposal" or "base" (init "both": even / odd index).

    >>> [chain_start(PowerSamplingConfig(init="both"), i) for i in range(3)]
    ['proposal', 'base', 'proposal']
    """
    if cfg.init != "both":
        return cfg.init
    return "proposal" if sample_index % 2 == 0 else "base"


def _run(model, prompts, cfg, *, seed=0, seeds=None, on_result=None, init=None,
         sample_indices=None) -> list[SampleResult]:
    """power_sample, plus `init`: per-chain initial states (used by the exactness tests)."""
    seeds = row_seeds(seed, seeds, len(prompts))
    if init is not None and len(init) != len(prompts):
        raise ValueError(f"init has {len(init)} entries for {len(prompts)} prompts")
    if sample_indices is None:
        sample_indices = range(len(prompts))
    elif len(sample_indices) != len(prompts):
        raise ValueError(f"sample_indices has {len(sample_indices)} entries for {len(prompts)} prompts")
    limit = check_prompts(model, prompts)
    if isinstance(model, VllmModel):
        # imported here: vllm_samplers builds on this module
        from .vllm_samplers import power_vllm
        return power_vllm(model, prompts, cfg, seeds=seeds, sample_indices=sample_indices, on_result=on_result,
                          init=init)
    eos = set(eos_token_ids(model))
    chains = [_Chain(i, list(p), seeds[i], cfg, eos,
                     cfg.max_new_tokens if limit is None else min(cfg.max_new_tokens, limit - len(p)),
                     init[i] if init is not None else None, chain_start(cfg, sample_indices[i]))
              for i, p in enumerate(prompts)]
    results: list[SampleResult | None] = [None] * len(prompts)
    clock = TimeShare()  # each chain's stats["wall_seconds"]: its share of the time of the steps it took part in

    def done(chain: _Chain) -> None:
        results[chain.index] = chain.result()
        if on_result is not None:
            on_result(chain.index, results[chain.index])
        clock.skip()  # the caller's time in on_result is not sampling time

    if cfg.implementation == "reference":
        _run_reference(model, chains, cfg, done, clock)
    else:
        _run_batched(model, chains, cfg, done, clock)
    return results  # type: ignore[return-value]


def _entropies(logits: torch.Tensor, cfg: PowerSamplingConfig) -> list[float]:
    """(B, V) raw logits -> entropy of p (temperature 1, nats) per row for the entropy rules; zeros otherwise."""
    if cfg.position == "uniform":
        return [0.0] * logits.shape[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (-torch.where(logp > -math.inf, logp.exp() * logp, 0.0).sum(-1)).tolist()


def _score(logits: torch.Tensor, tokens: list[int], cfg: PowerSamplingConfig):
    """(len(tokens), V) logits that predicted `tokens` -> their base log p, proposal log q and entropy."""
    if not tokens:
        return [], [], []
    index = torch.tensor(tokens, device=logits.device)[:, None]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, index).squeeze(-1)
    logq = proposal_logprobs(logits, cfg.proposal_temperature, cfg.top_k, cfg.top_p).gather(-1, index).squeeze(-1)
    return logp.tolist(), logq.tolist(), _entropies(logits, cfg)


def _draw(logits: torch.Tensor, chains: list[_Chain], cfg: PowerSamplingConfig):
    """Draw one token per chain from (B, V) logits: (tokens, log p, log q, entropy of p), lists of B.

    A chain growing from the base model draws from p renormalised on q's support; log q is q's either way.
    """
    generators = [c.generator for c in chains]
    base = [b for b, c in enumerate(chains) if c.draws_from_base]
    if not base:
        tokens, log_q, log_p = draw_tokens(logits, generators, cfg.proposal_temperature, cfg.top_k, cfg.top_p)
        return tokens.tolist(), log_p.tolist(), log_q.tolist(), _entropies(logits, cfg)
    log_q_all = proposal_logprobs(logits, cfg.proposal_temperature, cfg.top_k, cfg.top_p)  # (B, V)
    log_p_all = torch.log_softmax(logits.float(), dim=-1)
    rows = torch.tensor(base, device=logits.device)
    drawn_from = log_q_all.clone()
    drawn_from[rows] = torch.log_softmax(log_p_all[rows].masked_fill(log_q_all[rows] == -math.inf, -math.inf), -1)
    tokens = draw_from_logprobs(drawn_from, generators)[:, None]
    return (tokens.squeeze(-1).tolist(), log_p_all.gather(-1, tokens).squeeze(-1).tolist(),
            log_q_all.gather(-1, tokens).squeeze(-1).tolist(), _entropies(logits, cfg))


# ---------------------------------------------------------------------------------------------
# Reference cost profile: one chain at a time, the whole prompt + kept prefix re-run per proposal.


def _run_reference(model, chains: list[_Chain], cfg: PowerSamplingConfig, done, clock: TimeShare) -> None:
    device = next(model.parameters()).device
    for chain in chains:
        prompt, init = chain.prompt, chain.init
        scored = [], [], []
        if init:
            ids = torch.tensor([prompt + init[:-1]], device=device)
            logits = model(input_ids=ids, logits_to_keep=len(init)).logits[0]
            scored = _score(logits, init, cfg)
            chain.stats["forward_tokens"] += ids.shape[1]
        chain.begin(*scored)
        while not chain.done:
            ids = torch.tensor([prompt + chain.tokens[:chain.start]], device=device)
            cache = DynamicCache(config=model.config)
            out = cached_forward(model, ids, torch.ones_like(ids), None, cache, logits_to_keep=1)
            chain.stats["forward_tokens"] += ids.shape[1]
            while True:
                (token,), (lp,), (lq,), (h,) = _draw(out.logits[:, -1, :], [chain], cfg)
                if chain.push(token, lp, lq, h):
                    break
                width = cache.get_seq_length() + 1
                out = cached_forward(model, torch.tensor([[token]], device=device),
                                     torch.ones((1, width), dtype=torch.long, device=device),
                                     torch.tensor([[chain.feed_pos]], device=device), cache)
                chain.stats["forward_tokens"] += 1
            chain.finish_op()
        clock.charge([chain.stats])
        done(chain)


# ---------------------------------------------------------------------------------------------
# Batched: many chains, each at its own position, over one append-only KV cache.


class _Row:
    """A chain's place in the batched KV cache: the slots holding its state and its running operation."""

    __slots__ = ("chain", "state_slots", "op_slots")

    def __init__(self, chain: _Chain, state_slots: list[int]):
        self.chain = chain
        self.state_slots = state_slots  # slot of each cached state position (prompt + completion, all but the last)
        self.op_slots: list[int] = []  # slots written by the running operation, in order

    def attended(self) -> list[int]:
        """Slots the running operation attends to: the kept prefix, then its own tokens."""
        keep = len(self.chain.prompt) + self.chain.start - 1
        return self.state_slots[:keep] + self.op_slots


def _slack(longest: int) -> int:
    """Dead slots allowed beyond the longest live row before compacting.

    Each step costs about (live + dead) slots of cache traffic, a compaction about `longest`: a
    slack near sqrt(2 * longest) balances the two (8 slots for toy models, ~80 for 3000 tokens).
    """
    return 8 + int(math.sqrt(2 * longest))


def _run_batched(model, chains: list[_Chain], cfg: PowerSamplingConfig, done, clock: TimeShare) -> None:
    check_full_attention(model, "power_sample")
    device = next(model.parameters()).device
    queue = deque(chains)
    rows: list[_Row | None] = []  # None: an idle row whose chain finished, dropped at the next compaction
    cache = mask = None  # mask: (B, capacity) attention mask over cache slots; `width` of them are in use
    width = check_at = idle = 0
    while queue or len(rows) > idle:
        compact = len(rows) == idle or (idle > 0 and (bool(queue) or idle * 8 >= len(rows)))
        if not compact and width > check_at:
            longest = max(len(r.state_slots) + len(r.op_slots) for r in rows if r is not None)
            compact, check_at = width > longest + _slack(longest), longest + _slack(longest)
        if compact:
            rows, cache, mask, width = _compact(model, rows, queue, cfg, cache, device, done)
            check_at, idle = width + _slack(width), 0
            if not rows:
                continue
            row_chains = [r.chain for r in rows]
            active = list(range(len(rows)))
        # One decode step: every row feeds one token at its own position and attends to its own slots.
        feed = torch.tensor([c.feed_token for c in row_chains], device=device)[:, None]
        pos = torch.tensor([c.feed_pos for c in row_chains], device=device)[:, None]
        if width == mask.shape[1]:
            mask = torch.cat([mask, mask.new_zeros((len(rows), max(_slack(width), 1)))], dim=1)
        slot, width = width, width + 1
        mask[:, slot] = 1
        logits = cached_forward(model, feed, mask[:, :width], pos, cache, logits_to_keep=1).logits[:, -1, :]
        if len(active) < len(rows):
            logits = logits[torch.tensor(active, device=device)]
        tokens, logp, logq, ent = _draw(logits, [row_chains[b] for b in active], cfg)
        # This step, and any compaction or prefill since the last one, served the active chains.
        clock.charge([row_chains[b].stats for b in active])
        restarted, finished = [], False
        for j, b in enumerate(active):
            row, chain = rows[b], row_chains[b]
            row.op_slots.append(slot)
            chain.stats["forward_tokens"] += 1
            if not chain.push(tokens[j], logp[j], logq[j], ent[j]):
                continue
            keep = len(chain.prompt) + chain.start - 1
            if chain.finish_op():
                row.state_slots = row.state_slots[:keep] + row.op_slots
            row.op_slots = []
            if chain.done:
                # The row idles (feeding a dummy token that attends only to itself) until compaction.
                rows[b], row_chains[b], finished = None, _IDLE, True
                mask[b, :width] = 0
                idle += 1
                done(chain)
            else:
                restarted.append(b)
        if finished:
            active = [b for b in active if rows[b] is not None]
        if restarted:
            # A new operation attends only to the kept prefix of the state.
            index = torch.tensor(restarted, device=device)
            mask[index, :width] = 0
            attended = [rows[b].attended() for b in restarted]
            lengths = torch.tensor([len(a) for a in attended], device=device)
            slots = torch.tensor(list(itertools.chain.from_iterable(attended)), dtype=torch.long, device=device)
            mask[torch.repeat_interleave(index, lengths), slots] = 1


class _Idle:
    """Stands in for a finished chain in its row until the row is dropped."""

    feed_token = 0
    feed_pos = 0


_IDLE = _Idle()


def _compact(model, old_rows: list[_Row | None], queue: deque, cfg, cache, device, done):
    """Rebuild the cache: drop idle rows, pack each live row's slots to the left, add chains from `queue`.

    Returns (rows, cache, mask, width): the mask has room for more slots beyond `width`.
    New chains are prefilled with their prompt (all but its last token, which their first operation
    feeds again) and, if given, their initial state.
    """
    live = [(b, r) for b, r in enumerate(old_rows) if r is not None]
    new_chains = []
    while queue and len(live) + len(new_chains) < cfg.batch_size:
        new_chains.append(queue.popleft())
    # (source cache, its batch index of each row, live slots of each row)
    groups = [(cache, [b for b, _ in live], [r.state_slots + r.op_slots for _, r in live])]
    rows = [r for _, r in live]
    if new_chains:
        fresh, slots = _prefill(model, new_chains, cfg, device)
        keep = []
        for b, chain in enumerate(new_chains):
            if chain.done:  # nothing to do, e.g. an initial state that is already final
                done(chain)
                continue
            rows.append(_Row(chain, slots[b]))
            keep.append(b)
        groups.append((fresh, keep, [slots[b] for b in keep]))
    if not rows:
        return [], None, None, 0
    width = max(len(s) for _, _, group in groups for s in group)
    gathers = []  # per group: (source, batch index, slot index (G, width), padding (G, width)) or zeros
    for source, batch, group in groups:
        if not group:
            continue
        if not any(group):  # rows with nothing cached yet (one-token prompts): padding only
            gathers.append((None, len(group), None, None))
            continue
        # Pad with slot 0 and zero the padding afterwards: pads are masked, but must be finite.
        index = torch.tensor([s + [0] * (width - len(s)) for s in group], device=device)
        lengths = torch.tensor([len(s) for s in group], device=device)
        pads = torch.arange(width, device=device)[None, :] >= lengths[:, None]
        gathers.append((source, torch.tensor(batch, device=device), index, pads))
    layers = []
    filled = next((g[0] for g in gathers if g[0] is not None), None)
    for layer in range(len(filled.layers) if width else 0):
        ref = filled.layers[layer].keys  # (B, H, S, D)
        keys, values = [], []
        for source, batch, index, pads in gathers:
            if source is None:
                keys.append(ref.new_zeros((batch, ref.shape[1], width, ref.shape[3])))
                values.append(ref.new_zeros((batch, ref.shape[1], width, ref.shape[3])))
                continue
            k, v = source.layers[layer].keys[batch], source.layers[layer].values[batch]
            gather = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            keys.append(k.gather(2, gather).masked_fill_(pads[:, None, :, None], 0))
            values.append(v.gather(2, gather).masked_fill_(pads[:, None, :, None], 0))
        layers.append((torch.cat(keys), torch.cat(values)))
    packed = DynamicCache(ddp_cache_data=layers) if layers else DynamicCache()
    lives = [s for _, _, group in groups for s in group]
    for row, s in zip(rows, lives):
        n_state = len(row.state_slots)
        row.state_slots = list(range(n_state))
        row.op_slots = list(range(n_state, len(s)))
    mask = torch.zeros((len(rows), width + _slack(width)), dtype=torch.long, device=device)
    attended = [row.attended() for row in rows]
    lengths = torch.tensor([len(a) for a in attended], device=device)
    slots = torch.tensor(list(itertools.chain.from_iterable(attended)), dtype=torch.long, device=device)
    mask[torch.repeat_interleave(torch.arange(len(rows), device=device), lengths), slots] = 1
    return rows, packed, mask, width


def _prefill(model, chains: list[_Chain], cfg, device):
    """Run new chains' prompts (and initial states) through the model; start their first operation.

    Returns (cache, slots): slots[b] lists the cache slots of chain b's cached positions.
    """
    prefix = [c.prompt + c.init[:-1] if c.init else c.prompt[:-1] for c in chains]
    width = max(len(p) for p in prefix)
    cache = DynamicCache()
    logits = None
    if width:
        # A chain with nothing to prefill (a one-token prompt) gets one dummy token nobody attends to.
        ids, mask, positions = left_pad([p or [0] for p in prefix], 0, device)
        keep = max(len(c.init) for c in chains)
        logits = cached_forward(model, ids, mask, positions, cache, logits_to_keep=max(keep, 1)).logits
    slots = []
    for b, (chain, p) in enumerate(zip(chains, prefix)):
        chain.stats["forward_tokens"] += len(p)
        scored = _score(logits[b, logits.shape[1] - len(chain.init):], chain.init, cfg) if chain.init else ([], [], [])
        chain.begin(*scored)
        slots.append(list(range(width - len(p), width)))
    return cache, slots
