"""Benchmark the HumanEval grader: programs graded per second in the bubblewrap sandbox and unsandboxed.

    python -m benchmarks.bench_grader                      # the 164 canonical solutions, 2 workers, 2 rounds
    python -m benchmarks.bench_grader --workers 4 --rounds 3 --limit 50

Every round grades each canonical solution once under each kind of sandbox, the kinds in turn and
their order swapped every round, so that load from other work on the machine falls on both. A
thread pool of `workers` calls `task.grade` (each grade is its own processes; the threads only
wait on them). It prints, per kind, programs/s of every round and the best one (as timeit does),
how many passed (all should), the load average while it ran, and the target: >= 20 programs/s under
bwrap with 2 workers. Where bubblewrap cannot sandbox, only the fallback is timed, and it says why.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from sharpen.cli.args import ArgumentParser
from sharpen.tasks import get_task
from sharpen.tasks.sandbox import bwrap_problem

TARGET = 20.0  # programs/s under bwrap on 2 cores
SETTING = {"bwrap": "bwrap", "unsandboxed": "none"}


@dataclass
class BenchConfig:
    workers: int = field(default=2, metadata={"help": "Programs graded at once (threads, each waiting on a sandbox)."})
    rounds: int = field(default=2, metadata={"help": "Passes over the programs per kind, alternating the kinds."})
    limit: int | None = field(default=None, metadata={"help": "Grade only the first LIMIT problems (None: all 164)."})
    timeout: float = field(default=5.0, metadata={"help": "The grader's per-program timeout in seconds."})


def grade_pass(kind: str, problems: list[dict], cfg: BenchConfig, desc: str) -> tuple[float, int]:
    """(programs/s, number passed) for one pass over the canonical solutions."""
    task = get_task("humaneval", timeout=cfg.timeout, sandbox=SETTING[kind])
    passed = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(cfg.workers) as pool, tqdm(total=len(problems), desc=desc, unit="program") as bar:
        for score in pool.map(lambda p: task.grade(p, p["answer"]), problems):
            passed += score == 1.0
            bar.update()
            bar.set_postfix(rate=f"{bar.n / (time.perf_counter() - start):.1f}/s", passed=passed)
    return len(problems) / (time.perf_counter() - start), passed


def main(argv: list[str] | None = None) -> int:
    (cfg,) = ArgumentParser(BenchConfig, prog="python -m benchmarks.bench_grader").parse_args_into_dataclasses(argv)
    problems = get_task("humaneval", sandbox="none").load(limit=cfg.limit)
    problem = bwrap_problem()
    kinds = ["bwrap", "unsandboxed"] if problem is None else ["unsandboxed"]
    if problem is not None:
        print(f"bubblewrap cannot sandbox here ({problem}): timing the unsandboxed fallback only")
    print(f"{len(problems)} canonical solutions, {cfg.workers} workers, {cfg.rounds} rounds, {os.cpu_count()} CPUs")
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    passed: dict[str, int] = {}
    loads = []
    for round_ in range(cfg.rounds):
        for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
            rate, passed[kind] = grade_pass(kind, problems, cfg, f"round {round_ + 1} {kind}")
            rates[kind].append(rate)
            loads.append(os.getloadavg()[0])
    print(f"\n{'kind':12s} " + " ".join(f"round {i + 1:<3d}" for i in range(cfg.rounds)) + "   best   passed")
    for kind in kinds:
        print(f"{kind:12s} " + " ".join(f"{rate:9.1f}" for rate in rates[kind])
              + f" {max(rates[kind]):6.1f}   {passed[kind]}/{len(problems)}")
    print(f"programs/s; 1-minute load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    if "bwrap" in rates:
        best = max(rates["bwrap"])
        verdict = ("ok" if best >= TARGET else "MISSED") if cfg.workers == 2 else "not judged: the target is for 2"
        print(f"bwrap, best round: {best:.1f} programs/s with {cfg.workers} worker(s) "
              f"(target >= {TARGET:.0f} with 2 workers): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
