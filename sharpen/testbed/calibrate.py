"""Calibration of a built testbed: is sharpening visible and checkable on this model?

    from sharpen.testbed import build_testbed, calibrate, format_calibration
    figures = calibrate(build_testbed())
    print(format_calibration(figures))

Measured on test problems (plain, trap and twice in turn) with the registry's methods base,
low_temp and power_mh (`get_method(name).run`, as `sharpen sample` and a study run them):
- base pass@1 at temperature 1 and pass@k (k = samples per problem), per kind;
- low-temperature pass@1 at 1/alpha, per kind;
- mean base log-likelihood (sum and per token) of the correct and of the wrong base samples;
- power-MH pass@1 with short settings (power=False skips it);
- on trap problems, from the model's own probabilities: P(guess) and P(work) as the next
  token, the share of the opening that low temperature gives `guess`
  (p_guess^alpha / sum_v p_v^alpha), and a lower bound on the share p^alpha gives `work`:
  its single right future x_w counts p(x_w)^alpha, the 10 guess futures their p^alpha, and
  any mass r off these paths at most r^alpha (sum p_i^alpha <= (sum p_i)^alpha for alpha >= 1);
- on twice problems, likewise: P(double) and P(work), the probability of the right (doubled) and
  of the habitual (sum) solution, the share low temperature gives `double`, and an upper bound on
  the share p^alpha gives it (the right path plus any other mass after `double`, against the
  habitual path alone).
Every figure sits beside the exact value of the noisy-teacher process (corpus.exact_figures).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from sharpen.sampling import derive_seed, load_model
from sharpen.sampling.generate import left_pad
from sharpen.sampling.methods import get_method
from sharpen.tasks import get_task
from sharpen.tasks import testbed_corpus as corpus

MAX_NEW_TOKENS = 32  # completions are at most 16 tokens; longer ones are failures
PLAIN_BATCH = 512  # completions decoded together by base and low_temp: the whole calibration in a few calls
POWER_SETTINGS = {"block_size": 16, "mcmc_steps": 8}  # short settings: one block covers a completion


def _pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _sample_method(model, tokenizer, task, problems, prompt_ids, num_samples, seed, method, **settings):
    """Draw num_samples completions per problem with the registered `method` at `settings`; grade them."""
    rows = [(i, s) for i in range(len(problems)) for s in range(num_samples)]
    seeds = [derive_seed(seed, method, problems[i]["id"], s) for i, s in rows]
    sampler = get_method(method)
    results = sampler.run(model, [prompt_ids[i] for i, _ in rows], sampler.make_settings(**settings), seeds=seeds)
    graded = []
    for (i, _), result in zip(rows, results):
        text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        graded.append({"problem": i, "kind": problems[i]["kind"], "correct": task.grade(problems[i], text) >= 1.0,
                       "logprob": sum(result.logprobs), "tokens": len(result.token_ids),
                       "finished": result.finish_reason == "eos"})
    return graded


def _summarize(graded, k: int | None = None) -> dict:
    out = {}
    for kind in ("all",) + corpus.KINDS:
        counts = {}
        for g in graded:
            if kind in ("all", g["kind"]):
                n, c = counts.get(g["problem"], (0, 0))
                counts[g["problem"]] = (n + 1, c + g["correct"])
        if not counts:
            continue
        entry = {"pass@1": sum(c / n for n, c in counts.values()) / len(counts)}
        if k is not None:
            entry[f"pass@{k}"] = sum(_pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
        out[kind] = entry
    out["finished"] = sum(g["finished"] for g in graded) / len(graded)
    return out


def _loglik(graded) -> dict:
    def mean(values):
        return sum(values) / len(values) if values else float("nan")

    right = [g for g in graded if g["correct"]]
    wrong = [g for g in graded if not g["correct"]]
    return {"correct_sum": mean([g["logprob"] for g in right]), "wrong_sum": mean([g["logprob"] for g in wrong]),
            "correct_per_token": mean([g["logprob"] / g["tokens"] for g in right]),
            "wrong_per_token": mean([g["logprob"] / g["tokens"] for g in wrong]),
            "correct_samples": len(right), "wrong_samples": len(wrong)}


@torch.no_grad()
def _path_logprobs(model, prompt: list[int], completions: list[list[int]]) -> tuple[torch.Tensor, list[float]]:
    """Next-token log-probs after `prompt` (V,) and the log-probability of each completion."""
    device = next(model.parameters()).device
    rows = [prompt + c for c in completions]
    ids, mask, positions = left_pad(rows, pad_id=0, device=device)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float(), -1)
    width = ids.shape[1]
    totals = []
    for b, c in enumerate(completions):
        start = width - len(c)  # first completion position in the left-padded row
        steps = torch.arange(start, width, device=device)
        totals.append(float(logp[b, steps - 1, ids[b, start:]].sum()))
    return logp[0, width - len(completions[0]) - 1].cpu(), totals


def trap_preference(model, tokenizer, problem: dict, alpha: float = 4.0) -> dict:
    """The trap figures of one trap problem from the model's own probabilities (see module doc)."""
    tok = corpus.TOKEN_ID
    prompt = tokenizer(problem["question"], add_special_tokens=False)["input_ids"]
    totals = corpus.answer_of(problem["terms"])
    work_words = ["work"]
    running = 0
    for t in problem["terms"]:
        running = (running + t) % 10
        work_words += [corpus.TERMS[t], str(running)]
    work_words += ["answer", str(totals), corpus.EOS]
    guesses = [["guess", "answer", d, corpus.EOS] for d in corpus.DIGITS]
    paths = [[tok[w] for w in words] for words in [work_words] + guesses]
    opening, logps = _path_logprobs(model, prompt, paths)
    p_open = opening.exp()
    p_guess, p_work = float(p_open[tok["guess"]]), float(p_open[tok["work"]])
    low_guess = float(p_open[tok["guess"]] ** alpha / (p_open.double() ** alpha).sum())
    work_path = math.exp(logps[0])
    guess_paths = [math.exp(lp) for lp in logps[1:]]
    mass_guess_up = sum(p ** alpha for p in guess_paths) + max(0.0, p_guess - sum(guess_paths)) ** alpha
    mass_other_up = max(0.0, 1.0 - p_guess - p_work) ** alpha
    mass_work_low = work_path ** alpha
    return {"p_guess": p_guess, "p_work": p_work, "work_path_p": work_path, "guess_paths_p": sum(guess_paths),
            "low_temp_pick_guess": low_guess,
            "power_pick_work_lower": mass_work_low / (mass_work_low + mass_guess_up + mass_other_up)}


def _worked_words(opening: str, worked) -> list[str]:
    """A slip-free worked solution of the terms `worked`, opened with `opening`."""
    words, running = [opening], 0
    for t in worked:
        running = (running + t) % 10
        words += [corpus.TERMS[t], str(running)]
    return words + ["answer", str(running), corpus.EOS]


def twice_preference(model, tokenizer, problem: dict, alpha: float = 4.0) -> dict:
    """The twice figures of one twice problem from the model's own probabilities (see module doc)."""
    tok = corpus.TOKEN_ID
    prompt = tokenizer(problem["question"], add_special_tokens=False)["input_ids"]
    terms = problem["terms"]
    habit = _worked_words("work", terms)  # the sum: the wrong answer
    right = _worked_words("double", terms + [sum(terms) % 10])
    opening, logps = _path_logprobs(model, prompt, [[tok[w] for w in words] for words in (right, habit)])
    p_open = opening.exp()
    p_double, p_work = float(p_open[tok["double"]]), float(p_open[tok["work"]])
    right_path, habit_path = math.exp(logps[0]), math.exp(logps[1])
    mass_double_up = right_path ** alpha + max(0.0, p_double - right_path) ** alpha
    return {"p_double": p_double, "p_work": p_work, "double_path_p": right_path, "work_path_p": habit_path,
            "low_temp_pick_double": float(p_open[tok["double"]] ** alpha / (p_open.double() ** alpha).sum()),
            "power_pick_double_upper": mass_double_up / (mass_double_up + habit_path ** alpha)}


def calibrate(model_dir: str | Path, *, num_problems: int = 64, num_samples: int = 16, alpha: float = 4.0,
              seed: int = 0, power: bool = True, power_samples: int = 4,
              model=None, tokenizer=None) -> dict:
    """Measure the calibration figures of the testbed at `model_dir` (see the module docstring)."""
    started = time.time()
    if model is None:
        model, tokenizer = load_model(str(model_dir))
    task = get_task("testbed")
    problems = task.load(limit=num_problems, seed=seed, split="test")
    prompt_ids = [tokenizer(task.prompt(p), add_special_tokens=False)["input_ids"] for p in problems]

    sizes = {"max_new_tokens": MAX_NEW_TOKENS, "batch_size": PLAIN_BATCH}
    base = _sample_method(model, tokenizer, task, problems, prompt_ids, num_samples, seed, "base", **sizes)
    low = _sample_method(model, tokenizer, task, problems, prompt_ids, num_samples, seed, "low_temp", alpha=alpha,
                         **sizes)
    figures = {
        "model": str(model_dir), "problems": len(problems), "samples_per_problem": num_samples,
        "alpha": alpha, "seed": seed,
        "base": _summarize(base, k=num_samples),
        "low_temp": dict(_summarize(low), temperature=1.0 / alpha),
        "loglik": _loglik(base),
    }
    if power:
        graded = _sample_method(model, tokenizer, task, problems, prompt_ids, power_samples, seed, "power_mh",
                                alpha=alpha, max_new_tokens=MAX_NEW_TOKENS, **POWER_SETTINGS)
        figures["power_mh"] = dict(_summarize(graded), problems=len(problems), samples_per_problem=power_samples,
                                   **POWER_SETTINGS)
    traps = [trap_preference(model, tokenizer, p, alpha) for p in problems if p["kind"] == "trap"]
    figures["trap"] = {key: sum(t[key] for t in traps) / len(traps) for key in traps[0]} if traps else {}
    if traps:
        figures["trap"]["problems"] = len(traps)
        figures["trap"]["reproduced"] = sum(t["low_temp_pick_guess"] > 0.5 and t["power_pick_work_lower"] > 0.5
                                            for t in traps) / len(traps)
    twices = [twice_preference(model, tokenizer, p, alpha) for p in problems if p["kind"] == "twice"]
    figures["twice"] = {key: sum(t[key] for t in twices) / len(twices) for key in twices[0]} if twices else {}
    if twices:
        figures["twice"]["problems"] = len(twices)
    figures["process"] = corpus.exact_figures(alpha, ks=(1, num_samples))
    figures["wall_seconds"] = round(time.time() - started, 1)
    return figures


def format_calibration(f: dict) -> str:
    """The calibration as a small text table, each figure beside the process's exact value."""
    proc = f["process"]
    ref = {"all": proc["mixed"], **{kind: proc[kind] for kind in corpus.KINDS}}
    k = f["samples_per_problem"]
    has_power = "power_mh" in f
    head = (f"testbed calibration: {f['problems']} test problems (plain, trap, twice in turn) x {k} samples, "
            f"alpha {f['alpha']:g}; in brackets the noisy-teacher process's exact value")
    cols = ["base T=1", f"pass@{k}", f"low temp T=1/{f['alpha']:g}"] + (["power-MH"] if has_power else [])
    lines = [head, f"  {'pass@1':<8}" + "".join(f"{c:>20}" for c in cols) + f"{'exact p^alpha':>16}"]
    for kind in ("all",) + corpus.KINDS:
        if kind not in f["base"]:
            continue
        exact_k = ref[kind]["base_pass@k"][str(k)]
        cells = [f"{f['base'][kind]['pass@1']:.3f} [{ref[kind]['pass@1']['base']:.3f}]",
                 f"{f['base'][kind][f'pass@{k}']:.3f} [{exact_k:.3f}]",
                 f"{f['low_temp'][kind]['pass@1']:.3f} [{ref[kind]['pass@1']['low_temp']:.3f}]"]
        if has_power:
            cells.append(f"{f['power_mh'][kind]['pass@1']:.3f}" if kind in f["power_mh"] else "-")
        lines.append(f"  {kind:<8}" + "".join(f"{c:>20}" for c in cells) + f"{ref[kind]['pass@1']['power']:>16.3f}")
    if has_power:
        pm = f["power_mh"]
        lines.append(f"  power-MH: {pm['problems']} problems x {pm['samples_per_problem']} chains, "
                     f"block {pm['block_size']}, {pm['mcmc_steps']} MH steps")
    ll = f["loglik"]
    lines.append(f"  base log-likelihood: correct {ll['correct_sum']:.2f} ({ll['correct_per_token']:.3f}/token, "
                 f"{ll['correct_samples']} samples) vs wrong {ll['wrong_sum']:.2f} "
                 f"({ll['wrong_per_token']:.3f}/token, {ll['wrong_samples']} samples)")
    t, pt = f["trap"], proc["trap"]
    if t:
        lines.append(f"  trap opening ({t['problems']} problems): P(guess) {t['p_guess']:.3f} "
                     f"[{pt['pick_guess']['base']:.3f}], P(work) {t['p_work']:.3f} [{pt['pick_work']['base']:.3f}], right work path "
                     f"{t['work_path_p']:.3f} [{pt['openings']['work']['future_p']:.3f}]")
        lines.append(f"  low temp picks guess {t['low_temp_pick_guess']:.3f} [{pt['pick_guess']['low_temp']:.3f}]; "
                     f"p^alpha picks work >= {t['power_pick_work_lower']:.3f} [{pt['pick_work']['power']:.3f}]; "
                     f"reproduced on {t['reproduced']:.0%} of trap problems")
    t, pt = f.get("twice") or {}, proc["twice"]
    if t:
        lines.append(f"  twice opening ({t['problems']} problems): P(double) {t['p_double']:.4f} "
                     f"[{pt['pick_double']['base']:.4f}], P(work) {t['p_work']:.4f} [{pt['pick_work']['base']:.4f}]; "
                     f"right (double) path {t['double_path_p']:.4f} [{pt['openings']['double']['future_p']:.4f}], "
                     f"habitual (sum) path {t['work_path_p']:.4f} [{pt['openings']['work']['future_p']:.4f}]")
        lines.append(f"  low temp picks double {t['low_temp_pick_double']:.2e} [{pt['pick_double']['low_temp']:.2e}]; "
                     f"p^alpha picks double <= {t['power_pick_double_upper']:.2e} [{pt['pick_double']['power']:.2e}]")
    lines.append(f"  ({f['wall_seconds']:.0f} s)")
    return "\n".join(lines)
