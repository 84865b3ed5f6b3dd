"""GRPO rollouts through the project's own sampler (`sharpen.sample`), as TRL's `rollout_func` hook.

    from sharpen.rl.rollouts import sharpen_rollouts
    GRPOTrainer(..., rollout_func=sharpen_rollouts)   # what grpo_train(..., rollouts="sharpen") does

TRL's own path decodes with `model.generate`, which keeps decoding finished rows until the
longest one is done. `sharpen.sample` drops a row from the batch (and its KV cache rows)
as soon as it ends, so a round costs the sum of the completions' lengths, not B times the
longest. Each completion draws from its own torch.Generator seeded with
derive_seed(args.seed, global_step, process_index, index): rollouts are reproducible and
differ between steps and processes.

What TRL hands the hook, measured on TRL 1.16 (tests/test_grpo_rollouts.py): this process's
slice of the generation round, every prompt already repeated num_generations times by its
RepeatSampler (its docstring's "no duplication" means TRL adds none), so the hook returns
exactly one completion per entry. The completions come from the trainer's current policy:
the unwrapped model (a peft model's base with its LoRA layers active, since peft injects
them in place), in eval mode while sampling (dropout off), with GRPOConfig's temperature,
max_completion_length, and top_k / top_p only when set (TRL's "off" values 0 / 1.0 are None
here). Prompts are tokenized by the trainer's own `_tokenize_prompts`, so both kinds of
rollout see identical prompt ids, and completions stop at the trainer's EOS ids.

`logprobs`: TRL reads them only for vLLM's importance-sampling correction, where they must
be the log-probs of the sampled tokens under the processed distribution actually sampled
from (vLLM's processed_logprobs). `sharpen.sample` reports log p at temperature 1, which is
that distribution exactly when temperature is 1 and top-k / top-p are off; otherwise the
hook returns None, which TRL accepts and which is correct since it uses them nowhere else.

`rollouts: vllm` is the same sampler on a float32 vLLM engine that is loaded with the policy's
weights after every optimizer step, with TRL's importance-sampling correction on its log-probs
(sharpen.rl.vllm_rollouts; vLLM is optional and imported only there, when such a run starts).

    python -m pytest -q tests/test_grpo_rollouts.py
    .venv-vllm/bin/python -m pytest -q tests/test_vllm_grpo.py    # rollouts: vllm
"""

from __future__ import annotations

import contextlib

import torch

from sharpen.errors import UsageError
from sharpen.sampling import derive_seed, sample

ROLLOUT_KINDS = ("sharpen", "trl", "vllm")
# The faster kind in benchmarks/bench_grpo.py (SmolLM2-135M, LoRA, 16 x 64 tokens on CPU: generation
# ~1.25x faster, a whole step ~1.05-1.1x); "trl" is TRL's own model.generate. "vllm" (sharpen.rl.vllm_rollouts)
# needs the optional vLLM, so it cannot be the default.
DEFAULT_ROLLOUTS = "sharpen"


def check_rollouts(rollouts: str, args: dict | None = None, *, fsdp: bool = False) -> None:
    """Refuse an unknown rollout kind, or settings that `sharpen.sample` cannot honour; one-line UsageError.

    `args` holds GRPOConfig fields (missing ones take TRL's defaults); `fsdp`: the run is (to be)
    sharded by FSDP, whether through GRPOConfig's `fsdp` or an accelerate config.

    >>> check_rollouts("sharpen", {"temperature": 0.7, "top_k": 0, "top_p": 1.0})
    >>> check_rollouts("hf")
    Traceback (most recent call last):
    ...
    sharpen.errors.UsageError: rollouts must be one of sharpen, trl, vllm, got 'hf'
    >>> check_rollouts("sharpen", fsdp=True)
    Traceback (most recent call last):
    ...
    sharpen.errors.UsageError: rollouts: sharpen does not run under FSDP (each process decodes a different number \
of steps): use rollouts: trl
    """
    if rollouts not in ROLLOUT_KINDS:
        raise UsageError(f"rollouts must be one of {', '.join(ROLLOUT_KINDS)}, got {rollouts!r}")
    args = args or {}
    if rollouts == "vllm":
        from .vllm_rollouts import check_vllm_rollouts  # that module imports this one

        check_vllm_rollouts(args, fsdp=fsdp)
        return
    if rollouts != "sharpen":
        return
    if fsdp or args.get("fsdp"):
        # sample() runs a different number of forward passes on each process (rows leave early),
        # which FSDP's per-forward all-gathers cannot follow.
        raise UsageError("rollouts: sharpen does not run under FSDP (each process decodes a different number of "
                         "steps): use rollouts: trl")
    unsupported = [name for name in ("use_vllm",) if args.get(name)] + unsupported_generation(args)
    if args.get("ds3_gather_for_generation") is False:
        unsupported.append("ds3_gather_for_generation false")
    if unsupported:
        raise UsageError(f"rollouts: sharpen (sampling.sample) does not support {', '.join(unsupported)}: "
                         f"unset it or use rollouts: trl")


def unsupported_generation(args: dict) -> list[str]:
    """GRPOConfig generation backends and settings that sharpen's sampler (either engine) has no counterpart for.

    >>> unsupported_generation({"min_p": 0.1, "repetition_penalty": 1.0, "generation_kwargs": {}})
    ['min_p (0.1)']
    """
    unsupported = [name for name in ("use_transformers_continuous_batching", "use_transformers_paged")
                   if args.get(name)]
    if args.get("min_p") is not None:
        unsupported.append(f"min_p ({args['min_p']})")
    if float(args.get("repetition_penalty") or 1.0) != 1.0:
        unsupported.append(f"repetition_penalty ({args['repetition_penalty']})")
    if args.get("generation_kwargs"):
        unsupported.append("generation_kwargs")
    return unsupported


def sampling_settings(args) -> dict:
    """temperature, top_k, top_p and max_new_tokens for `sharpen.sample` from a GRPOConfig (TRL's "off" -> None).

    >>> from types import SimpleNamespace
    >>> sampling_settings(SimpleNamespace(temperature=0.7, top_k=0, top_p=1.0, max_completion_length=64))
    {'temperature': 0.7, 'top_k': None, 'top_p': None, 'max_new_tokens': 64}
    >>> sampling_settings(SimpleNamespace(temperature=1.0, top_k=5, top_p=0.9, max_completion_length=8))
    {'temperature': 1.0, 'top_k': 5, 'top_p': 0.9, 'max_new_tokens': 8}
    """
    top_k = getattr(args, "top_k", None)
    top_p = getattr(args, "top_p", None)
    return {"temperature": float(args.temperature),
            "top_k": int(top_k) if top_k else None,  # 0 / None: off
            "top_p": float(top_p) if top_p is not None and float(top_p) < 1.0 else None,  # 1.0 / None: off
            "max_new_tokens": int(args.max_completion_length)}


def rollout_seeds(trainer, count: int) -> list[int]:
    """Per-completion seeds of this generation round: derive_seed(args.seed, global_step, process_index, index)."""
    step, rank = int(trainer.state.global_step), int(trainer.accelerator.process_index)
    return [derive_seed(int(trainer.args.seed), step, rank, i) for i in range(count)]


@contextlib.contextmanager
def current_policy(trainer):
    """The trainer's model as it is now, ready to sample: unwrapped (DDP, ZeRO-3 gathered), the peft base model with
    its LoRA layers active, every module in eval mode, and the trainer's EOS ids; all restored on exit."""
    from trl.models.utils import unwrap_model_for_generation  # trl: imported where used (start-up time)

    dist = getattr(trainer, "_dist", None)
    with (
        unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                    gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                    gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs) as model,
        dist.summon_full_params(trainer.model_wrapped, recurse=False) if dist else contextlib.nullcontext(),
    ):
        # peft injects LoRA layers into its base model in place, so the base model *is* the adapted
        # policy; sampling calls it directly because PeftModel.forward hides the cache argument's name.
        policy = model.get_base_model() if hasattr(model, "get_base_model") else model
        modes = [(module, module.training) for module in model.modules()]
        generation_config = getattr(policy, "generation_config", None)
        eos_before = getattr(generation_config, "eos_token_id", None)
        model.eval()
        if generation_config is not None:
            generation_config.eos_token_id = list(trainer.eos_token_ids)  # TRL's: tokenizer's + the model's
        try:
            yield policy
        finally:
            if generation_config is not None:
                generation_config.eos_token_id = eos_before
            for module, training in modes:
                module.training = training


def sample_policy(trainer, prompt_ids: list[list[int]], seeds: list[int]):
    """One completion of each prompt from the trainer's current policy with its GRPOConfig settings: SampleResults."""
    settings = sampling_settings(trainer.args)
    with current_policy(trainer) as policy, torch.no_grad():
        return sample(policy, [list(map(int, ids)) for ids in prompt_ids], seeds=seeds,
                      batch_size=max(1, len(prompt_ids)), **settings)


def sharpen_rollouts(prompts: list, trainer) -> dict:
    """TRL's rollout_func: one completion per entry of this process's prompt slice, from `sharpen.sample`.

    Returns prompt_ids (as TRL tokenizes them), completion_ids (ending with EOS unless cut at
    max_completion_length) and logprobs (see the module docstring).
    """
    from trl.extras.profiling import profiling_context

    prompt_ids = trainer._tokenize_prompts(prompts)[0]  # TRL's own tokenization for its generation path
    with profiling_context(trainer, "sharpen.sample"):
        results = sample_policy(trainer, prompt_ids, rollout_seeds(trainer, len(prompt_ids)))
    settings = sampling_settings(trainer.args)
    exact = settings["temperature"] == 1.0 and settings["top_k"] is None and settings["top_p"] is None
    return {"prompt_ids": [list(map(int, ids)) for ids in prompt_ids],
            "completion_ids": [r.token_ids for r in results],
            "logprobs": [r.logprobs for r in results] if exact else None}
