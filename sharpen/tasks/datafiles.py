"""Rows of a dataset, from local files or the Hugging Face Hub, split into train / test: what data tasks read.

    source = DataSource(path="data.jsonl", test_fraction=0.2)     # one file, a seeded hash split
    source = DataSource(path="test.csv", train_path="train.csv")   # two files
    source = DataSource(path="all.parquet", split_field="split")   # a column names each row's split
    source = DataSource(hub="openai/gsm8k", config="main")         # the Hub's own test and train splits
    source.splits()               # ("test", "train")
    source.rows("train")          # [Row(index, values, where), ...]

Files are read with `datasets` (JSONL, JSON, CSV, Parquet; CSV cells stay strings). A single
source with no split field and no `test_fraction` is all test: evaluating a file never drops
rows silently. The hash split puts a row in a split by a seeded hash of its question text, so
repeated questions share a split and a row's split does not depend on the others. Every error
names the file and, for a missing field, the fields the file has.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from sharpen.errors import UsageError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_NAMES = ("test", "validation", "train")


@dataclass
class Row:
    index: int  # its position in its file or Hub split (0-based): stable ids use it; messages say index + 1
    values: dict
    where: str  # the file or Hub split it comes from


def missing(value) -> bool:
    """An absent cell: None, NaN, or only white space."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def read_file(path: str) -> list[dict]:
    """Every row of a JSONL / JSON / CSV / Parquet file; UsageError naming the file when it cannot be read."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"data file '{path}' does not exist: give a {', '.join(FORMATS)} file")
    builder = FORMATS.get(file.suffix.lower())
    if builder is None:
        raise UsageError(f"data file '{path}' is not one of the accepted formats ({', '.join(FORMATS)})")
    raw = file.read_bytes()
    if not raw.strip():
        return []  # an empty file is an empty split: the task says so, naming the split
    if builder != "parquet":
        check_utf8(raw, path)  # pyarrow would keep the bad bytes and fail later, converting a row
    options = {}
    if builder == "csv":
        options["features"] = _string_features(file)  # "007" stays "007": answers are compared as written
    try:
        from datasets import load_dataset
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
        data = load_dataset(builder, data_files=str(file.resolve()), split="train", **options)
    except UsageError:
        raise
    except Exception as err:  # malformed JSON, a truncated Parquet file, ...: all mean "cannot read this"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UsageError(f"data file '{path}' cannot be read as {builder.upper()} ({type(err).__name__}: "
                         f"{first[:160]})") from None
    rows = []
    try:
        for row in data:
            rows.append(dict(row))
    except UnicodeDecodeError:  # a Parquet string column holding bytes that are not UTF-8
        raise UsageError(f"data file '{path}': row {len(rows) + 1} holds text that is not UTF-8: "
                         f"text columns must be UTF-8") from None
    return rows


def check_utf8(raw: bytes, path: str) -> None:
    """UsageError naming the line and byte offset of the first byte of `raw` that is not UTF-8.

    >>> check_utf8(b'{"q": "caf\\xc3\\xa9"}\\n{"q": "caf\\xe9"}\\n', "d.jsonl")
    Traceback (most recent call last):
    ...
    sharpen.errors.UsageError: data file 'd.jsonl' is not UTF-8: line 2 (byte offset 25) holds 0xe9; \
accepted: UTF-8 text (save the file as UTF-8)
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1  # lines count from 1, as editors number them
        raise UsageError(f"data file '{path}' is not UTF-8: line {line} (byte offset {err.start}) holds "
                         f"0x{raw[err.start]:02x}; accepted: UTF-8 text (save the file as UTF-8)") from None


def _string_features(file: Path):
    from datasets import Features, Value

    with open(file, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise UsageError(f"data file '{file}' is empty: a CSV file needs a header row and at least one row")
    return Features({name: Value("string") for name in header})


def read_hub(name: str, config: str | None, split: str) -> list[dict]:
    """One split of a Hub dataset (or the local Hugging Face cache); UsageError when it cannot be loaded here."""
    try:
        from datasets import load_dataset

        return [dict(row) for row in load_dataset(name, config, split=split)]
    except Exception as err:  # network, auth, unknown config or split: all mean "not loadable here"
        label = f"{name}" + (f" ({config})" if config else "")
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise UsageError(f"cannot load split '{split}' of the Hub dataset {label} ({type(err).__name__}: {first}); "
                         f"download it first, or give path= a local file") from None


def hash_bucket(text: str, seed: int) -> float:
    """A stable number in [0, 1) for `text` under `seed`."""
    digest = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2 ** 64


def question_id(text: str) -> str:
    """An id made from a question's text, for files without an id field."""
    return "q-" + hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


@dataclass
class DataSource:
    """Where a task's rows come from and how they divide into splits (see the module docstring)."""

    path: str | None = None  # a file: the test split, or every split (split_field / test_fraction)
    train_path: str | None = None  # a second file: the train split
    hub: str | None = None  # a Hub dataset id, e.g. openai/gsm8k
    config: str | None = None  # its configuration (subset), e.g. main
    hub_split: str = "test"  # the Hub split read as the test split
    hub_train_split: str | None = "train"  # the Hub split read as the train split (None: no train split)
    split_field: str | None = None  # a field whose value (test / validation / train) names each row's split
    test_fraction: float | None = None  # a seeded hash split of one source: this share of rows is test
    validation_fraction: float = 0.0  # ... and this share validation (the rest: train)
    split_seed: int = 0
    question_field: str = "question"  # what the hash split hashes

    def __post_init__(self):
        if (self.path is None) == (self.hub is None):
            raise UsageError("give the data as path=<file> or hub=<org/name> (one of them)")
        if self.train_path is not None and self.path is None:
            raise UsageError("train_path= goes with path= (the test file)")
        ways = [name for name, value in (("train_path", self.train_path), ("split_field", self.split_field),
                                         ("test_fraction", self.test_fraction)) if value is not None]
        if len(ways) > 1:
            raise UsageError(f"give one way to split the data, not {' and '.join(ways)}")
        if self.test_fraction is not None:
            for name in ("test_fraction", "validation_fraction"):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                    raise UsageError(f"{name} must be a number in [0, 1), got {value!r}")
            if self.test_fraction <= 0:
                raise UsageError(f"test_fraction must be > 0, got {self.test_fraction}")
            if not self.test_fraction + self.validation_fraction < 1:
                raise UsageError(f"test_fraction + validation_fraction must be < 1 (something left to train on), "
                                 f"got {self.test_fraction} + {self.validation_fraction}")
        self._cache: dict = {}

    def splits(self) -> tuple[str, ...]:
        if self.train_path is not None:
            return ("test", "train")
        if self.split_field is not None:
            rows = self._source_rows(None)
            self.require_field(rows, self.split_field, "split")
            present = {str(row.values.get(self.split_field)).strip().lower() for row in rows}
            if not present & set(SPLIT_NAMES):
                shown = ", ".join(sorted(present)[:5])
                raise UsageError(f"{rows[0].where}: the split field '{self.split_field}' names none of "
                                 f"{', '.join(SPLIT_NAMES)} (its values: {shown})")
            return tuple(s for s in SPLIT_NAMES if s in present)
        if self.test_fraction is not None:
            return ("test", "validation", "train") if self.validation_fraction > 0 else ("test", "train")
        if self.hub is not None and self.hub_train_split is not None:
            return ("test", "train")
        return ("test",)

    def rows(self, split: str) -> list[Row]:
        """The rows of `split` in their source's order."""
        if self.train_path is not None:
            return self._source_rows("train" if split == "train" else "test")
        if self.hub is not None and self.split_field is None and self.test_fraction is None:
            return self._source_rows(split)
        rows = self._source_rows(None)
        if self.split_field is not None:
            self.require_field(rows, self.split_field, "split")
            return [r for r in rows if str(r.values.get(self.split_field)).strip().lower() == split]
        if self.test_fraction is not None:
            self.require_field(rows, self.question_field, "question")
            return [r for r in rows if self._hash_split(str(r.values[self.question_field])) == split]
        return rows

    def _hash_split(self, question: str) -> str:
        bucket = hash_bucket(question, self.split_seed)
        if bucket < self.test_fraction:
            return "test"
        return "validation" if bucket < self.test_fraction + self.validation_fraction else "train"

    def _source_rows(self, split: str | None) -> list[Row]:
        """Rows of one file or Hub split: split None is the single source (path=, or the Hub's hub_split)."""
        if self.path is not None:
            file = self.train_path if split == "train" else self.path
            key = ("file", file)
            if key not in self._cache:
                self._cache[key] = [Row(i, values, file) for i, values in enumerate(read_file(file))]
            return self._cache[key]
        hub_split = self.hub_split if split in (None, "test") else self.hub_train_split if split == "train" else split
        key = ("hub", hub_split)
        if key not in self._cache:
            where = f"{self.hub}" + (f"[{self.config}]" if self.config else "") + f":{hub_split}"
            self._cache[key] = [Row(i, values, where) for i, values in
                                enumerate(read_hub(self.hub, self.config, hub_split))]
        return self._cache[key]

    @staticmethod
    def require_field(rows: list[Row], name: str, what: str) -> None:
        """Refuse rows that lack the field `name` (the `what` field): name the file and list its fields."""
        if not rows:
            return
        fields = sorted({k for row in rows for k in row.values})
        if name not in fields:
            raise UsageError(f"{rows[0].where}: no field '{name}' (the {what} field); its fields are "
                             f"{', '.join(fields)}")
        lacking = [r for r in rows if missing(r.values.get(name))]
        if lacking:
            raise UsageError(f"{lacking[0].where}: {len(lacking)} of {len(rows)} rows have no value for '{name}' "
                             f"(the {what} field), e.g. row {lacking[0].index + 1}")


TEMPLATE_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template_fields(template: str) -> list[str]:
    """The field names a prompt template refers to as {name} ({{ and }} are literal braces)."""
    return [m.group(1) for m in TEMPLATE_FIELD.finditer(template) if m.group(1)]


def render(template: str, values: dict) -> str:
    """`template` with each {name} replaced by values[name]; other braces (\\boxed{}) are kept as written."""
    def replace(match):
        if match.group(1) is None:
            return match.group(0)[0]  # {{ -> {, }} -> }
        return str(values[match.group(1)])

    return TEMPLATE_FIELD.sub(replace, template)
