"""The base model as a distribution: loading, plain / low-temperature sampling, the power samplers (MH, SMC, SPS),
the method registry.

Nothing here parses command lines or reads files other than model checkpoints;
`experiments/` wires these functions to tasks and run directories.
"""

from .draw import derive_seed
from .generate import SampleResult, sample
from .models import ModelLoadError, context_length, eos_token_ids, load_model
from .power import PowerSamplingConfig, power_sample
from .smc import SMCConfig, smc_sample
from .sps import SPSConfig, sps_sample
from .methods import METHODS, Method, get_method, register, registered_methods

__all__ = ["SampleResult", "sample", "load_model", "ModelLoadError", "eos_token_ids", "context_length",
           "derive_seed", "PowerSamplingConfig", "power_sample", "SMCConfig", "smc_sample", "SPSConfig", "sps_sample", "METHODS", "Method", "get_method", "register",
           "registered_methods"]
