"""The method registry: a toy method added through the registry alone runs in a study; named instances."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from sharpen.runs.records import read_records
from sharpen.cli import main
from sharpen.sampling import SampleResult, eos_token_ids
from sharpen.sampling.methods import Method, get_method, register, registered_methods, unregister


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
    method = register(Method("repeat_word", RepeatSettings, run_repeat, "repeats a word (a test method)",
                             temperature=lambda s: 0.0))
    yield method
    unregister("repeat_word")


def test_the_built_in_methods_are_registered_once_with_their_settings():
    assert registered_methods()[:4] == ["base", "low_temp", "power_mh", "grpo"]
    assert get_method("power_mh").settings.__name__ == "PowerSamplingConfig"
    assert get_method("grpo").model == "rl" and get_method("base").model == "base"
    with pytest.raises(ValueError, match="already registered"):
        register(Method("base", RepeatSettings, run_repeat, "another base"))
    with pytest.raises(ValueError, match="unknown method 'nope': registered methods are base, low_temp"):
        get_method("nope")


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
            assert {r["temperature"] for r in records} == {1 / alpha}, name
    assert set(json.loads((out / "metrics.json").read_text())["methods"]) == set(names)
    assert "grpo" not in {p.name for p in out.iterdir()}  # no method samples an RL model: no GRPO stage
