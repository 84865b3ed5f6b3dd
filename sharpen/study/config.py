"""The study config: one YAML file (presets in sharpen/configs/), strict, with overrides.

    config = load_study_config("sharpen/configs/testbed.yaml", ["num_problems=16", "power_mh.mcmc_steps=2"])
    config.instances    # [MethodInstance(name="base", method="base", settings=BaseSamplingConfig(...)), ...]

Every key is checked: an unknown key anywhere is an error that names the key, where it
is, and the keys accepted there. Overrides are `dotted.key=value` items (values parsed
as YAML), applied on top of the file.

`methods:` lists plain method names and named instances of registered methods (sharpen.sampling.methods):

    methods: [base, low_temp, {name: power_mh_a2, method: power_mh, alpha: 2.0, mcmc_steps: 4}]

Each instance's settings are its method's own settings dataclass, filled (lowest first) from the
dataclass defaults, the study-level `alpha` / `max_new_tokens` / `batch_size` where the dataclass
has such a field, the method's section (`power_mh: {block_size: 8}` applies to every power_mh
instance), then the instance's own keys. An instance may also set its own `num_samples`.
An instance may set `chat` too (default: the study's `chat`; for instances of the RL model,
`grpo.chat` when it is set). Sections are the method settings dataclasses themselves, `analysis:`
is analysis.AnalysisConfig, `wandb:` is sharpen.runs.tracking.WandbConfig, and `grpo:` is a `sharpen
grpo --config` mapping (GRPOConfig, trl.ModelConfig LoRA and run fields) plus the study's `train`,
`checkpoint`, `task` / `task_args` (train on another task's train split, e.g. `math` for a MATH500
study), `chat`, and `config` (a `sharpen grpo --config` file such as grpo_gpu, under the section's
own keys).

`profile: reference` reproduces the reference implementation's choices, each of which moves the
numbers: top-k 50 on every method whose settings have `top_k` (transformers 4.47's generate
default, which the reference's base, low-temperature and MH proposals all sampled under), the
task's reference prompt where it has one (math500 and math: the reference's literal text with
`\\boxed{{}}`), and on math tasks `grpo.chat: true` (the RL checkpoint prompted through its chat
template, as the reference's format_prompt does; on HumanEval and GPQA it prompts every model raw),
and each method's paper settings where sharpen's defaults differ (Method.paper_settings: e.g. power_mh's
proposal temperature 1/alpha and stop_on_eos, chosen by the paper but slow to reach p^alpha).
Each setting can still be overridden in a section or an instance; records carry `profile`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sharpen.analysis import AnalysisConfig
from sharpen.configs import find_config
from sharpen.errors import UsageError
from sharpen.rl.settings import read_grpo_config
from sharpen.runs.files import resolve_local
from sharpen.runs.tracking import WandbConfig
from sharpen.sampling.draw import check_alpha
from sharpen.sampling.generate import DEFAULT_BATCH_SIZE
from sharpen.sampling.methods import get_method, registered_methods
from sharpen.sampling.vllm_engine import check_engine
from sharpen.tasks import task_factory

from .sample import check_instance_name, check_profile

DEFAULT_METHODS = ("base", "low_temp", "power_mh", "grpo")
SHARED_SETTINGS = ("alpha", "max_new_tokens", "batch_size")  # study-level keys that instances inherit
INSTANCE_KEYS = ("name", "method", "num_samples", "num_problems", "chat", "engine")  # keys of a methods entry that are not settings
# The reference implementation (aakaran/reasoning-with-sampling) samples through transformers 4.47's
# generate, whose defaults apply top-k 50 to every sampled method, the MH proposals included.
REFERENCE_TOP_K = 50


@dataclass
class TestbedSettings:
    seed: int = 0  # seed of the testbed's corpus and training (model: testbed only)


@dataclass
class GrpoStage:
    """The study's GRPO stage: train (with `settings`, a `sharpen grpo --config` mapping) or take a checkpoint."""

    train: bool = True  # false: take `checkpoint` (an existing RL model) instead of training
    checkpoint: str | None = None  # Hub id or path of an RL checkpoint (with train: false)
    task: str | None = None  # the task GRPO trains on (its train split); None: the study's task
    task_args: dict | None = None  # that task's options; None: the study's task_args (when task is None) or {}
    chat: bool | None = None  # chat template for GRPO's training prompts and the RL model's samples; None: study's
    settings: dict = field(default_factory=dict)  # every other key of the grpo: section


@dataclass
class MethodInstance:
    """One named instance of a registered method, with its resolved settings."""

    name: str
    method: str
    settings: typing.Any
    num_samples: int
    num_problems: int | None = None  # the first num_problems of the study's problems (None: all of them)
    chat: bool = False  # prompts through the tokenizer's chat template
    engine: str = "hf"  # what runs the model: hf (transformers) or vllm (sharpen.sampling.vllm_engine)


@dataclass
class StudyConfig:
    name: str
    model: str  # checkpoint dir, Hub id, smollm2-135m, or `testbed` (built locally)
    task: str
    output_dir: str | None = None  # default runs/<name>
    task_args: dict = field(default_factory=dict)
    methods: list = field(default_factory=lambda: list(DEFAULT_METHODS))
    chat: bool = False
    profile: str = "default"  # "reference": the reference implementation's sampling and prompts (see below)
    engine: str = "hf"  # what runs the model for every instance (hf or vllm); an instance may set its own
    split: str = "test"
    num_problems: int | None = None
    num_samples: int = 8
    max_new_tokens: int = 512
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE  # sampling.generate's; not part of the identity
    alpha: float = 4.0
    testbed: TestbedSettings = field(default_factory=TestbedSettings)
    grpo: GrpoStage = field(default_factory=GrpoStage)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sections: dict = field(default_factory=dict)  # method name -> settings given in its section (not a YAML key)
    instances: list = field(init=False)  # MethodInstance per methods entry, resolved from the above

    def __post_init__(self):
        for name in ("num_samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_problems is not None and self.num_problems < 1:
            raise UsageError(f"num_problems must be >= 1, got {self.num_problems}")
        try:
            check_alpha(self.alpha)  # the samplers' range, stated once in sampling.draw
        except ValueError as err:
            raise UsageError(str(err)) from None
        if self.output_dir is None:
            self.output_dir = str(Path("runs") / self.name)
        check_profile(self.profile)
        try:
            check_engine(self.engine, "engine")
        except ValueError as err:
            raise UsageError(str(err)) from None
        self._apply_profile()
        self.instances = [self._instance(entry, i) for i, entry in enumerate(self.methods)]
        if not self.instances:
            raise UsageError(f"methods is empty: list at least one of {', '.join(registered_methods())}")
        names = [inst.name for inst in self.instances]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UsageError(f"methods names the instance(s) {', '.join(twice)} twice: give each a distinct name")
        if self.needs_rl_model and not self.grpo.train and not self.grpo.checkpoint:
            raise UsageError("grpo.train is false but grpo.checkpoint is not set: give an RL checkpoint or train")

    def _apply_profile(self) -> None:
        """The reference profile's task prompt and GRPO chat default (its top-k goes into each instance)."""
        if self.profile != "reference":
            return
        targets = [(self.task, self.task_args)]
        if self.grpo.task is not None:
            targets.append((self.grpo.task, self.grpo.task_args))
        for task, task_args in targets:  # e.g. math500's prompt=reference_math: the reference's exact text
            for key, value in getattr(task_factory(task), "reference_options", {}).items():
                task_args.setdefault(key, value)
        if self.grpo.chat is None:
            # The reference prompts the RL checkpoint through its chat template on math (format_prompt), and
            # with the raw prompt on HumanEval and GPQA, as it does the base model.
            self.grpo.chat = bool(getattr(task_factory(self.task), "reference_rl_chat", False))

    @property
    def grpo_task(self) -> tuple[str, dict]:
        """The task GRPO trains on and its options."""
        if self.grpo.task is None:
            return self.task, self.task_args
        return self.grpo.task, self.grpo.task_args or {}

    @property
    def grpo_chat(self) -> bool:
        return self.chat if self.grpo.chat is None else self.grpo.chat

    def _instance(self, entry, index: int) -> MethodInstance:
        where = f"methods[{index}]"
        if isinstance(entry, str):
            entry = {"method": entry}
        if not isinstance(entry, dict):
            raise UsageError(f"{where} must be a method name or a mapping with name and method, got {entry!r}")
        entry = dict(entry)
        kind = entry.pop("method", None)
        if kind is None:
            raise UsageError(f"{where} has no 'method': name one of {', '.join(registered_methods())}")
        try:
            method = get_method(kind)
        except ValueError as err:
            raise UsageError(f"{where}: {err}") from None
        name = entry.pop("name", kind)
        check_instance_name(name, f"{where}.name")
        num_samples = entry.pop("num_samples", self.num_samples)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise UsageError(f"{where}.num_samples must be an integer >= 1, got {num_samples!r}")
        num_problems = entry.pop("num_problems", self.num_problems)
        if num_problems is not None and (isinstance(num_problems, bool) or not isinstance(num_problems, int)
                                         or num_problems < 1):
            raise UsageError(f"{where}.num_problems must be an integer >= 1 or null, got {num_problems!r}")
        if self.num_problems is not None and num_problems is not None:
            # A subset of the study's problems: `num_problems=4` for a quick run shrinks every instance.
            num_problems = min(num_problems, self.num_problems)
        chat = entry.pop("chat", self.grpo_chat if method.model == "rl" else self.chat)
        if not isinstance(chat, bool):
            raise UsageError(f"{where}.chat must be true or false, got {chat!r}")
        engine = entry.pop("engine", self.engine)
        try:
            check_engine(engine, f"{where}.engine")
            method.check_engine(engine)
        except ValueError as err:
            raise UsageError(f"{where} ({name}): {err}") from None
        accepted = method.field_names()
        unknown = [k for k in entry if k not in accepted]
        if unknown:
            raise UsageError(f"unknown key '{unknown[0]}' in {where} ({name}): method {kind} accepts "
                             f"{', '.join(INSTANCE_KEYS + tuple(accepted))}")
        values = {k: getattr(self, k) for k in SHARED_SETTINGS if k in accepted}
        if self.profile == "reference" and "top_k" in accepted:
            values["top_k"] = REFERENCE_TOP_K
        given = self.sections.get(kind, {}) | {k: _check_type(v, _hints(method.settings)[k], f"{where}.{k}")
                                               for k, v in entry.items()}
        if self.profile == "reference":  # the paper's settings where sharpen's defaults differ
            paper = method.paper_settings(values | given)
            values |= {k: v for k, v in paper.items() if k not in given}
        values |= given
        try:
            settings = method.settings(**values)
        except (TypeError, ValueError) as err:
            raise UsageError(f"{where} ({name}): {err}") from None
        return MethodInstance(name, kind, settings, num_samples, num_problems, chat, engine)

    @property
    def needs_rl_model(self) -> bool:
        return any(get_method(inst.method).model == "rl" for inst in self.instances)

    @property
    def wandb_group(self) -> str:
        return self.wandb.group or self.name

    def identity(self) -> dict:
        """The settings that shape the study's records and models (not where it writes or how it reports)."""
        data = dataclasses.asdict(self)
        for name in ("output_dir", "wandb", "analysis", "methods", "sections"):
            data.pop(name)
        for inst in data["instances"]:  # cost-only fields (batch sizes) change no record
            method = get_method(inst["method"])
            inst["settings"] = {k: v for k, v in inst["settings"].items() if k not in method.not_identity}
        data.pop("batch_size")
        for part in (data, *data["instances"]):  # hf, the default, stays out: studies made before engines resume
            if part.get("engine") == "hf":
                del part["engine"]
        # Paths as absolute paths: the same study from any working directory (see _resolve_file_paths).
        _map_paths(data, resolve_local)
        return yaml.safe_load(yaml.safe_dump(data, sort_keys=True))


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _build(cls, data, where: str, **extra):
    """Instantiate dataclass `cls` from a dict (plus `extra` keyword arguments), refusing unknown keys and
    mistyped values."""
    if not isinstance(data, dict):
        raise UsageError(f"{where or 'the config'} must be a mapping of keys to values, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("sections", "instances")]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            extra = f", or a method section ({', '.join(registered_methods())})" if not where else ""
            raise UsageError(f"unknown key '{path}' in the study config: valid keys{' in ' + where if where else ''} "
                             f"are {', '.join(names)}{extra}")
        hint = hints[key]
        if hint is GrpoStage:
            kwargs[key] = _grpo_stage(value)
        elif dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, path)
        else:
            kwargs[key] = _check_type(value, hint, path)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UsageError(f"the study config lacks {', '.join((where + '.' if where else '') + m for m in missing)}")
    try:
        return cls(**kwargs, **extra)
    except UsageError:
        raise
    except (TypeError, ValueError) as err:
        raise UsageError(f"{where or 'the study config'}: {err}") from None


def _check_type(value, hint, path: str):
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if typing.get_origin(kind) is typing.Literal:
            if value in typing.get_args(kind):
                return value
            continue
        kind = typing.get_origin(kind) or kind
        if kind is typing.Any:
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool, list, dict) and isinstance(value, kind):
            return value
        if kind is str and isinstance(value, bool) and bool not in allowed:
            return "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
    names = " or ".join("null" if k is type(None) else
                        " | ".join(map(str, typing.get_args(k))) if typing.get_origin(k) is typing.Literal else
                        getattr(typing.get_origin(k) or k, "__name__", str(k)) for k in allowed)
    raise UsageError(f"{path} must be {names}, got {value!r}")


def _sections(data: dict) -> dict:
    """Pop the method sections (keys named after registered methods) and check their keys."""
    sections = {}
    own = {f.name for f in dataclasses.fields(StudyConfig)}
    for kind in registered_methods():
        # `grpo:` is the GRPO stage's section; the grpo method's settings go in a methods entry.
        if kind not in data or kind in own:
            continue
        section = data.pop(kind) or {}
        if not isinstance(section, dict):
            raise UsageError(f"{kind} must be a mapping of settings, got {section!r}")
        method = get_method(kind)
        hints = _hints(method.settings)
        accepted = method.field_names()
        for key, value in section.items():
            if key not in accepted:
                raise UsageError(f"unknown key '{kind}.{key}' in the study config: method {kind} accepts "
                                 f"{', '.join(accepted)}")
            section[key] = _check_type(value, hints[key], f"{kind}.{key}")
        sections[kind] = section
    return sections


def _grpo_stage(section) -> GrpoStage:
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise UsageError(f"grpo must be a mapping, got {section!r}")
    section = dict(section)
    train = _check_type(section.pop("train", True), bool, "grpo.train")
    checkpoint = _check_type(section.pop("checkpoint", None), str | None, "grpo.checkpoint")
    task = _check_type(section.pop("task", None), str | None, "grpo.task")
    task_args = _check_type(section.pop("task_args", None), dict | None, "grpo.task_args")
    if task_args is not None and task is None:
        raise UsageError("grpo.task_args goes with grpo.task (the study's own task takes the study's task_args)")
    chat = _check_type(section.pop("chat", None), bool | None, "grpo.chat")
    base_file = _check_type(section.pop("config", None), str | None, "grpo.config")
    if base_file is not None:  # a `sharpen grpo --config` file (e.g. grpo_gpu), under the section's own keys
        section = read_grpo_config(base_file, what="grpo.config") | section
    return GrpoStage(train=train, checkpoint=checkpoint, task=task,
                     task_args=dict(task_args or {}) if task is not None else None, chat=chat, settings=section)


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
    """A config file path, or the name of a preset in sharpen/configs/ (with or without .yaml)."""
    return find_config(path, "study", what="config")


def _map_paths(data: dict, resolve) -> None:
    """Apply `resolve` to every value of a study mapping that names a file: the model, the RL checkpoint,
    the accelerate config, and task arguments whose key is `path` or ends in `_path`."""
    if isinstance(data.get("model"), str):
        data["model"] = resolve(data["model"])
    grpo = data.get("grpo")
    for holder in (data, grpo if isinstance(grpo, dict) else {}):
        task_args = holder.get("task_args")
        if isinstance(task_args, dict):
            for key, value in task_args.items():
                if isinstance(value, str) and (key == "path" or key.endswith("_path")):
                    task_args[key] = resolve(value)
    if isinstance(grpo, dict):
        nested = grpo.get("settings") if isinstance(grpo.get("settings"), dict) else grpo
        for holder, key in ((grpo, "checkpoint"), (grpo, "config"), (nested, "accelerate_config")):
            if isinstance(holder.get(key), str):
                holder[key] = resolve(holder[key])


def _resolve_file_paths(data: dict, config_dir: Path) -> None:
    """Relative paths written in a config file mean paths beside that file, when one exists there.

    Overrides on the command line stay relative to the working directory. Either way the study's
    identity holds them as absolute paths, so a study resumes from any directory.
    """
    def beside_config(value: str) -> str:
        candidate = config_dir / Path(value).expanduser()
        if not Path(value).expanduser().is_absolute() and candidate.exists():
            return str(candidate.resolve())
        return value

    _map_paths(data, beside_config)


def load_study_config(path: str, overrides: list[str] | tuple = ()) -> StudyConfig:
    file = resolve_config_path(path)
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"config '{file}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config '{file}' must be a YAML mapping")
    _resolve_file_paths(data, file.resolve().parent)
    for item in overrides:
        apply_override(data, item)
    sections = _sections(data)
    return _build(StudyConfig, data, "", sections=sections)
