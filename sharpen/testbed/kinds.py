"""pass@1 and pass@k of each method on each testbed problem kind, from a run's records.

    sharpen kinds runs/testbed            # a table, beside the exact base values
    sharpen kinds runs/testbed --json     # the figures as JSON
    kind_figures("runs/testbed")          # the same figures, as a dict

The study's report pools the kinds; this splits them (plain, trap, twice: the kind is the
problem id's prefix), so the rare-path kind's pass@k curve can be read on its own. Like the
report it reads `samples/<name>.jsonl` only, and pass@k uses the unbiased estimator for k <= n
(the smallest sample count of a method's problems), with percentile bootstrap intervals over problems.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sharpen.analysis.stats import pass_at_k_curve
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
        counts: dict[str, dict[str, list[int]]] = defaultdict(dict)  # kind -> problem -> [n, c]
        for r in read_records(path):
            kind = r["problem_id"].split("-")[0]
            n_c = counts[kind].setdefault(r["problem_id"], [0, 0])
            n_c[0] += 1
            n_c[1] += bool(r["correct"])
        method = {}
        for kind in [k for k in corpus.KINDS if k in counts]:
            n, c = zip(*counts[kind].values())
            usable = [k for k in ks if k <= min(n)]
            curve = pass_at_k_curve(list(n), list(c), usable)
            method[kind] = {"problems": len(n), "samples": min(n),
                            "pass@k": {str(k): [curve["value"][i], curve["low"][i], curve["high"][i]]
                                       for i, k in enumerate(usable)}}
        out[path.stem] = method
    return out


def format_kind_figures(figures: dict, ks=KS) -> str:
    """One row per (method, kind): pass@k with its interval; the process's exact base value in brackets."""
    exact = corpus.exact_figures(ks=ks)
    head = ["method", "kind", "problems x samples"] + [f"pass@{k}" for k in ks]
    rows = [head]
    for name, kinds in figures.items():
        for kind, entry in kinds.items():
            cells = [name, kind, f"{entry['problems']} x {entry['samples']}"]
            for k in ks:
                value = entry["pass@k"].get(str(k))
                cells.append("—" if value is None else f"{value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]")
            rows.append(cells)
    rows.append(["exact base", "plain / trap / twice", ""]
                + [" / ".join(f"{exact[kind]['base_pass@k'][str(k)]:.3f}" for kind in corpus.KINDS) for k in ks])
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)
