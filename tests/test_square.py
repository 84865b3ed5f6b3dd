"""The sharpening square (issue 24): power_distill moves toward its teacher's law, and a study runs all four corners.

    python -m pytest -q tests/test_square.py       # ~1 min on 2 cores

- power_distill, by enumeration: the power model of tests/test_power_exactness.py (4 tokens, 121
  completions of at most 4 tokens, p^4 far from p and from low temperature) is fine-tuned with
  sharpen.rl.distill on 2000 completions of its teacher, power_mh with settings whose law is p^4
  (proposals at temperature 1, a single block, chains that run on after EOS, 40 steps: a chi-square test on
  the run shows it reached p^4); the distilled model's exact law must end far closer to p^4 than the base
  model's and than low temperature's. The broken
  variant distils the base model's own samples (a teacher with the wrong law): its model must stay
  near p and far from p^4, so the check can tell the teacher's law apart.
- the study: a testbed study with power_mh, grpo, grpo_self and power_distill resumes after its
  distillation was killed (the teacher's records kept, nothing sampled twice), charges each trained arm
  its own training, and fills the report's square; bad input is one line, exit status 2, before work.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sharpen.cli import main
from sharpen.rl.distill import DistillSettings, distill_examples, model_dir, train_distill
from sharpen.runs.tracking import WandbConfig
from sharpen.sampling import PowerSamplingConfig, power_sample, sample
from sharpen.study.config import load_study_config
from conftest import tiny_llama
from test_grpo_self import policy_law, tv, word_tokenizer
from test_power_exactness import EOS, PROMPT, T, VOCAB, chi_square, completions, conditionals_of, per_token, tables, target

TEACHER_SAMPLES = 2000
EPOCHS = 6
STEPS_TEACHER = 40  # MH steps: enough for the chains to reach p^4 on this model (checked below, on the run)


def power_model():
    return tiny_llama(vocab_size=VOCAB, eos_token_id=EOS, seed=123, logit_scale=16.0, hidden_size=16,
                      max_position_embeddings=32)


def records_of(results) -> list[dict]:
    """Sampling records as power_distill reads them: the prompt's text and the completion's token ids."""
    prompt = " ".join(f"w{t}" for t in PROMPT)
    return [{"prompt": prompt, "completion_ids": r.token_ids} for r in results]


def distilled_law(tmp_path, name, results) -> np.ndarray:
    checkpoint = tmp_path / "base"
    if not checkpoint.exists():
        power_model().save_pretrained(checkpoint)
        word_tokenizer().save_pretrained(checkpoint)
    out = tmp_path / name
    settings = DistillSettings(teacher=name, num_train_epochs=EPOCHS, learning_rate=1e-2, per_device_train_batch_size=64,
                               lora=False)
    train_distill(settings, model=str(checkpoint), examples=distill_examples(records_of(results), word_tokenizer()),
                  output_dir=out, teacher={"teacher_forward_tokens": 0}, wandb=WandbConfig(mode="off"),
                  run_name=name, seed=0)
    from transformers import AutoModelForCausalLM

    cost = json.loads((out / "cost.json").read_text())
    assert cost["examples"] == TEACHER_SAMPLES and cost["fine_tune_tokens"] > 0 and cost["optimizer_steps"] > 0
    return policy_law(AutoModelForCausalLM.from_pretrained(model_dir(out), dtype=torch.float32))


def test_power_distill_moves_toward_its_teachers_law(tmp_path):
    model = power_model().eval()
    conditionals = conditionals_of(model)
    _, p4 = target(conditionals, 4.0)
    _, q = tables(conditionals, 0.25)
    low_temp = np.exp([sum(per_token(q, x)) for x in completions(T)])
    low_temp /= low_temp.sum()
    base_law = policy_law(power_model())
    prompts = [list(PROMPT)] * TEACHER_SAMPLES
    # power_mh whose law is p^4 on this model (tests/test_power_exactness.py: one block, T = 1 proposals, run on)
    cfg = PowerSamplingConfig(alpha=4.0, proposal_temperature=1.0, block_size=T, mcmc_steps=STEPS_TEACHER, max_new_tokens=T,
                              stop_on_eos=False, batch_size=500)
    with torch.no_grad():
        teacher = power_sample(model, prompts, cfg, seeds=list(range(TEACHER_SAMPLES)))
        plain = sample(model, prompts, temperature=1.0, max_new_tokens=T, seeds=list(range(TEACHER_SAMPLES)),
                       batch_size=500)
    # The teacher reached p^4 on this run (the law it is distilled toward), as a chi-square test shows.
    states, p4_states = target(conditionals, 4.0)
    p_value, teacher_tv = chi_square([tuple(r.token_ids) for r in teacher], states, p4_states)
    assert p_value > 1e-3, (p_value, teacher_tv)
    distilled = distilled_law(tmp_path, "power_mh", teacher)
    from_base = distilled_law(tmp_path, "base", plain)
    before, after, low = tv(base_law, p4), tv(distilled, p4), tv(low_temp, p4)
    print(f"teacher against p^4: p = {p_value:.3g}, TV {teacher_tv:.3f}")
    print(f"TV to p^4: base {before:.3f}, distilled from power_mh {after:.3f}, low temperature {low:.3f}, "
          f"distilled from base samples {tv(from_base, p4):.3f} (to p: {tv(from_base, base_law):.3f})")
    assert after < 0.1 < low and after < 0.5 * before
    # The broken teacher: its student learns p, not p^4, and the check sees the difference.
    assert tv(from_base, p4) > 2 * after and tv(from_base, base_law) < tv(from_base, p4)


# ---- the study ---------------------------------------------------------------------------------

SQUARE = ["num_problems=6", "num_samples=2",
          "methods=[base, {name: power_mh, method: power_mh}, grpo, grpo_self, power_distill]",
          "power_mh.mcmc_steps=2", "grpo.max_steps=2", "grpo_self.max_steps=2", "power_distill.teacher=power_mh",
          "power_distill.num_train_problems=6", "power_distill.num_samples=2", "power_distill.num_train_epochs=1",
          "analysis.bootstrap=200", "wandb.mode=off"]


def test_a_study_runs_and_resumes_every_corner(testbed_dir, tmp_path, monkeypatch):
    from sharpen.study import pipeline

    out = tmp_path / "study"
    config = load_study_config("testbed", [f"output_dir={out}", *SQUARE])
    assert config.trained_stages == ["grpo", "grpo_self", "power_distill"]
    assert config.grpo_self.settings["reward"] == "self_likelihood" and config.grpo_self.settings["alpha"] == 4.0

    # A distillation killed after its teacher sampled: the rerun keeps the teacher's records and goes on.
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_distill", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_study(config, progress=False)
    teacher = out / "power_distill" / "samples" / "power_mh.jsonl"
    kept = teacher.read_text()
    assert len(kept.splitlines()) == 12 and not (out / "power_distill" / "cost.json").exists()
    monkeypatch.undo()
    metrics = pipeline.run_study(load_study_config("testbed", [f"output_dir={out}", *SQUARE]), progress=False)
    assert teacher.read_text() == kept  # nothing sampled twice

    costs = {name: m["cost"].get("training") for name, m in metrics["methods"].items()}
    assert costs["base"] is None and costs["power_mh"] is None
    assert costs["grpo"]["optimizer_steps"] == 2 and costs["grpo_self"]["optimizer_steps"] == 2
    assert costs["power_distill"]["teacher_completions"] == 12
    assert costs["power_distill"]["forward_tokens"] > costs["power_distill"]["fine_tune_tokens"] > 0
    assert costs["grpo"] != costs["grpo_self"]  # each arm pays its own training
    trained_rows = {r["method"] for r in metrics["equal_compute"] if r.get("training")}
    assert trained_rows == {"grpo", "grpo_self", "power_distill"}
    assert set(metrics["training"]) == {"grpo", "grpo_self", "power_distill"}

    square = metrics["square"]
    cells = {cell: [r["method"] for r in rows] for cell, rows in square["cells"].items()}
    assert cells == {"no_verifier/no_training": ["base", "power_mh"], "verifier/no_training": ["base", "power_mh"],
                     "no_verifier/training": ["grpo_self", "power_distill"], "verifier/training": ["grpo"]}
    assert square["k"] == 2
    oracle = square["cells"]["verifier/no_training"][0]
    assert oracle["accuracy"]["value"] == metrics["methods"]["base"]["pass_at_k"]["value"][-1]
    report = (out / "report.md").read_text()
    assert "## The sharpening square" in report and "base, best of 2 (oracle)" in report
    assert f"Of the {square['cross_corner_pairs']} pairs of methods in different corners" in report


@pytest.mark.parametrize("extra, message", [
    (["power_distill.teacher=nobody"], "power_distill.teacher 'nobody' is not one of the study's method instances"),
    (["power_distill.teacher=grpo"], "power_distill.teacher 'grpo' samples a trained model"),
    (["methods=[base, power_distill]", "power_distill.teacher=null"], "power_distill needs power_distill.teacher"),
    (["methods=[base, {name: w, method: power_is}, power_distill]", "power_distill.teacher=w"],
     "power_distill.teacher 'w' draws weighted samples"),
    (["alpha=1.0"], "grpo_self: "),
    (["grpo_self.reward=correct"], "grpo_self always trains on self_likelihood"),
    (["power_distill.num_samples=0"], "power_distill.num_samples must be an integer >= 1"),
    (["task=humaneval", "methods=[base, power_distill]", "power_distill.teacher=base"],
     "power_distill's teacher samples the study task's train split"),
])
def test_bad_square_settings_are_one_line_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "study"
    assert main(["study", "--config", "testbed", "--output-dir", str(out), *SQUARE, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()
