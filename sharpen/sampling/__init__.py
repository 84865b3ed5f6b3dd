"""The base model as a distribution: loading, plain / low-temperature sampling, the power samplers (MH, SMC, SPS, IS),
the method registry.

    models.py     load_model: a checkpoint directory, a Hub id, a LoRA adapter, or the built-in smollm2-135m
    draw.py       one decoding step: temperature / top-k / top-p, per-row generators, log q and log p; seeds
    generate.py   plain and low-temperature sampling, batched with a KV cache (sample, SampleResult)
    power.py      power_mh: exact block Metropolis-Hastings on p^alpha, positions uniform, at entropy rises (entropy_cut: decision-point MH) or sharpen's entropy variant
    smc.py        power_smc: sequential Monte Carlo over prefixes, resampling with the KV cache
    sps.py        power_sps: top-K candidates weighed by jackknifed look-ahead rollouts
    importance.py power_is: weighted plain decodes from tempered proposals, an importance sample of p^alpha
    timeshare.py  per-completion shares of measured wall time that add up to the sampler's time
    methods.py    the method registry (Method, register_method, get_method) and its plug-ins
    vllm_engine.py the optional vLLM engine (load_model(spec, engine="vllm")): plain / low-temp sampling, power_is
    vllm_samplers.py power_mh, power_smc and power_sps on the vLLM engine (requests continuing cached prefixes)

Nothing here parses command lines, knows tasks or reads files other than model checkpoints;
sharpen.study wires these functions to tasks and run directories.
"""

from .draw import derive_seed
from .generate import SampleResult, sample
from .models import ModelLoadError, context_length, eos_token_ids, load_model
from .power import PowerSamplingConfig, power_sample
from .smc import SMCConfig, smc_sample
from .sps import SPSConfig, sps_sample
from .importance import ImportanceSamplingConfig, importance_sample
from .methods import Method, get_method, register_method, registered_methods

__all__ = ["SampleResult", "sample", "load_model", "ModelLoadError", "eos_token_ids", "context_length",
           "derive_seed", "PowerSamplingConfig", "power_sample", "SMCConfig", "smc_sample", "SPSConfig", "sps_sample",
           "ImportanceSamplingConfig", "importance_sample", "Method", "get_method", "register_method",
           "registered_methods"]
