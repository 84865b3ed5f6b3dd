"""Which process am I: rank, world size and a barrier, under `accelerate launch` or alone.

    shard = current_shard()           # Shard(rank=0, world_size=1) when not launched
    todo[shard.rank::shard.world_size]
    shard.wait()                      # barrier (a no-op alone)
    is_main_process()                 # the one main-process check: log, print and write results here

Sampling and scoring share work across the processes that `accelerate launch` starts
(data parallel, through sharpen.runs.records.ShardedRecords); a plain `sharpen ...` is one
process and never initialises torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        if self.world_size > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()  # the state current_shard() set up

    def gather(self, value) -> list:
        """Every process's `value`, in rank order (a collective call: every process must make it)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        parts = [None] * self.world_size
        dist.all_gather_object(parts, value)
        return parts


def current_shard() -> Shard:
    """This process's place among the processes accelerate launched (one process: rank 0 of 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    import torch
    from accelerate import PartialState

    # Without cpu=True, PartialState on a machine without CUDA quietly stays a single process
    # even under torchrun; with it, the processes join one gloo group (nccl on GPUs).
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    if state.num_processes <= 1:
        raise RuntimeError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but accelerate set up one process")
    return Shard(rank=state.process_index, world_size=state.num_processes)


def is_main_process() -> bool:
    """True in a lone process and in rank 0 of a launched group (read from the launcher's environment)."""
    return os.environ.get("RANK", "0") == "0"
