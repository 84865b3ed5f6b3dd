"""RL without a verifier: GRPO whose reward is the frozen base model's likelihood, aimed at p^alpha (grpo_self).

    from sharpen.rl.self_reward import SELF_GRPO_SETTINGS, self_likelihood_reward, self_rollouts
    GRPOTrainer(model=base_path, args=grpo_config({**my_settings, **SELF_GRPO_SETTINGS}),
                reward_funcs=self_likelihood_reward(alpha=4.0), rollout_func=self_rollouts(base_model),
                train_dataset=..., processing_class=tokenizer)

Objective. KL-regularised RL with reward log p_base(x) and coefficient beta toward the base model,
    J(pi) = E_pi[log p_base(x)] - beta KL(pi || p_base),
is maximised by pi*(x) proportional to p_base(x)^(1 + 1/beta): beta = 1/(alpha - 1) targets p^alpha
(alpha 4: beta 1/3). Written with the KL inside the reward,
    J(pi) = E_pi[r(x)],  r(x) = (1 + beta) log p_base(x) - beta log pi(x)   (log pi detached),
and the score-function gradient E_pi[(r(x) - b) grad log pi(x)] is exactly grad J: the -beta log pi
term contributes E[-beta log pi grad log pi] = grad of beta H(pi), the rest is the usual policy
gradient (E[grad log pi] = 0 removes any baseline b). So J = -beta KL(pi || p^alpha / Z) + const, whose
only maximum is p^alpha.

TRL's own KL term is not used (beta = 0 in GRPOConfig): its per-token k3 estimator, differentiated as a
loss under samples from pi, has the gradient of KL(p_base || pi), the reverse direction, whose optimum is
not p^alpha. The other settings keep TRL's estimator equal to the gradient above (SELF_GRPO_SETTINGS):
rollouts at temperature 1 with no top-k / top-p (samples from pi itself, and log pi is their log-prob);
advantages r - mean of the group, not divided by the group's standard deviation (`scale_rewards:
none`: dividing reweights prompts by their reward spread); the `dr_grpo` loss, which sums token terms
and divides by a constant (max_completion_length x completions), so every completion's gradient is
A(x) grad log pi(x) whatever its length (`grpo` divides each completion by its own length, a bias
toward short completions; `dapo` by the batch's token count, a bias that varies between batches);
one gradient step per generation round (num_iterations 1: the ratio is 1, so PPO clipping never acts).
What remains: the group mean as baseline includes the completion itself, which scales the expected
gradient by (G - 1) / G and leaves its direction alone; completions cut at max_completion_length are
the target's completions too (p^alpha over completions that end in EOS or are cut at the budget, as
every sampler here defines it).

The rollouts are sharpen's own (sharpen.rl.rollouts), extended with two per-completion fields that
TRL forwards to the reward function: `policy_logprob` (sum of log pi of the sampled tokens, exact at
temperature 1) and `base_logprob` (log p_base of the completion given its prompt, one teacher-forced
forward pass of the frozen base model). The reward needs no grader and no gold answers.

    python -m pytest -q tests/test_grpo_self.py     # the trained policy's exact law against p^alpha
"""

from __future__ import annotations

import math

from sharpen.analysis.scoring import score_completions
from sharpen.errors import UsageError

from .rollouts import sharpen_rollouts

SELF_REWARD = "self_likelihood"
REWARDS = ("correct", SELF_REWARD)  # GrpoRunArgs.reward: the task's grader, or this module's reward
# GRPOConfig values under which TRL's loss is the score-function gradient of the objective above.
SELF_GRPO_SETTINGS = {"beta": 0.0, "scale_rewards": "none", "loss_type": "dr_grpo", "num_iterations": 1,
                      "temperature": 1.0, "top_k": 0, "top_p": 1.0}


def kl_coefficient(alpha: float) -> float:
    """beta = 1/(alpha - 1): the KL coefficient whose optimum is p^alpha; alpha must exceed 1.

    >>> kl_coefficient(4.0)
    0.3333333333333333
    >>> kl_coefficient(1.0)
    Traceback (most recent call last):
    ...
    sharpen.errors.UsageError: grpo_self needs alpha > 1 (beta = 1/(alpha - 1) toward the base model), got 1.0
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 1:
        raise UsageError(f"grpo_self needs alpha > 1 (beta = 1/(alpha - 1) toward the base model), got {alpha!r}")
    return 1.0 / (alpha - 1.0)


def check_self_settings(args) -> None:
    """Refuse GRPOConfig values (a GRPOConfig or a dict of its fields) that change what the trained objective
    optimises (one line, UsageError)."""
    get = args.get if isinstance(args, dict) else lambda name, default=None: getattr(args, name, default)
    wrong = [f"{name}={get(name)!r} (needs {value!r})" for name, value in SELF_GRPO_SETTINGS.items()
             if name in ("beta", "scale_rewards", "loss_type", "num_iterations", "temperature")
             and get(name) != value]
    if get("top_k", None) not in (0, None) or get("top_p", 1.0) not in (1.0, None):
        wrong.append("top_k / top_p set (rollouts must sample pi itself)")
    if wrong:
        raise UsageError("grpo_self trains toward p^alpha only with " + ", ".join(
            f"{k}: {v!r}" for k, v in SELF_GRPO_SETTINGS.items()) + "; got " + "; ".join(wrong))


def self_likelihood_reward(alpha: float, *, beta: float | None = None, name: str = "self_likelihood"):
    """The reward (1 + beta) log p_base(x) - beta log pi(x), from the fields self_rollouts adds.

    `beta` defaults to 1/(alpha - 1); another value targets p^(1 + 1/beta) (a test's broken variant).

    >>> reward = self_likelihood_reward(4.0)
    >>> [round(r, 4) for r in reward(completions=["a", "b"], base_logprob=[-1.0, -3.0], policy_logprob=[-0.5, -2.0])]
    [-1.1667, -3.3333]
    """
    beta = kl_coefficient(alpha) if beta is None else float(beta)

    def reward(completions: list, base_logprob: list[float], policy_logprob: list[float], **kwargs) -> list[float]:
        pairs = zip(base_logprob, policy_logprob, strict=True)
        return [(1.0 + beta) * float(lp) - beta * float(lq) for lp, lq in pairs]

    # TRL names the reward's metrics after the function (`rewards/<name>/mean`).
    reward.__name__ = reward.__qualname__ = name
    return reward


def sequence_logprob(model, prompts: list[list[int]], completions: list[list[int]]) -> list[float]:
    """log p(completion | prompt) of each pair under `model` at temperature 1 (the analysis's scorer; 0 for an
    empty completion)."""
    return [0.0 if scores is None else scores["logprob_sum"] for scores in score_completions(model, prompts, completions)]


def self_rollouts(base_model):
    """TRL's rollout_func: sharpen's rollouts plus `policy_logprob` and `base_logprob` for each completion.

    `base_model` is the frozen base model (in eval mode); the policy's log-probs are those of the sampled
    tokens, which are log pi exactly because the rollouts sample at temperature 1 with nothing cut
    (check_self_settings refuses anything else).
    """
    base_model.eval()
    for parameter in base_model.parameters():
        parameter.requires_grad_(False)

    def rollout(prompts: list, trainer) -> dict:
        check_self_settings(trainer.args)
        out = sharpen_rollouts(prompts, trainer)
        out["policy_logprob"] = [math.fsum(lps) for lps in out["logprobs"]]
        out["base_logprob"] = sequence_logprob(base_model, out["prompt_ids"], out["completion_ids"])
        return out

    return rollout
