"""Per-sample JSONL records: the single source of truth of a run, appended one finished completion at a time.

    writer = RecordWriter(run_dir / "samples" / "base.jsonl")
    writer.done          # {(problem_id, sample_idx), ...} already on disk
    writer.write(record) # append + flush + fsync: a killed run loses no finished sample

A run killed mid-write can leave a partial last line; opening the file again cuts it
off, so resuming never reads garbage and never writes a duplicate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UsageError


def make_output_dir(path: str | Path) -> Path:
    """Create a run directory (and parents), or say in one line why it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output directory '{path}': {err.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"output directory '{path}' is not writable")
    return path


def read_records(path: str | Path) -> list[dict]:
    """All complete records of a JSONL file (a torn last line from a killed writer is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # torn last line
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UsageError(f"{path}:{number} is not a JSON record") from None
    return records


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
