"""Benchmarks: scripts that print figures and ratios measured side by side in one run (not installed with sharpen).

Run each from the root of a checkout, with one thread per process:

    OMP_NUM_THREADS=1 python -m benchmarks.bench_power      # power-MH batched vs the reference cost profile vs plain
    OMP_NUM_THREADS=1 python -m benchmarks.bench_samplers   # every registered sampler vs plain decoding
    OMP_NUM_THREADS=1 python -m benchmarks.bench_grpo       # GRPO seconds per step, sharpen vs TRL rollouts
    OMP_NUM_THREADS=1 python -m benchmarks.bench_grader     # HumanEval programs graded per second, bwrap vs none
    bash benchmarks/gpu_check.sh                           # on a GPU machine: samplers, throughput, GRPO, a study
    OMP_NUM_THREADS=1 python -m benchmarks.gpu_check --tiny # the same check, tiny, on CPU (the dry run)

Each takes --help. They use sharpen's public modules only.
"""
