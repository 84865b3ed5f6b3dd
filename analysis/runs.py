"""Read a run directory's per-sample records, check them, and write scores back atomically.

    run = load_run("runs/demo")         # run.methods: {"base": MethodRecords, ...}, run.warnings
    run.methods["base"].by_problem()    # {problem_id: [records sorted by sample_idx]}
    rewrite_records(run.methods["base"])  # after adding fields: temp file + os.replace

A run directory holds RUN_DIR/samples/<method>.jsonl (one JSON record per completion)
and <method>.config.json beside it. Anything that would make a number silently wrong
raises InputError naming the file, the line and what is accepted: a record without a
required field, a duplicate (problem_id, sample_idx), records of two configs mixed in
one file. Milder problems (a torn last line left by a killed writer, uneven sample
counts) become warnings that the report prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# The order methods appear in tables and plots; other names follow alphabetically.
METHOD_ORDER = ("base", "low_temp", "power_mh", "grpo")
REQUIRED_FIELDS = ("problem_id", "sample_idx", "prompt", "completion", "completion_ids", "correct")


class InputError(ValueError):
    """A run directory or record that cannot be analysed as it is; the message says why."""


@dataclass
class MethodRecords:
    """All records of one method file, with where they came from."""

    name: str
    path: Path
    records: list[dict]
    lines: list[int]  # line number of each record in the file
    config: dict | None  # <method>.config.json, if present
    sha256: str = ""
    stat: tuple = ()  # (size, mtime_ns) when read: a rewrite checks nobody appended since
    warnings: list[str] = field(default_factory=list)

    def by_problem(self) -> dict[str, list[dict]]:
        """Records grouped by problem id (in first-seen order), each group sorted by sample_idx."""
        groups: dict[str, list[dict]] = {}
        for record in self.records:
            groups.setdefault(str(record["problem_id"]), []).append(record)
        return {pid: sorted(group, key=lambda r: int(r["sample_idx"])) for pid, group in groups.items()}

    @property
    def model(self) -> str | None:
        """The model that sampled these records, as its config names it."""
        if not self.config:
            return None
        for part in ("config", "identity"):
            model = (self.config.get(part) or {}).get("model")
            if model:
                return str(model)
        return None


def method_sort_key(name: str):
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def read_method_file(path: str | Path) -> MethodRecords:
    """Read and check one <method>.jsonl file."""
    path = Path(path)
    name = path.name[:-len(".jsonl")]
    raw = path.read_bytes()
    records, lines, warnings = [], [], []
    text = raw.decode("utf-8")
    parts = text.split("\n")
    if parts and parts[-1].strip():
        warnings.append(f"{path.name}: the last line is torn (a writer was killed mid-line); it was left out")
    for number, line in enumerate(parts[:-1], 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{number} is not a JSON record") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number} is not a JSON object")
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise InputError(f"{path}:{number} lacks the field(s) {', '.join(missing)}: every record needs "
                             f"{', '.join(REQUIRED_FIELDS)}")
        if not isinstance(record["completion_ids"], list):
            raise InputError(f"{path}:{number}: completion_ids must be a list of token ids")
        if record["correct"] not in (True, False):  # 0 and 1 compare equal to False and True
            raise InputError(f"{path}:{number}: correct must be true or false, got {record['correct']!r}")
        records.append(record)
        lines.append(number)
    config_path = path.with_name(f"{name}.config.json")
    config = None
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError:
            raise InputError(f"{config_path} is not valid JSON") from None
    st = path.stat()
    method = MethodRecords(name, path, records, lines, config, hashlib.sha256(raw).hexdigest(),
                           (st.st_size, st.st_mtime_ns), warnings)
    _check_consistency(method)
    return method


def _check_consistency(method: MethodRecords) -> None:
    """Refuse duplicates and records of different configs in one file."""
    path = method.path
    seen: dict[tuple, int] = {}
    for record, line in zip(method.records, method.lines):
        key = (str(record["problem_id"]), int(record["sample_idx"]))
        if key in seen:
            raise InputError(f"{path}:{line} repeats problem {key[0]} sample {key[1]} (first on line "
                             f"{seen[key]}): each (problem_id, sample_idx) may appear once")
        seen[key] = line
    names = Counter(str(r["method"]) for r in method.records if "method" in r)
    if len(names) > 1 or (names and method.name not in names):
        found = ", ".join(f"{n} ({c} records)" for n, c in names.most_common())
        raise InputError(f"{path} holds records of method(s) {found}: a file <method>.jsonl may hold only "
                         f"records of that method")
    temperatures = Counter(r.get("temperature") for r in method.records if r.get("temperature") is not None)
    if len(temperatures) > 1:
        found = ", ".join(f"{t} on {c} lines" for t, c in temperatures.most_common())
        raise InputError(f"{path} mixes records of different configs (temperature {found}): "
                         f"keep each config's records in its own run directory")
    saved = ((method.config or {}).get("identity") or {}).get("temperature")
    if saved is not None and temperatures:
        (found,) = temperatures
        if abs(float(found) - float(saved)) > 1e-9:
            raise InputError(f"{path} has records at temperature {found} but its config says {saved}: "
                             f"records and config come from different runs")


@dataclass
class Run:
    """A run directory's method files (in table order) and the warnings reading them raised."""

    dir: Path
    methods: dict[str, MethodRecords]
    warnings: list[str] = field(default_factory=list)


def load_run(run_dir: str | Path) -> Run:
    """Every method file of RUN_DIR/samples, in table order; InputError if there is nothing to analyse."""
    run_dir = Path(run_dir)
    samples = run_dir / "samples"
    if not run_dir.is_dir():
        raise InputError(f"run directory '{run_dir}' does not exist")
    if not samples.is_dir():
        raise InputError(f"'{run_dir}' has no samples/ directory: give a run directory written by "
                         f"`sharpen sample` (RUN_DIR/samples/<method>.jsonl)")
    methods, warnings = {}, []
    for path in sorted(samples.glob("*.jsonl"), key=lambda p: method_sort_key(p.stem)):
        method = read_method_file(path)
        if method.records:
            methods[method.name] = method
            warnings.extend(method.warnings)
        else:
            warnings.append(f"{path.name} holds no complete record: method {method.name} was left out")
    if not methods:
        raise InputError(f"'{samples}' holds no records: expected <method>.jsonl files with one JSON record "
                         f"per line")
    return Run(run_dir, methods, warnings)


def rewrite_records(method: MethodRecords) -> None:
    """Write `method.records` back to its file atomically (temp file + os.replace).

    Refuses when the file changed since it was read (a sampler still appending), so no
    record is lost; a torn last line is dropped, as the next writer would drop it.
    """
    path = method.path
    st = path.stat()
    if (st.st_size, st.st_mtime_ns) != method.stat:
        raise InputError(f"{path} changed while it was being analysed (is a sampler still writing to it?): "
                         f"run the analysis again once sampling has finished")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, st.st_mode & 0o7777)  # mkstemp makes 0600 files; keep the original mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in method.records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    raw = path.read_bytes()
    st = path.stat()
    method.sha256, method.stat = hashlib.sha256(raw).hexdigest(), (st.st_size, st.st_mtime_ns)
    method.lines = list(range(1, len(method.records) + 1))
