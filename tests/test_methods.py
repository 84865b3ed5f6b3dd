"""The method registry: a toy method added through the registry alone runs in a study; named instances; the traits
the analysis reads from the registry instead of testing a method's name.

    python -m pytest -q tests/test_methods.py

Methods from another installed package (entry points) are tested in tests/test_plugins.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from sharpen.analysis.entropy import token_entropy
from sharpen.analysis.equal_compute import equal_compute_rows
from sharpen.analysis.outcomes import Outcomes, reference_base
from sharpen.runs.records import read_records
from sharpen.cli import main
from sharpen.sampling import SampleResult, eos_token_ids
from sharpen.sampling.methods import (Method, find_method, get_method, register_method, registered_methods,
                                      unregister_method)


@dataclass
class RepeatSettings:
    """The toy method's settings: repeat one fixed word, then stop."""

    word: str = field(default="work", metadata={"help": "The word every completion repeats."})
    repeats: int = field(default=2, metadata={"help": "How many times."})
    max_new_tokens: int = 512
    batch_size: int = 32

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")


def run_repeat(model, prompts, settings, *, seeds, on_result=None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    word = tokenizer(settings.word, add_special_tokens=False)["input_ids"]
    tokens = (word * settings.repeats)[:settings.max_new_tokens - 1] + eos_token_ids(model)[:1]
    results = []
    for i, _ in enumerate(prompts):
        result = SampleResult(list(tokens), [-1.0] * len(tokens), "eos",
                              {"sampled_tokens": len(tokens), "forward_tokens": 0, "wall_seconds": 0.0})
        results.append(result)
        if on_result is not None:
            on_result(i, result)
    return results


@pytest.fixture
def repeat_method():
    method = register_method(Method("repeat_word", RepeatSettings, run_repeat, "repeats a word (a test method)",
                                    temperature=lambda s: 0.0))
    yield method
    unregister_method("repeat_word")


def test_the_built_in_methods_are_registered_once_with_their_settings():
    assert registered_methods()[:4] == ["base", "low_temp", "power_mh", "grpo"]
    assert get_method("power_mh").settings.__name__ == "PowerSamplingConfig"
    assert get_method("grpo").model == "rl" and get_method("base").model == "base"
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("base", RepeatSettings, run_repeat, "another base"))
    with pytest.raises(ValueError, match="unknown method 'nope': registered methods are base, low_temp"):
        get_method("nope")


def test_the_traits_the_analysis_reads_live_on_the_method():
    traits = {name: (m.model, m.plain_decoding, m.proposal_logprobs, m.equal_compute_reference,
                     m.samples_base_distribution) for name in registered_methods() for m in [get_method(name)]}
    assert traits["base"] == ("base", True, True, True, True)
    assert traits["low_temp"] == ("base", True, False, True, False)
    assert traits["grpo"] == ("rl", True, True, False, False)
    for name in ("power_mh", "power_smc", "power_sps"):
        assert traits[name] == ("base", False, False, False, False), name
    assert get_method("low_temp").temperature(get_method("low_temp").make_settings(alpha=4.0)) == 0.25
    assert find_method("not_installed_here") is None
    # A trait that contradicts another is refused when the Method is made (a plug-in's import fails on it).
    with pytest.raises(ValueError, match="proposal_logprobs needs plain_decoding"):
        Method("odd", RepeatSettings, run_repeat, "per-token log-probs without per-token decoding",
               proposal_logprobs=True)
    with pytest.raises(ValueError, match="model must be one of base, rl"):
        Method("odd", RepeatSettings, run_repeat, "samples a third model", model="teacher")


@pytest.fixture
def plain_twin():
    """base under another name: plain decoding of the base model at temperature 1, per-token log q recorded."""
    yield register_method(Method("plain_twin", RepeatSettings, run_repeat, "base under another name",
                                 temperature=lambda s: 1.0, plain_decoding=True, proposal_logprobs=True))
    unregister_method("plain_twin")


def outcomes_of(kind: str) -> Outcomes:
    """One problem, two samples (one right), 10 forward tokens each, made by method `kind`."""
    return Outcomes(kind, kind, ["p0"], [np.array([True, False])], [["1", "2"]], [np.array([10.0, 10.0])], {"p0": 0})


def test_the_analysis_reads_traits_not_names(repeat_method, plain_twin):
    """A method with base's traits under another name is the reference base is; an unregistered one never is."""
    runs = {kind: outcomes_of(kind) for kind in ("plain_twin", "repeat_word", "not_installed_here")}
    assert reference_base(runs) == "plain_twin"
    rows = equal_compute_rows(runs, n_resamples=100)
    # plain_twin is the only reference and gets no row of its own; the unregistered method is compared to it
    assert {(r["method"], r["reference"]) for r in rows} == {("repeat_word", "plain_twin"),
                                                             ("not_installed_here", "plain_twin")}
    record = {"completion_ids": [5, 6], "base_logprob_sum": -1.0, "temperature": 1.0}
    assert token_entropy("plain_twin", {}, {"p0": [record]})[0]["value"] == pytest.approx(0.5)
    entry, note = token_entropy("not_installed_here", {}, {"p0": [record]})
    assert entry is None and "not registered in this process" in note


def test_a_method_added_through_the_registry_alone_runs_in_a_study(testbed_dir, tmp_path, repeat_method):
    out = tmp_path / "study"
    argv = ["study", "--config", "testbed", "--output-dir", str(out), "num_problems=3", "num_samples=2",
            "methods=[base, repeat_word, {name: shout, method: repeat_word, repeats: 3, num_samples: 1}]",
            "repeat_word.word=guess", "analysis.bootstrap=200", "wandb.mode=off"]
    assert main(argv) == 0
    plain, shout = (read_records(out / "samples" / f"{n}.jsonl") for n in ("repeat_word", "shout"))
    assert len(plain) == 6 and len(shout) == 3
    assert {r["completion"] for r in plain} == {"guess guess"} and {r["completion"] for r in shout} == {"guess " * 2
                                                                                                       + "guess"}
    config = json.loads((out / "samples" / "shout.config.json").read_text())
    assert config["method"] == "repeat_word" and config["settings"]["repeats"] == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"base", "repeat_word", "shout"}
    assert "shout" in (out / "report.md").read_text()
    # The registry's settings dataclass is also the study's: a field it lacks is refused.
    assert main(argv[:-1] + ["repeat_word.colour=red", "wandb.mode=off"]) == 2


def test_the_alpha_sweep_preset_runs_every_instance(testbed_dir, tmp_path):
    out = tmp_path / "alpha"
    argv = ["study", "--config", "testbed_alpha", "--output-dir", str(out), "num_problems=3", "num_samples=2",
            "power_mh.mcmc_steps=2", "analysis.bootstrap=200", "wandb.mode=off"]
    assert main(argv) == 0
    names = ["base"] + [f"{m}_a{a}" for m in ("low_temp", "power_mh") for a in (1, 2, 4, 8)]
    for name in names:
        records = read_records(out / "samples" / f"{name}.jsonl")
        assert len(records) == 6, name
        if name != "base":
            alpha = int(name.rsplit("_a", 1)[1])
            # low_temp samples at 1/alpha; power_mh's records carry its proposal's, the paper's 1/alpha in this preset
            assert [r["temperature"] for r in records] == pytest.approx([1 / alpha] * len(records)), name
    assert set(json.loads((out / "metrics.json").read_text())["methods"]) == set(names)
    assert "grpo" not in {p.name for p in out.iterdir()}  # no method samples an RL model: no GRPO stage


def test_a_study_made_before_a_setting_existed_resumes_and_a_real_difference_still_shows():
    """A setting added to a method since a study was written counts as its default (Method.with_defaults)."""
    import copy

    from sharpen.study.config import load_study_config
    from sharpen.study.pipeline import _with_method_defaults

    mine = load_study_config("testbed").identity()
    saved = copy.deepcopy(mine)
    power = next(i for i in saved["instances"] if i["method"] == "power_mh")
    del power["settings"]["position"]
    assert saved != mine and _with_method_defaults(copy.deepcopy(saved)) == mine
    power["settings"]["mcmc_steps"] = 3
    assert _with_method_defaults(saved) != mine
