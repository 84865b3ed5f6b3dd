"""Read a run directory: its per-sample records, their configs and sessions, and the stored base-model scores.

    run = load_run("runs/demo")           # run.methods: {"base": MethodRecords, ...} in table order, run.warnings
    m = run.methods["power_mh_a2"]
    m.kind, m.model                       # "power_mh", the model its config names
    m.by_problem()                        # {problem_id: [records sorted by sample_idx]}
    m.scores[record_key(m.records[0])]    # base-model scores, once attach_scores(run, ...) has read them

A run directory holds RUN_DIR/samples/<name>.jsonl (one JSON record per completion; <name> is a
method instance such as `base` or `power_mh_a2`), <name>.config.json beside it (which method and
settings made them, the environment), <name>.sessions.jsonl (one line per sampling session:
elapsed time, records written, environment) and RUN_DIR/scores/<name>.jsonl (base-model scores,
one line per (problem_id, sample_idx), written by sharpen.analysis.scoring). Nothing here writes: sample
files are never modified. `sharpen analyze RUN_DIR` starts by loading the run this way.

Anything that would make a number silently wrong raises InputError naming the file, the line
and what is accepted: a line that is not UTF-8 JSON, a record without a required field, a `correct`
that contradicts its `score`, a duplicate (problem_id, sample_idx), records of two configs mixed in
one file, a record of a weighted method (Method.weighted) without its importance_log_weight. Milder
problems (a torn last line left by a killed writer, uneven sample counts, part files of an unfinished
multi-process run) become warnings that the report prints.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sharpen.errors import UsageError
from sharpen.runs.records import decode_line, read_records, record_key
from sharpen.sampling.methods import find_method, registered_methods

REQUIRED_FIELDS = ("problem_id", "sample_idx", "prompt", "completion", "completion_ids", "correct")
SCORE_VALUES = ("logprob_sum", "logprob_mean", "confidence", "self_certainty", "num_tokens")
_PART = re.compile(r"\.part\d+$")


class InputError(UsageError):
    """A run directory or record that cannot be analysed as it is; the message says why."""


@dataclass
class MethodRecords:
    """All records of one method instance's file, with where they came from."""

    name: str
    path: Path
    records: list[dict]
    lines: list[int]  # line number of each record in the file
    config: dict | None  # <name>.config.json, if present
    sha256: str = ""
    sessions: list[dict] = field(default_factory=list)  # <name>.sessions.jsonl, one entry per sampling session
    warnings: list[str] = field(default_factory=list)
    scores: dict[tuple, dict] = field(default_factory=dict)  # (problem_id, sample_idx) -> base-model scores

    def by_problem(self) -> dict[str, list[dict]]:
        """Records grouped by problem id (in (problem_id, sample_idx) order, as read_method_file sorts them)."""
        groups: dict[str, list[dict]] = {}
        for record in self.records:
            groups.setdefault(str(record["problem_id"]), []).append(record)
        return {pid: sorted(group, key=lambda r: int(r["sample_idx"])) for pid, group in groups.items()}

    def score_of(self, record: dict) -> dict | None:
        """The base-model scores of one of this method's records (None when it has none)."""
        return self.scores.get(record_key(record))

    @property
    def kind(self) -> str:
        """The method that made the records (`power_mh` for an instance `power_mh_a2`); old configs: the name."""
        return str((self.config or {}).get("method") or self.name)

    @property
    def model(self) -> str | None:
        """The model that sampled these records, as its config names it."""
        for part in ("run", "identity"):
            model = ((self.config or {}).get(part) or {}).get("model")
            if model:
                return str(model)
        return None

    @property
    def settings(self) -> dict | None:
        """The method's settings as its config records them (None for old configs)."""
        settings = (self.config or {}).get("settings")
        return settings if isinstance(settings, dict) else None


def method_sort_key(kind: str, name: str):
    """Table order: kinds base, low_temp, power_mh, grpo, then others alphabetically; instances by name.

    Numbers in names compare as numbers, so an alpha sweep reads a2, a4, a8, a16:

    >>> names = [("power_mh", "power_mh_a16"), ("base", "base"), ("power_mh", "power_mh_a2"), ("zeta", "zeta"),
    ...          ("low_temp", "low_temp")]
    >>> [n for _, n in sorted(names, key=lambda kn: method_sort_key(*kn))]
    ['base', 'low_temp', 'power_mh_a2', 'power_mh_a16', 'zeta']
    """
    order = registered_methods()  # registration order: base, low_temp, power_mh, grpo, then any added
    rank = order.index(kind) if kind in order else len(order)
    natural = [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]  # str, int, str, ... aligned
    return rank, "" if kind in order else kind, natural


def record_digest(record: dict) -> str:
    """A fingerprint of what a score depends on (prompt + completion ids), so stale scores are noticed."""
    text = json.dumps([record["prompt"], [int(t) for t in record["completion_ids"]]])
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def read_method_file(path: str | Path) -> MethodRecords:
    """Read and check one <name>.jsonl file, its config and its sessions."""
    path = Path(path)
    name = path.name[:-len(".jsonl")]
    raw = path.read_bytes()
    records, lines, warnings = [], [], []
    parts = raw.split(b"\n")  # bytes: a torn last line may end inside a character
    if parts and parts[-1].strip():
        warnings.append(f"{path.name}: the last line is torn (a writer was killed mid-line); it was left out")
    for number, line in enumerate(parts[:-1], 1):
        line = decode_line(line, path, number)
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
        _check_values(record, f"{path}:{number}")
        if record["correct"] not in (True, False):  # 0 and 1 compare equal to False and True
            raise InputError(f"{path}:{number}: correct must be true or false, got {record['correct']!r}")
        _check_verdict(record, f"{path}:{number}")
        records.append(record)
        lines.append(number)
    # Every statistic reads records in (problem_id, sample_idx) order, whatever order the
    # processes and sessions that wrote them appended them in: intervals do not depend on it.
    order = sorted(range(len(records)), key=lambda i: record_key(records[i]))
    records, lines = [records[i] for i in order], [lines[i] for i in order]
    config_path = path.with_name(f"{name}.config.json")
    config = None
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError:
            raise InputError(f"{config_path} is not valid JSON") from None
    sessions = read_records(path.with_name(f"{name}.sessions.jsonl"))
    method = MethodRecords(name, path, records, lines, config, hashlib.sha256(raw).hexdigest(), sessions, warnings)
    _check_consistency(method)
    return method


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_values(record: dict, where: str) -> None:
    """Refuse values that would turn a statistic into nonsense: NaN or infinite numbers, non-integer ids."""
    ids = record["completion_ids"]
    if not isinstance(ids, list) or not all(_is_int(t) and t >= 0 for t in ids):
        raise InputError(f"{where}: completion_ids must be a list of non-negative integer token ids")
    if not _is_int(record["sample_idx"]) or record["sample_idx"] < 0:
        raise InputError(f"{where}: sample_idx must be a non-negative integer, got {record['sample_idx']!r}")
    if not isinstance(record["problem_id"], (str, int)) or isinstance(record["problem_id"], bool):
        raise InputError(f"{where}: problem_id must be a string or an integer, got {record['problem_id']!r}")
    for key in ("score", "base_logprob_sum", "base_logprob_mean", "num_tokens", "importance_log_weight"):
        value = record.get(key)
        if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise InputError(f"{where}: {key} must be a finite number, got {value!r}")
    logprobs = record.get("token_logprobs")
    if logprobs is not None and not (isinstance(logprobs, list) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in logprobs)):
        raise InputError(f"{where}: token_logprobs must be a list of finite numbers")
    cost = record.get("cost")
    if isinstance(cost, dict):
        for key, value in cost.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"{where}: cost.{key} must be a finite number, got {value!r}")


def _check_verdict(record: dict, where: str) -> None:
    """A record's `correct` is what its `score` says: true exactly when score >= 1 (make_record's rule).

    Graders score in [0, 1], so correct means score 1. Accuracy counts `correct` and mean scores
    count `score`: a record where they disagree would make the two tables contradict each other.

    >>> _check_verdict({"correct": True, "score": 0.0}, "base.jsonl:4")
    Traceback (most recent call last):
    ...
    sharpen.analysis.runs.InputError: base.jsonl:4: correct is true but score is 0.0: correct must be true exactly \
when score >= 1 (graders score in [0, 1]; 1 is correct)
    """
    score = record.get("score")
    if score is not None and record["correct"] != (score >= 1.0):
        raise InputError(f"{where}: correct is {json.dumps(record['correct'])} but score is {score!r}: correct must "
                         f"be true exactly when score >= 1 (graders score in [0, 1]; 1 is correct)")


def _check_consistency(method: MethodRecords) -> None:
    """Refuse duplicates and records of different configs in one file."""
    path = method.path
    seen: dict[tuple, int] = {}
    for record, line in zip(method.records, method.lines):
        key = record_key(record)
        if key in seen:
            raise InputError(f"{path}:{line} repeats problem {key[0]} sample {key[1]} (first on line "
                             f"{seen[key]}): each (problem_id, sample_idx) may appear once")
        seen[key] = line
    names = Counter(str(r["method"]) for r in method.records if "method" in r)
    if len(names) > 1 or (names and method.name not in names):
        found = ", ".join(f"{n} ({c} records)" for n, c in names.most_common())
        raise InputError(f"{path} holds records of method(s) {found}: a file <name>.jsonl may hold only "
                         f"records whose method is <name>")
    kind = find_method(method.kind)
    if kind is not None and kind.weighted:
        unweighted = [line for r, line in zip(method.records, method.lines) if r.get("importance_log_weight") is None]
        if unweighted:
            raise InputError(f"{path}:{unweighted[0]} has no importance_log_weight ({len(unweighted)} record(s) lack "
                             f"it): every record of {method.kind}, a weighted method, must carry its log weight")
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
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"'{run_dir}' is a file, not a run directory: give the directory holding samples/")
    if not run_dir.is_dir():
        raise InputError(f"run directory '{run_dir}' does not exist")
    if not samples.is_dir():
        raise InputError(f"'{run_dir}' has no samples/ directory: give a run directory written by "
                         f"`sharpen sample` (RUN_DIR/samples/<name>.jsonl)")
    found, warnings = [], []
    for path in sorted(samples.glob("*.jsonl")):
        stem = path.name[:-len(".jsonl")]
        if stem.endswith(".sessions"):
            continue  # read with its method file
        if _PART.search(stem):
            warnings.append(f"{path.name} is a part file of an unfinished multi-process sampling run: it was "
                            f"left out (running the sampler again merges it)")
            continue
        method = read_method_file(path)
        if method.records:
            found.append(method)
            warnings.extend(method.warnings)
        else:
            warnings.append(f"{path.name} holds no complete record: method {method.name} was left out")
    if not found:
        raise InputError(f"'{samples}' holds no records: expected <name>.jsonl files with one JSON record "
                         f"per line")
    found.sort(key=lambda m: method_sort_key(m.kind, m.name))
    return Run(run_dir, {m.name: m for m in found}, warnings)


# ---- stored base-model scores ----------------------------------------------------------------

def scores_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / "scores" / f"{name}.jsonl"


def same_model(entry: dict, identity: dict | None) -> bool:
    """Whether scores were made by the model `identity` names (None: any model will do).

    A revision is compared when both sides have one.
    """
    if identity is None:
        return True
    if entry.get("model") != identity["model"]:
        return False
    old, new = entry.get("model_revision"), identity.get("model_revision")
    return old is None or new is None or old == new


def stale_scores(run_dir: str | Path, method: MethodRecords, identity: dict | None) -> str | None:
    """Why scores/<name>.jsonl cannot be extended as it is (another model, changed records), or None."""
    by_key = {record_key(r): r for r in method.records}
    for entry in read_records(scores_path(run_dir, method.name)):
        if not same_model(entry, identity):
            return f"scored by {entry.get('model')} (revision {entry.get('model_revision')})"
        record = by_key.get(record_key(entry))
        if record is not None and entry.get("record_digest") != record_digest(record):
            return f"problem {entry['problem_id']} sample {entry['sample_idx']} was scored for another completion"
    return None


def attach_scores(run: Run, identity: dict | None) -> int:
    """Fill each method's `scores` from scores/<name>.jsonl; return how many records have one.

    Only scores by the model `identity` names (None: any), made for the completion the record holds now.
    """
    found = 0
    for method in run.methods.values():
        by_key = {record_key(r): r for r in method.records}
        method.scores = {}
        for entry in read_records(scores_path(run.dir, method.name)):
            key = record_key(entry)
            record = by_key.get(key)
            current = record is not None and entry.get("record_digest") == record_digest(record)
            if current and same_model(entry, identity):
                method.scores[key] = {k: entry.get(k) for k in ("model", "model_revision", *SCORE_VALUES)}
        found += len(method.scores)
    return found
