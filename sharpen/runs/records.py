"""Per-sample JSONL records: append-only files, one finished item at a time, shared across processes.

    writer = RecordWriter(run_dir / "samples" / "base.jsonl")
    writer.done          # {(problem_id, sample_idx), ...} already on disk
    writer.write(record) # append + flush + fsync: a killed run loses no finished item

    records = ShardedRecords(path, shard)        # the same under `accelerate launch`
    todo = [k for k in keys if k not in records.done][shard.rank::shard.world_size]
    with records.writer() as writer: ...          # this process's part file (or the file itself alone)
    records.finish()                              # barrier; the main process merges the parts

A file is only ever appended to. A run killed mid-write can leave a partial last line;
opening the file again cuts it off, so resuming never reads garbage and never writes a
duplicate. Sample records (samples/<name>.jsonl) and base-model scores (scores/<name>.jsonl)
both go through here, keyed by (problem_id, sample_idx).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sharpen.errors import UsageError
from .processes import Shard


def read_records(path: str | Path) -> list[dict]:
    """All complete records of a JSONL file (a torn last line from a killed writer is skipped).

    A complete line that is not UTF-8 or not JSON is a UsageError naming the file and the line
    (counted from 1); the file is left as it is.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, "rb") as f:  # bytes: a torn last line may end inside a character
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break  # torn last line
            line = decode_line(raw, path, number)
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UsageError(f"{path}:{number} is not a JSON record") from None
    return records


def decode_line(raw: bytes, path, number: int) -> str:
    """One line of a record file as text; UsageError naming the file, the line and the byte that is not UTF-8.

    >>> decode_line(b'{"completion": "caf\\xe9"}\\n', "samples/base.jsonl", 3)
    Traceback (most recent call last):
    ...
    sharpen.errors.UsageError: samples/base.jsonl:3 is not UTF-8 (byte 0xe9 at column 20): records are JSON \
lines in UTF-8; the file was left as it is
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}:{number} is not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}): "
                         f"records are JSON lines in UTF-8; the file was left as it is") from None


def record_key(record: dict) -> tuple[str, int]:
    return str(record["problem_id"]), int(record["sample_idx"])


class RecordWriter:
    """Append-only JSONL writer that knows which (problem_id, sample_idx) pairs are done."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_line()
        self.done = {record_key(r) for r in read_records(self.path)}
        self._file = open(self.path, "a", encoding="utf-8")

    def _cut_torn_line(self):
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def write(self, record: dict) -> None:
        key = record_key(record)
        if key in self.done:
            raise RuntimeError(f"record {key} already written to {self.path}")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add(key)

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def part_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.stem}.part{rank}.jsonl")


def merge_parts(path: str | Path) -> None:
    """Append the records of every part file of `path` not yet in it, then delete the parts.

    A merge killed half-way leaves its part files; the next merge skips what already landed.
    """
    path = Path(path)
    parts = sorted(path.parent.glob(f"{path.stem}.part*.jsonl"))
    if not parts:
        return
    with RecordWriter(path) as writer:
        for part in parts:
            for record in read_records(part):
                if record_key(record) not in writer.done:
                    writer.write(record)
    for part in parts:
        part.unlink()


class ShardedRecords:
    """One record file written by every process of a data-parallel group, each through its own part file.

    Seeds and keys derive from (problem, sample), so the merged file does not depend on the
    number of processes. Alone (world size 1) the writer appends to the file itself.
    """

    def __init__(self, path: str | Path, shard: Shard | None = None):
        self.path = Path(path)
        self.shard = shard or Shard()
        if self.shard.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merge_parts(self.path)  # parts left by a killed multi-process run
        self.shard.wait()
        self.done = {record_key(r) for r in read_records(self.path)}

    def mine(self, todo: list) -> list:
        """This process's share of a list of work items (the same list on every process)."""
        return todo[self.shard.rank::self.shard.world_size]

    def writer(self) -> RecordWriter:
        target = self.path if self.shard.world_size == 1 else part_path(self.path, self.shard.rank)
        return RecordWriter(target)

    def finish(self) -> list[dict]:
        """Wait for every process, merge the parts (main process), and return the file's records."""
        self.shard.wait()
        if self.shard.is_main:
            merge_parts(self.path)
        self.shard.wait()
        return read_records(self.path)
