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
own keys). `grpo_self:` is the same for GRPO without a verifier (its reward, self_likelihood, and its
alpha, the study's, are set here), `power_distill:` is sharpen.rl.distill.DistillSettings (the teacher
instance and the fine-tuning); each is read only when an instance samples the model it trains.
`seeds: [0, 1, 2]` (or `seeds=0,1,2`) runs the whole study once per replicate seed in RUN_DIR/seed_<n>/
on the same problems (StudyConfig.replicate; sharpen.analysis.seeds pools them).

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
from sharpen.rl.distill import DistillSettings
from sharpen.rl.self_reward import SELF_REWARD, kl_coefficient
from sharpen.rl.settings import read_grpo_config
from sharpen.runs.files import resolve_local
from sharpen.runs.tracking import WandbConfig
from sharpen.sampling.draw import check_alpha
from sharpen.sampling.generate import DEFAULT_BATCH_SIZE
from sharpen.sampling.methods import MODELS, get_method, registered_methods
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
    seed: int = 0  # picks the problems (and GRPO's train problems); with `seeds`, only that
    # Replicates: the whole study once per seed, in RUN_DIR/seed_<n>/, on the same problems (`seed` picks them):
    # each seed trains every trained arm anew (GRPOConfig's seed) and samples every instance anew
    seeds: list | str | int | None = None  # a list, or on the command line seeds=0,1,2
    batch_size: int = DEFAULT_BATCH_SIZE  # sampling.generate's; not part of the identity
    alpha: float = 4.0
    testbed: TestbedSettings = field(default_factory=TestbedSettings)
    grpo: GrpoStage = field(default_factory=GrpoStage)
    # GRPO without a verifier, toward p^alpha (method grpo_self): its reward is set here, its alpha is the study's
    grpo_self: GrpoStage = field(default_factory=GrpoStage)
    power_distill: DistillSettings = field(default_factory=DistillSettings)  # SFT on a sampler's samples
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
        self._chat_given: set[str] = set()  # instances whose entry sets chat (power_distill's default is its teacher's)
        self.replicate_seed: int | None = None  # set on a replicate's own config (StudyConfig.replicate)
        self.instances = [self._instance(entry, i) for i, entry in enumerate(self.methods)]
        if not self.instances:
            raise UsageError(f"methods is empty: list at least one of {', '.join(registered_methods())}")
        names = [inst.name for inst in self.instances]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UsageError(f"methods names the instance(s) {', '.join(twice)} twice: give each a distinct name")
        for key in ("grpo", "grpo_self"):
            stage = getattr(self, key)
            if self.needs_stage(key) and not stage.train and not stage.checkpoint:
                raise UsageError(f"{key}.train is false but {key}.checkpoint is not set: give a checkpoint or train")
        self._check_grpo_self()
        self._check_distill()
        self._check_seeds()

    def _check_seeds(self) -> None:
        if self.seeds is None:
            return
        if isinstance(self.seeds, str):  # `seeds=0,1,2` on the command line reads as one string
            parts = [p.strip() for p in self.seeds.split(",") if p.strip()]
            if not all(p.isdigit() for p in parts):
                raise UsageError(f"seeds must be integers >= 0 (a list, or 0,1,2 on the command line), got "
                                 f"{self.seeds!r}")
            self.seeds = [int(p) for p in parts]
        elif isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            self.seeds = [self.seeds]
        if not self.seeds:
            raise UsageError("seeds is empty: give at least one replicate seed, e.g. seeds: [0, 1, 2], or leave it out")
        bad = [s for s in self.seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            raise UsageError(f"seeds must be integers >= 0, got {bad[0]!r}")
        twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if twice:
            raise UsageError(f"seeds lists {', '.join(map(str, twice))} more than once: each replicate needs its own seed")
        for stage in ("grpo", "grpo_self"):
            if "seed" in getattr(self, stage).settings:
                raise UsageError(f"{stage}.seed is set, and so is seeds: with replicates each seed trains its own "
                                 f"{stage} run (GRPOConfig's seed is the replicate's); drop {stage}.seed")

    def replicate(self, seed: int) -> "StudyConfig":
        """The study of one replicate seed: RUN_DIR/seed_<seed>, the same problems, every arm trained and sampled
        with that seed, wandb runs named <name>-seed<seed> in the study's group."""
        one = dataclasses.replace(self, seeds=None, name=f"{self.name}-seed{seed}",
                                  output_dir=str(Path(self.output_dir) / f"seed_{seed}"),
                                  wandb=dataclasses.replace(self.wandb, group=self.wandb_group),
                                  grpo=dataclasses.replace(self.grpo, settings=self.grpo.settings | {"seed": seed}),
                                  grpo_self=dataclasses.replace(self.grpo_self,
                                                                settings=self.grpo_self.settings | {"seed": seed}),
                                  sections=self.sections, methods=self.methods)
        one.replicate_seed = seed
        return one

    def _check_grpo_self(self) -> None:
        """grpo_self trains with the self-likelihood reward toward the study's p^alpha: both are set here."""
        settings = self.grpo_self.settings
        if settings.get("reward", SELF_REWARD) != SELF_REWARD:
            raise UsageError(f"grpo_self.reward is {settings['reward']!r}: grpo_self always trains on "
                             f"{SELF_REWARD} (for GRPO with the task's grader use the grpo arm)")
        settings.setdefault("alpha", self.alpha)
        settings["reward"] = SELF_REWARD
        if self.needs_stage("grpo_self"):
            try:
                kl_coefficient(float(settings["alpha"]))  # alpha <= 1: beta = 1/(alpha - 1) infinite or negative
            except (TypeError, ValueError) as err:
                raise UsageError(f"grpo_self: {err}") from None

    def _check_distill(self) -> None:
        """power_distill's teacher: one of the study's instances, sampling the base model, unweighted."""
        if not self.needs_stage("power_distill"):
            return
        teacher = self.power_distill.teacher
        by_name = {inst.name: inst for inst in self.instances}
        if teacher is None:
            raise UsageError("power_distill needs power_distill.teacher: the name of one of the study's method "
                             f"instances to distill ({', '.join(by_name)})")
        if teacher not in by_name:
            raise UsageError(f"power_distill.teacher '{teacher}' is not one of the study's method instances: name "
                             f"one of {', '.join(by_name)}")
        method = get_method(by_name[teacher].method)
        if method.model != "base" or method.weighted:
            why = "samples a trained model" if method.model != "base" else "draws weighted samples"
            raise UsageError(f"power_distill.teacher '{teacher}' {why}: the teacher must draw unweighted samples "
                             f"of the base model (power_mh, power_smc, power_sps, low_temp, ...)")
        for inst in self.instances:  # the distilled model is prompted as its teacher was, unless told otherwise
            if get_method(inst.method).model == "distill" and inst.name not in self._chat_given:
                inst.chat = by_name[teacher].chat

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

    def stage_chat(self, model: str) -> bool:
        """Whether a model's instances (and its training prompts) use the chat template, by default."""
        if model == "rl":
            return self.grpo_chat
        if model == "rl_self":  # trained beside grpo on the same prompts unless its section says otherwise
            return self.grpo_chat if self.grpo_self.chat is None else self.grpo_self.chat
        return self.chat  # the base model; a distilled one takes its teacher's (_check_distill)

    def needs_stage(self, stage: str) -> bool:
        """Whether an instance samples the model that `stage` (grpo, grpo_self, power_distill) trains."""
        return any(MODELS[get_method(inst.method).model].stage == stage for inst in self.instances)

    @property
    def training_seed(self) -> int:
        """The seed of a training stage that takes no seed of its own (power_distill's fine-tuning): the
        replicate's in a study over seeds, else the study's `seed` (so the replicate equal to it is the study)."""
        return self.seed if self.replicate_seed is None else self.replicate_seed

    @property
    def trained_stages(self) -> list[str]:
        """The training stages the study runs, in MODELS order (grpo, grpo_self, power_distill)."""
        return [m.stage for m in MODELS.values() if m.stage is not None and self.needs_stage(m.stage)]

    def stage_task(self, stage: str) -> tuple[str, dict]:
        """The task a GRPO stage trains on (its section's task, else the study's) and its options."""
        section = getattr(self, stage)
        if section.task is None:
            return self.task, self.task_args
        return section.task, section.task_args or {}

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
        if "chat" in entry:
            self._chat_given.add(name)
        chat = entry.pop("chat", self.stage_chat(method.model))
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
        return self.needs_stage("grpo")

    @property
    def wandb_group(self) -> str:
        return self.wandb.group or self.name

    def identity(self) -> dict:
        """The settings that shape the study's records and models (not where it writes or how it reports)."""
        data = dataclasses.asdict(self)
        for name in ("output_dir", "wandb", "analysis", "methods", "sections"):
            data.pop(name)
        for stage in ("grpo_self", "power_distill"):  # sections of arms the study does not run shape nothing
            if not self.needs_stage(stage):  # (and studies made before these arms existed resume)
                data.pop(stage)
        if self.seeds is None:  # a study without replicates, as before they existed
            data.pop("seeds")
        if self.replicate_seed is not None:
            data["replicate"] = self.replicate_seed
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
            kwargs[key] = _grpo_stage(value, key)
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


def _grpo_stage(section, key: str = "grpo") -> GrpoStage:
    """A GRPO stage's section (`grpo:` or `grpo_self:`)."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise UsageError(f"{key} must be a mapping, got {section!r}")
    section = dict(section)
    train = _check_type(section.pop("train", True), bool, f"{key}.train")
    checkpoint = _check_type(section.pop("checkpoint", None), str | None, f"{key}.checkpoint")
    task = _check_type(section.pop("task", None), str | None, f"{key}.task")
    task_args = _check_type(section.pop("task_args", None), dict | None, f"{key}.task_args")
    if task_args is not None and task is None:
        raise UsageError(f"{key}.task_args goes with {key}.task (the study's own task takes the study's task_args)")
    chat = _check_type(section.pop("chat", None), bool | None, f"{key}.chat")
    base_file = _check_type(section.pop("config", None), str | None, f"{key}.config")
    if base_file is not None:  # a `sharpen grpo --config` file (e.g. grpo_gpu), under the section's own keys
        section = read_grpo_config(base_file, what=f"{key}.config") | section
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
    stages = [data.get(key) for key in ("grpo", "grpo_self")]
    for holder in (data, *(stage for stage in stages if isinstance(stage, dict))):
        task_args = holder.get("task_args")
        if isinstance(task_args, dict):
            for key, value in task_args.items():
                if isinstance(value, str) and (key == "path" or key.endswith("_path")):
                    task_args[key] = resolve(value)
    for grpo in stages:
        if not isinstance(grpo, dict):
            continue
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
