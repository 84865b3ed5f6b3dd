"""Benchmark every registered sampler against plain decoding, at equal prompts and seeds, side by side.

    python -m benchmarks.bench_samplers                          # the testbed, then SmolLM2-135M
    python -m benchmarks.bench_samplers --models testbed --prompts 16 --particles 64

For each model it takes the first `prompts` test problems of its task (the testbed task; SmolLM2:
basic_arithmetic in its chat template) and runs every sampler of the registry that samples the
base model (`grpo` needs a trained model and is plain decoding anyway), each at the benchmark's
settings below, with the same prompts and per-completion seeds. Two measurements per sampler:

- throughput: all prompts in one call (`batch_size` = prompts, or particles for SMC): forward
  tokens, sampled tokens and wall seconds per completion, and decode steps (forward passes of one
  token per row) with their mean number of rows;
- latency: one prompt alone, its chains / particles / rollouts batched: the wall seconds of one
  completion, the figure GPU papers report, against plain decoding of one completion.

It then checks the issue's targets: power_smc's forward tokens <= num_particles x plain decoding's
x 1.1; power_smc's latency <= 3 x plain decoding's on the testbed; power_mh with the entropy
position rule (when the sampler has one) spends no more tokens per MH step than the uniform rule.
Timings are wall-clock on whatever else the machine is doing; pass --threads 1 and a quiet
machine for figures worth quoting.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from sharpen.sampling import derive_seed, get_method, load_model, registered_methods

from .bench_power import _CountForwards
from sharpen.tasks import get_task


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


def instances(cfg: BenchConfig, batch: int) -> dict[str, object]:
    """name -> settings of every base-model sampler in the registry, at the benchmark's sizes."""
    sizes = {"alpha": cfg.alpha, "max_new_tokens": cfg.max_new_tokens, "batch_size": batch,
             "num_particles": cfg.particles, "mcmc_steps": cfg.mcmc_steps, "block_size": cfg.block_size,
             "num_candidates": cfg.candidates, "num_rollouts": cfg.rollouts}
    out = {}
    for name in registered_methods():
        method = get_method(name)
        if method.model != "base":
            continue
        fields = set(method.field_names())
        out[name] = method.make_settings(**{k: v for k, v in sizes.items() if k in fields})
        if "position" in fields:  # power_mh's position rules, each an instance
            out[f"{name} entropy"] = dataclasses.replace(out[name], position="entropy")
    return out


def _run(model, method_name: str, settings, prompts, seeds) -> dict:
    method = get_method(method_name.split()[0])
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
        from sharpen.testbed import build_testbed

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
        for name, settings in instances(cfg, batch=len(prompts)).items():
            throughput = _run(model, name, settings, prompts, seeds)
            alone = dataclasses.replace(settings, batch_size=max(getattr(settings, "num_particles", 1), 1))
            latency = _run(model, name, alone, prompts[:1], seeds[:1])
            rows[name] = {**throughput, "latency": latency["wall"]}
            print(f"  {spec} {name}: {throughput['wall']:.3f} s/completion, latency {latency['wall']:.3f} s",
                  flush=True)
    return {"model": spec, "prompts": len(prompts), "rows": rows}


def format_report(out: dict, cfg: BenchConfig) -> str:
    rows, plain = out["rows"], out["rows"]["base"]
    lines = [f"{out['model']}: {out['prompts']} prompts, {cfg.max_new_tokens} new tokens, alpha {cfg.alpha}",
             f"{'sampler':<20} {'fwd tok/compl':>13} {'x plain':>8} {'sampled/compl':>13} {'wall s/compl':>12} "
             f"{'latency s':>10} {'x plain':>8} {'decode steps':>12} {'rows/step':>9}"]
    for name, r in rows.items():
        lines.append(f"{name:<20} {r['forward']:>13.1f} {r['forward'] / plain['forward']:>8.1f} {r['sampled']:>13.1f} "
                     f"{r['wall']:>12.4f} {r['latency']:>10.3f} {r['latency'] / plain['latency']:>8.1f} "
                     f"{r['steps']:>12d} {r['rows']:>9.1f}")
    checks = []
    if "power_smc" in rows:
        ratio = rows["power_smc"]["forward"] / (cfg.particles * plain["forward"])
        checks.append(f"power_smc forward tokens / (particles x plain): {ratio:.2f} (target <= 1.1) "
                      f"{'ok' if ratio <= 1.1 else 'MISSED'}")
        if out["model"] == "testbed":
            lat = rows["power_smc"]["latency"] / plain["latency"]
            checks.append(f"power_smc latency / plain decoding's: {lat:.1f}x (target <= 3x on the testbed) "
                          f"{'ok' if lat <= 3 else 'MISSED'}")
    if "power_mh" in rows and "power_mh entropy" in rows:
        per_step = {k: rows[k]["proposal_tokens"] / max(rows[k]["proposals"], 1) for k in ("power_mh", "power_mh entropy")}
        checks.append(f"power_mh tokens per MH step: uniform {per_step['power_mh']:.2f}, entropy "
                      f"{per_step['power_mh entropy']:.2f} (target: entropy <= uniform) "
                      f"{'ok' if per_step['power_mh entropy'] <= per_step['power_mh'] else 'MISSED'}")
    return "\n".join(lines + checks)


def main(argv: list[str] | None = None) -> int:
    from sharpen.cli.args import ArgumentParser

    (cfg,) = ArgumentParser(BenchConfig, prog="python -m benchmarks.bench_samplers").parse_args_into_dataclasses(argv)
    torch.set_num_threads(cfg.threads)
    reports = [bench_model(spec, cfg) for spec in cfg.models]
    for out in reports:
        print()
        print(format_report(out, cfg), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
