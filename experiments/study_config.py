"""The study config: one YAML file (presets in experiments/configs/), strict, with overrides.

    config = load_study_config("experiments/configs/testbed.yaml", ["num_problems=16", "power_mh.mcmc_steps=2"])

Every key is checked: an unknown key anywhere is an error that names the key, where it
is, and the keys accepted there. Overrides are `dotted.key=value` items (values parsed
as YAML), applied on top of the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UsageError

METHODS = ("base", "low_temp", "power_mh", "grpo")
CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class TestbedSettings:
    seed: int = 0  # seed of the testbed's corpus and training (model: testbed only)


@dataclass
class LowTempSettings:
    temperature: float | None = None  # default 1/alpha


@dataclass
class PowerMHSettings:
    block_size: int = 192
    mcmc_steps: int = 10
    proposal_temperature: float | None = None  # default 1/alpha
    stop_on_eos: bool = True  # the paper's schedule; false targets p^alpha exactly


@dataclass
class GrpoSettings:
    train: bool = True  # false: take `checkpoint` (an existing RL model) instead of training
    checkpoint: str | None = None  # Hub id or path of an RL checkpoint (with train: false)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    num_train_problems: int | None = None
    accelerate_config: str | None = None  # relaunch GRPO alone under `accelerate launch --config_file`
    config: dict = field(default_factory=dict)  # trl.GRPOConfig fields over the run defaults


@dataclass
class AnalysisSettings:
    embeddings: str = "auto"  # auto | on | off
    confidence: float = 0.95
    bootstrap: int = 2000
    batch_tokens: int = 8192


@dataclass
class WandbSettings:
    mode: str = "offline"  # offline | online | off
    project: str = "sharpen"
    entity: str | None = None
    group: str | None = None  # default: the study name


@dataclass
class StudyConfig:
    name: str
    model: str  # checkpoint dir, Hub id, smollm2-135m, or `testbed` (built locally)
    task: str
    output_dir: str | None = None  # default runs/<name>
    task_args: dict = field(default_factory=dict)
    methods: list = field(default_factory=lambda: list(METHODS))
    chat: bool = False
    split: str = "test"
    num_problems: int | None = None
    num_samples: int = 8
    max_new_tokens: int = 512
    seed: int = 0
    batch_size: int = 32
    alpha: float = 4.0
    testbed: TestbedSettings = field(default_factory=TestbedSettings)
    low_temp: LowTempSettings = field(default_factory=LowTempSettings)
    power_mh: PowerMHSettings = field(default_factory=PowerMHSettings)
    grpo: GrpoSettings = field(default_factory=GrpoSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UsageError(f"unknown method(s) {', '.join(map(str, unknown)) or '(none given)'} in methods: "
                             f"valid methods are {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise UsageError(f"methods lists a method twice: {self.methods}")
        for name in ("num_samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_problems is not None and self.num_problems < 1:
            raise UsageError(f"num_problems must be >= 1, got {self.num_problems}")
        if not self.alpha > 0:
            raise UsageError(f"alpha must be > 0, got {self.alpha}")
        if self.wandb.mode not in ("offline", "online", "off"):
            raise UsageError(f"wandb.mode must be offline, online or off, got '{self.wandb.mode}'")
        if "grpo" in self.methods and not self.grpo.train and not self.grpo.checkpoint:
            raise UsageError("grpo.train is false but grpo.checkpoint is not set: give an RL checkpoint or train")
        if self.output_dir is None:
            self.output_dir = str(Path("runs") / self.name)

    @property
    def wandb_group(self) -> str:
        return self.wandb.group or self.name


def _build(cls, data, where: str):
    """Instantiate dataclass `cls` from a dict, refusing unknown keys and mistyped values."""
    if not isinstance(data, dict):
        raise UsageError(f"{where or 'the config'} must be a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise UsageError(f"unknown key '{path}' in the study config: valid keys{' in ' + where if where else ''} "
                             f"are {', '.join(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, path)
        else:
            kwargs[key] = _check_type(value, hint, path)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UsageError(f"the study config lacks {', '.join((where + '.' if where else '') + m for m in missing)}")
    return cls(**kwargs)


def _check_type(value, hint, path: str):
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        kind = typing.get_origin(kind) or kind
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool, list, dict) and isinstance(value, kind):
            return value
        if kind is str and isinstance(value, bool) and bool not in allowed:
            return "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
    names = " or ".join("null" if k is type(None) else getattr(typing.get_origin(k) or k, "__name__", str(k))
                        for k in allowed)
    raise UsageError(f"{path} must be {names}, got {value!r}")


def apply_override(data: dict, item: str) -> None:
    """Set data[a][b] = value for an override `a.b=value` (value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UsageError(f"overrides take the form key=value or section.key=value, got '{item}'")
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"override '{item}': {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def resolve_config_path(path: str) -> Path:
    """A config file path, or the name of a preset in experiments/configs/ (with or without .yaml)."""
    candidates = [Path(path), CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("grpo_")))
    raise UsageError(f"config '{path}' does not exist: give a YAML file or a preset name ({presets})")


def load_study_config(path: str, overrides: list[str] | tuple = ()) -> StudyConfig:
    file = resolve_config_path(path)
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"config '{file}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config '{file}' must be a YAML mapping")
    for item in overrides:
        apply_override(data, item)
    return _build(StudyConfig, data, "")


def config_to_dict(config: StudyConfig) -> dict:
    return dataclasses.asdict(config)
