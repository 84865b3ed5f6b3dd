"""Benchmark power-MH: the batched sampler against the reference cost profile and against plain sampling.

    python -m benchmarks.bench_power                      # SmolLM2-135M, 8 chains, 64 tokens, blocks of 16, 4 steps
    python -m benchmarks.bench_power --repeats 2 --threads 1

Prompts are the first `chains` basic_arithmetic problems in the model's chat template. It
runs, with the same prompts, seeds and settings:

- power_sample (implementation="batched"): all chains together, kept prefixes reused;
- power_sample (implementation="reference"): one chain at a time, prompt + kept prefix re-run for
  every proposal (the reference code's cost profile, same acceptance rule and random stream);
- plain batched `sample` at the proposal temperature, same prompts and max_new_tokens, repeated with
  new seeds until it has sampled as many tokens as power-MH did;

and prints wall time, sampled and forward tokens, decode steps (forward passes of one token
per row) with their mean number of rows, and the issue's three ratios with their targets:
reference / batched wall time >= 3, forward / sampled tokens <= 1.2, power-MH sampled tokens
per second >= 0.7 x plain sampling's. Timings are wall-clock on whatever else the machine is
doing: with --repeats N the three are run in turn N times and a last table takes each one's
best wall time (as timeit does), next to every run's own figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from sharpen.cli.args import ArgumentParser
from sharpen.sampling import PowerSamplingConfig, derive_seed, load_model, power_sample, sample

from sharpen.tasks import get_task


@dataclass
class BenchConfig:
    model: str = field(default="smollm2-135m", metadata={"help": "Model spec (checkpoint dir, Hub id, built-in)."})
    task: str = field(default="basic_arithmetic", metadata={"help": "Task whose problems give the prompts."})
    chat: bool = field(default=True, metadata={"help": "Wrap prompts in the chat template."})
    chains: int = field(default=8, metadata={"help": "Chains (one per prompt; also the batch size)."})
    seed: int = field(default=0, metadata={"help": "Run seed."})
    repeats: int = field(default=1, metadata={"help": "Times to run the whole comparison."})
    threads: int = field(default=1, metadata={"help": "torch CPU threads."})


# The benchmark's sizes for the sampler; every sampling.PowerSamplingConfig field is a flag.
POWER_DEFAULTS = {"max_new_tokens": 64, "block_size": 16, "mcmc_steps": 4}


class _CountForwards:
    """Counts the model's forward passes and the rows of its one-token (decode) passes."""

    def __init__(self, model):
        self.model, self.steps, self.rows = model, 0, 0

    def __enter__(self):
        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ids.shape[1] == 1:
                self.steps += 1
                self.rows += ids.shape[0]

        self.handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _timed(model, fn):
    with _CountForwards(model) as counter:
        started = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - started
    return out, wall, counter.steps, counter.rows


def bench_once(model, prompts, cfg: BenchConfig, power_cfg: PowerSamplingConfig) -> dict:
    power_cfg = replace(power_cfg, batch_size=cfg.chains, implementation="batched")
    seeds = [derive_seed(cfg.seed, i) for i in range(len(prompts))]
    rows = {}
    batched, *timing = _timed(model, lambda: power_sample(model, prompts, power_cfg, seeds=seeds))
    rows["power_mh batched"] = _row(batched, *timing)
    reference_cfg = replace(power_cfg, implementation="reference")
    reference, *timing = _timed(model, lambda: power_sample(model, prompts, reference_cfg, seeds=seeds))
    rows["power_mh reference"] = _row(reference, *timing)
    # Plain sampling of the same prompts and budget, repeated until it has sampled as many tokens.
    target, plain, totals, round_ = rows["power_mh batched"]["sampled"], [], [0.0, 0, 0], 0
    while sum(r.stats["sampled_tokens"] for r in plain) < target:
        seed = derive_seed(cfg.seed, "plain", round_)
        out, *timing = _timed(model, lambda: sample(model, prompts, temperature=power_cfg.proposal_temperature,
                                                    max_new_tokens=power_cfg.max_new_tokens, seed=seed,
                                                    batch_size=cfg.chains))
        plain, totals, round_ = plain + out, [a + b for a, b in zip(totals, timing)], round_ + 1
    rows["plain sample"] = _row(plain, *totals)
    same = sum(b.token_ids == r.token_ids for b, r in zip(batched, reference))
    accepted = sum(r.stats["accepted"] for r in batched) / max(sum(r.stats["proposals"] for r in batched), 1)
    return {"rows": rows, "same_chains": same, "acceptance": accepted,
            "mean_length": sum(len(r.token_ids) for r in batched) / len(batched)}


def _row(results, wall: float, steps: int, rows: int) -> dict:
    sampled = sum(r.stats["sampled_tokens"] for r in results)
    forward = sum(r.stats["forward_tokens"] for r in results)
    return {"wall": wall, "sampled": sampled, "forward": forward, "tok_s": sampled / wall, "steps": steps,
            "rows": rows / max(steps, 1)}


def format_report(out: dict, cfg: BenchConfig) -> str:
    rows = out["rows"]
    lines = [f"{'':<20} {'wall s':>8} {'sampled':>8} {'forward':>8} {'fwd/sampled':>11} {'sampled tok/s':>13} "
             f"{'decode steps':>12} {'rows/step':>9}"]
    for name, r in rows.items():
        lines.append(f"{name:<20} {r['wall']:>8.1f} {r['sampled']:>8d} {r['forward']:>8d} "
                     f"{r['forward'] / r['sampled']:>11.2f} {r['tok_s']:>13.1f} {r['steps']:>12d} {r['rows']:>9.1f}")
    b, ref, plain = rows["power_mh batched"], rows["power_mh reference"], rows["plain sample"]
    speedup, ratio, relative = ref["wall"] / b["wall"], b["forward"] / b["sampled"], b["tok_s"] / plain["tok_s"]
    lines += [
        f"speed-up over reference mode: {speedup:.1f}x (target >= 3x) {'ok' if speedup >= 3 else 'MISSED'}",
        f"forward / sampled tokens:     {ratio:.2f} (target <= 1.2) {'ok' if ratio <= 1.2 else 'MISSED'}",
        f"tokens/s vs plain sampling:   {relative:.2f}x (target >= 0.7x) {'ok' if relative >= 0.7 else 'MISSED'}",
        f"batched and reference chains identical: {out['same_chains']}/{cfg.chains}; "
        f"MH acceptance {out['acceptance']:.2f}; mean output length {out['mean_length']:.1f} tokens",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser((BenchConfig, PowerSamplingConfig), prog="python -m benchmarks.bench_power")
    parser.set_defaults(**POWER_DEFAULTS)
    cfg, power_cfg = parser.parse_args_into_dataclasses(argv)
    torch.set_num_threads(cfg.threads)
    model, tokenizer = load_model(cfg.model)
    task = get_task(cfg.task)
    problems = task.load(limit=cfg.chains, seed=cfg.seed, split="test")
    prompts = [tokenizer(task.prompt(p, tokenizer, chat=cfg.chat), add_special_tokens=False)["input_ids"]
               for p in problems]
    print(f"{cfg.model}: {len(prompts)} chains, prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
          f"{power_cfg.max_new_tokens} new tokens, blocks of {power_cfg.block_size}, {power_cfg.mcmc_steps} MH steps, "
          f"alpha {power_cfg.alpha}, stop_on_eos={power_cfg.stop_on_eos}, {cfg.threads} thread(s), "
          f"device {next(model.parameters()).device}")
    runs = []
    for repeat in range(cfg.repeats):
        runs.append(bench_once(model, prompts, cfg, power_cfg))
        print(f"\nrun {repeat + 1}/{cfg.repeats}")
        print(format_report(runs[-1], cfg), flush=True)
    if cfg.repeats > 1:
        best = dict(runs[0], rows={name: min((run["rows"][name] for run in runs), key=lambda r: r["wall"])
                                   for name in runs[0]["rows"]})
        print(f"\nbest wall time of each over the {cfg.repeats} runs")
        print(format_report(best, cfg), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
