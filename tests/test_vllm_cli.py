"""`sharpen sample --engine vllm` end to end: graded records that carry the engine, kept apart from hf's.

    .venv-vllm/bin/python -m pytest -q tests/test_vllm_cli.py      # `make test-vllm` runs it; about 20 s

Skipped where vLLM is not installed. One engine (loaded by the command itself): a tiny random Llama
over the character tokenizer's 48 tokens, 2 heads of size 32 (the smallest vLLM's CPU attention takes),
saved with its tokenizer.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("vllm")  # an optional engine: `make test-vllm` runs these tests in .venv-vllm

from conftest import char_tokenizer, tiny_llama  # noqa: E402
from sharpen.cli import main  # noqa: E402
from sharpen.runs.records import read_records  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vllm_cli")
    tiny_llama(hidden_size=64).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def test_sample_on_vllm_writes_records_that_name_the_engine(checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["sample", "--model", str(checkpoint), "--task", "basic_arithmetic", "--output-dir", str(out),
            "--max-new-tokens", "8", "--num-problems", "3"]
    assert main([*argv, "--num-samples", "2", "--engine", "vllm"]) == 0
    records = read_records(out / "samples" / "base.jsonl")
    assert len(records) == 6 and {r["engine"] for r in records} == {"vllm"}
    for r in records:
        assert r["num_tokens"] == len(r["completion_ids"]) == len(r["token_logprobs"]) <= 8
        assert r["finish_reason"] in ("eos", "length") and all(lp <= 0 for lp in r["token_logprobs"])
        assert r["cost"]["sampled_tokens"] == r["num_tokens"] and r["cost"]["wall_seconds"] > 0
        assert r["cost"]["forward_tokens"] == (len(char_tokenizer()(r["prompt"], add_special_tokens=False)["input_ids"])
                                               - r["cost"]["cached_prompt_tokens"] + r["num_tokens"] - 1)
    assert len({r["seed"] for r in records}) == 6
    assert json.loads((out / "samples" / "base.config.json").read_text())["identity"]["engine"] == "vllm"
    assert "accuracy" in capsys.readouterr().out

    # The same instance on the other engine draws other tokens from the same seeds: refused, not mixed in.
    assert main([*argv, "--num-samples", "2"]) == 2
    assert "other settings (engine)" in capsys.readouterr().err


def test_a_study_samples_each_instance_on_its_engine_and_scores_with_transformers(checkpoint, tmp_path):
    """`engine:` study-wide and per instance: records name their engine; the analysis scores every completion."""
    import yaml

    out = tmp_path / "study"
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "name": "engines", "model": str(checkpoint), "task": "basic_arithmetic", "engine": "vllm",
        "methods": ["base", {"name": "low_temp_hf", "method": "low_temp", "engine": "hf"}],
        "num_problems": 3, "num_samples": 2, "max_new_tokens": 8, "analysis": {"bootstrap": 100, "embeddings": "off"},
        "wandb": {"mode": "off"}}))
    # Its own process: an engine's memory is freed only when its process ends, and this module's first test
    # already holds one (two more in one process do not fit a 24 GiB machine).
    done = subprocess.run([sys.executable, "-m", "sharpen", "study", "--config", str(config), "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    engines = {name: {r["engine"] for r in read_records(out / "samples" / f"{name}.jsonl")}
               for name in ("base", "low_temp_hf")}
    assert engines == {"base": {"vllm"}, "low_temp_hf": {"hf"}}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"base", "low_temp_hf"}
    assert all(len(read_records(out / "scores" / f"{name}.jsonl")) == 6 for name in engines)
    saved = json.loads((out / "study.json").read_text())["identity"]
    assert saved["engine"] == "vllm" and "engine" not in saved["instances"][1]  # hf, the default, left out
