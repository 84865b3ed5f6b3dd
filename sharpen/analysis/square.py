"""The sharpening square: every method placed by whether it used a verifier and whether it trained.

    from sharpen.analysis.square import sharpening_square
    square = sharpening_square(metrics)       # metrics.json's method blocks and paired comparisons
    square["cells"]["no_verifier/training"]   # rows of grpo_self and power_distill instances
    square["significant"]                     # cross-cell pairs whose difference survives Holm's adjustment

The paper's thesis, "RL mostly sharpens the base model", has four corners (issue 24):

                      no training                          training
    no verifier       the base model and its samplers      grpo_self, power_distill
                      (base, low_temp, power_*)            (toward p^alpha on the model's own likelihood)
    verifier          oracle best-of-K of those samplers   grpo, grpo_low_temp (the task's grader as reward)

A method's corner comes from the model it samples (sharpen.sampling.methods.MODELS: its training stage,
and whether that stage is trained on a verifier's reward), never from its name. The verifier without
training is an oracle: it picks a correct completion among K draws when there is one, so its accuracy is
the sampler's pass@K, at K the largest number of samples per problem that every drawn method in the
square has (a weighted method, power_is, has no draws of its target: it has no pass@K and no oracle row).

Each row: accuracy (pass@1, interval over problems; a weighted method's estimate under p^alpha),
pass@K, mean base-model log-likelihood per token, distinct answers among the first samples of a
problem, and cost (forward tokens per completion; with training, the training's forward tokens spread
over the evaluated problems, as the equal-compute table's "+ training" rows). `significant` lists the pairs
of methods in different corners whose accuracies differ with Holm-adjusted p < 0.05 in the study's
paired comparisons (sharpen.analysis.stats.paired_comparison over shared problems); the report's
paragraph is written from it.
"""

from __future__ import annotations

from sharpen.sampling.methods import MODELS, find_method

from .equal_compute import training_forward_tokens

CELLS = ("no_verifier/no_training", "verifier/no_training", "no_verifier/training", "verifier/training")
CELL_TITLES = {"no_verifier/no_training": "no verifier, no training", "verifier/no_training": "verifier, no training",
               "no_verifier/training": "no verifier, training", "verifier/training": "verifier, training"}
SIGNIFICANCE = 0.05  # Holm-adjusted p below which a cross-corner difference is called significant


def corner(kind: str) -> str | None:
    """The square's cell of a method kind's own samples (None for a method this process does not know)."""
    method = find_method(kind)
    if method is None:
        return None
    model = MODELS[method.model]
    if model.stage is None:
        return "no_verifier/no_training"
    return ("verifier" if model.verifier else "no_verifier") + "/training"


def _value(block) -> float | None:
    return None if not isinstance(block, dict) else block.get("value")


def _pass_at(block: dict, k: int) -> dict | None:
    curve = block.get("pass_at_k") or {}
    if k not in (curve.get("k") or []):
        return None
    i = curve["k"].index(k)
    return {"value": curve["value"][i], "low": curve["low"][i], "high": curve["high"][i]}


def _row(name: str, block: dict, k: int | None, oracle: bool) -> dict:
    cost = block.get("cost") or {}
    forward = (cost.get("forward_tokens") or {}).get("per_sample")
    training, _ = training_forward_tokens(cost.get("training"))
    problems = block.get("problems") or 0
    pass_k = _pass_at(block, k) if k else None
    if oracle:
        # The oracle reads the sampler's pass@K as its accuracy (a correct draw among K is found when there is one)
        # and pays for the K draws; the completion it keeps is not a draw of the sampler, so its likelihood and
        # diversity are not the sampler's and are left blank.
        return {"method": name, "kind": block.get("kind"), "oracle": True, "accuracy": pass_k, "pass_at_k": pass_k,
                "weighted": False, "base_logprob_mean": None, "distinct_answers": None,
                "forward_tokens_per_sample": forward * k if forward is not None else None,
                "training_forward_tokens_per_problem": None}
    return {"method": name, "kind": block.get("kind"), "oracle": False, "accuracy": block.get("accuracy"),
            "pass_at_k": pass_k, "weighted": bool(block.get("weighted")),
            "base_logprob_mean": _value((block.get("base_scores") or {}).get("logprob_mean")),
            "distinct_answers": _value((block.get("diversity") or {}).get("distinct_answers")),
            "forward_tokens_per_sample": forward,
            "training_forward_tokens_per_problem": training / problems if training and problems else None}


def sharpening_square(metrics: dict) -> dict | None:
    """The square from metrics.json's method blocks and paired comparisons; None unless a trained corner is filled
    (without training there is no square to draw, only the usual tables)."""
    methods = metrics.get("methods") or {}
    placed = {name: corner(block.get("kind", name)) for name, block in methods.items()}
    if not any(c and c.endswith("/training") for c in placed.values()):
        return None
    drawn = [b["samples_per_problem"]["min"] for n, b in methods.items() if placed[n] and b.get("pass_at_k")]
    k = min(drawn) if drawn else None
    cells: dict[str, list[dict]] = {cell: [] for cell in CELLS}
    for name, block in methods.items():
        if placed[name] is None:
            continue
        cells[placed[name]].append(_row(name, block, k, oracle=False))
        if placed[name] == "no_verifier/no_training" and block.get("pass_at_k") and k and k > 1:
            cells["verifier/no_training"].append(_row(name, block, k, oracle=True))
    significant, compared, corner_pairs = [], 0, {}
    for entry in metrics.get("paired") or []:
        a, b = entry.get("a"), entry.get("b")
        if placed.get(a) is None or placed.get(b) is None or placed[a] == placed[b] or "p_holm" not in entry:
            continue
        compared += 1
        key = " | ".join(sorted((placed[a], placed[b]), key=CELLS.index))
        corner_pairs[key] = corner_pairs.get(key, 0) + 1
        if entry["p_holm"] < SIGNIFICANCE:
            significant.append({"a": a, "b": b, "cell_a": placed[a], "cell_b": placed[b], "diff": entry["diff"],
                                "low": entry["low"], "high": entry["high"], "p_holm": entry["p_holm"],
                                "problems": entry["problems"]})
    return {"k": k, "cells": cells, "significant": significant, "cross_corner_pairs": compared,
            "compared_by_corners": corner_pairs,
            "threshold": SIGNIFICANCE}
