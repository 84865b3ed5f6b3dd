"""GRPO rollouts on the vLLM engine (`rollouts: vllm`): sharpen's sampler on a float32 VllmModel, kept equal to
the trainer's current policy, through TRL's rollout_func hook.

    make install-vllm                       # .venv-vllm: the project plus vLLM's CPU build
    .venv-vllm/bin/sharpen grpo --model smollm2-135m --task basic_arithmetic --chat --lora \\
        --rollouts vllm --max_steps 20 --output-dir runs/grpo-vllm

    from sharpen.rl import grpo_train
    cost = grpo_train(path, tokenizer, dataset, reward, {"output_dir": "runs/x"}, rollouts="vllm")
    # one engine for several runs of the same base checkpoint (each run's first round loads its policy):
    hook = VllmRollouts(VllmModel(path))
    grpo_train(path, ..., rollouts="vllm", rollout_func=hook); hook.close()

What a generation round does:
  1. sync: when trainer.state.global_step differs from the step last loaded (TRL calls
     `sync_weights` itself, see below, and the hook checks again), the policy's weights go into the
     engine in place (its worker's `reload_weights` with a state dict, which runs vLLM's own
     checkpoint loader: HF checkpoint names, q/k/v and gate/up stacked by vLLM), and the prefix cache
     is reset (its blocks hold keys and values of the old weights). A peft policy is merged on the
     side, W + scaling * B A per LoRA layer with peft's own get_delta_weight, under the base names
     (peft's `base_model.model.`, `.base_layer`, `lora_*` and modules_to_save wrappers removed): the
     trained model is only read, never merged and unmerged in place, which would leave rounding in
     its weights. The first round of a run always loads, so an engine shared between runs (tests,
     notebooks) or a resumed run starts from the right weights.
  2. sample: TRL's own prompt tokenization, then one request per completion through
     `sampling.generate.decode_vllm` (what `sharpen.sample` runs on a VllmModel): per-completion seeds
     derive_seed(args.seed, global_step, process, index), EOS the trainer's ids, GRPOConfig's
     temperature and max_completion_length.
  3. logprobs: log q of each sampled token under what the trainer computes, log_softmax(logits / T),
     in float32: the engine's raw log p at T = 1, or, at another temperature, (logit / T) - logsumexp(
     logits / T) from the normaliser processor of vllm_engine.py (no extra forward pass).

Why the engine runs in float32: TRL's own colocated vLLM (use_vllm) passes no dtype, so it samples in
bf16 against a float32 trainer, and its first weight sync fails on this vLLM ('Parameter' object has
no attribute 'weight_loader'). In float32 engine and trainer agree: on SmolLM2-135M with LoRA (r 16,
all-linear, 3 steps after a warm-up one), TRL's logged sampling/sampling_logp_difference between the engine's
log-probs and its own forward pass over the same completions was 9.1e-6 nats a token on average and
1.8e-4 at most; on the tiny test model below 1e-6 (tests/test_vllm_grpo.py checks < 1e-4).

What is corrected, and how: TRL 1.16 applies its importance-sampling correction only where
`trainer.use_vllm` and `vllm_importance_sampling_correction` are both true, reading both at run time;
with a rollout_func alone it uses the returned logprobs for nothing but off_policy_mask_threshold.
GRPOConfig(use_vllm=True) would start TRL's own second engine, so `attach` sets `use_vllm` on the
trainer instead, with this hook as its `vllm_generation` (TRL then calls its `sync_weights` before
each round that follows a step; the hook's own call is then a no-op). With the correction on (TRL's
default) TRL runs one more forward pass of the trainer's model over each round (float32 here,
logits / T) and weights each completion's loss by exp(sum over its tokens of log pi_train - log q_engine),
masking completions whose ratio leaves [vllm_importance_sampling_clip_min,
vllm_importance_sampling_clip_max] (default sequence_mask, at most 3). What it corrects is the
numerical gap between engine and trainer, all in float32: the ~1e-5 above, so the ratio is 1 within
~1e-3, at ~2 s a step on SmolLM2 (30.5 against 28.3 s/step in separate runs on the shared machine,
~+7%). TRL computes its side in training mode, so with dropout (LoRA's default 0.05) the ratio would
carry dropout noise instead (measured on the tiny model: 0.11-0.13 nats a token, ratios 0.29-1.7):
`attach` leaves the correction off then, with a note on stderr; set lora_dropout 0 to have it. top_k /
top_p are refused while it is on: the engine reports log q of the untruncated tempered law, not of the
truncated one it sampled from.

Refused with a one-line UsageError before any engine is made: vLLM not installed, more than one
process (an accelerate config's included, before the relaunch), FSDP, DeepSpeed, TRL's own
use_vllm, quantized models, LoRA variants (DoRA, ...), and the generation settings the sampler has
no counterpart for (min_p, repetition_penalty, generation_kwargs). `--reward self_likelihood` needs
rollouts sharpen (settings.py), as its hook extends sharpen_rollouts.

The engine's KV cache on a CPU is set to a size while it is made (cpu_kv_cache_space): vLLM's CPU
worker would give it its memory share minus the whole process's resident memory, which a training
process has already used up.

Measured (`OMP_NUM_THREADS=1 .venv-vllm/bin/python -m benchmarks.bench_grpo --kinds sharpen,vllm`:
SmolLM2-135M, LoRA r 16 all-linear, 2 prompts x 8 completions of <= 64 tokens, T = 1, 1 thread, on
2 cores shared with other jobs, load ~3-4): 33.2 s/step with rollouts sharpen, 28.3 with vllm, 1.17x
(medians 1.22x; the 1.5x target is missed). Generation is 2.07x faster (12.9 -> 6.2 s a step, the
weight sync's 0.58 s included), but the trainer's forward and backward pass (~20 s) is the same for
both and dominates the step. The engine starts in ~3-4 s once per run.

    .venv-vllm/bin/python -m pytest -q tests/test_vllm_grpo.py
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time

import torch
from transformers import AutoConfig, GenerationConfig

from sharpen.errors import UsageError
from sharpen.sampling.generate import check_budget, decode_vllm, token_budgets
from sharpen.sampling.vllm_engine import INSTALL_HINT, VllmModel, vllm_installed  # vLLM itself only when made

from .launch import check_accelerate_config
from .rollouts import rollout_seeds, sampling_settings, unsupported_generation


def check_vllm_rollouts(args: dict | None = None, *, fsdp: bool = False) -> None:
    """Refuse settings rollouts: vllm cannot honour (GRPOConfig fields, missing ones at TRL's defaults); one line."""
    if not vllm_installed():
        raise UsageError(f"rollouts: vllm needs the optional package vLLM, which is not installed here: {INSTALL_HINT}")
    args = args or {}
    if fsdp or args.get("fsdp"):
        raise UsageError("rollouts: vllm runs one engine beside one unsharded model: it does not run under FSDP; "
                         "use rollouts: trl")
    if args.get("deepspeed"):
        raise UsageError("rollouts: vllm runs one engine beside one unsharded model: it does not run under DeepSpeed; "
                         "use rollouts: trl")
    if args.get("use_vllm"):
        raise UsageError("rollouts: vllm is sharpen's own engine: unset use_vllm (which starts TRL's)")
    unsupported = unsupported_generation(args)
    if unsupported:
        raise UsageError(f"rollouts: vllm does not support {', '.join(unsupported)}: unset it or use rollouts: trl")
    if args.get("vllm_importance_sampling_correction", True):
        truncated = ([f"top_k ({args['top_k']})"] if args.get("top_k") else []) + (
            [f"top_p ({args['top_p']})"] if args.get("top_p") is not None and float(args["top_p"]) < 1.0 else [])
        if truncated:
            raise UsageError(f"rollouts: vllm reports log q of the untruncated tempered law, which TRL's importance "
                             f"ratio would misread with {', '.join(truncated)}: set "
                             f"vllm_importance_sampling_correction false, or unset it")
        mode = args.get("vllm_importance_sampling_mode", "sequence_mask")
        if args.get("loss_type") == "vespo" and mode not in ("token_truncate", "token_mask"):
            raise UsageError(f"loss_type vespo with rollouts: vllm needs vllm_importance_sampling_mode token_truncate "
                             f"or token_mask, got {mode}")


def check_vllm_launch(accelerate_config: str) -> None:
    """Refuse an accelerate config that starts more than one process, FSDP or DeepSpeed; one-line UsageError."""
    from accelerate.utils import DistributedType  # accelerate: imported where used (start-up time)

    config = check_accelerate_config(accelerate_config)
    processes = max(1, int(config.num_processes or 1))
    if processes > 1 or config.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise UsageError(f"rollouts: vllm runs in one process (one engine beside one unsharded model): accelerate "
                         f"config '{accelerate_config}' starts {processes} process(es) with "
                         f"{config.distributed_type.value}; use rollouts: sharpen or trl")


def check_trainer(trainer) -> None:
    """What only the built trainer knows: processes, sharding, quantization, LoRA variants; one-line UsageError."""
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:
        raise UsageError(f"rollouts: vllm runs in one process, this run has {accelerator.num_processes}: "
                         f"use rollouts: sharpen or trl")
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        raise UsageError("rollouts: vllm does not run under FSDP or DeepSpeed: use rollouts: sharpen or trl")
    model = accelerator.unwrap_model(trainer.model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_quantized", False) or getattr(base, "hf_quantizer", None) is not None:
        raise UsageError("rollouts: vllm loads the policy into a float32 engine: quantized models are not supported")
    for module in base.modules():
        if getattr(module, "lora_variant", None):  # DoRA and the other variants merge by their own rules
            raise UsageError(f"rollouts: vllm merges plain LoRA (W + scaling * B A) only, not "
                             f"{', '.join(sorted({type(v).__name__ for v in module.lora_variant.values()}))}")


def active_dropout(model) -> str | None:
    """What makes the model's training-mode forward random: dropout modules with p > 0 (LoRA's included) or a
    config's attention / hidden dropout; None when there is none.

    >>> from torch import nn
    >>> active_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0))), active_dropout(nn.Sequential(nn.Dropout(0.1)))
    (None, 'dropout 0.1')
    """
    rates = sorted({module.p for module in model.modules() if isinstance(module, torch.nn.Dropout) and module.p > 0})
    names = [f"dropout {', '.join(map(str, rates))}"] if rates else []
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop", "embd_pdrop"):
        value = getattr(config, key, None)
        if isinstance(value, (int, float)) and value > 0:
            names.append(f"{key} {value}")
    return "; ".join(names) or None


@torch.no_grad()
def policy_weights(model) -> dict[str, torch.Tensor]:
    """The policy's weights as a float32 checkpoint state dict (HF names), a peft adapter merged on the side.

    `model` is the trainer's unwrapped model: a transformers model, or a peft model whose LoRA layers
    are merged as W + scaling * B A (bias + scaling * B.bias with lora_bias) for the active, unmerged
    adapters, and whose modules_to_save copies replace their modules; the model itself is not changed.
    """
    from peft.tuners.lora import LoraLayer  # peft comes with trl; imported where used (start-up time)
    from peft.utils.other import ModulesToSaveWrapper  # (as above)

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    merged = {}  # state-dict key of a LoRA layer's base weight / bias -> merged tensor
    wrappers = {}  # path of a modules_to_save wrapper -> the adapter whose trained copy is in use (None: original)
    for path, module in base.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            in_use = not module.disable_adapters and module.active_adapters
            wrappers[path] = module.active_adapters[0] if in_use else None
        if not isinstance(module, LoraLayer) or module.disable_adapters:
            continue
        layer = module.get_base_layer()
        weight, bias = layer.weight.detach(), getattr(layer, "bias", None)
        for adapter in module.active_adapters:
            if adapter in module.merged_adapters:  # already inside the base weight
                continue
            if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
                if getattr(module, "lora_bias", {}).get(adapter):
                    bias = bias + module.lora_B[adapter].bias * module.scaling[adapter]
        merged[f"{path}.base_layer.weight"] = weight
        if bias is not None:
            merged[f"{path}.base_layer.bias"] = bias.detach()
    weights = {}
    for key, tensor in base.state_dict().items():
        parts = key.split(".")
        if any(part.startswith("lora_") for part in parts):
            continue  # adapter factors: merged above
        for at, part in enumerate(parts):
            if part in ("modules_to_save", "original_module") and ".".join(parts[:at]) in wrappers:
                in_use = wrappers[".".join(parts[:at])]
                if part == "original_module":  # the frozen module: in use only while the adapter is off
                    parts = None if in_use is not None else parts[:at] + parts[at + 1:]
                else:  # modules_to_save.<adapter>: the trained copy of each adapter
                    parts = None if parts[at + 1] != in_use else parts[:at] + parts[at + 2:]
                break
        if parts is not None:
            name = ".".join(part for part in parts if part != "base_layer")
            weights[name] = merged.get(key, tensor).detach().float()
    return weights


class VllmRollouts:
    """TRL's rollout_func on a float32 VllmModel that follows the trainer's policy (module docstring).

    `engine`: a VllmModel, or a checkpoint path / Hub id to make one from when `attach` is called
    (and to close with `close`). Timings of each round are kept in `rounds` for benchmarks:
    dicts of step, sync_seconds (0 when nothing was loaded) and generate_seconds; `start_seconds` is the
    time it took to make the engine (0 when given one).
    """

    def __init__(self, engine):
        self.path = None if isinstance(engine, VllmModel) else str(engine)
        self.engine = engine if isinstance(engine, VllmModel) else None
        self.trainer = None
        self.loaded_step: int | None = None
        self.rounds: list[dict] = []
        self.corrected = False  # whether TRL's importance-sampling correction runs on these rollouts (attach)
        self.start_seconds = 0.0  # making the engine, when this object made it
        self._pending_sync = 0.0

    def attach(self, trainer) -> None:
        """Check the trainer, make the engine if needed, and make TRL apply its vLLM correction to these rollouts.

        TRL reads `use_vllm` at run time: set here (not in GRPOConfig, which would start TRL's own
        engine), with this object as `vllm_generation`, TRL calls `sync_weights` before each
        generation round that follows an optimizer step and weights the loss by its importance ratio.
        """
        check_trainer(trainer)
        if self.engine is None:
            started = time.perf_counter()
            with cpu_kv_cache_space(self.path):
                self.engine = VllmModel(self.path)
            self.start_seconds = time.perf_counter() - started
        try:
            check_budget(self.engine, int(trainer.args.max_completion_length))
        except ValueError as err:
            raise UsageError(f"rollouts: vllm: {err}") from None
        self.trainer, self.loaded_step = trainer, None
        trainer.rollout_func = self
        self.corrected = bool(trainer.args.vllm_importance_sampling_correction)
        dropout = active_dropout(trainer.accelerator.unwrap_model(trainer.model))
        if self.corrected and dropout:
            # TRL computes the trainer's log-probs for the ratio in training mode: with dropout the ratio would
            # weight the loss by dropout noise (~0.1 nats a token measured with LoRA dropout 0.05), not by the
            # engine's gap (~1e-6 in float32).
            self.corrected = False
            if trainer.accelerator.is_main_process:
                print(f"grpo: rollouts vllm: TRL's importance-sampling correction is off because the policy has "
                      f"dropout ({dropout}) in training mode; set it to 0 to have the correction", file=sys.stderr)
        if self.corrected:
            trainer.use_vllm = True
            trainer.vllm_generation = self
            trainer._last_loaded_step = -1  # TRL's own tag: its first round calls sync_weights too

    def close(self) -> None:
        """Stop the engine if this object made it (vLLM sizes the next engine's cache from the memory left)."""
        if self.path is not None and self.engine is not None:
            self.engine.close()
            self.engine = None

    def sync_weights(self) -> None:
        """Load the trainer's current policy into the engine unless this step's is already there."""
        step = int(self.trainer.state.global_step)
        if step == self.loaded_step:
            return
        started = time.perf_counter()
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        weights = policy_weights(model)
        # In place, by vLLM's checkpoint loader (HF names; it stacks q/k/v and gate/up itself). The engine core
        # runs in this process (vllm_engine.py), so the tensors are handed over, not serialised.
        self.engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})
        self.engine.llm.reset_prefix_cache()  # cached prompt blocks hold the old weights' keys and values
        self.loaded_step = step
        self._pending_sync += time.perf_counter() - started

    def __call__(self, prompts: list, trainer) -> dict:
        """One completion per entry of this round's prompts (TRL repeats each num_generations times)."""
        from trl.extras.profiling import profiling_context  # trl: imported where used (start-up time)

        if trainer is not self.trainer:
            raise RuntimeError("VllmRollouts serves the trainer it was attached to: call attach(trainer) first")
        self.sync_weights()  # a no-op when TRL has already called it for this step (correction on)
        prompt_ids = [list(map(int, ids)) for ids in trainer._tokenize_prompts(prompts)[0]]
        settings = sampling_settings(trainer.args)
        temperature = settings["temperature"]
        budgets = token_budgets(prompt_ids, list(range(len(prompt_ids))), settings["max_new_tokens"],
                                self.engine.max_model_len)
        started = time.perf_counter()
        with profiling_context(trainer, "vllm.generate"), trainer_eos(self.engine, trainer.eos_token_ids):
            done = decode_vllm(self.engine, prompt_ids, budgets, rollout_seeds(trainer, len(prompt_ids)),
                               temperature=temperature, top_k=settings["top_k"], top_p=settings["top_p"],
                               score_temperatures=None if temperature == 1.0 else [temperature])
        self.rounds.append({"step": int(trainer.state.global_step), "sync_seconds": self._pending_sync,
                            "generate_seconds": time.perf_counter() - started})
        self._pending_sync = 0.0
        if settings["top_k"] is not None or settings["top_p"] is not None:
            logprobs = None  # the truncated law's log q is not reported (only allowed with the correction off)
        elif temperature == 1.0:
            logprobs = [result.logprobs for result, _ in done]
        else:
            logprobs = [[row[0] for row in completion.log_q] for _, completion in done]
        return {"prompt_ids": prompt_ids, "completion_ids": [result.token_ids for result, _ in done],
                "logprobs": logprobs}


@contextlib.contextmanager
def cpu_kv_cache_space(path: str):
    """vLLM's CPU KV cache set to a size (VLLM_CPU_KVCACHE_SPACE, GiB) while the engine is made, unless the user set it.

    Left alone, vLLM's CPU worker gives the cache its memory share (VllmModel's memory_fraction of the
    machine) minus this whole process's resident memory, which in a training process (the trainer's
    model, optimizer and allocator) leaves nothing: measured, -2.9 GiB after one SmolLM2 GRPO run in
    the same process. Two full-length sequences in float32, at least 1 GiB (SmolLM2-135M: 46 KB a
    token, 8192 tokens, 1 GiB), holds a GRPO round; vLLM queues what does not fit at once. GPUs size
    their cache otherwise and ignore the variable.
    """
    key = "VLLM_CPU_KVCACHE_SPACE"
    if os.environ.get(key):
        yield
        return
    config = AutoConfig.from_pretrained(path)
    config = getattr(config, "text_config", None) or config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    per_token = 2 * int(config.num_hidden_layers) * int(getattr(config, "num_key_value_heads", None) or heads) \
        * head_dim * 4  # keys and values, float32
    length = int(getattr(config, "max_position_embeddings", 0) or 8192)
    os.environ[key] = str(max(1, math.ceil(2 * per_token * length / 2**30)))
    try:
        yield
    finally:
        del os.environ[key]


@contextlib.contextmanager
def trainer_eos(engine, eos_ids):
    """The engine stops at the trainer's EOS ids (tokenizer's and model's, as TRL's) while the context is open."""
    before = engine.generation_config
    config = copy.deepcopy(before) if before is not None else GenerationConfig()
    config.eos_token_id = [int(i) for i in eos_ids]
    engine.generation_config = config
    try:
        yield
    finally:
        engine.generation_config = before

