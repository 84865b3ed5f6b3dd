"""GRPO with rollouts: vllm (sharpen.rl.vllm_rollouts): the engine samples the policy as it is after each step.

    make test-vllm          # in .venv-vllm
    .venv-vllm/bin/python -m pytest -q tests/test_vllm_grpo.py     # ~45 s on 2 cores

Skipped as a whole where vLLM is not installed (the project's .venv). One engine serves the training
runs of this module (a VllmRollouts built on it; each run's first round loads its own policy): a tiny
random Llama (character vocabulary, 2 heads of size 32, the smallest head vLLM's CPU attention takes).
Every generation round is recorded with the trainer's own float32 log-probs of the same completions
at that moment (log_softmax(logits / T), what TRL's correction compares with), and with the policy
of the round before: the engine's log-probs must match the current policy (1e-4) and not the
previous one, for a full model at T = 1 and a LoRA policy at T = 0.7. A variant that loads the
weights only once fails that check, and so did one that kept the prefix cache across a sync (the
prompts share a 40-token preamble for that). The CLI test closes the module's engine and runs
`sharpen grpo --rollouts vllm`, which makes and closes its own.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("vllm")  # an optional engine: `make test-vllm` runs these tests in .venv-vllm

from conftest import char_tokenizer, tiny_llama  # noqa: E402
from sharpen.errors import UsageError  # noqa: E402
from sharpen.rl import grpo_train  # noqa: E402
from sharpen.rl.vllm_rollouts import VllmRollouts, policy_weights  # noqa: E402
from sharpen.sampling.vllm_engine import VllmModel  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
MATCH, MOVED = 1e-4, 1e-2  # engine vs current policy (float32 both) / vs the policy before the step


def digit_fraction(completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


# Every prompt starts with the same 40 characters: more than one 32-token block, which the engine's prefix cache keeps
# between rounds, so a sync that left the old weights' keys and values in the cache would be caught.
PREAMBLE = "answer the question with digits only. "


def tiny_dataset(n: int = 8):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [f"{PREAMBLE}q{i}:" for i in range(n)]})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vllm_grpo")
    tiny_llama(hidden_size=64, logit_scale=4.0).save_pretrained(path)
    char_tokenizer().save_pretrained(path)  # for the CLI run (the engine takes token ids only)
    return path


@pytest.fixture(scope="module")
def engine(checkpoint):
    model = VllmModel(str(checkpoint))
    yield model
    if hasattr(model, "llm"):  # the CLI test may have closed it already
        model.close()  # the next module's engine needs the memory


def sequence_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of each completion token, one teacher-forced float32 pass (TRL's computation)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


class Recorded(VllmRollouts):
    """The real hook, plus, per round: its output, and the trainer's log-probs of it now and one round ago."""

    def __init__(self, engine):
        super().__init__(engine)
        self.records, self.previous = [], None

    def __call__(self, prompts, trainer):
        out = super().__call__(prompts, trainer)
        model = trainer.model
        training = model.training
        model.eval()  # dropout off (the tiny model has none), as the engine
        T = trainer.args.temperature
        pairs = list(zip(out["prompt_ids"], out["completion_ids"]))
        now = [sequence_logprobs(model, p, c, T) for p, c in pairs]
        before = None if self.previous is None else [sequence_logprobs(self.previous, p, c, T) for p, c in pairs]
        model.train(training)
        self.records.append({"step": trainer.state.global_step, "engine": [torch.tensor(x) for x in out["logprobs"]],
                             "now": now, "before": before})
        self.previous = copy.deepcopy(model).eval()
        for module in self.previous.modules():
            # The trainer replaced the model's forward by a wrapper closed over the original model, which deepcopy
            # keeps: without this the copy would compute with the live weights.
            module.__dict__.pop("forward", None)
        return out


class LoadsOnce(Recorded):
    """A broken hook: the engine gets the policy of the first round only, never the steps after it."""

    def sync_weights(self):
        if self.loaded_step is None:
            super().sync_weights()


def gap(xs, ys) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(xs, ys))


def train(engine, checkpoint, output_dir, hook_class=Recorded, *, lora: bool | dict = False, **overrides):
    """grpo_train with rollouts vllm on the module's engine; `lora`: True or ModelConfig overrides (a LoRA run)."""
    from trl import ModelConfig

    args = {"max_steps": 3, "num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": 8,
            "learning_rate": 5e-2 if lora else 1e-2, "report_to": [], "log_completions": False, "logging_steps": 1,
            "save_strategy": "no", "output_dir": str(output_dir)} | overrides
    model_args = None
    if lora:  # no LoRA dropout unless asked: TRL's correction then runs (see the dropout test)
        model_args = ModelConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules="all-linear",
                                 **({"lora_dropout": 0.0} | (lora if isinstance(lora, dict) else {})))
    hook = hook_class(engine)
    cost = grpo_train(str(checkpoint), char_tokenizer(), tiny_dataset(), digit_fraction, args, model_args=model_args,
                      rollouts="vllm", rollout_func=hook)
    history = json.loads((output_dir / "metrics.json").read_text())["log_history"]
    return hook, cost, [row for row in history if "reward" in row]


def check_follows_policy(hook, rows, steps=3, corrected=True):
    assert [r["step"] for r in hook.records] == list(range(steps))
    for record in hook.records:
        assert gap(record["engine"], record["now"]) < MATCH, record["step"]
        if record["before"] is not None:  # the step moved the policy, and the engine moved with it
            assert gap(record["engine"], record["before"]) > MOVED, record["step"]
    assert hook.corrected == corrected
    if corrected:  # TRL's importance-sampling correction ran on these log-probs (it logs their gap to its forward)
        assert all(row["sampling/sampling_logp_difference/max"] < MATCH for row in rows)
        assert all(abs(row["sampling/importance_sampling_ratio/mean"] - 1) < 1e-3 for row in rows)
    else:
        assert not any(key.startswith("sampling/") for row in rows for key in row)


def test_engine_samples_the_updated_policy_and_a_run_completes(engine, checkpoint, tmp_path):
    hook, cost, rows = train(engine, checkpoint, tmp_path / "full")
    check_follows_policy(hook, rows)
    assert [r["step"] for r in hook.rounds] == [0, 1, 2] and all(r["sync_seconds"] > 0 for r in hook.rounds)
    assert cost["rollouts"] == "vllm" and cost["optimizer_steps"] == 3 and cost["rollout_completions"] == 24
    assert (tmp_path / "full" / "model.safetensors").exists()
    assert hook.engine is engine  # an engine it did not make stays open


def test_lora_policy_is_merged_into_the_engine_at_temperature(engine, checkpoint, tmp_path):
    """A peft policy at T = 0.7: merged W + scaling * B A in the engine, log q at T from the engine's normalisers."""
    hook, cost, rows = train(engine, checkpoint, tmp_path / "lora", lora=True, temperature=0.7)
    check_follows_policy(hook, rows)
    assert cost["rollouts"] == "vllm" and (tmp_path / "lora" / "adapter_model.safetensors").exists()


def test_dropout_turns_the_correction_off_and_the_engine_still_follows(engine, checkpoint, tmp_path, capsys):
    """LoRA dropout 0.05 (ModelConfig's default): TRL's training-mode log-probs would carry dropout noise into the
    importance ratio, so the correction is off (with a note); rollouts still come from the eval-mode policy."""
    hook, _, rows = train(engine, checkpoint, tmp_path / "dropout", lora={"lora_dropout": 0.05})
    check_follows_policy(hook, rows, corrected=False)
    assert "correction is off because the policy has dropout (dropout 0.05)" in capsys.readouterr().err


def test_a_hook_that_skips_the_sync_is_caught(engine, checkpoint, tmp_path):
    hook, _, rows = train(engine, checkpoint, tmp_path / "broken", LoadsOnce, lora=True)
    with pytest.raises(AssertionError):
        check_follows_policy(hook, rows)
    assert gap(hook.records[0]["engine"], hook.records[0]["now"]) < MATCH  # only the steps after the first miss
    assert gap(hook.records[2]["engine"], hook.records[2]["now"]) > MOVED
    assert max(row["sampling/sampling_logp_difference/max"] for row in rows) > MOVED  # TRL's metric sees it too


def test_policy_weights_merge_lora_without_touching_the_model(checkpoint):
    """policy_weights = peft's merge_and_unload on a copy, under the checkpoint's own names; the model unchanged."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(checkpoint),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                      modules_to_save=["lm_head"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.normal_(std=0.5)  # peft starts B at zero and lm_head's copy equal: nothing would show
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = policy_weights(model)
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(weights) == set(load_file(checkpoint / "model.safetensors")) == set(expected)
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)
    assert all((weights[n] - before["base_model.model." + n.replace(".weight", ".base_layer.weight")]).abs().max()
               > 0.1 for n in weights if n.endswith("q_proj.weight"))
    assert not torch.equal(weights["lm_head.weight"], before["base_model.model.lm_head.original_module.weight"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bad_settings_are_one_line_usage_errors(engine, checkpoint, tmp_path, monkeypatch, capsys):
    from sharpen.cli import main
    from sharpen.rl import check_rollouts

    argv = ["grpo", "--model", str(checkpoint), "--task", "basic_arithmetic", "--rollouts", "vllm",
            "--output-dir", str(tmp_path / "x")]
    for flags, message in [(["--top_k", "5"], "ratio would misread with top_k (5): set "
                                              "vllm_importance_sampling_correction false"),
                           (["--min_p", "0.1"], "rollouts: vllm does not support min_p (0.1)"),
                           (["--use_vllm", "true"], "rollouts: vllm is sharpen's own engine: unset use_vllm"),
                           (["--accelerate-config", "cpu_2proc"], "rollouts: vllm runs in one process"),
                           (["--reward", "self_likelihood"], "--reward self_likelihood needs --rollouts sharpen")]:
        assert main(argv + flags) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
    check_rollouts("vllm", {"top_k": 5, "vllm_importance_sampling_correction": False})  # no ratio to get wrong

    with pytest.raises(UsageError, match="^rollouts: vllm merges plain LoRA .*DoraLinearVariant"):
        train(engine, checkpoint, tmp_path / "dora", lora={"use_dora": True}, max_steps=1)
    monkeypatch.setattr("sharpen.rl.vllm_rollouts.vllm_installed", lambda: False)
    with pytest.raises(UsageError, match="^rollouts: vllm needs the optional package vLLM.*make install-vllm"):
        check_rollouts("vllm")


def test_cli_run_makes_and_closes_its_own_engine(checkpoint, tmp_path, engine):
    """`sharpen grpo --rollouts vllm` end to end: the engine made from --model, cost.json says vllm. Runs last."""
    from sharpen.cli import main

    # vLLM sizes a new engine's KV cache from the memory left free (measured: a second tiny engine beside the
    # first was refused), so the module's engine is closed first.
    engine.close()

    out = tmp_path / "cli"
    argv = ["grpo", "--model", str(checkpoint), "--task", "basic_arithmetic", "--rollouts", "vllm", "--lora",
            "--max_steps", "2", "--num_generations", "4", "--per_device_train_batch_size", "8",
            "--max_completion_length", "8", "--lora_dropout", "0", "--logging_steps", "1", "--wandb-mode", "off",
            "--save_strategy", "no", "--output-dir", str(out)]
    assert main(argv) == 0
    cost = json.loads((out / "cost.json").read_text())
    assert cost["rollouts"] == "vllm" and cost["optimizer_steps"] == 2
    rows = [row for row in json.loads((out / "metrics.json").read_text())["log_history"] if "reward" in row]
    assert len(rows) == 2 and all(row["sampling/sampling_logp_difference/max"] < MATCH for row in rows)
    # The run closed its engine: another one fits again (a second engine beside a live one is refused, above)
    again = VllmModel(str(checkpoint))
    assert len(again.generate([[2, 5]], seeds=[0], max_new_tokens=[2], eos=[1])[0].token_ids) >= 1
    again.close()
