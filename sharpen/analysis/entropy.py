"""Entropy and support: how spread a method's own samples are, and which of base's correct answers it keeps.

    from sharpen.analysis.entropy import answer_entropy, support, token_entropy
    token_entropy(m.kind, m.settings, m.by_problem())  # (entry or None, note): nats per token, m a MethodRecords
    answer_entropy(outcomes["grpo"], samples=16)   # entry: nats over extracted answers, per problem
    support(outcomes["base"], outcomes["grpo"])    # {"retention": entry, "new_correct_answers": entry}

Token entropy is a Monte-Carlo estimate: for tokens drawn from q, E[-log q(x_t | prefix)] is
the entropy of q at that prefix, so per problem sum(-log q) / sum(tokens) over the
method's samples estimates its entropy rate along its own completions (nats per generated
token, EOS included), averaged over problems. It needs log q of the distribution each token
was really drawn from. Records carry `token_logprobs` (and their sum `base_logprob_sum`):
log p of the *sampling model at temperature 1*. That is log q for methods whose registry
entry says so (Method.proposal_logprobs: base and grpo, which decode their model at
temperature 1), as long as their records show temperature 1 and no top-k/top-p, so the
estimate is exact in expectation there. A record field `sampling_logprobs` (log q per token,
not yet written by the sampler) is used wherever present. For other plain decoders
(low_temp) the tokens came from p^(1/T)/Z_t, whose normaliser the records lack; the power
samplers draw whole completions from (an approximation of) p^alpha / Z, whose normaliser is
unknown; records of a method this process has not registered (a plug-in not installed here)
have unknown traits: for all of them the entry is None and the note says why.

Answer entropy: per problem, the Shannon entropy (nats) of the empirical distribution of
extracted answers over the first `samples` samples (by sample_idx), with "no answer"
counted as one more answer (a method that mostly fails to answer is spread, not sure). The
plug-in estimator grows with the number of samples, so every method is measured at the
same count (the run's smallest samples-per-problem of at least 2).

Support, against base on the shared problems and the first m samples of each (m the
smaller sample count of the two, so neither side gets more draws): retention is, over
problems where base produced some correct answer, the fraction of base's distinct correct
answers that the method also produced; new_correct_answers is the mean number per problem
of distinct correct answers the method produced and base did not (its `total` sums them).
Base itself gets no support entry (its retention is 1 by definition).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from sharpen.sampling.methods import find_method

from .outcomes import Outcomes, shared_problems
from .stats import interval_entry


def shannon(answers: list) -> float:
    """Entropy in nats of the empirical distribution of `answers` (None is one answer among the others).

    >>> shannon(["1", "1"]), round(shannon(["1", "2"]), 6), round(shannon(["1", None, "1", None]), 6)
    (0.0, 0.693147, 0.693147)
    """
    counts = np.array(list(Counter(answers).values()), dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: no -0.0


def _token_source(kind: str, settings: dict | None, records: list[dict]) -> tuple[str | None, str]:
    """Which record field holds log q of the sampled tokens ('sampling_logprobs', 'token_logprobs'), and why."""
    if records and all(r.get("sampling_logprobs") is not None for r in records):
        return "sampling_logprobs", "log-probs of the distribution each token was drawn from (sampling_logprobs)"
    temperatures = {r.get("temperature") for r in records if r.get("temperature") is not None}
    processed = [k for k in ("top_k", "top_p") if (settings or {}).get(k) is not None]
    method = find_method(kind)
    if method is None:
        return None, (f"not available: method {kind} is not registered in this process (is the plug-in that "
                      f"defines it installed?), so what its token_logprobs measure is unknown")
    if not method.proposal_logprobs:
        if method.plain_decoding:
            return None, ("not available: tokens were drawn from a reshaped p (e.g. temperature T < 1) and the "
                          "records hold log p at temperature 1 only (needs sampling_logprobs)")
        return None, ("not available: the method samples whole completions (a p^alpha target whose normaliser "
                      "the records lack), not token by token from a recorded distribution")
    if temperatures - {1, 1.0}:
        return None, f"not available: records were sampled at temperature {sorted(temperatures)}, not 1"
    if processed:
        return None, f"not available: sampled with {', '.join(processed)} (the records hold unprocessed log p)"
    return "token_logprobs", "the sampling model at temperature 1 (records' token_logprobs)"


def token_entropy(kind: str, settings: dict | None, groups: dict[str, list[dict]], confidence: float = 0.95,
                  n_resamples: int = 2000, seed: int = 0) -> tuple[dict | None, str]:
    """(entry in nats per token, what it was computed from), or (None, why not)."""
    records = [r for g in groups.values() for r in g]
    source, note = _token_source(kind, settings, records)
    if source is None:
        return None, note

    def surprisal(r) -> float | None:
        if source == "token_logprobs" and r.get("token_logprobs") is None:
            return None if r.get("base_logprob_sum") is None else -float(r["base_logprob_sum"])
        values = r.get(source)
        return None if values is None else -float(np.sum(values))

    per_problem = []
    for group in groups.values():
        pairs = [(surprisal(r), len(r["completion_ids"])) for r in group if r["completion_ids"]]
        pairs = [(s, t) for s, t in pairs if s is not None]
        tokens = sum(t for _, t in pairs)
        per_problem.append(sum(s for s, _ in pairs) / tokens if tokens else None)
    if not any(v is not None for v in per_problem):
        return None, "not available: no record carries token_logprobs or base_logprob_sum"
    entry = interval_entry(per_problem, confidence, n_resamples, seed)
    return {**entry, "unit": "nats per token", "distribution": note}, note


def answer_entropy(o: Outcomes, samples: int | None, confidence: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0) -> dict | None:
    """Mean over problems of the entropy (nats) of the first `samples` answers; None without answers or samples."""
    if samples is None or not o.answered() or int(o.n.min()) < samples:
        return None
    values = [shannon(a[:samples]) for a in o.answers]
    return {**interval_entry(values, confidence, n_resamples, seed), "samples": samples, "unit": "nats"}


def _correct_answers(o: Outcomes, row: int, m: int) -> set[str]:
    return {a for a, ok in zip(o.answers[row][:m], o.correct[row][:m]) if ok and a is not None}


def support(base: Outcomes, method: Outcomes, confidence: float = 0.95, n_resamples: int = 2000,
            seed: int = 0) -> dict | None:
    """{"retention", "new_correct_answers"} entries of `method` against `base`; None without shared answers."""
    ia, ib = shared_problems(base, method)
    if ia.size == 0 or not (base.answered() and method.answered()):
        return None
    m = int(min(base.n[ia].min(), method.n[ib].min()))
    retention, new = [], []
    for i, j in zip(ia, ib):
        kept, found = _correct_answers(base, i, m), _correct_answers(method, j, m)
        retention.append(len(kept & found) / len(kept) if kept else None)
        new.append(float(len(found - kept)))
    out = {"samples": m, "problems": int(ia.size)}
    out["retention"] = interval_entry(retention, confidence, n_resamples, seed)
    out["new_correct_answers"] = {**interval_entry(new, confidence, n_resamples, seed), "total": int(sum(new))}
    if not out["retention"]["problems"]:
        out["retention"] = None  # base solved none of the shared problems: nothing to retain
    return out

