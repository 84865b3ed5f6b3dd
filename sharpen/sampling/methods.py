"""The method registry: every way of producing completions, declared once with its settings dataclass.

    from sharpen.sampling.methods import get_method, registered_methods
    method = get_method("power_mh")
    settings = method.settings(alpha=2.0, mcmc_steps=4)           # sampling.PowerSamplingConfig
    results = method.run(model, prompt_ids, settings, seeds=seeds, on_result=callback)
    method.temperature(settings)                                   # what records carry as `temperature`

`sharpen sample --method`, the study YAML (`methods: [base, {name: power_mh_a2, method: power_mh,
alpha: 2.0}]`), the benchmarks and the analysis all read the list and the settings from here.
Adding a method is one module that calls `register(Method(...))` (and is imported by this
package, or by the caller before use):

    @dataclass
    class MySettings:
        max_new_tokens: int = 512
        batch_size: int = 32

    register(Method(name="mine", settings=MySettings, run=my_run, description="..."))

where `my_run(model, prompts, settings, *, seeds, on_result) -> list[SampleResult]` returns one
completion per prompt (token ids, per-token base log-probs, finish reason, stats) and calls
`on_result(i, result)` as soon as completion i is done. `model="rl"` marks a method that samples
the GRPO-trained model instead of the base model. The study fills a settings field named
`alpha`, `max_new_tokens` or `batch_size` from the study-level key of that name unless the
method's section or instance sets it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from .draw import check_alpha, check_integers, validate_processing
from .generate import SampleResult, sample
from .models import check_full_attention
from .power import PowerSamplingConfig, power_sample
from .smc import SMCConfig, smc_sample
from .sps import SPSConfig, sps_sample


def _check_sizes(settings) -> None:
    check_integers(settings, {"max_new_tokens": 1, "batch_size": 1})


@dataclass
class BaseSamplingConfig:
    """Plain sampling at temperature 1 (the base distribution itself); top-k / top-p only when asked."""

    top_k: int | None = field(default=None, metadata={"help": "Keep only the k most likely tokens (None: off)."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass in (0, 1] (None: off)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget of one completion (>= 1)."})
    batch_size: int = field(default=32, metadata={"help": "Completions decoded together."})

    def __post_init__(self):
        _check_sizes(self)
        validate_processing(1.0, self.top_k, self.top_p)

    temperature = 1.0  # not a field: base and grpo sample at temperature 1 by definition


@dataclass
class LowTempConfig:
    """Token-level low temperature: each token from p(. | prefix)^(1/T), T = 1/alpha unless set."""

    alpha: float = field(default=4.0, metadata={"help": "Sharpening power; the temperature is 1/alpha (> 0)."})
    temperature: float | None = field(default=None, metadata={
        "help": "Sampling temperature (> 0); None: 1/alpha, resolved when the settings are made."})
    top_k: int | None = field(default=None, metadata={"help": "Keep only the k most likely tokens (None: off)."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass in (0, 1] (None: off)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget of one completion (>= 1)."})
    batch_size: int = field(default=32, metadata={"help": "Completions decoded together."})

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


def _run_power(model, prompts, settings, *, seeds, on_result=None) -> list[SampleResult]:
    return power_sample(model, prompts, settings, seeds=seeds, on_result=on_result)


def _run_smc(model, prompts, settings, *, seeds, on_result=None) -> list[SampleResult]:
    return smc_sample(model, prompts, settings, seeds=seeds, on_result=on_result)


def _run_sps(model, prompts, settings, *, seeds, on_result=None) -> list[SampleResult]:
    return sps_sample(model, prompts, settings, seeds=seeds, on_result=on_result)


@dataclass(frozen=True)
class Method:
    """A registered method: its name, settings dataclass, sampling function and what it samples."""

    name: str
    settings: type
    run: Callable[..., list[SampleResult]]
    description: str
    model: str = "base"  # "base": samples the base model; "rl": samples the GRPO-trained model
    # The temperature records carry (for samplers with a proposal, the proposal's temperature).
    temperature: Callable[[object], float] = lambda settings: float(settings.temperature)
    # How many prompts to hand `run` at once: None = all (the sampler refills its own batch), else
    # settings.batch_size (records are written as each call's completions finish either way).
    chunked: bool = True
    # Settings fields that change cost or speed but not the distribution of any record.
    not_identity: tuple[str, ...] = ("batch_size",)
    # Raises ValueError when the sampler cannot serve `model` (checked before any sampling).
    check_model: Callable[[object], None] | None = None

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

    def field_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.settings) if f.init]

    def identity(self, settings) -> dict:
        """The settings that shape the records (everything but the cost-only fields)."""
        values = dataclasses.asdict(settings)
        return {k: v for k, v in values.items() if k not in self.not_identity}


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` to the registry (a name may be registered once)."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"method '{method.name}' is already registered")
    if not dataclasses.is_dataclass(method.settings):
        raise TypeError(f"method {method.name}: settings must be a dataclass, got {method.settings!r}")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def registered_methods() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> Method:
    """The registered method `name`; ValueError listing the registered ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}': registered methods are {', '.join(METHODS)}")
    return METHODS[name]


register(Method("base", BaseSamplingConfig, _run_plain, "the base model at temperature 1"))
register(Method("low_temp", LowTempConfig, _run_plain, "the base model at token-level temperature 1/alpha"))
register(Method("power_mh", PowerSamplingConfig, _run_power,
                "Metropolis-Hastings chains targeting p(x)^alpha over whole completions (Karan & Du 2025)",
                temperature=lambda s: float(s.proposal_temperature), chunked=False,
                not_identity=("batch_size", "implementation"),
                check_model=lambda model: check_full_attention(model, "power_mh")))
register(Method("grpo", BaseSamplingConfig, _run_plain, "the GRPO-trained model at temperature 1", model="rl"))
register(Method("power_smc", SMCConfig, _run_smc,
                "sequential Monte Carlo over prefixes targeting p(x)^alpha (Power-SMC, arXiv 2602.10273)",
                temperature=lambda s: float(s.proposal_temperature), chunked=False,
                check_model=lambda model: check_full_attention(model, "power_smc")))
register(Method("power_sps", SPSConfig, _run_sps,
                "scalable power sampling: top-K candidates weighed by jackknifed look-ahead rollouts, towards "
                "p(x)^alpha (arXiv 2601.21590)",
                temperature=lambda s: 1.0,  # the rollouts' temperature; the decisions have none
                check_model=lambda model: check_full_attention(model, "power_sps")))
