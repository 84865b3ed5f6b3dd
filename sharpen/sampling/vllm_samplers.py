"""power_mh, power_smc and power_sps on the vLLM engine: continuations as requests that reuse the prefix cache.

    .venv-vllm/bin/sharpen sample --engine vllm --model smollm2-135m --task basic_arithmetic --method power_mh \\
        --alpha 4 --block-size 16 --mcmc-steps 2 --num-problems 8 --max-new-tokens 48 --output-dir runs/vllm_mh

    from sharpen.sampling import PowerSamplingConfig, load_model, power_sample
    model, tok = load_model("smollm2-135m", engine="vllm")      # a VllmModel: power_sample dispatches here
    results = power_sample(model, [tok("2+3=")["input_ids"]], PowerSamplingConfig(max_new_tokens=48), seed=0)

power_sample, smc_sample and sps_sample call these functions when their model is a VllmModel; the
settings dataclasses, the SampleResult schema and the stats are theirs (plus `cached_prompt_tokens`,
the prompt tokens the engine read from its prefix cache; `forward_tokens` counts only what it computed).
The rules (acceptance ratio, weights, decision law) are the transformers samplers' own functions,
called through their modules, so the two engines cannot drift apart; only the drawing of tokens moves
into the engine, with per-request seeds derived from each chain's / run's / entry's seed
(sharpen.sampling.derive_seed), so results are reproducible and independent of the batch.

How the engine is used, and why:

- power_mh (power.py): a chain is power.py's `_Chain`. Each of its operations (growing block k to
  L_k, or one MH proposal from position i) is one request continuing prompt + x[:i] at the proposal
  temperature (init "base" grows at temperature 1), stopped at EOS or L_k; log p of each proposed token
  is the engine's raw log-prob and log q comes from the normalisers of the same logits
  (`score_temperatures`, vllm_engine.py): no extra forward pass. The current state's per-token log p /
  log q are those stored when its tokens were drawn. The operations of all chains of a batch (one per
  chain) go in one engine call per round. What is recomputed: the kept prefix's last, partial block of
  32 tokens (the prefix cache holds whole blocks) and the proposed suffix; on transformers nothing of
  the prefix is recomputed, but every step is a Python-driven decode of the whole batch.
- power_smc (smc.py): a particle is a request. Between two ESS checks (every `resample_every` tokens)
  particles do not interact, so each segment is one request per growing particle continuing prompt +
  its tokens, in one engine call for all runs of a batch; the weights are then replayed token by token
  in float64 Python with smc.py's functions (alpha ramp, bridge, absorption, ESS, systematic
  resampling at the check), which gives the same weights as stepping. After resampling, surviving
  particles continue from their ancestors' prefixes, which the cache holds.
- power_sps (sps.py): the K candidates of a prefix are the engine's top-K log-probs (`top_logprobs`);
  each candidate's M rollouts are M requests continuing prompt + prefix + candidate at temperature 1,
  with derived seeds; all rollouts of all entries of a round go in one engine call. The first rollout
  of each candidate also reports the top-K at its first position, i.e. the next decision's candidates
  when that candidate is chosen; when it has none (no room for a rollout), a one-token probe asks.

Not honoured on this engine, refused with a one-line ValueError before sampling: top-k / top-p
proposals of power_mh and power_smc (log q needs the cut distribution's normaliser, which the
normaliser processor does not record), power_mh's entropy position rules (per-position entropies),
its `implementation="reference"` (the transformers cost profile) and initial states (`init=` of
power._run), and power_sps with more candidates than the engine's max_logprobs (20).

Exactness: tests/test_vllm_samplers.py checks each sampler's draws against the exact p^alpha of an
enumerable model by chi-square, with a broken variant that the same test rejects.

Measured cost (benchmarks/bench_engines.py, SmolLM2-135M, 8 basic_arithmetic prompts x 32 tokens, alpha 4,
its POWER_SETTINGS; 2 shared CPU cores at load average 4-5, OMP_NUM_THREADS=1): latency per completion as a
multiple of plain sampling on the same engine, and forward tokens per completion (vLLM: computed ones;
it also read 172 / 408 / 6264 prompt tokens from its cache):

    sampler     hf: x plain, forward     vllm: x plain, forward
    power_mh        3.29      115            1.87      170
    power_smc       2.95      257            2.38      388
    power_sps      13.27      962           22.73     4167

MH and SMC cost less than on transformers, relative to plain sampling. SPS costs more: each of the K * M
rollouts of a decision recomputes the prefix's last, partial cache block (L mod 32 tokens, 16 on average,
against rollouts of at most 8 tokens here), which the transformers sampler copies from the prefix's KV
rows instead; vLLM's prefix cache shares whole blocks only, and n-sampling (SamplingParams.n) fans out into
the same separate requests.
"""

from __future__ import annotations

import math
import time

import torch

from . import power, smc, sps
from .draw import derive_seed, make_generator
from .generate import SampleResult, check_budget
from .models import context_length, eos_token_ids
from .vllm_engine import VllmModel


def _engine_call(model: VllmModel, prompts: list[list[int]], seeds: list[int], budgets: list[int], **params):
    """One engine call: (completions, tokens the engine computed for each request, each request's seconds).

    A request's seconds are the call's time split in proportion to what the engine computed for it (its
    uncached prompt tokens and its completion but the last token), as decode_vllm splits it.
    """
    started = time.perf_counter()
    done = model.generate(prompts, seeds=seeds, max_new_tokens=budgets, eos=eos_token_ids(model), **params)
    elapsed = time.perf_counter() - started
    forward = [len(p) - c.cached_prompt_tokens + len(c.token_ids) - 1 for p, c in zip(prompts, done)]
    total = max(sum(forward), 1)
    return done, forward, [elapsed * f / total for f in forward]


def _charge(stats: dict, completion, forward: int, seconds: float) -> None:
    stats["forward_tokens"] += forward
    stats["cached_prompt_tokens"] = stats.get("cached_prompt_tokens", 0) + completion.cached_prompt_tokens
    stats["wall_seconds"] += seconds


def _budgets(model, prompts: list[list[int]], max_new_tokens: int) -> list[int]:
    check_budget(model, max_new_tokens)
    limit = context_length(model)
    return [max_new_tokens if limit is None else min(max_new_tokens, limit - len(p)) for p in prompts]


# ---------------------------------------------------------------------------------------------
# power_mh


def check_power_settings(cfg: power.PowerSamplingConfig, init) -> None:
    """ValueError for power_mh settings the vLLM path cannot honour (before any sampling)."""
    if cfg.top_k is not None or cfg.top_p is not None:
        raise ValueError("power_mh on engine vllm takes pure temperature proposals: leave top_k and top_p unset "
                         "(or use engine hf)")
    if cfg.position != "uniform":
        raise ValueError(f"power_mh on engine vllm supports position uniform only, got '{cfg.position}' "
                         f"(entropy rules: use engine hf)")
    if cfg.implementation != "batched":
        raise ValueError(f"power_mh on engine vllm has one implementation, batched (the default), got "
                         f"'{cfg.implementation}'")
    if init is not None:
        raise ValueError("power_mh on engine vllm grows its chains from the prompt: initial states (init=) "
                         "need engine hf")


def power_vllm(model: VllmModel, prompts, cfg: power.PowerSamplingConfig, *, seeds, sample_indices, on_result,
               init=None) -> list[SampleResult]:
    """power._run on the vLLM engine: `batch_size` chains at a time, one request per chain per round."""
    check_power_settings(cfg, init)
    budgets = _budgets(model, prompts, cfg.max_new_tokens)
    eos = set(eos_token_ids(model))
    results: list[SampleResult | None] = [None] * len(prompts)
    for first in range(0, len(prompts), cfg.batch_size):
        chains = [power._Chain(i, list(prompts[i]), seeds[i], cfg, eos, budgets[i], None,
                               power.chain_start(cfg, sample_indices[i]))
                  for i in range(first, min(first + cfg.batch_size, len(prompts)))]
        ops = [0] * len(chains)  # operations each chain has run: with its seed, they derive the request's seed
        for c in chains:
            c.stats["cached_prompt_tokens"] = 0
            c.begin([], [], [])
        live = [j for j, c in enumerate(chains) if not c.done]
        while live:
            done, forward, seconds = _engine_call(
                model, [chains[j].prompt + chains[j].tokens[:chains[j].start] for j in live],
                [derive_seed(seeds[chains[j].index], "mh", ops[j]) for j in live],
                [chains[j].target - chains[j].start for j in live],
                temperature=[1.0 if chains[j].draws_from_base else cfg.proposal_temperature for j in live],
                score_temperatures=[cfg.proposal_temperature])
            for j, completion, f, s in zip(live, done, forward, seconds):
                chain, ops[j] = chains[j], ops[j] + 1
                ended = False
                for token, log_p, log_q in zip(completion.token_ids, completion.logprobs, completion.log_q):
                    ended = chain.push(token, log_p, log_q[0], 0.0)  # entropy unused: position uniform
                if not ended or len(chain.ptok) != len(completion.token_ids):
                    raise RuntimeError(f"engine vllm stopped chain {chain.index}'s operation after "
                                       f"{len(completion.token_ids)} tokens, not at EOS or the block end")
                _charge(chain.stats, completion, f, s)
                chain.finish_op()
                if chain.done:
                    results[chain.index] = chain.result()
                    if on_result is not None:
                        on_result(chain.index, results[chain.index])
            live = [j for j in live if not chains[j].done]
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# power_smc


class _Run:
    """One SMC run: N particles as token lists, their weights (float64), its generator and counters."""

    def __init__(self, index: int, prompt: list[int], seed: int, budget: int, cfg: smc.SMCConfig, eos: set[int]):
        n = cfg.num_particles
        self.index, self.prompt, self.seed, self.budget, self.cfg, self.eos = index, prompt, seed, budget, cfg, eos
        self.generator = make_generator(seed)
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.logp: list[list[float]] = [[] for _ in range(n)]  # per-token log p at temperature 1
        self.logp_sum = torch.zeros(n, dtype=torch.float64)
        self.logw = torch.zeros(n, dtype=torch.float64)
        self.alive = torch.ones(n, dtype=torch.bool)
        self.t, self.finished = 0, False
        self.resamples, self.checks, self.ess_sum, self.min_ess = 0, 0, 0.0, float(n)
        self.stats = {"sampled_tokens": 0, "forward_tokens": 0, "cached_prompt_tokens": 0, "wall_seconds": 0.0}

    def segment_end(self) -> int:
        """Tokens generated at the end of the running segment: the next ESS check, or the budget."""
        return min((self.t // self.cfg.resample_every + 1) * self.cfg.resample_every, self.budget)

    def replay(self, growing: list[int], drawn: list[tuple[list[int], list[float], list[float]]]) -> None:
        """Take the segment's draws (tokens, log p, log q) of the `growing` particles; apply smc.py's step rule
        to each of its tokens in turn, then its ESS check and resampling."""
        cfg, n = self.cfg, self.cfg.num_particles
        end = self.segment_end()
        width = end - self.t
        lp = torch.zeros((n, width), dtype=torch.float64)
        lq = torch.zeros((n, width), dtype=torch.float64)
        for k, (tokens, log_p, log_q) in zip(growing, drawn):
            lp[k, :len(tokens)] = torch.tensor(log_p, dtype=torch.float64)
            lq[k, :len(tokens)] = torch.tensor(log_q, dtype=torch.float64)
            self.tokens[k] += tokens
            self.logp[k] += log_p
            self.stats["sampled_tokens"] += len(tokens)
        eos = list(self.eos)
        for j in range(width):
            fed = self.alive
            alpha_prev, self.t = smc.alpha_at(self.t, cfg), self.t + 1
            alpha_t = smc.alpha_at(self.t, cfg)
            self.logw += smc._bridge_log_weight(alpha_t, alpha_prev, self.logp_sum)
            self.logw[fed] += smc._token_log_weight(alpha_t, lp[fed, j], lq[fed, j])
            self.logp_sum[fed] += lp[fed, j]
            last = torch.tensor([x[self.t - 1] if len(x) >= self.t else -1 for x in self.tokens])
            self.alive = fed & ~(torch.isin(last, torch.tensor(eos or [-1])) | torch.tensor(self.t >= self.budget))
            ess = float(smc._ess(self.logw[None])[0])
            self.min_ess = min(self.min_ess, ess)
            if self.t % cfg.resample_every == 0 and bool(self.alive.any()):
                self.ess_sum, self.checks = self.ess_sum + ess, self.checks + 1
                if ess < cfg.ess_threshold * n:
                    u = torch.rand((), generator=self.generator, dtype=torch.float64)
                    picked = smc._pick(self.logw[None], u[None], n)[0].tolist()
                    self.tokens = [list(self.tokens[a]) for a in picked]
                    self.logp = [list(self.logp[a]) for a in picked]
                    self.logp_sum, self.alive = self.logp_sum[picked], self.alive[picked]
                    self.logw = (torch.logsumexp(self.logw, 0) - math.log(n)).expand(n).clone()
                    self.resamples += 1
            if not bool(self.alive.any()):
                # Bridge the last intermediate target to p^alpha (nonzero only when the ramp is unfinished).
                self.logw += smc._finish_log_weight(cfg.alpha, alpha_t, self.logp_sum)
                self.min_ess = min(self.min_ess, float(smc._ess(self.logw[None])[0]))
                self.finished = True
                return
        growing_left = [k for k in growing if bool(self.alive[k])]
        if any(len(self.tokens[k]) != self.t for k in growing_left):
            raise RuntimeError(f"engine vllm stopped a particle of SMC run {self.index} before EOS or its segment end")

    def result(self) -> SampleResult:
        """The run's output: one particle drawn in proportion to its final weight (smc.py's pick)."""
        n, checks = self.cfg.num_particles, self.checks
        u = torch.rand((1,), generator=self.generator, dtype=torch.float64)
        k = int(smc._pick(self.logw[None], u, 1)[0, 0])
        stats = dict(self.stats, resamples=self.resamples, min_ess=self.min_ess,
                     mean_ess_fraction=self.ess_sum / (checks * n) if checks else None, ess_checks=checks,
                     final_ess_fraction=float(smc._ess(self.logw[None])[0]) / n,
                     log_z=float(torch.logsumexp(self.logw, 0)) - math.log(n), num_particles=n)
        tokens = self.tokens[k]
        return SampleResult(list(tokens), list(self.logp[k]), "eos" if tokens[-1] in self.eos else "length", stats)


def smc_vllm(model: VllmModel, prompts, cfg: smc.SMCConfig, *, seeds, on_result) -> list[SampleResult]:
    """smc_sample on the vLLM engine: batch_size // num_particles runs at a time (at least one), each segment
    between ESS checks one engine call with a request per growing particle."""
    if cfg.top_k is not None or cfg.top_p is not None:
        raise ValueError("power_smc on engine vllm takes pure temperature proposals: leave top_k and top_p unset "
                         "(or use engine hf)")
    budgets = _budgets(model, prompts, cfg.max_new_tokens)
    eos = set(eos_token_ids(model))
    per_batch = max(cfg.batch_size // cfg.num_particles, 1)
    results: list[SampleResult | None] = [None] * len(prompts)
    for first in range(0, len(prompts), per_batch):
        runs = [_Run(i, list(prompts[i]), seeds[i], budgets[i], cfg, eos)
                for i in range(first, min(first + per_batch, len(prompts)))]
        while any(not r.finished for r in runs):
            owners = [(r, k) for r in runs if not r.finished for k in range(cfg.num_particles) if bool(r.alive[k])]
            done, forward, seconds = _engine_call(
                model, [r.prompt + r.tokens[k] for r, k in owners],
                [derive_seed(r.seed, "smc", r.t, k) for r, k in owners],
                [r.segment_end() - r.t for r, _ in owners],
                temperature=cfg.proposal_temperature, score_temperatures=[cfg.proposal_temperature])
            drawn: dict[int, tuple[list[int], list]] = {}
            for (r, k), completion, f, s in zip(owners, done, forward, seconds):
                _charge(r.stats, completion, f, s)
                entry = drawn.setdefault(id(r), ([], []))
                entry[0].append(k)
                entry[1].append((completion.token_ids, completion.logprobs, [q[0] for q in completion.log_q]))
            for r in runs:
                if id(r) in drawn:
                    r.replay(*drawn[id(r)])
                    if r.finished:
                        results[r.index] = r.result()
                        if on_result is not None:
                            on_result(r.index, results[r.index])
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# power_sps


def sps_vllm(model: VllmModel, prompts, cfg: sps.SPSConfig, *, seeds, on_result) -> list[SampleResult]:
    """sps_sample on the vLLM engine: `batch_size` entries at a time, all their rollouts of a round in one call."""
    k_count = min(cfg.num_candidates, int(model.config.vocab_size))
    if k_count > model.max_logprobs:
        raise ValueError(f"power_sps on engine vllm takes at most {model.max_logprobs} candidates (the engine's "
                         f"max_logprobs), got num_candidates {cfg.num_candidates}")
    budgets = _budgets(model, prompts, cfg.max_new_tokens)
    eos = set(eos_token_ids(model))
    results: list[SampleResult | None] = [None] * len(prompts)
    for first in range(0, len(prompts), cfg.batch_size):
        entries = [sps._Entry(i, list(prompts[i]), seeds[i], budgets[i])
                   for i in range(first, min(first + cfg.batch_size, len(prompts)))]
        for e in entries:
            e.stats["cached_prompt_tokens"] = 0
            e.candidates = None  # (tokens, log p) of the next decision's candidates, once known
        active = list(entries)
        while active:
            probe = [e for e in active if e.candidates is None]
            if probe:
                # The next token's top-K: one token drawn at T = 1, only its position's log-probs are read.
                done, forward, seconds = _engine_call(
                    model, [e.prompt + e.tokens for e in probe], [derive_seed(seeds[e.index], "probe", len(e.tokens))
                                                                  for e in probe], [1] * len(probe),
                    top_logprobs=k_count)
                for e, completion, f, s in zip(probe, done, forward, seconds):
                    _charge(e.stats, completion, f, s)
                    e.candidates = _ranked(completion.top[0])
            requests = []  # (entry, candidate rank, rollout)
            for e in active:
                t = len(e.tokens)
                allowed = e.horizon_end(cfg) - t - 1
                e.lookahead += allowed
                if t + 1 < e.budget and allowed > 0:
                    requests += [(e, k, m) for k, c in enumerate(e.candidates[0]) if c not in eos
                                 for m in range(cfg.num_rollouts)]
            done, forward, seconds = _engine_call(
                model, [e.prompt + e.tokens + [e.candidates[0][k]] for e, k, _ in requests],
                [derive_seed(seeds[e.index], len(e.tokens), k, m) for e, k, m in requests],
                [e.horizon_end(cfg) - len(e.tokens) - 1 for e, _, _ in requests],
                top_logprobs=[k_count if m == 0 else 0 for _, _, m in requests]) if requests else ([], [], [])
            log_w = {id(e): torch.zeros((len(e.candidates[0]), cfg.num_rollouts), dtype=torch.float64)
                     for e in active}
            after = {}  # (entry, candidate rank) -> the top-K after that candidate, from its first rollout
            for (e, k, m), completion, f, s in zip(requests, done, forward, seconds):
                _charge(e.stats, completion, f, s)
                e.stats["rollouts"] += 1
                e.stats["rollout_tokens"] += len(completion.token_ids)
                e.stats["sampled_tokens"] += len(completion.token_ids)
                log_w[id(e)][k, m] = (cfg.alpha - 1.0) * math.fsum(completion.logprobs)
                if m == 0:
                    after[(id(e), k)] = _ranked(completion.top[0])
            still = []
            for e in active:
                tokens, cand_logp = e.candidates
                probs = sps.decision_probs(cfg.alpha, torch.tensor([cand_logp], dtype=torch.float64),
                                           log_w[id(e)][None])[0]
                u = torch.rand((), generator=e.generator, dtype=torch.float64)
                cdf = probs.cumsum(-1)
                choice = min(int(torch.searchsorted(cdf, (u * cdf[-1])[None], right=True)), len(tokens) - 1)
                e.tokens.append(tokens[choice])
                e.logp.append(cand_logp[choice])
                e.stats["sampled_tokens"] += 1
                e.stats["decisions"] += 1
                if tokens[choice] in eos or len(e.tokens) >= e.budget:
                    results[e.index] = e.result(eos)
                    if on_result is not None:
                        on_result(e.index, results[e.index])
                else:
                    e.candidates = after.get((id(e), choice))  # None: the next round probes
                    still.append(e)
            active = still
    return results  # type: ignore[return-value]


def _ranked(top: dict[int, float]) -> tuple[list[int], list[float]]:
    """{token: log p} of the top-K -> (tokens, log p), most likely first (sps.py's torch.topk order)."""
    pairs = sorted(top.items(), key=lambda item: -item[1])
    return [v for v, _ in pairs], [lp for _, lp in pairs]
