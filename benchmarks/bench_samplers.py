"""Benchmark every registered sampler against plain decoding, at equal prompts and seeds, side by side.

    python -m benchmarks.bench_samplers                          # the testbed, then SmolLM2-135M
    python -m benchmarks.bench_samplers --models testbed --prompts 16 --particles 64

For each model it takes the first `prompts` test problems of its task (the testbed task; SmolLM2:
basic_arithmetic in its chat template) and runs every sampler of the registry that samples the
base model (Method.model; `grpo` needs a trained model and is plain decoding anyway), plug-ins
included, each at the benchmark's settings below, with the same prompts and per-completion seeds.
Plain decoding is the method that samples the base distribution itself
(Method.samples_base_distribution: `base`). Two measurements per sampler:

- throughput: all prompts in one call (`batch_size` = prompts, or particles for SMC): forward
  tokens, sampled tokens and wall seconds per completion, and decode steps (forward passes of one
  token per row) with their mean number of rows;
- latency: one prompt alone, its chains / particles / rollouts batched: the wall seconds of one
  completion, the figure GPU papers report, against plain decoding of one completion.

It then checks the issue's targets, for every sampler whose settings have the field in question:
with `num_particles` (power_smc), forward tokens <= num_particles x plain decoding's x 1.1 and
latency <= 3 x plain decoding's on the testbed; with a `position` rule (power_mh), the entropy
rule spends no more tokens per MH step than the uniform one.
Timings are wall-clock on whatever else the machine is doing; pass --threads 1 and a quiet
machine for figures worth quoting.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from sharpen.cli.args import ArgumentParser
from sharpen.sampling import derive_seed, get_method, load_model, registered_methods
from sharpen.tasks import get_task
from sharpen.testbed import build_testbed

from .bench_power import _CountForwards


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: ["testbed", "smollm2-135m"],
                              metadata={"help": "Models to run: testbed (built or cached) and/or model specs."})
    prompts: int = field(default=8, metadata={"help": "Prompts per model (one completion each)."})
    max_new_tokens: int = field(default=32, metadata={"help": "New tokens per completion."})
    particles: int = field(default=16, metadata={"help": "power_smc particles."})
    mcmc_steps: int = field(default=4, metadata={"help": "power_mh MH steps per block."})
    block_size: int = field(default=8, metadata={"help": "power_mh and power_sps block size."})
    candidates: int = field(default=4, metadata={"help": "power_sps candidate tokens per decision."})
    rollouts: int = field(default=4, metadata={"help": "power_sps rollouts per candidate."})
    alpha: float = field(default=4.0, metadata={"help": "alpha of every sharpened sampler."})
    seed: int = field(default=0, metadata={"help": "Run seed; completion i's seed is derive_seed(seed, i)."})
    threads: int = field(default=1, metadata={"help": "torch CPU threads."})


def instances(cfg: BenchConfig, batch: int) -> dict[str, tuple[str, object]]:
    """row name -> (method name, settings) of every base-model sampler in the registry, at the benchmark's sizes;
    a sampler with a `position` rule (power_mh) gets a second row, "<name> entropy", with the entropy rule."""
    sizes = {"alpha": cfg.alpha, "max_new_tokens": cfg.max_new_tokens, "batch_size": batch,
             "num_particles": cfg.particles, "mcmc_steps": cfg.mcmc_steps, "block_size": cfg.block_size,
             "num_candidates": cfg.candidates, "num_rollouts": cfg.rollouts}
    out = {}
    for name in registered_methods():
        method = get_method(name)
        if method.model != "base":
            continue
        settings = method.settings_from(sizes)
        out[name] = (name, settings)
        if "position" in method.field_names():
            out[f"{name} entropy"] = (name, dataclasses.replace(settings, position="entropy"))
    return out


def _run(model, method_name: str, settings, prompts, seeds) -> dict:
    method = get_method(method_name)
    with _CountForwards(model) as counter:
        started = time.perf_counter()
        results = method.run(model, prompts, settings, seeds=seeds)
        wall = time.perf_counter() - started
    n = len(results)
    total = lambda key: sum(float(r.stats.get(key, 0)) for r in results)  # noqa: E731
    return {"completions": n, "wall": wall / n, "forward": total("forward_tokens") / n,
            "sampled": total("sampled_tokens") / n, "tokens": sum(len(r.token_ids) for r in results) / n,
            "steps": counter.steps, "rows": counter.rows / max(counter.steps, 1),
            "proposals": total("proposals"), "proposal_tokens": total("sampled_tokens") - sum(
                len(r.token_ids) for r in results)}


def bench_model(spec: str, cfg: BenchConfig) -> dict:
    if spec == "testbed":
        model, tokenizer = load_model(str(build_testbed(seed=0)))
        task, chat = get_task("testbed"), False
    else:
        model, tokenizer = load_model(spec)
        task, chat = get_task("basic_arithmetic"), True
    problems = task.load(limit=cfg.prompts, seed=cfg.seed, split="test")
    prompts = [tokenizer(task.prompt(p, tokenizer, chat=chat), add_special_tokens=False)["input_ids"]
               for p in problems]
    seeds = [derive_seed(cfg.seed, i) for i in range(len(prompts))]
    rows = {}
    with torch.no_grad():
        for name, (method, settings) in instances(cfg, batch=len(prompts)).items():
            throughput = _run(model, method, settings, prompts, seeds)
            alone = dataclasses.replace(settings, batch_size=max(getattr(settings, "num_particles", 1), 1))
            latency = _run(model, method, alone, prompts[:1], seeds[:1])
            # What the checks read: the method, its particles, and the uniform-rule row an entropy row pairs with.
            rows[name] = {**throughput, "latency": latency["wall"], "method": method,
                          "particles": getattr(settings, "num_particles", None),
                          "position": getattr(settings, "position", None)}
            print(f"  {spec} {name}: {throughput['wall']:.3f} s/completion, latency {latency['wall']:.3f} s",
                  flush=True)
    return {"model": spec, "prompts": len(prompts), "rows": rows}


def format_report(out: dict, cfg: BenchConfig) -> str:
    rows = out["rows"]
    plain = next(r for r in rows.values() if get_method(r["method"]).samples_base_distribution)
    lines = [f"{out['model']}: {out['prompts']} prompts, {cfg.max_new_tokens} new tokens, alpha {cfg.alpha}",
             f"{'sampler':<20} {'fwd tok/compl':>13} {'x plain':>8} {'sampled/compl':>13} {'wall s/compl':>12} "
             f"{'latency s':>10} {'x plain':>8} {'decode steps':>12} {'rows/step':>9}"]
    for name, r in rows.items():
        lines.append(f"{name:<20} {r['forward']:>13.1f} {r['forward'] / plain['forward']:>8.1f} {r['sampled']:>13.1f} "
                     f"{r['wall']:>12.4f} {r['latency']:>10.3f} {r['latency'] / plain['latency']:>8.1f} "
                     f"{r['steps']:>12d} {r['rows']:>9.1f}")
    checks = []
    for name, r in rows.items():
        if r["particles"]:
            ratio = r["forward"] / (r["particles"] * plain["forward"])
            checks.append(f"{name} forward tokens / (particles x plain): {ratio:.2f} (target <= 1.1) "
                          f"{'ok' if ratio <= 1.1 else 'MISSED'}")
            if out["model"] == "testbed":
                lat = r["latency"] / plain["latency"]
                checks.append(f"{name} latency / plain decoding's: {lat:.1f}x (target <= 3x on the testbed) "
                              f"{'ok' if lat <= 3 else 'MISSED'}")
        if r["position"] == "entropy" and r["method"] in rows:
            uniform, entropy = (rows[k]["proposal_tokens"] / max(rows[k]["proposals"], 1) for k in (r["method"], name))
            checks.append(f"{r['method']} tokens per MH step: uniform {uniform:.2f}, entropy {entropy:.2f} "
                          f"(target: entropy <= uniform) {'ok' if entropy <= uniform else 'MISSED'}")
    return "\n".join(lines + checks)


def main(argv: list[str] | None = None) -> int:
    (cfg,) = ArgumentParser(BenchConfig, prog="python -m benchmarks.bench_samplers").parse_args_into_dataclasses(argv)
    torch.set_num_threads(cfg.threads)
    reports = [bench_model(spec, cfg) for spec in cfg.models]
    for out in reports:
        print()
        print(format_report(out, cfg), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
