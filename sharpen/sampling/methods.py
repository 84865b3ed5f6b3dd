"""The method registry: every way of producing completions, declared once with its settings dataclass and traits.

    from sharpen.sampling.methods import get_method, registered_methods
    method = get_method("power_mh")
    settings = method.settings(alpha=2.0, mcmc_steps=4)           # sampling.PowerSamplingConfig
    results = method.run(model, prompt_ids, settings, seeds=seeds, on_result=callback)
    method.temperature(settings)                                   # what records carry as `temperature`
    method.equal_compute_reference, method.samples_base_distribution   # traits the analysis reads

`sharpen sample --method`, the study YAML (`methods: [base, {name: power_mh_a2, method: power_mh,
alpha: 2.0}]`), the benchmarks and the analysis all read the list, the settings and the traits
from here; nothing tests a method by its name. Adding a method is one module that registers a
`Method`:

    @dataclass
    class MySettings:
        temperature: float = 0.7
        max_new_tokens: int = 512
        batch_size: int = 32

    MINE = Method(name="mine", settings=MySettings, run=my_run, description="...")

where `my_run(model, prompts, settings, *, seeds, on_result) -> list[SampleResult]` returns one
completion per prompt (token ids, per-token base log-probs, finish reason, stats, and any extra record
fields in `fields`) and calls `on_result(i, result)` as soon as completion i is done. Then either

- in the same process, before use: `sharpen.register_method(MINE)` (a notebook, a script); or
- from another installed package, so that `sharpen sample --method mine`, `sharpen study` and
  accelerate's child processes all find it: an entry point in that package's pyproject.toml,

      [project.entry-points."sharpen.methods"]
      mine = "mypkg.sampler:MINE"

  read once, on the first lookup (see sharpen.runs.plugins). A plug-in that fails to import, names
  something other than a Method, or reuses a registered name is a one-line UsageError.

The fields after `description` are the method's traits (what it samples, which temperature its
records carry, whether it decodes token by token); the study fills a settings field named
`alpha`, `max_new_tokens` or `batch_size` from the study-level key of that name unless the
method's section or instance sets it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Callable

from sharpen.errors import UsageError
from sharpen.runs.plugins import METHODS_GROUP, PluginGroup, short

from .draw import check_alpha, check_integers, validate_processing
from .generate import DEFAULT_BATCH_SIZE, SampleResult, sample
from .importance import ImportanceSamplingConfig, importance_sample
from .models import check_full_attention
from .power import PowerSamplingConfig, power_sample
from .smc import SMCConfig, smc_sample
from .sps import SPSConfig, sps_sample

@dataclass(frozen=True)
class TrainedModel:
    """A model a method may sample: the base model or one that a study trains from it."""

    stage: str | None  # the study stage that trains it, and its directory RUN_DIR/<stage>; None: the base model
    verifier: bool  # trained on a verifier's reward (the sharpening square's columns: sharpen.analysis.square)
    description: str


# What a method may sample (Method.model): every rule about trained models (which stage makes one, where its
# training cost lies, which corner of the sharpening square it fills) reads this table.
MODELS = {
    "base": TrainedModel(None, False, "the base model"),
    "rl": TrainedModel("grpo", True, "GRPO on the task's graded reward (a verifier)"),
    "rl_self": TrainedModel("grpo_self", False, "GRPO on the base model's own likelihood, toward p^alpha (no verifier)"),
    "distill": TrainedModel("power_distill", False, "the base model fine-tuned on a power sampler's train-split samples"),
}


def _check_sizes(settings) -> None:
    check_integers(settings, {"max_new_tokens": 1, "batch_size": 1})


@dataclass
class BaseSamplingConfig:
    """Plain sampling at temperature 1 (the base distribution itself); top-k / top-p only when asked."""

    top_k: int | None = field(default=None, metadata={"help": "Keep only the k most likely tokens (None: off)."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass in (0, 1] (None: off)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget of one completion (>= 1)."})
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata={"help": "Completions decoded together."})

    def __post_init__(self):
        _check_sizes(self)
        validate_processing(1.0, self.top_k, self.top_p)

    temperature = 1.0  # not a field: base and grpo sample at temperature 1 by definition


@dataclass
class LowTempConfig:
    """Token-level low temperature: each token from p(. | prefix)^(1/T), T = 1/alpha unless set."""

    alpha: float = field(default=4.0, metadata={"help": "Sharpening power; the temperature is 1/alpha (alpha 0.01 to 100)."})
    temperature: float | None = field(default=None, metadata={
        "help": "Sampling temperature (0.01 to 100); None: 1/alpha, resolved when the settings are made."})
    top_k: int | None = field(default=None, metadata={"help": "Keep only the k most likely tokens (None: off)."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass in (0, 1] (None: off)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget of one completion (>= 1)."})
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata={"help": "Completions decoded together."})

    def __post_init__(self):
        check_alpha(self.alpha)
        _check_sizes(self)
        if self.temperature is None:
            self.temperature = 1.0 / self.alpha
        validate_processing(self.temperature, self.top_k, self.top_p)


def _run_plain(model, prompts, settings, *, seeds, on_result=None) -> list[SampleResult]:
    return sample(model, prompts, temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
                  top_k=settings.top_k, top_p=settings.top_p, seeds=seeds, batch_size=settings.batch_size,
                  on_result=on_result)


def _run_power(model, prompts, settings, *, seeds, on_result=None, sample_indices=None) -> list[SampleResult]:
    return power_sample(model, prompts, settings, seeds=seeds, on_result=on_result, sample_indices=sample_indices)


def _run_smc(model, prompts, settings, *, seeds, on_result=None) -> list[SampleResult]:
    return smc_sample(model, prompts, settings, seeds=seeds, on_result=on_result)


def _run_sps(model, prompts, settings, *, seeds, on_result=None) -> list[SampleResult]:
    return sps_sample(model, prompts, settings, seeds=seeds, on_result=on_result)


@dataclass(frozen=True)
class Method:
    """A registered method: its name, settings dataclass, sampling function, and the traits the analysis reads."""

    name: str
    settings: type
    run: Callable[..., list[SampleResult]]
    description: str
    model: str = "base"  # which model it samples: a key of MODELS ("base", or a model a study trains, e.g. "rl")
    # The temperature records carry (for samplers with a proposal, the proposal's temperature).
    temperature: Callable[[object], float] = lambda settings: float(settings.temperature)
    # Decodes each completion token by token from its model, no search or resampling: i.i.d. completions
    # at one decode each (with model="base", a cheap reference that samplers are compared to at equal compute).
    plain_decoding: bool = False
    # Records' token_logprobs (the model's log-probs at temperature 1) are those of the distribution each
    # token was drawn from, top-k/top-p aside: token entropy can be estimated from them.
    proposal_logprobs: bool = False
    # How many prompts to hand `run` at once: None = all (the sampler refills its own batch), else
    # settings.batch_size (records are written as each call's completions finish either way).
    chunked: bool = True
    # Settings fields that change cost or speed but not the distribution of any record.
    not_identity: tuple[str, ...] = ("batch_size",)
    # Raises ValueError when the sampler cannot serve `model` (checked before any sampling).
    check_model: Callable[[object], None] | None = None
    # `run` also takes `sample_indices=` (each completion's index among its problem's samples: 0, 1, ...), for
    # methods whose completions are allocated by index (power_is's temperatures, power_mh's two starts).
    takes_sample_index: bool = False
    # Records carry `importance_log_weight` (log p^alpha - log q of the whole completion): the analysis
    # reads the method's records as a weighted sample of p^alpha, self-normalised per problem.
    weighted: bool = False
    # The settings of the method's paper or reference code where sharpen's defaults differ, as a function of
    # the settings given so far (e.g. {"proposal_temperature": 1 / alpha}): the study's `profile: reference`
    # applies them to every key that its section and instance leave unset.
    paper_settings: Callable[[dict], dict] = lambda values: {}
    # The engines `run` can sample with (sharpen.sampling.vllm_engine.ENGINES): "hf" (transformers) always,
    # "vllm" where the sampler drives a VllmModel; others are refused before any sampling (check_engine).
    engines: tuple[str, ...] = ("hf",)

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.settings):
            raise TypeError(f"method {self.name}: settings must be a dataclass, got {self.settings!r}")
        if self.model not in MODELS:
            raise ValueError(f"method {self.name}: model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.proposal_logprobs and not self.plain_decoding:
            raise ValueError(f"method {self.name}: proposal_logprobs needs plain_decoding (per-token proposals)")

    @property
    def equal_compute_reference(self) -> bool:
        """Plain sampling of the base model: the k cheap samples a sampler's one completion is weighed against.

        >>> [m for m in registered_methods() if get_method(m).equal_compute_reference]
        ['base', 'low_temp']
        """
        return self.plain_decoding and self.model == "base"

    @property
    def samples_base_distribution(self) -> bool:
        """Draws from p itself (the base model at temperature 1): what crossover, boundary and support compare
        the others against, and no equal-compute row of its own.

        >>> [m for m in registered_methods() if get_method(m).samples_base_distribution]
        ['base']
        """
        return self.proposal_logprobs and self.model == "base"

    def check_engine(self, engine: str) -> None:
        """ValueError unless the method samples with `engine`.

        >>> get_method("power_mh").check_engine("vllm")  # every built-in method samples on both engines
        >>> dataclasses.replace(get_method("power_mh"), name="mh_hf_only", engines=("hf",)).check_engine("vllm")
        Traceback (most recent call last):
        ...
        ValueError: engine vllm does not support method mh_hf_only yet: methods on vllm are base, low_temp, power_mh, \
grpo, grpo_low_temp, grpo_self, power_distill, power_smc, power_sps, power_is
        """
        if engine not in self.engines:
            able = [m for m in registered_methods() if engine in get_method(m).engines]
            raise ValueError(f"engine {engine} does not support method {self.name} yet: methods on {engine} are "
                             f"{', '.join(able) or 'none'}")

    def make_settings(self, **values):
        """The settings dataclass from `values`; ValueError names an unknown field and lists the accepted ones.

        >>> get_method("low_temp").make_settings(alpha=2.0).temperature
        0.5
        >>> get_method("base").make_settings(alpha=2.0)
        Traceback (most recent call last):
        ...
        ValueError: method base has no setting alpha: its settings are top_k, top_p, max_new_tokens, batch_size
        """
        accepted = self.field_names()
        unknown = [k for k in values if k not in accepted]
        if unknown:
            raise ValueError(f"method {self.name} has no setting {', '.join(unknown)}: its settings are "
                             f"{', '.join(accepted) or 'none'}")
        return self.settings(**values)

    def settings_from(self, values: dict):
        """The settings dataclass from those of `values` that are its fields, the others ignored: one set of
        sizes (alpha, max_new_tokens, num_particles, ...) for every method, as the benchmarks use.

        >>> get_method("base").settings_from({"alpha": 2.0, "max_new_tokens": 8}).max_new_tokens
        8
        """
        fields = set(self.field_names())
        return self.make_settings(**{k: v for k, v in values.items() if k in fields})

    def field_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.settings) if f.init]

    def identity(self, settings) -> dict:
        """The settings that shape the records (everything but the cost-only fields)."""
        values = dataclasses.asdict(settings)
        return {k: v for k, v in values.items() if k not in self.not_identity}

    def with_defaults(self, saved: dict) -> dict:
        """Saved identity settings (as JSON) completed by this method's defaults for the settings they lack.

        The rule for adding a setting to a method: its default reproduces what the method did before,
        so a run or a study written before the setting existed resumes (the sampling run and the study
        both compare saved settings through this).

        >>> saved = get_method("low_temp").identity(get_method("low_temp").settings())
        >>> del saved["top_p"]
        >>> get_method("low_temp").with_defaults(saved)["top_p"] is None
        True
        """
        return json.loads(json.dumps(self.identity(self.settings()), default=str)) | saved


_METHODS: dict[str, Method] = {}  # in registration order: built-ins, in-process registrations, plug-ins
_ORIGINS: dict[str, str] = {}  # name -> who registered it, for the message when a name is taken twice
BUILT_IN = "sharpen itself (built in)"


def register_method(method: Method, *, origin: str | None = None) -> Method:
    """Add `method` to the registry; a name may be registered once (ValueError names both registrants).

    `origin` says who registers it in that message (default: the module of its run function).
    """
    if not isinstance(method, Method):
        raise TypeError(f"register_method takes a sharpen.Method, got {type(method).__name__}")
    origin = origin or f"register_method (module {getattr(method.run, '__module__', '?')})"
    held = _METHODS.get(method.name)
    if held is not None and held is not method:
        raise ValueError(f"method '{method.name}' is already registered, by {_ORIGINS[method.name]}; "
                         f"{origin} registers it again")
    _METHODS[method.name] = method
    _ORIGINS.setdefault(method.name, origin)
    return method


def unregister_method(name: str) -> None:
    """Remove `name` from the registry (tests that register a method of their own)."""
    _METHODS.pop(name, None)
    _ORIGINS.pop(name, None)


def _check_plugin(name: str, value, origin: str) -> None:
    if not isinstance(value, Method):
        raise UsageError(f"{origin} names {short(value)}, not a sharpen.Method")
    if value.name != name:
        raise UsageError(f"{origin} names method '{value.name}': name the entry point after its method")


_PLUGINS = PluginGroup(METHODS_GROUP, "method", _check_plugin, holder=lambda name: _ORIGINS.get(name),
                       register=lambda name, method, origin: register_method(method, origin=origin))
_read_plugins = _PLUGINS.read_once


def registered_methods() -> list[str]:
    """Names of the registered methods, built-ins first, then those added in-process and by plug-ins."""
    _read_plugins()
    return list(_METHODS)


def find_method(name: str) -> Method | None:
    """The registered method `name`, or None (records made by a plug-in that this process lacks)."""
    _read_plugins()
    return _METHODS.get(name)


def get_method(name: str) -> Method:
    """The registered method `name`; ValueError listing the registered ones otherwise."""
    method = find_method(name)
    if method is None:
        raise ValueError(f"unknown method '{name}': registered methods are {', '.join(_METHODS)}")
    return method


def _built_in(method: Method) -> None:
    register_method(method, origin=BUILT_IN)


_built_in(Method("base", BaseSamplingConfig, _run_plain, "the base model at temperature 1", plain_decoding=True,
                 proposal_logprobs=True, engines=("hf", "vllm")))
_built_in(Method("low_temp", LowTempConfig, _run_plain, "the base model at token-level temperature 1/alpha",
                 plain_decoding=True, engines=("hf", "vllm")))
_built_in(Method("power_mh", PowerSamplingConfig, _run_power,
                 "Metropolis-Hastings chains targeting p(x)^alpha over whole completions (Karan & Du 2025)",
                 temperature=lambda s: float(s.proposal_temperature), chunked=False,
                 not_identity=("batch_size", "implementation"), takes_sample_index=True,
                 check_model=lambda model: check_full_attention(model, "power_mh"),
                 # Algorithm 1 of the paper (and its code): proposals at 1/alpha, a chain stops after a block
                 # that ends in EOS
                 paper_settings=lambda values: {"proposal_temperature": 1.0 / values.get("alpha", 4.0),
                                                "stop_on_eos": True}, engines=("hf", "vllm")))
_built_in(Method("grpo", BaseSamplingConfig, _run_plain, "the GRPO-trained model at temperature 1", model="rl",
                 plain_decoding=True, proposal_logprobs=True, engines=("hf", "vllm")))
_built_in(Method("grpo_low_temp", LowTempConfig, _run_plain,
                 "the GRPO-trained model at token-level temperature 1/alpha (as low_temp is to base)", model="rl",
                 plain_decoding=True, engines=("hf", "vllm")))
_built_in(Method("grpo_self", BaseSamplingConfig, _run_plain,
                 "the model GRPO trained toward p^alpha on its own likelihood (no verifier) at temperature 1",
                 model="rl_self", plain_decoding=True, proposal_logprobs=True, engines=("hf", "vllm")))
_built_in(Method("power_distill", BaseSamplingConfig, _run_plain,
                 "the base model fine-tuned on a power sampler's train-split samples, at temperature 1",
                 model="distill", plain_decoding=True, proposal_logprobs=True, engines=("hf", "vllm")))
_built_in(Method("power_smc", SMCConfig, _run_smc,
                 "sequential Monte Carlo over prefixes targeting p(x)^alpha (Power-SMC, arXiv 2602.10273)",
                 temperature=lambda s: float(s.proposal_temperature), chunked=False,
                 check_model=lambda model: check_full_attention(model, "power_smc"),
                 # the Power-SMC authors' code: proposals at 1/alpha, alpha ramped up over 400 tokens
                 paper_settings=lambda values: {"proposal_temperature": 1.0 / values.get("alpha", 4.0),
                                                "ramp_tokens": 400}, engines=("hf", "vllm")))
_built_in(Method("power_sps", SPSConfig, _run_sps,
                 "scalable power sampling: top-K candidates weighed by jackknifed look-ahead rollouts, towards "
                 "p(x)^alpha (arXiv 2601.21590)",
                 temperature=lambda s: 1.0,  # the rollouts' temperature; the decisions have none
                 check_model=lambda model: check_full_attention(model, "power_sps"),
                 paper_settings=lambda values: {"block_size": 16},  # the paper's truncated look-ahead
                 engines=("hf", "vllm")))
_built_in(Method("power_is", ImportanceSamplingConfig, importance_sample,
                 "importance sampling of p(x)^alpha: plain decodes from a mixture of tempered proposals, each "
                 "completion weighed by p^alpha / q_mix (self-normalised per problem by the analysis)",
                 temperature=lambda s: float(min(s.proposal_temperatures)),  # the sharpest proposal
                 weighted=True, takes_sample_index=True, engines=("hf", "vllm")))
