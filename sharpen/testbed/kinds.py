"""pass@1 and pass@k of each method on each testbed problem kind, from a run's records.

    sharpen kinds runs/testbed            # a table, beside the exact base values
    sharpen kinds runs/testbed --json     # the figures as JSON
    kind_figures("runs/testbed")          # the same figures, as a dict

The study's report pools the kinds; this splits them (plain, trap, twice: the kind is the
problem id's prefix), so the rare-path kind's pass@k curve can be read on its own. Like the
report it reads `samples/<name>.jsonl` only, and pass@k uses the unbiased estimator for k <= n
(the smallest sample count of a method's problems), with percentile bootstrap intervals over problems.
A weighted method (records with `importance_log_weight`, e.g. power_is) gets pass@1 only: the
self-normalised estimate of its target's accuracy per problem, as the report computes it (its draws
come from a proposal, so their raw pass rates would describe the proposal).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sharpen.analysis.stats import mean_interval, pass_at_k_curve
from sharpen.analysis.target import importance_weights
from sharpen.errors import UsageError
from sharpen.runs.records import read_records

from sharpen.tasks import testbed_corpus as corpus

KS = (1, 4, 16, 64, 256)


def kind_figures(run_dir: str | Path, ks=KS) -> dict:
    """{method name: {kind: {"problems", "samples", "pass@k": {k: [value, low, high]}}}} of a run."""
    samples = Path(run_dir) / "samples"
    files = sorted(p for p in samples.glob("*.jsonl") if not p.name.endswith(".sessions.jsonl"))
    if not files:
        raise UsageError(f"no records in {samples}: give a study's run directory")
    out = {}
    for path in files:
        records = read_records(path)
        by_kind: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))  # kind -> problem -> records
        for r in records:
            by_kind[r["problem_id"].split("-")[0]][r["problem_id"]].append(r)
        weighted = any("importance_log_weight" in r for r in records)
        out[path.stem] = {kind: (_weighted_figures if weighted else _pass_at_k_figures)(by_kind[kind], ks)
                          for kind in corpus.KINDS if kind in by_kind}
    return out


def _pass_at_k_figures(problems: dict[str, list[dict]], ks) -> dict:
    n = [len(rs) for rs in problems.values()]
    c = [sum(bool(r["correct"]) for r in rs) for rs in problems.values()]
    usable = [k for k in ks if k <= min(n)]
    curve = pass_at_k_curve(n, c, usable)
    return {"problems": len(n), "samples": min(n),
            "pass@k": {str(k): [curve["value"][i], curve["low"][i], curve["high"][i]] for i, k in enumerate(usable)}}


def _weighted_figures(problems: dict[str, list[dict]], ks) -> dict:
    estimates = [float(importance_weights([r["importance_log_weight"] for r in rs])
                       @ [float(bool(r["correct"])) for r in rs]) for rs in problems.values()]
    return {"problems": len(estimates), "samples": min(len(rs) for rs in problems.values()), "weighted": True,
            "pass@k": {"1": list(mean_interval(estimates))}}


def format_kind_figures(figures: dict, ks=KS) -> str:
    """One row per (method, kind): pass@k with its interval; the process's exact base value in brackets."""
    exact = corpus.exact_figures(ks=ks)
    head = ["method", "kind", "problems x samples"] + [f"pass@{k}" for k in ks]
    rows = [head]
    for name, kinds in figures.items():
        for kind, entry in kinds.items():
            cells = [name + (" (IS estimate of p^alpha)" if entry.get("weighted") else ""), kind,
                     f"{entry['problems']} x {entry['samples']}"]
            for k in ks:
                value = entry["pass@k"].get(str(k))
                cells.append("—" if value is None else f"{value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]")
            rows.append(cells)
    rows.append(["exact base", "plain / trap / twice", ""]
                + [" / ".join(f"{exact[kind]['base_pass@k'][str(k)]:.3f}" for kind in corpus.KINDS) for k in ks])
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)
