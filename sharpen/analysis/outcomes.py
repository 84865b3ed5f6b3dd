"""One method instance's records as per-problem arrays, built once and shared by the large-k analyses.

    from sharpen.analysis.outcomes import Outcomes, shared_problems
    base = Outcomes.from_groups("base", "base", run.methods["base"].by_problem())
    base.n, base.c                      # (P,) samples and correct samples per problem
    base.pass_matrix([1, 4, 16])        # (P, 3) unbiased pass@k per problem
    ia, ib = shared_problems(base, other)   # rows of the problems both have, in base's order

sharpen.analysis.boundary, sharpen.analysis.equal_compute and sharpen.analysis.entropy read these arrays instead of
the records, so the records are walked once per method. Answers are normalised as
stats.majority_vote_score does it (str, whitespace stripped; empty counts as no answer).
`kind` is the method that made the records; `trait(name)` reads that method's traits from the
registry (sharpen.sampling.methods), and is False for a method this process has not registered
(records of a plug-in not installed here): such an instance is analysed as a sampler of unknown
kind, never as a reference.

A weighted method's records (Method.weighted: each carries importance_log_weight, e.g. power_is) are draws
of a proposal, not of the method's target: `weights` holds each problem's self-normalised importance
weights and `rates` is then each problem's weighted estimate (sharpen.analysis.target), so anything
comparing rates (the paired comparisons) compares estimates; n, c and answers stay the raw draws, which
the sections built on them (pass@k, coverage, crossover, boundary, equal compute, entropy) leave
weighted methods out of (MetricInputs.drawn). Records of a method not registered here count as
weighted when every one of them carries the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sharpen.sampling.methods import find_method

from .stats import pass_at_k_matrix
from .target import WEIGHT_FIELD, importance_weights


def normalise_answer(answer) -> str | None:
    """The answer as majority vote compares it: stripped text, None when there is none.

    >>> normalise_answer(" 7 "), normalise_answer(""), normalise_answer(None), normalise_answer(3)
    ('7', None, None, '3')
    """
    if answer is None:
        return None
    text = str(answer).strip()
    return text or None


@dataclass
class Outcomes:
    """Per-problem correctness, answers and costs of one method instance, in (problem_id, sample_idx) order."""

    name: str
    kind: str
    pids: list[str]
    correct: list[np.ndarray]  # per problem: (n_p,) bool, in sample_idx order
    answers: list[list[str | None]]  # per problem: normalised extracted answers
    forward: list[np.ndarray]  # per problem: (n_p,) forward tokens, NaN where a record has none
    _rows: dict[str, int] = field(default_factory=dict, repr=False)
    # A weighted method's per-problem (n_p,) self-normalised importance weights (each sums to 1); None: draws
    weights: list[np.ndarray] | None = None

    @classmethod
    def from_groups(cls, name: str, kind: str, groups: dict[str, list[dict]]) -> Outcomes:
        """From MethodRecords.by_problem(): {problem_id: records sorted by sample_idx}."""
        correct, answers, forward = [], [], []
        for group in groups.values():  # one pass over the records: a run may hold millions
            ok, said, cost = [], [], []
            for r in group:
                ok.append(bool(r["correct"]))
                said.append(normalise_answer(r.get("extracted_answer")))
                c = r.get("cost")
                value = c.get("forward_tokens") if isinstance(c, dict) else None
                cost.append(np.nan if value is None else value)
            correct.append(np.array(ok, dtype=bool))
            answers.append(said)
            forward.append(np.array(cost, dtype=float))
        pids = list(groups)
        weights = None
        if _weighted(kind, groups):
            missing = [(pid, r["sample_idx"]) for pid, g in groups.items() for r in g if r.get(WEIGHT_FIELD) is None]
            if missing:
                raise ValueError(f"{name}: records of a weighted method need {WEIGHT_FIELD}; problem {missing[0][0]} "
                                 f"sample {missing[0][1]} and {len(missing) - 1} other(s) lack it")
            weights = [importance_weights([r[WEIGHT_FIELD] for r in g]) for g in groups.values()]
        return cls(name, kind, pids, correct, answers, forward, {pid: i for i, pid in enumerate(pids)}, weights)

    @property
    def n(self) -> np.ndarray:
        return np.array([len(x) for x in self.correct], dtype=np.int64)

    @property
    def c(self) -> np.ndarray:
        return np.array([int(x.sum()) for x in self.correct], dtype=np.int64)

    @property
    def rates(self) -> np.ndarray:
        """(P,) fraction of correct samples per problem; a weighted method's: sum_i w_i correct_i, its estimate."""
        if self.weights is not None:
            return np.array([float(w @ ok) for w, ok in zip(self.weights, self.correct)])
        return self.c / self.n

    @property
    def weighted(self) -> bool:
        """Whether the records are a weighted sample of the target (Method.weighted), not draws of it."""
        return self.weights is not None

    def trait(self, name: str) -> bool:
        """Trait `name` of the method that made the records (sharpen.sampling.methods.Method); False when
        this process has not registered that method.

        >>> Outcomes("b", "base", [], [], [], []).trait("samples_base_distribution")
        True
        >>> Outcomes("m", "not_installed_here", [], [], [], []).trait("equal_compute_reference")
        False
        """
        method = find_method(self.kind)
        return bool(method is not None and getattr(method, name))

    def rows(self, pids) -> np.ndarray:
        return np.array([self._rows[p] for p in pids], dtype=np.int64)

    def pass_matrix(self, ks, rows=None) -> np.ndarray:
        """(P, K) unbiased pass@k of the problems `rows` (default all); every k must be <= their samples."""
        rows = np.arange(len(self.pids)) if rows is None else np.asarray(rows)
        return pass_at_k_matrix(self.n[rows], self.c[rows], list(ks))

    def answered(self) -> bool:
        """Whether any record carries an extracted answer."""
        return any(a is not None for group in self.answers for a in group)

    def mean_forward(self, rows=None) -> tuple[float | None, int]:
        """(mean forward tokens per completion over the problems `rows`, records without forward tokens).

        The mean is None when any of those records lacks them: a mean over the others could
        be biased (e.g. a session that crashed before writing costs).
        """
        rows = np.arange(len(self.pids)) if rows is None else np.asarray(rows)
        values = np.concatenate([self.forward[i] for i in rows]) if len(rows) else np.zeros(0)
        missing = int(np.isnan(values).sum())
        if missing or values.size == 0:
            return None, missing
        return float(values.mean()), 0


def _weighted(kind: str, groups: dict[str, list[dict]]) -> bool:
    """The method's `weighted` trait; for a method not registered here, whether every record carries a weight."""
    method = find_method(kind)
    if method is not None:
        return method.weighted
    return bool(groups) and all(r.get(WEIGHT_FIELD) is not None for g in groups.values() for r in g)


def shared_problems(a: Outcomes, b: Outcomes) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into a and into b of the problems both have (in a's order)."""
    pids = [p for p in a.pids if p in b._rows]
    return a.rows(pids), b.rows(pids)


def reference_base(outcomes: dict[str, Outcomes]) -> str | None:
    """The instance the base comparisons use: of those sampling the base distribution itself, the one with the
    most samples per problem (large k is what the crossover and the boundary are about), among equals the
    method's default instance (named after it, e.g. `base`), else None."""
    candidates = [(name, o) for name, o in outcomes.items() if o.trait("samples_base_distribution")]
    if not candidates:
        return None
    def samples(o):
        return int(np.min(o.n)) if len(o.n) else 0
    return max(candidates, key=lambda item: (samples(item[1]), item[0] == item[1].kind))[0]
