"""GRPO through TRL on tiny local models: training changes weights, LoRA, two processes, resume, settings, bad input.

    python -m pytest -q tests/test_grpo.py            # ~2 minutes on 2 cores
    python -m pytest -q -m slow tests/test_grpo.py    # + the testbed run (a few minutes)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from sharpen.errors import UsageError
from sharpen.runs.tracking import WandbConfig
from conftest import char_tokenizer, tiny_llama

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "sharpen" / "configs" / "accelerate"
# A short run on the tiny model: 2 prompts x 4 completions of up to 8 tokens per step.
SMALL = ["--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "8",
         "--learning_rate", "1e-2", "--report_to", "none", "--log_completions", "false", "--logging_steps", "1"]


def digit_fraction(completions, **kwargs):
    """A reward that differs between completions of one prompt on a random model: the share of digits."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


@pytest.fixture
def digits_task(monkeypatch):
    """A task named 'digits' whose grade varies on a random tiny model (unlike arithmetic, always 0 there)."""
    from sharpen.tasks import TASKS
    from sharpen.tasks.base import Task, take

    class Digits(Task):
        name = "digits"
        splits = ("test", "train")

        def load(self, limit=None, seed=0, split="test"):
            self.check_split(split)
            return take([{"id": f"{split}-{i}", "answer": "", "question": f"q{i}:"} for i in range(16)], limit)

        def prompt_text(self, problem):
            return problem["question"]

        def extract_answer(self, completion):
            return None

        def grade(self, problem, completion):
            return digit_fraction([completion])[0]

    monkeypatch.setitem(TASKS, "digits", Digits)
    return "digits"


def tiny_dataset(n: int = 8):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [f"q{i}:" for i in range(n)], "problem_index": list(range(n))})


def grpo_args(output_dir, **overrides):
    from sharpen.rl import grpo_config

    values = {"max_steps": 4, "num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": 8,
              "learning_rate": 1e-2, "report_to": [], "log_completions": False, "logging_steps": 1} | overrides
    return grpo_config(values, output_dir=output_dir)


def state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_grade_reward_is_the_task_grader():
    from sharpen.tasks import get_task
    from sharpen.rl import grade_reward

    task = get_task("basic_arithmetic")
    problems = task.load(limit=3, split="train")
    reward = grade_reward(task.grade, problems)
    chat_completion = [{"role": "assistant", "content": problems[1]["answer"]}]
    completions = [f"the answer is {problems[0]['answer']}", "no idea", chat_completion]
    scores = reward(completions=completions, problem_index=[0, 0, 1], prompts=["p"] * 3, completion_ids=[[1]] * 3)
    assert scores == [task.grade(problems[0], completions[0]), 0.0, 1.0]
    assert scores[0] == 1.0


def test_training_changes_parameters_and_counts_cost(tmp_path, tiny_checkpoint):
    from sharpen.rl import grpo_train

    before = state_dict(tiny_llama())
    out = tmp_path / "run"
    cost = grpo_train(str(tiny_checkpoint), char_tokenizer(), tiny_dataset(), digit_fraction, grpo_args(out))
    from sharpen.sampling import load_model

    after, _ = load_model(str(out), device="cpu")
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2, changed
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    steps = [row for row in history if "reward" in row]
    assert len(steps) == 4 and any(row["reward_std"] > 0 for row in steps)
    # The rollout-token count agrees with TRL's own per-step completion lengths (8 completions a step).
    assert cost["rollout_tokens"] == round(sum(row["completions/mean_length"] * 8 for row in steps))
    assert cost["optimizer_steps"] == 4 and cost["rollout_completions"] == 32 and cost["processes"] == 1
    assert cost["wall_seconds"] > 0 and cost == json.loads((out / "cost.json").read_text())
    saved = json.loads((out / "grpo_config.json").read_text())
    assert saved["learning_rate"] == 1e-2 and saved["use_cpu"] is True and saved["bf16"] is False
    assert not list(out.glob("checkpoint-*"))  # removed once the run is finished


def test_lora_trains_only_the_adapter_and_loads(tmp_path, tiny_checkpoint, digits_task):
    from sharpen.cli import main
    from sharpen.sampling import load_model

    out = tmp_path / "lora"
    small = [a for a in SMALL if a not in ("--report_to", "none")]  # the run default, ["wandb"], with wandb off
    argv = ["grpo", "--model", str(tiny_checkpoint), "--task", digits_task, "--output-dir", str(out),
            "--max_steps", "3", *small, "--lora", "--lora_r", "4", "--lora_target_modules", "q_proj,v_proj,up_proj",
            "--wandb-mode", "off"]
    assert main(argv) == 0
    assert json.loads((out / "grpo_config.json").read_text())["report_to"] == [] and not (out / "wandb").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_checkpoint)
    assert not (out / "model.safetensors").exists()
    merged, tokenizer = load_model(str(out), device="cpu")
    base = tiny_llama().state_dict()
    for name, value in merged.state_dict().items():
        adapted = any(t in name for t in ("q_proj", "v_proj", "up_proj"))
        assert torch.equal(value, base[name]) != adapted, name
    assert tokenizer.padding_side == "left"


@pytest.mark.slow  # 16 s: two GRPO processes; test_plugins runs sampling under accelerate launch in the default suite
def test_two_processes_under_accelerate_launch(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """`sharpen grpo --accelerate-config cpu_2proc.yaml` runs `accelerate launch` with two gloo CPU workers."""
    from sharpen.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(REPO)
    out = tmp_path / "ddp"
    argv = ["grpo", "--accelerate-config", "sharpen/configs/accelerate/cpu_2proc.yaml", "--model", str(tiny_checkpoint),
            "--task", "basic_arithmetic", "--output-dir", str(out), "--max_steps", "3", *SMALL,
            "--per_device_train_batch_size", "4"]
    assert main(argv) == 0
    cost = json.loads((out / "cost.json").read_text())
    # 2 processes x 4 completions per step x 3 steps: both ranks generated their share.
    assert cost["processes"] == 2 and cost["rollout_completions"] == 24 and cost["optimizer_steps"] == 3
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    from sharpen.sampling import load_model

    load_model(str(out), device="cpu")
    capsys.readouterr()
    assert main(argv) == 0  # finished: nothing is launched again
    assert "finished run" in capsys.readouterr().out
    # 4 completions per process x 2 processes = 8 per round: num_generations 3 cannot split it.
    assert main(argv + ["--num_generations", "3"]) == 2
    assert "per_device_train_batch_size (4) x processes (2)" in capsys.readouterr().err


class Interrupt(Exception):
    pass


def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_checkpoint, digits_task, monkeypatch):
    from trl import GRPOTrainer

    from sharpen.cli import main

    def argv(out):
        return ["grpo", "--model", str(tiny_checkpoint), "--task", digits_task, "--output-dir", str(out),
                "--max_steps", "4", "--save_steps", "2", *SMALL]

    whole = tmp_path / "whole"
    assert main(argv(whole)) == 0

    out = tmp_path / "resumed"
    original = GRPOTrainer.training_step

    def crash_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise Interrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "training_step", crash_at_step_3)
    with pytest.raises(Interrupt):
        main(argv(out))
    assert (out / "checkpoint-2").is_dir() and not (out / "cost.json").exists()
    monkeypatch.setattr(GRPOTrainer, "training_step", original)
    assert main(argv(out)) == 0
    cost = json.loads((out / "cost.json").read_text())
    assert cost["resumed_from_step"] == 2 and cost["optimizer_steps"] == 4
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    assert [row["step"] for row in history if "reward" in row] == [1, 2, 3, 4]
    # Steps 1-2 come from the checkpoint (restored RNG and data order), 3-4 from the second session.
    whole_cost = json.loads((whole / "cost.json").read_text())
    assert cost["rollout_completions"] == whole_cost["rollout_completions"] == 32
    from sharpen.sampling import load_model

    a, _ = load_model(str(whole), device="cpu")
    b, _ = load_model(str(out), device="cpu")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)

    # Finished: running the command again trains nothing; other settings in the same directory are refused.
    mtime = (out / "model.safetensors").stat().st_mtime
    assert main(argv(out)) == 0 and (out / "model.safetensors").stat().st_mtime == mtime
    assert main(argv(out) + ["--beta", "0.1"]) == 2


def test_yaml_config_then_flags_and_wandb_offline(tmp_path, tiny_checkpoint, monkeypatch):
    from sharpen.cli import main

    monkeypatch.delenv("WANDB_MODE", raising=False)  # --wandb-mode auto: offline unless WANDB_MODE says otherwise
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "grpo.yaml"
    config.write_text("max_steps: 2\nlearning_rate: 0.001\nbeta: 0.05\nloss_type: grpo\nnum_generations: 4\n"
                      "per_device_train_batch_size: 8\nmax_completion_length: 6\nwandb_group: study-x\n"
                      "logging_steps: 1\n")
    out = tmp_path / "run"
    assert main(["grpo", "--config", str(config), "--model", str(tiny_checkpoint), "--task", "basic_arithmetic",
                 "--learning_rate", "0.002", "--output-dir", str(out), "--run_name", "grpo-x"]) == 0
    saved = json.loads((out / "grpo_config.json").read_text())
    assert (saved["learning_rate"], saved["max_steps"], saved["beta"], saved["loss_type"]) == (0.002, 2, 0.05, "grpo")
    assert saved["report_to"] == ["wandb"] and saved["log_completions"] is True
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # the run we opened, which transformers' and TRL's loggers wrote into
    assert runs[0].name.endswith((out / "wandb_run_id").read_text())
    assert list((out / "completions").glob("*.parquet"))  # log_completions tables
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    assert any("kl" in row for row in history)  # beta > 0 reached TRL: the KL term is computed


def test_from_checkpoint_records_without_training(tmp_path, capsys, monkeypatch):
    from sharpen.cli import main
    from sharpen.rl.rundir import grpo_model_spec

    hub_id = "stellalisy/rethink_rlvr_reproduce-ground_truth-qwen2.5_math_7b-lr5e-7-kl0.00-step150"
    # Offline (conftest), a Hub id is recorded only when it is in the local Hugging Face cache: put its config there.
    repo = tmp_path / "hub" / f"models--{hub_id.replace('/', '--')}"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "rl"
    assert main(["grpo", "--from-checkpoint", hub_id, "--output-dir", str(out)]) == 0
    record = json.loads((out / "grpo_checkpoint.json").read_text())
    assert record["model"] == hub_id and record["trained_here"] is False
    assert grpo_model_spec(out) == hub_id and grpo_model_spec(tmp_path) == str(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [".sharpen.lock", "grpo_checkpoint.json"]  # lock: one writer
    assert main(["grpo", "--from-checkpoint", "./nowhere/at/all", "--output-dir", str(out)]) == 2


@pytest.mark.parametrize("extra, message", [
    (["--task", "math500"], "no split 'train'"),
    (["--num_generations", "1"], "num_generations must be >= 2"),
    (["--num_generations", "3", "--per_device_train_batch_size", "8"], "must be a multiple of num_generations (3)"),
    (["--lora", "--lora_target_modules", "q_proj,qkv_proj"], "LoRA target module 'qkv_proj' is not in the model"),
    (["--accelerate-config", "sharpen/configs/accelerate/nope.yaml"], "accelerate config 'sharpen/configs/accelerate/nope.yaml' does"),
    (["--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["--max_steps", "2", "--no_such_flag", "1"], "unrecognized arguments"),
    (["--wandb-mode", "sometimes"], "wandb mode must be one of auto, offline, online, off"),
    (["--lora", "--lora_r", "0"], "LoRA rank must be >= 1"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, tiny_checkpoint, capsys, extra, message):
    from sharpen.cli import main

    argv = ["grpo", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--output-dir", str(tmp_path / "x")]
    if extra[:2] == ["--task", "math500"]:
        argv[4] = "math500"
        extra = ["--task_args", f"data_path={REPO.parent / 'shared/data/MATH500.json'}"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x" / "cost.json").exists()


def test_accelerate_configs_parse_and_say_when_to_use_them():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    expected = {
        "cpu.yaml": (DistributedType.NO, 1, True), "cpu_2proc.yaml": (DistributedType.MULTI_GPU, 2, True),
        "single_gpu.yaml": (DistributedType.NO, 1, False), "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8, False),
        "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 8, False),
        "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 8, False), "fsdp2.yaml": (DistributedType.FSDP, 8, False),
    }
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(expected)
    for name, (kind, processes, cpu) in expected.items():
        path = CONFIGS / name
        assert path.read_text().startswith("# "), name
        config = load_config_from_file(str(path))
        assert (config.distributed_type, config.num_processes, config.use_cpu) == (kind, processes, cpu), name
        if not cpu:
            assert config.mixed_precision == "bf16", name
    assert load_config_from_file(str(CONFIGS / "deepspeed_zero3.yaml")).deepspeed_config["zero_stage"] == 3
    assert load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml")).deepspeed_config["zero_stage"] == 2
    assert load_config_from_file(str(CONFIGS / "fsdp2.yaml")).fsdp_config["fsdp_version"] == 2


def test_gpu_preset_parses_into_grpo_settings():
    from sharpen.cli.grpo import parse_args

    settings = parse_args(["--config", str(REPO / "sharpen/configs/grpo_gpu.yaml"), "--model",
                           "Qwen/Qwen2.5-Math-7B", "--task", "math500", "--output-dir", "x", "--max_steps", "10"])
    grpo = settings.grpo
    assert (grpo["bf16"], grpo["use_cpu"], grpo["learning_rate"], grpo["beta"]) == (True, False, 5e-7, 0.0)
    assert grpo["max_steps"] == 10 and settings.run.model == "Qwen/Qwen2.5-Math-7B"


def test_flags_beat_the_yaml_file_which_beats_the_run_defaults(tmp_path):
    from sharpen.cli.grpo import parse_args
    from sharpen.rl import default_grpo_args

    config = tmp_path / "grpo.yaml"
    config.write_text("learning_rate: 0.001\nmax_steps: 7\nlora_r: 8\nnum-generations: 4\nenv:\n  SHARPEN_X: 'y'\n")
    settings = parse_args(["--model", "m", "--task", "testbed", "--output-dir", "o", "--config", str(config),
                           "--learning-rate", "0.002", "--lora_alpha", "64"])
    grpo, model = settings.grpo, settings.model_args
    assert (grpo["learning_rate"], grpo["max_steps"], grpo["num_generations"]) == (0.002, 7, 4)  # flag, YAML, YAML
    assert grpo["beta"] == default_grpo_args()["beta"] == 0.0 and grpo["per_device_train_batch_size"] == 16  # ours
    assert grpo["epsilon"] == 0.2  # TRL's own default where we set none
    assert (model.lora_r, model.lora_alpha, model.lora_target_modules, model.use_peft) == (8, 64, "all-linear", False)
    assert grpo["output_dir"] == "o" and grpo["run_name"] == "grpo-testbed"
    import os

    assert os.environ.pop("SHARPEN_X") == "y"  # the YAML file's env: mapping, as TrlParser does


def test_lora_is_use_peft_and_its_targets_reach_peft_as_given(tiny_checkpoint):
    from sharpen.cli.grpo import parse_args
    from sharpen.rl import lora_config

    base = ["--model", "m", "--task", "testbed", "--output-dir", "o"]
    assert parse_args(base).model_args.use_peft is False
    assert parse_args(base + ["--lora"]).model_args.use_peft is True
    assert parse_args(base + ["--use_peft"]).model_args.use_peft is True
    assert lora_config(str(tiny_checkpoint), parse_args(base).model_args) is None
    peft = lora_config(str(tiny_checkpoint), parse_args(base + ["--lora"]).model_args)
    assert peft.target_modules == "all-linear" and peft.r == 16 and peft.task_type == "CAUSAL_LM"
    for targets in (["q_proj,v_proj"], ["q_proj", "v_proj"]):
        model_args = parse_args(base + ["--lora", "--lora_target_modules", *targets]).model_args
        assert lora_config(str(tiny_checkpoint), model_args).target_modules == {"q_proj", "v_proj"}
    from trl import ModelConfig

    single = ModelConfig(use_peft=True)
    single.lora_target_modules = ["all-linear"]  # peft would look for a module named all-linear
    assert lora_config(str(tiny_checkpoint), single).target_modules == "all-linear"


STUDY = {"task": "basic_arithmetic", "task_args": {}, "chat": False, "problem_seed": 0}


@pytest.mark.parametrize("settings, message", [
    ({"learning_rat": 1e-3}, "unknown key 'grpo.learning_rat' in the study config: valid keys are the fields of "
                             "GrpoRunArgs, trl.GRPOConfig and trl.ModelConfig (see `sharpen grpo --help`)"),
    ({"config": {"max_steps": 3}}, "unknown key 'grpo.config'"),
    ({"model": "other"}, "grpo.model is set by the study itself"),
    ({"output_dir": "x"}, "grpo.output_dir is set by the study itself"),
    ({"max_steps": "ten"}, "grpo.max_steps: invalid int value: 'ten'"),
    ({"num_generations": 3}, "must be a multiple of num_generations (3)"),
    ({"lora": True, "lora_target_modules": "q_proj,qkv_proj"}, "LoRA target module 'qkv_proj' is not in the model"),
    ({"accelerate_config": "nope.yaml"}, "accelerate config 'nope.yaml' does not exist"),
    ({"per_device_train_batch_size": 4, "accelerate_config": str(CONFIGS / "cpu_2proc.yaml")}, None),
    ({"per_device_train_batch_size": 2, "accelerate_config": str(CONFIGS / "cpu_2proc.yaml")},
     "per_device_train_batch_size (2) x processes (2)"),
])
def test_study_settings_are_checked_before_any_work(tmp_path, tiny_checkpoint, settings, message):
    from sharpen.rl.stage import check_grpo_settings

    def check():
        check_grpo_settings(settings, model=str(tiny_checkpoint), output_dir=tmp_path / "grpo", **STUDY)

    if message is None:
        check()
    else:
        with pytest.raises(UsageError, match="^" + re.escape(message) if message.startswith("unknown") else
                           re.escape(message)):
            check()
    assert not (tmp_path / "grpo").exists()  # nothing written


def test_a_study_without_its_model_yet_checks_the_rest(tmp_path):
    from sharpen.rl.stage import check_grpo_settings

    check_grpo_settings({"lora": True, "max_steps": 3}, model=None, output_dir=tmp_path / "grpo", **STUDY)
    with pytest.raises(UsageError, match="multiple of num_generations"):
        check_grpo_settings({"num_generations": 5}, model=None, output_dir=tmp_path / "grpo", **STUDY)


def test_a_directory_with_another_run_or_base_model_revision_is_refused(tmp_path, tiny_checkpoint):
    from sharpen.rl import rundir, stage
    from sharpen.rl.settings import settings_from_mapping, study_mapping

    out = tmp_path / "grpo"

    def prepared(settings):
        resolved = settings_from_mapping(study_mapping(settings, model=str(tiny_checkpoint), output_dir=out, **STUDY))
        return stage.preflight(resolved, 1)

    out.mkdir()
    found = prepared({"max_steps": 3, "lora": True})
    rundir.write_run_file(out, identity=found.identity, model_path=found.model_path, revision=found.revision,
                          train_problems=len(found.problems))
    check = lambda settings: stage.check_grpo_settings(settings, model=str(tiny_checkpoint), output_dir=out, **STUDY)
    check({"max_steps": 4})  # run.json alone (a first session that died before its first save) binds nothing
    (out / "checkpoint-1").mkdir()  # a saved step does
    check({"max_steps": 3, "lora": True, "save_steps": 1, "logging_steps": 2})  # not what is trained: a resume
    with pytest.raises(UsageError, match=r"other settings \(grpo.learning_rate, grpo.max_steps, model.lora_r\)"):
        check({"max_steps": 4, "learning_rate": 1e-3, "use_peft": True, "lora_r": 8})
    with pytest.raises(UsageError, match=r"other settings \(model.use_peft\)"):
        check({"max_steps": 3})
    with pytest.raises(UsageError, match=r"other settings \(run.problem_seed\)"):
        stage.check_grpo_settings({"max_steps": 3, "lora": True}, model=str(tiny_checkpoint), output_dir=out,
                                  **(STUDY | {"problem_seed": 1}))

    saved = json.loads((out / "run.json").read_text())
    assert saved["base_model_revision"] and saved["environment"]["libraries"]["trl"]
    # A field a newer TRL adds, or one it drops, does not block a resume: only shared keys are compared.
    saved["identity"]["grpo"]["a_new_trl_field"] = 1
    del saved["identity"]["grpo"]["epsilon"]
    (out / "run.json").write_text(json.dumps(saved))
    check({"max_steps": 3, "lora": True})
    saved["base_model_revision"] = "0123456789abcdef"
    (out / "run.json").write_text(json.dumps(saved))
    with pytest.raises(UsageError, match="another revision of its base model"):
        check({"max_steps": 3, "lora": True})


def test_relaunch_passes_what_the_user_gave(tmp_path, tiny_checkpoint, monkeypatch):
    """The children get the user's flags (or a YAML of the study's mapping) and re-run the same merge."""
    import subprocess

    import yaml

    from sharpen.cli import main
    from sharpen.cli.grpo import parse_args
    from sharpen.rl import launch, stage
    from sharpen.rl.rundir import LAUNCH_FILE
    from sharpen.rl.settings import settings_from_mapping, study_mapping

    launched = []

    def fake_run(command, env=None, **kwargs):
        launched.append((command, env))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    monkeypatch.chdir(REPO)
    config = tmp_path / "grpo.yaml"
    config.write_text("max_steps: 3\nnum_generations: 4\n")
    out = tmp_path / "cli"
    argv = ["--accelerate-config", "sharpen/configs/accelerate/cpu_2proc.yaml", "--model", str(tiny_checkpoint), "--task",
            "basic_arithmetic", "--config", str(config), "--per_device_train_batch_size", "4", "--output-dir", str(out)]
    assert main(["grpo", *argv]) == 0
    command, env = launched.pop()
    assert command[command.index("sharpen") + 1:] == ["grpo", *argv]
    assert command[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           "sharpen/configs/accelerate/cpu_2proc.yaml"]
    assert env[launch.LAUNCHED_ENV] == "1"  # the children train: they do not launch again

    settings = {"max_steps": 3, "num_generations": 4, "per_device_train_batch_size": 4, "lora": True,
                "accelerate_config": "sharpen/configs/accelerate/cpu_2proc.yaml"}
    out = tmp_path / "study"
    wandb = WandbConfig(mode="off", group="study-x")
    assert stage.train_grpo(settings, model=str(tiny_checkpoint), output_dir=out, wandb=wandb, run_name="s-grpo",
                            **STUDY) == out
    command, env = launched.pop()
    assert command[-3:] == ["grpo", "--config", str(out / LAUNCH_FILE)]
    mapping = yaml.safe_load((out / LAUNCH_FILE).read_text())
    assert mapping == settings | {"model": str(tiny_checkpoint), "task": "basic_arithmetic", "chat": False,
                                  "problem_seed": 0, "output_dir": str(out), "run_name": "s-grpo", "wandb_mode": "off",
                                  "wandb_project": "sharpen", "wandb_group": "study-x", "task_args": []}
    # The child's merge of that file is the parent's merge of the study's settings.
    child = parse_args(command[command.index("grpo") + 1:])
    parent = settings_from_mapping(study_mapping(settings, model=str(tiny_checkpoint), output_dir=out,
                                                 run_name="s-grpo", wandb=wandb, **STUDY))
    assert (child.run, child.grpo, child.model_args) == (parent.run, parent.grpo, parent.model_args)
    assert child.model_args.use_peft and child.grpo["generation_batch_size"] is None


@pytest.mark.slow
def test_testbed_default_budget_raises_reward_and_pass_at_1(tmp_path, request):
    """The default budget on the testbed: the training reward rises and test pass@1 rises by > 0.2."""
    pytest.importorskip("sharpen.testbed")
    try:
        testbed_dir = request.getfixturevalue("testbed_dir")
    except pytest.FixtureLookupError:
        from sharpen.testbed import build_testbed

        testbed_dir = build_testbed()
    from sharpen.rl.stage import train_grpo
    from sharpen.tasks import get_task
    from sharpen.sampling import load_model, sample

    out = train_grpo({"log_completions": False}, model=str(testbed_dir), task="testbed", task_args={}, chat=False,
                     problem_seed=0, output_dir=tmp_path / "grpo", wandb=WandbConfig(mode="off"), run_name="grpo")
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["reward_last"] > summary["reward_first"] + 0.1, summary

    task = get_task("testbed")
    problems = [p for p in task.load(limit=150) if p["kind"] != "twice"]  # test split, the kinds GRPO trains on

    def pass_at_1(model_dir) -> float:
        model, tokenizer = load_model(str(model_dir), device="cpu")
        prompts = [tokenizer(task.prompt(p), add_special_tokens=False)["input_ids"] for p in problems] * 4
        results = sample(model, prompts, temperature=1.0, max_new_tokens=32, seed=0, batch_size=100)
        texts = [tokenizer.decode(r.token_ids, skip_special_tokens=True) for r in results]
        return sum(task.grade(p, t) for p, t in zip(problems * 4, texts)) / len(texts)

    before, after = pass_at_1(testbed_dir), pass_at_1(out)
    assert after > before + 0.2, (before, after)
