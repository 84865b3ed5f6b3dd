"""The samplers on CUDA: token-exact against the CPU for the same seeds, and exact laws with a bf16 model.

    python -m pytest -q -m gpu tests/test_gpu.py     # on a machine with CUDA (skipped without it; ~1 min on an H200)

The checks are those of benchmarks/gpu_check.py's `equality` and `enumeration` sections at full size
(their docstring says what each promises): every registered base-model sampler on a tiny fp32 Llama on
CUDA gives the CPU's token ids for the same seeds (generators live on the CPU) and log-probs within
1e-4, also at a smaller batch size; plain sampling, power_mh, power_smc and power_sps on a bf16 model
follow the laws enumerated from its own logits (chi-square p > 1e-3), and the check rejects
token-level temperature as p^alpha (p < 1e-6). Name the file: a bare `pytest -m gpu` also collects the
package's doctests, which import modules that need trl and datasets.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.gpu_check import CheckConfig, section_enumeration, section_equality

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def failed_checks(results: dict) -> list[str]:
    return [name for name, passed in results["checks"].items() if not passed]


def test_samplers_on_cuda_give_the_cpu_tokens_for_the_same_seeds():
    results = section_equality(CheckConfig(), torch.device("cuda"), tiny=False)
    assert results["methods"] and not failed_checks(results), results["summary"]


def test_samplers_on_a_bf16_model_follow_its_exact_laws():
    results = section_enumeration(CheckConfig(), torch.device("cuda"), tiny=False)
    assert "control: low_temp T 1/2 vs p^2" in results["cases"]
    assert not failed_checks(results), results["summary"]
