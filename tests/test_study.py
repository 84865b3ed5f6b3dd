"""`sharpen study` end to end on the testbed, resumed after a crash at each stage, and its bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sharpen.cli import main
from sharpen.errors import UsageError
from sharpen.runs.records import read_records
from sharpen.configs import CONFIG_DIR
from sharpen.study.config import load_study_config

REPO = Path(__file__).resolve().parents[1]
METHODS = ("base", "low_temp", "power_mh", "power_smc", "power_sps", "grpo", "base_256", "grpo_256")
# A very small version of the testbed preset: 4 problems x 2 samples (the SMC and SPS instances keep
# their own 8 and 4; the large-k instances take 4 samples of the first 2 problems), 4 GRPO steps.
TINY = ["num_problems=4", "num_samples=2", "power_mh.block_size=4", "power_mh.mcmc_steps=2",
        "methods=[base, low_temp, power_mh, {name: power_smc, method: power_smc, num_samples: 8}, "
        "{name: power_sps, method: power_sps, num_samples: 4}, grpo, "
        "{name: base_256, method: base, num_samples: 4, num_problems: 2}, "
        "{name: grpo_256, method: grpo, num_samples: 4, num_problems: 2}]",
        "power_smc.num_particles=4", "power_sps.num_candidates=2", "power_sps.num_rollouts=2",
        "grpo.max_steps=4", "grpo.save_steps=2", "grpo.logging_steps=2", "grpo.per_device_train_batch_size=8",
        "grpo.num_generations=4", "grpo.log_completions=false", "analysis.bootstrap=200", "wandb.mode=off"]


def study(out, *extra) -> int:
    return main(["study", "--config", "testbed", "--output-dir", str(out), *TINY, *extra])


def all_records(out: Path) -> dict[str, list[dict]]:
    return {m: read_records(out / "samples" / f"{m}.jsonl") for m in METHODS}


def assert_complete(out: Path):
    records = all_records(out)
    expected = {i.name: (i.num_problems or 4) * i.num_samples for i in load_study_config("testbed", TINY).instances}
    for method, lines in records.items():
        keys = [(r["problem_id"], r["sample_idx"]) for r in lines]
        assert len(keys) == len(set(keys)) == expected[method], method
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == set(METHODS)
    assert (out / "report.md").exists() and (out / "plots" / "pass_at_k.png").exists()
    assert json.loads((out / "grpo" / "cost.json").read_text())["optimizer_steps"] == 4
    return records


def test_tiny_study_end_to_end(testbed_dir, tmp_path, capsys):
    out = tmp_path / "study"
    assert study(out) == 0
    records = assert_complete(out)
    assert "power_mh: accuracy" in capsys.readouterr().out
    assert {r["temperature"] for r in records["low_temp"]} == {0.25}
    assert all("proposals" in r["cost"] for r in records["power_mh"])
    scores = read_records(out / "scores" / "grpo.jsonl")  # scored under the base model, beside the records
    assert len(scores) == len(records["grpo"])
    report = (out / "report.md").read_text()
    assert "grpo" in report and "training wall s" in report

    # Everything is complete: a second run trains and samples nothing new.
    finished = [out / "samples" / f"{m}.jsonl" for m in METHODS] + [out / "grpo" / "cost.json",
                                                                     out / "grpo" / "model.safetensors"]
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in finished}
    assert study(out) == 0
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in finished} == before


@pytest.mark.parametrize("stage", ["grpo", "sampling", pytest.param("analysis", marks=pytest.mark.slow)])  # 5 s each
def test_a_study_cut_short_at_any_stage_finishes_with_every_record_once(testbed_dir, tmp_path, monkeypatch, stage):
    from sharpen.study import sample as sample_stage

    class Killed(Exception):
        pass

    if stage == "grpo":  # die as soon as GRPO has saved its first checkpoint
        from sharpen.rl import stage as grpo_stage

        real_train = grpo_stage.grpo_train

        def dying_train(*args, **kwargs):
            from transformers import TrainerCallback

            class Die(TrainerCallback):
                def on_save(self, args, state, control, **kw):
                    raise Killed()

            kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [Die()]
            return real_train(*args, **kwargs)

        monkeypatch.setattr(grpo_stage, "grpo_train", dying_train)  # what the study's GRPO stage calls
    elif stage == "sampling":  # die in power_mh after 3 records
        real_make_record = sample_stage.make_record
        calls = {"n": 0}

        def dying_make_record(args, *rest, **kwargs):
            if args.name == "power_mh":
                calls["n"] += 1
                if calls["n"] > 3:
                    raise Killed()
            return real_make_record(args, *rest, **kwargs)

        monkeypatch.setattr(sample_stage, "make_record", dying_make_record)
    else:
        def dying_analyze(*args, **kwargs):
            raise Killed()

        from sharpen import analysis

        monkeypatch.setattr(analysis, "analyze", dying_analyze)

    out = tmp_path / "study"
    with pytest.raises(Killed):
        study(out)
    if stage == "sampling":
        assert len(read_records(out / "samples" / "power_mh.jsonl")) == 3
    monkeypatch.undo()
    assert study(out) == 0
    assert_complete(out)


def test_presets_parse_and_the_gpu_presets_fail_at_once_here(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    presets = [p for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("grpo_")]
    assert {p.stem for p in presets} >= {"testbed", "smollm2_arithmetic", "smollm2_humaneval", "qwen_math500"}
    for preset in presets:
        load_study_config(str(preset))
    started = time.time()
    out = tmp_path / "qwen"
    assert main(["study", "--config", "qwen_math500", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be loaded here" in err and len(err.splitlines()) == 1
    assert time.time() - started < 30 and not out.exists()


def test_the_reference_profile_gives_the_papers_settings_where_the_config_leaves_them_unset():
    """profile: reference applies Method.paper_settings to keys no section or instance sets; default keeps sharpen's."""
    methods = ("methods=[base, power_mh, {name: mh_set, method: power_mh, proposal_temperature: 0.7}, power_smc, "
               "power_sps]")
    for profile in ("default", "reference"):
        config = load_study_config("testbed", [methods, f"profile={profile}", "power_mh={}", "power_smc={}",
                                               "power_sps={}"])
        got = {inst.name: inst.settings for inst in config.instances}
        paper = profile == "reference"
        assert got["power_mh"].proposal_temperature == (0.25 if paper else 0.5)
        assert got["power_mh"].stop_on_eos is paper
        assert got["mh_set"].proposal_temperature == 0.7 and got["mh_set"].stop_on_eos is paper  # set: kept
        assert got["power_smc"].proposal_temperature == (0.25 if paper else 0.5)
        assert got["power_smc"].ramp_tokens == (400 if paper else 0)
        assert got["power_sps"].block_size == (16 if paper else config.max_new_tokens)
        assert got["base"].top_k == (50 if paper else None)


def test_the_engine_is_checked_at_once_and_hf_stays_out_of_the_identity():
    """engine: vllm without vLLM is one line before any work; the default engine adds nothing to the identity,
    so studies saved before engines existed resume."""
    from sharpen.sampling.vllm_engine import vllm_installed

    identity = load_study_config("testbed", ["methods=[base, {name: lt, method: low_temp, engine: hf}]"]).identity()
    assert "engine" not in identity and all("engine" not in inst for inst in identity["instances"])
    if not vllm_installed():
        for override in ("engine=vllm", "methods=[base, {name: lt, method: low_temp, engine: vllm}]"):
            with pytest.raises(UsageError, match="vllm needs the optional package vLLM, which is not installed"):
                load_study_config("testbed", [override])


@pytest.mark.parametrize("extra,message", [
    (["power_mh.blok_size=3"], "unknown key 'power_mh.blok_size'"),
    (["colour=red"], "unknown key 'colour'"),
    (["engine=tpu"], "unknown engine 'tpu': valid engines are hf, vllm"),
    (["methods=[base, {name: x, method: low_temp, engine: tpu}]"], "unknown methods[1].engine 'tpu'"),
    (["methods=[base, beam_search]"], "methods[1]: unknown method 'beam_search': registered methods are base, "
                                      "low_temp, power_mh, grpo"),
    (["methods=[base, {name: pm, method: power_mh, blok_size: 3}]"],
     "unknown key 'blok_size' in methods[1] (pm): method power_mh accepts name, method, num_samples, num_problems, chat, engine, alpha"),
    (["methods=[base, {name: base, method: low_temp}]"], "names the instance(s) base twice"),
    (["methods=[{name: a/b, method: base}]"], "'a/b' is not a valid file name"),
    (["methods=[{name: x, method: power_mh, block_size: 0}]"], "methods[0] (x): block_size must be an integer >= 1"),
    (["methods=[{name: x, method: low_temp, alpha: -1}]"], "methods[0] (x): alpha must be a number in [0.01, 100]"),
    (["low_temp.temperature=-1"], "temperature must be a number in [0.01, 100]"),
    (["base.temperature=2"], "unknown key 'base.temperature' in the study config: method base accepts top_k"),
    (["grpo.max_stepz=3"], "grpo.max_stepz"),
    (["num_samples=zero"], "num_samples must be int"),
    (["task=humaneval"], "GRPO needs a train split"),
    (["model=/no/such/model"], "does not exist"),
    (["grpo.accelerate_config=/no/such.yaml"], "accelerate config '/no/such.yaml' does not exist"),
    (["methods=[{name: x, method: base, num_problems: 0}]"], "methods[0].num_problems must be an integer >= 1"),
    (["methods=[{name: x, method: base, chat: maybe}]"], "methods[0].chat must be true or false"),
    (["profile=paper"], "unknown profile 'paper': valid profiles are default, reference"),
    (["grpo.task_args={path: x}"], "grpo.task_args goes with grpo.task"),
    (["grpo.task=humaneval"], "GRPO needs a train split, and task 'humaneval' has only test"),
    (["grpo.config=no_such"], "grpo.config 'no_such' does not exist"),
])
def test_bad_study_configs_fail_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "study"
    assert study(out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_missing_preset_and_another_study_in_the_directory(testbed_dir, tmp_path, capsys):
    assert main(["study", "--config", "no_such_preset"]) == 2
    assert "does not exist: give a YAML file or a preset name" in capsys.readouterr().err
    out = tmp_path / "study"
    assert study(out, "methods=[base]") == 0
    before = (out / "samples" / "base.jsonl").read_bytes()
    assert study(out, "methods=[base]", "seed=1") == 2
    assert "holds a study with other settings (seed)" in capsys.readouterr().err
    assert (out / "samples" / "base.jsonl").read_bytes() == before  # nothing overwritten
    # An added instance is sampled beside the finished ones; a changed or dropped one is refused.
    assert study(out, "methods=[base, {name: cold, method: low_temp, alpha: 2.0}]") == 0
    assert (out / "samples" / "base.jsonl").read_bytes() == before and (out / "samples" / "cold.jsonl").exists()
    assert study(out, "methods=[base, {name: cold, method: low_temp, alpha: 3.0}]") == 2
    assert "holds a study with other settings (instances.cold)" in capsys.readouterr().err
    assert study(out, "methods=[base]") == 2
    assert "holds a study with other settings (instances.cold)" in capsys.readouterr().err
    assert study(out, "methods=[base]", "seed=1", "--overwrite") == 0
    assert (out / "samples" / "base.jsonl").read_bytes() != before


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # 12 s under accelerate; test_plugins.py keeps a run under accelerate launch in the default suite
def test_two_processes_shard_sampling_without_loss_or_duplicates(tiny_checkpoint, tmp_path):
    """`accelerate launch` with 2 CPU processes: the merged records equal a one-process run's."""
    args = ["sample", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--num-problems", "6",
            "--num-samples", "3", "--max-new-tokens", "8", "--batch-size", "4"]
    assert main([*args, "--output-dir", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "sharpen" / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(free_port()),
              "-m", "sharpen", *args, "--output-dir", str(tmp_path / "two")]
    done = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    one = read_records(tmp_path / "one" / "samples" / "base.jsonl")
    two = read_records(tmp_path / "two" / "samples" / "base.jsonl")
    assert not list((tmp_path / "two" / "samples").glob("*.part*"))  # parts merged and removed
    key = lambda r: (r["problem_id"], r["sample_idx"])  # noqa: E731
    assert len(two) == len({key(r) for r in two}) == 18
    assert [r["completion_ids"] for r in sorted(one, key=key)] == [r["completion_ids"] for r in sorted(two, key=key)]

    # ... and the two processes really were two shards of one group (not two lone processes
    # racing on one file, which the record check alone could miss when one finishes first): each
    # logged its session as rank r of 2 with its own half of the records. A rank and world size come
    # from current_shard(), which refuses to run as a lone process under WORLD_SIZE=2, and both
    # processes pass its barrier before sampling. This replaces a second launch of a probe script.
    sessions = [json.loads(x) for x in (tmp_path / "two" / "samples" / "base.sessions.jsonl").read_text().splitlines()]
    assert sorted((x["rank"], x["world_size"], x["records_written"]) for x in sessions) == [(0, 2, 9), (1, 2, 9)]
