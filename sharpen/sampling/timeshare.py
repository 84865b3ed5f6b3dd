"""Wall time split among the completions that shared it, so that per-completion times add up.

    clock = TimeShare()
    ...one batched forward pass for rows a, b, c...
    clock.charge([stats_a, stats_b, stats_c])   # each gets a third of the time since the last charge
    on_result(...)                              # the caller's own time (grading, writing)...
    clock.skip()                                # ...is not the sampler's: it is left out

Each completion's `stats["wall_seconds"]` is then its share of the sampler's measured time:
summed over all completions it equals the time the sampler ran (prefill, decode steps,
cache compaction), whatever the batch size. Callers add the time they spend on a record
(grading) to that record, so a method's records add up to its elapsed sampling time.
"""

from __future__ import annotations

import time


class TimeShare:
    def __init__(self):
        self.last = time.perf_counter()

    def charge(self, stats: list[dict]) -> None:
        """Split the time since the last charge (or skip) equally among `stats` dicts.

        >>> clock, a, b = TimeShare(), {}, {}
        >>> clock.charge([a, b]); clock.charge([b])
        >>> a["wall_seconds"] <= b["wall_seconds"]
        True
        """
        now = time.perf_counter()
        if stats:
            share = (now - self.last) / len(stats)
            for s in stats:
                s["wall_seconds"] = s.get("wall_seconds", 0.0) + share
        self.last = now

    def skip(self) -> None:
        """Leave the time since the last charge out of every share (it was the caller's)."""
        self.last = time.perf_counter()
