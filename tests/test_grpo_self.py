"""grpo_self (sharpen.rl.self_reward): GRPO through TRL, rewarded by the base model's likelihood, trains toward p^alpha.

    python -m pytest -q tests/test_grpo_self.py     # ~40 s on 2 cores: two 200-step trainings of a tiny model

The enumerable model of tests/test_power_exactness.py (4 tokens, completions of at most 4 tokens, 121 of
them, p^4 spread over completions of three lengths) is trained from the base model itself with a real
GRPOTrainer, sharpen's rollouts and the self-likelihood reward; after training, the policy's exact law
(by enumeration of its conditionals) is compared with p^4. The broken variant uses beta = 1 instead of
1/(alpha - 1) = 1/3, whose optimum is p^2: it must land measurably elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from sharpen.errors import UsageError
from sharpen.rl import grpo_config
from sharpen.rl.self_reward import (SELF_GRPO_SETTINGS, check_self_settings, kl_coefficient, self_likelihood_reward,
                                    self_rollouts, sequence_logprob)
from conftest import tiny_llama
from test_power_exactness import EOS, PROMPT, T, VOCAB, completions, conditionals_of, per_token, tables, target

pytestmark = pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
ALPHA = 4.0
STEPS = 200


def power_model():
    """The exactness tests' power_model: p^4 on four completions of three lengths, far from low temperature."""
    return tiny_llama(vocab_size=VOCAB, eos_token_id=EOS, seed=123, logit_scale=16.0, hidden_size=16,
                      max_position_embeddings=32)


def word_tokenizer():
    """Token i is the word w<i>; EOS (1) pads, so padding never hides a sampled token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={"w0": 0, "<eos>": 1, "w2": 2, "w3": 3}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


def policy_law(model) -> np.ndarray:
    """The exact law of sampling `model` at temperature 1 over completions(T), in that order."""
    logp, _ = tables(conditionals_of(model.eval()))
    law = np.exp([sum(per_token(logp, x)) for x in completions(T)])
    return law / law.sum()


def tv(a, b) -> float:
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def train(tmp_path, beta=None, steps=STEPS, record_every=100):
    """Train the power model with grpo_self's reward and settings; TV to p^4 every `record_every` steps."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    checkpoint = tmp_path / "base"
    power_model().save_pretrained(checkpoint)
    word_tokenizer().save_pretrained(checkpoint)
    _, p4 = target(conditionals_of(power_model()), ALPHA)
    trace = {0: tv(policy_law(power_model()), p4)}

    class Trace(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % record_every == 0:
                trace[state.global_step] = tv(policy_law(model), p4)
                model.train()

    values = {**SELF_GRPO_SETTINGS, "max_steps": steps, "num_generations": 16, "per_device_train_batch_size": 64,
              "max_completion_length": T, "learning_rate": 1e-3, "report_to": [], "save_strategy": "no",
              "logging_steps": steps, "log_completions": False, "seed": 0}
    prompt = " ".join(f"w{t}" for t in PROMPT)
    trainer = GRPOTrainer(model=str(checkpoint), reward_funcs=self_likelihood_reward(ALPHA, beta=beta),
                          args=grpo_config(values, output_dir=tmp_path / "run"),
                          train_dataset=Dataset.from_dict({"prompt": [prompt] * 64}), processing_class=word_tokenizer(),
                          rollout_func=self_rollouts(power_model()), callbacks=[Trace()])
    trainer.train()
    return trace, policy_law(trainer.model)


def test_the_trained_policy_moves_to_p_alpha_and_a_wrong_beta_lands_elsewhere(tmp_path):
    """TV to p^4 falls with steps and ends far below low temperature's; beta = 1 (optimum p^2) stays away."""
    conditionals = conditionals_of(power_model())
    _, p4 = target(conditionals, ALPHA)
    _, p2 = target(conditionals, 2.0)
    _, q = tables(conditionals, 1 / ALPHA)
    low = np.exp([sum(per_token(q, x)) for x in completions(T)])
    tv_low = tv(low / low.sum(), p4)

    trace, law = train(tmp_path / "right")
    print(f"\ngrpo_self, beta 1/3: TV to p^4 by step {trace}, low temperature {tv_low:.3f}, p^2 {tv(p2, p4):.3f}")
    assert trace[0] > 0.45 and tv_low > 0.3  # p and low temperature are both far from p^4 on this model
    assert trace[100] < trace[0] / 2 and tv(law, p4) < 0.06 < tv_low / 5

    _, broken = train(tmp_path / "beta1", beta=1.0)
    print(f"beta 1: TV to p^4 {tv(broken, p4):.3f}, to p^2 {tv(broken, p2):.3f}")
    assert tv(broken, p4) > 0.1 > tv(law, p4) + 0.04 and tv(broken, p2) < tv(broken, p4)


def test_reward_and_settings():
    """The reward's formula, the teacher-forced log-likelihood, and the refusals, each in one line."""
    model = power_model()
    logp, _ = tables(conditionals_of(model))
    for x in [(2, 2, 2, 2), (3, 1), (1,)]:  # a cut completion, a short and an empty one (EOS only)
        assert sequence_logprob(model, [PROMPT], [list(x)])[0] == pytest.approx(sum(per_token(logp, x)), abs=1e-5)
    batch = sequence_logprob(model, [PROMPT, PROMPT[:1]], [[2, 2, 2, 2], [1]])  # left padding changes nothing
    assert batch[0] == pytest.approx(sum(per_token(logp, (2, 2, 2, 2))), abs=1e-5)
    reward = self_likelihood_reward(3.0)  # beta 1/2
    assert reward(completions=["x"], base_logprob=[-2.0], policy_logprob=[-1.0]) == [1.5 * -2.0 - 0.5 * -1.0]
    assert kl_coefficient(2.0) == 1.0
    for alpha in (1.0, 0.5, float("inf"), True):
        with pytest.raises(UsageError, match="grpo_self needs alpha > 1"):
            kl_coefficient(alpha)
    good = grpo_config({**SELF_GRPO_SETTINGS, "report_to": []}, output_dir="unused")
    check_self_settings(good)
    for wrong in ({"scale_rewards": "group"}, {"loss_type": "grpo"}, {"beta": 0.04}, {"temperature": 0.7}):
        args = grpo_config({**SELF_GRPO_SETTINGS, **wrong, "report_to": []}, output_dir="unused")
        with pytest.raises(UsageError) as err:
            check_self_settings(args)
        assert "grpo_self trains toward p^alpha only with" in str(err.value) and "\n" not in str(err.value)


SMALL = ["--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "6",
         "--learning_rate", "1e-2", "--report_to", "none", "--log_completions", "false", "--logging_steps", "1"]


def test_sharpen_grpo_reward_self_likelihood_trains_without_a_grader(tmp_path, tiny_checkpoint, capsys):
    """`sharpen grpo --reward self_likelihood`: grpo_self's settings applied, the reward logged, identity saved."""
    import json

    from sharpen.cli import main

    out = tmp_path / "self"
    argv = ["grpo", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--output-dir", str(out),
            "--reward", "self_likelihood", "--alpha", "3", "--max_steps", "2", *SMALL]
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())["identity"]
    assert run["run"]["reward"] == "self_likelihood" and run["run"]["alpha"] == 3.0
    assert {k: run["grpo"][k] for k in ("beta", "scale_rewards", "loss_type", "temperature")} == {
        "beta": 0.0, "scale_rewards": "none", "loss_type": "dr_grpo", "temperature": 1.0}
    history = json.loads((out / "metrics.json").read_text())
    assert "self_likelihood" in json.dumps(history) and "rewards/correct" not in json.dumps(history)
    assert json.loads((out / "cost.json").read_text())["optimizer_steps"] == 2
    # the same directory with the grader's reward is another run
    assert main(argv[:7] + ["--max_steps", "2", *SMALL]) == 2
    assert "holds a GRPO run with other settings (run.reward, " in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "1"], "grpo_self needs alpha > 1"),
    (["--rollouts", "trl"], "--reward self_likelihood needs --rollouts sharpen"),
    (["--loss_type", "grpo"], "grpo_self trains toward p^alpha only with"),
    (["--temperature", "0.7"], "grpo_self trains toward p^alpha only with"),
])
def test_grpo_self_bad_input_is_one_line_and_status_2(tmp_path, tiny_checkpoint, capsys, extra, message):
    from sharpen.cli import main

    out = tmp_path / "x"
    argv = ["grpo", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--output-dir", str(out),
            "--reward", "self_likelihood", "--max_steps", "1", *SMALL, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())
    assert main(argv[:7] + ["--reward", "bogus"]) == 2 and "unknown --reward 'bogus'" in capsys.readouterr().err
