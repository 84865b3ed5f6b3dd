"""GRPO rollouts through `sampling.sample` (sharpen.rl.rollouts): the current policy, its settings, the testbed.

    python -m pytest -q tests/test_grpo_rollouts.py            # ~30 s on 2 cores
    python -m pytest -q -m slow tests/test_grpo_rollouts.py    # the default 300-step recipe, both kinds (~40 s)

The policy checks run a real GRPOTrainer on a tiny random Llama (character tokenizer);
the training check runs the default recipe on the testbed with each kind of rollout and
compares pass@1 on the same held-out problems.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sharpen.errors import UsageError
from sharpen.runs.tracking import WandbConfig
from conftest import char_tokenizer

# TRL calls rollout_func experimental (grpo_train silences it too): what it hands the hook is pinned here.
pytestmark = pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
PROMPTS = ["q1:", "q2:", "q1:", "q2:"]
SEEDS = [11, 12, 13, 14]


def digit_fraction(completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def tiny_dataset(n: int = 8):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [f"q{i}:" for i in range(n)], "problem_index": list(range(n))})


def make_trainer(checkpoint, output_dir, *, lora: bool = False, **overrides):
    """A GRPOTrainer on the tiny checkpoint that samples with sharpen_rollouts, as grpo_train builds it."""
    from peft import LoraConfig
    from trl import GRPOTrainer

    from sharpen.rl import grpo_config, sharpen_rollouts

    values = {"max_steps": 1, "num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": 8,
              "learning_rate": 5e-2 if lora else 1e-2, "report_to": [], "log_completions": False,
              "logging_steps": 1, "save_strategy": "no"} | overrides
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if lora else None
    return GRPOTrainer(model=str(checkpoint), reward_funcs=digit_fraction,
                       args=grpo_config(values, output_dir=output_dir), train_dataset=tiny_dataset(),
                       processing_class=char_tokenizer(), peft_config=peft, rollout_func=sharpen_rollouts)


def sequence_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion token | prefix) at temperature 1 by one teacher-forced forward pass of `model`."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_rollouts_come_from_the_current_policy(tmp_path, tiny_checkpoint, lora):
    """Same prompts and seeds: equal rollouts without a step, other ones after one optimizer step (LoRA included)."""
    from sharpen.rl.rollouts import sample_policy

    trainer = make_trainer(tiny_checkpoint, tmp_path / "run", lora=lora)
    prompt_ids = trainer._tokenize_prompts(PROMPTS)[0]
    first = sample_policy(trainer, prompt_ids, SEEDS)
    again = sample_policy(trainer, prompt_ids, SEEDS)
    assert [(r.token_ids, r.logprobs) for r in first] == [(r.token_ids, r.logprobs) for r in again]

    trainer.train()  # one optimizer step
    assert trainer.state.global_step == 1
    after = sample_policy(trainer, prompt_ids, SEEDS)
    assert any(a.logprobs != b.logprobs for a, b in zip(first, after))
    # The logprobs are the trained policy's own (the peft model with its adapter, in eval mode).
    policy = trainer.model.eval()
    for ids, result in zip(prompt_ids, after):
        torch.testing.assert_close(torch.tensor(result.logprobs), sequence_logprobs(policy, ids, result.token_ids),
                                   rtol=1e-4, atol=1e-4)
    if lora:  # only the adapter moved: with it disabled the base model's rollouts come back
        with trainer.model.disable_adapter():
            base = sample_policy(trainer, prompt_ids, SEEDS)
        assert [(r.token_ids, r.logprobs) for r in base] == [(r.token_ids, r.logprobs) for r in first]


def test_sampling_is_in_eval_mode_and_training_mode_comes_back(tmp_path, tiny_checkpoint):
    from sharpen.rl.rollouts import sample_policy

    trainer = make_trainer(tiny_checkpoint, tmp_path / "run", lora=True)
    model = trainer.model
    model.train()
    frozen = next(m for m in model.modules() if not list(m.children()))  # a leaf: the embedding
    frozen.eval()  # a module kept in eval mode stays there
    modes = {name: m.training for name, m in model.named_modules()}
    seen = []
    hook = model.get_base_model().register_forward_pre_hook(lambda module, args: seen.append(module.training))
    sample_policy(trainer, trainer._tokenize_prompts(PROMPTS)[0], SEEDS)
    hook.remove()
    assert seen and not any(seen)
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_rollout_func_gets_each_prompt_num_generations_times_and_returns_one_completion_each(
        tmp_path, tiny_checkpoint, monkeypatch):
    """What TRL 1.16 hands rollout_func: the RepeatSampler already repeats each prompt num_generations times."""
    import sharpen.rl.grpo as grpo
    from sharpen.rl import grpo_train, rollouts

    calls = []

    def spy(prompts, trainer):
        out = rollouts.sharpen_rollouts(prompts, trainer)
        calls.append((list(prompts), trainer.state.global_step, out))
        return out

    monkeypatch.setattr(grpo, "sharpen_rollouts", spy)
    args = {"max_steps": 3, "num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": 8,
            "learning_rate": 1e-2, "report_to": [], "log_completions": False, "logging_steps": 1,
            "output_dir": str(tmp_path / "run")}
    cost = grpo_train(str(tiny_checkpoint), char_tokenizer(), tiny_dataset(), digit_fraction, args)
    assert [step for _, step, _ in calls] == [0, 1, 2]
    for prompts, _, out in calls:
        assert len(prompts) == 8 and prompts[:4] == [prompts[0]] * 4 and prompts[4:] == [prompts[4]] * 4
        assert prompts[0] != prompts[4]
        assert len(out["prompt_ids"]) == len(out["completion_ids"]) == len(out["logprobs"]) == 8
        # Prompt ids are the trainer's own tokenization (char tokenizer: no special tokens added).
        assert out["prompt_ids"] == [char_tokenizer()(p)["input_ids"] for p in prompts]
        # Per-completion seeds: the 4 completions of one prompt differ.
        assert len({tuple(c) for c in out["completion_ids"][:4]}) > 1
    assert cost["rollouts"] == "sharpen" and cost["rollout_completions"] == 24
    assert cost["rollout_tokens"] == sum(len(c) for _, _, out in calls for c in out["completion_ids"])
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["log_history"]
    lengths = [row["completions/mean_length"] for row in history if "reward" in row]
    assert lengths == pytest.approx([sum(map(len, out["completion_ids"])) / 8 for _, _, out in calls])


def test_seeds_are_reproducible_and_differ_between_steps_and_processes(tmp_path, tiny_checkpoint):
    from sharpen.rl.rollouts import rollout_seeds
    from sharpen.sampling import derive_seed

    trainer = make_trainer(tiny_checkpoint, tmp_path / "run", seed=7)
    first = rollout_seeds(trainer, 4)
    assert first == rollout_seeds(trainer, 4) == [derive_seed(7, 0, 0, i) for i in range(4)]
    assert len(set(first)) == 4
    trainer.state.global_step = 1
    assert rollout_seeds(trainer, 4) == [derive_seed(7, 1, 0, i) for i in range(4)]
    assert not set(first) & set(rollout_seeds(trainer, 4))


@pytest.mark.parametrize("settings, expected", [
    ({}, {"temperature": 1.0, "top_k": None, "top_p": None}),  # TRL's top_k 0 and top_p 1.0: off
    ({"temperature": 0.5}, {"temperature": 0.5, "top_k": None, "top_p": None}),
    ({"temperature": 0.7, "top_k": 3, "top_p": 0.9}, {"temperature": 0.7, "top_k": 3, "top_p": 0.9}),
], ids=["defaults", "temperature", "top_k_top_p"])
def test_grpo_settings_reach_the_sampler(tmp_path, tiny_checkpoint, settings, expected):
    """The rollouts are sampling.sample's draws at GRPOConfig's temperature / top-k / top-p / max_completion_length."""
    from sharpen.rl.rollouts import rollout_seeds, sharpen_rollouts
    from sharpen.sampling import sample

    trainer = make_trainer(tiny_checkpoint, tmp_path / "run", max_completion_length=6, **settings)
    trainer.state.global_step = 3
    out = sharpen_rollouts(PROMPTS * 4, trainer)
    prompt_ids, seeds = out["prompt_ids"], rollout_seeds(trainer, 16)
    model = trainer.model.eval()

    def draw(**changes):
        kwargs = expected | {"max_new_tokens": 6} | changes
        return [r.token_ids for r in sample(model, prompt_ids, seeds=seeds, **kwargs)]

    assert out["completion_ids"] == draw()
    assert all(1 <= len(c) <= 6 for c in out["completion_ids"]) and any(len(c) == 6 for c in out["completion_ids"])
    if expected["top_k"] is None:
        assert out["completion_ids"] != draw(top_k=3)  # top-k was off, not some default
    other = 1.0 if expected["temperature"] != 1.0 else 0.5
    assert out["completion_ids"] != draw(temperature=other)
    if expected == {"temperature": 1.0, "top_k": None, "top_p": None}:
        # The sampled distribution is the policy at temperature 1: its log-probs are the sampler's.
        results = sample(model, prompt_ids, seeds=seeds, max_new_tokens=6)
        assert out["logprobs"] == [r.logprobs for r in results]
    else:
        assert out["logprobs"] is None  # not the sampled distribution's; TRL needs them only with vLLM


def test_bad_rollouts_value_is_one_line_and_status_2(tmp_path, tiny_checkpoint, capsys):
    from sharpen.cli import main
    from sharpen.rl.stage import check_grpo_settings

    out = tmp_path / "x"
    argv = ["grpo", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--output-dir", str(out)]
    assert main(argv + ["--rollouts", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("rollouts must be one of sharpen, trl, vllm, got 'bogus'") and len(err.splitlines()) == 1, err
    assert main(argv + ["--min_p", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "rollouts: sharpen (sampling.sample) does not support min_p (0.1)" in err and len(err.splitlines()) == 1
    assert not out.exists()

    study = {"model": str(tiny_checkpoint), "task": "basic_arithmetic", "task_args": {}, "chat": False,
             "problem_seed": 0, "output_dir": out}
    with pytest.raises(UsageError, match="^rollouts must be one of sharpen, trl, vllm, got 'bogus'$"):
        check_grpo_settings({"rollouts": "bogus"}, **study)
    check_grpo_settings({"rollouts": "trl", "min_p": 0.1}, **study)  # TRL's generate takes min_p
    fsdp = str(Path(__file__).resolve().parents[1] / "sharpen" / "configs" / "accelerate" / "fsdp2.yaml")
    with pytest.raises(UsageError, match="^rollouts: sharpen does not run under FSDP"):
        check_grpo_settings({"accelerate_config": fsdp}, **study)
    check_grpo_settings({"accelerate_config": fsdp, "rollouts": "trl"}, **study)
    assert not out.exists()


def test_rollout_kind_is_part_of_the_run_identity(tiny_checkpoint):
    from sharpen.cli.grpo import parse_args

    base = ["--model", "m", "--task", "testbed", "--output-dir", "o"]
    assert parse_args(base).run.rollouts == "sharpen"
    settings = parse_args(base + ["--rollouts", "trl"])
    from sharpen.rl.rundir import identity

    assert identity(settings, "m")["run"]["rollouts"] == "trl"


def _testbed_pass_at_1(model_dir, problems, task) -> float:
    from sharpen.sampling import load_model, sample

    model, tokenizer = load_model(str(model_dir), device="cpu")
    prompts = [tokenizer(task.prompt(p), add_special_tokens=False)["input_ids"] for p in problems] * 4
    results = sample(model, prompts, temperature=1.0, max_new_tokens=32, seed=0, batch_size=100)
    texts = [tokenizer.decode(r.token_ids, skip_special_tokens=True) for r in results]
    return sum(task.grade(p, t) for p, t in zip(problems * 4, texts)) / len(texts)


def _train_testbed_both_ways(testbed_dir, tmp_path, steps: int | None) -> dict:
    from sharpen.rl.stage import train_grpo
    from sharpen.tasks import get_task

    task = get_task("testbed")
    # The test split's plain and trap problems (held out from GRPO's train split, of the kinds it trains on;
    # its `twice` kind is absent from training by design, and GRPO gets worse there).
    problems = [p for p in task.load(limit=150) if p["kind"] != "twice"]
    scores = {"base": _testbed_pass_at_1(testbed_dir, problems, task)}
    for kind in ("sharpen", "trl"):
        settings = {"log_completions": False, "rollouts": kind} | ({"max_steps": steps} if steps else {})
        out = train_grpo(settings, model=str(testbed_dir), task="testbed", task_args={}, chat=False, problem_seed=0,
                         output_dir=tmp_path / kind, wandb=WandbConfig(mode="off"), run_name=f"grpo-{kind}")
        assert json.loads((out / "cost.json").read_text())["rollouts"] == kind
        scores[kind] = _testbed_pass_at_1(out, problems, task)
    return scores


@pytest.mark.slow  # the default suite trains through sharpen's rollouts in test_grpo_self and the study tests
def test_sharpen_rollouts_train_the_testbed_like_trl_in_100_steps(testbed_dir, tmp_path):
    """A third of the default budget (~20 s for both): each kind lifts pass@1 from ~0.3 to ~0.95."""
    scores = _train_testbed_both_ways(testbed_dir, tmp_path, steps=100)
    assert scores["trl"] > scores["base"] + 0.4, scores
    assert scores["sharpen"] > scores["base"] + 0.4 and scores["sharpen"] > scores["trl"] - 0.1, scores


@pytest.mark.slow
def test_sharpen_rollouts_train_the_testbed_like_trl_with_the_default_recipe(testbed_dir, tmp_path):
    """The default 300-step recipe (~20 s a run): both kinds reach pass@1 >= 0.9 on the same held-out problems."""
    scores = _train_testbed_both_ways(testbed_dir, tmp_path, steps=None)
    assert scores["trl"] >= 0.9 and scores["sharpen"] >= 0.9, scores
    assert scores["sharpen"] > scores["trl"] - 0.06, scores


def test_the_step_benchmark_runs_both_kinds_side_by_side(tiny_checkpoint, capsys):
    from benchmarks.bench_grpo import main

    assert main(["--model", str(tiny_checkpoint), "--no_chat", "--completions", "8", "--num_generations", "4",
                 "--max_completion_length", "8", "--no_lora", "--steps", "1", "--warmup", "1", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith(("sharpen ", "trl ")) and "/" not in line}
    assert sorted(rows) == ["sharpen", "trl"] and all(row[1] == "2" for row in rows.values())  # 2 timed steps each
    assert "trl / sharpen seconds per step:" in out and "target >= 1.5x" in out
