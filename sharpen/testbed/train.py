"""Build the testbed model: a word-level tokenizer and a tiny Llama trained from scratch on the corpus.

    from sharpen.testbed import build_testbed
    path = build_testbed()          # ~/.cache/sharpen/testbed-0-v2, trained once, then reused
    model, tok = sampling.load_model(str(path))

or `sharpen testbed [--output-dir D] [--seed S]`. Training runs on the CPU with one thread
(bit-for-bit the same model for the same seed and library versions) and takes one to two
minutes (132 s on a core shared with other jobs).

The checkpoint directory is standard (AutoModelForCausalLM / AutoTokenizer load it). It is
written into a temporary sibling and renamed into place, and `testbed.json` (the seed, the
training config and a sha256 of every file) is written last: a directory without it, or whose
files do not match it, is not a testbed and is rebuilt, never used. A file lock makes a
second process wait for a build in progress instead of training the same model again
(`.<name>.lock` beside the directory).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sharpen.errors import UsageError
from sharpen.sampling.models import cache_dir
from sharpen.tasks import testbed_corpus as corpus

VERSION = 2  # bump whenever the process, the tokenizer, the model or the training changes
MARKER = "testbed.json"


@dataclass(frozen=True)
class TrainConfig:
    """The model and how it is trained; the defaults are the testbed."""

    steps: int = 600  # warmup, constant rate, then `decay_steps` of cosine decay to zero
    batch_size: int = 256
    learning_rate: float = 5e-3
    warmup_steps: int = 50
    decay_steps: int = 240
    # Learning the running total is a sudden transition whose timing varies with the seed. If the
    # loss is still above the corpus entropy + `converged_margin` when the decay should start, the
    # constant phase goes on `extend_steps` at a time, at most `max_extra_steps` in all.
    converged_margin: float = 0.03
    extend_steps: int = 100
    max_extra_steps: int = 600
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_position_embeddings: int = 512

    def __post_init__(self):
        if self.warmup_steps < 1 or self.decay_steps < 1 or self.steps < self.warmup_steps + self.decay_steps:
            raise ValueError(f"training needs 1 <= warmup_steps, 1 <= decay_steps and warmup_steps + decay_steps "
                             f"<= steps, got {self.warmup_steps}, {self.decay_steps}, {self.steps}")


def default_dir(seed: int = 0) -> Path:
    return cache_dir() / f"testbed-{seed}-v{VERSION}"


def build_tokenizer():
    """A word-level PreTrainedTokenizerFast over `corpus.VOCAB` (split on whitespace, EOS = <eos>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=dict(corpus.TOKEN_ID), unk_token=corpus.UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: decoding joins words with spaces, which gives back the corpus text.
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=corpus.EOS, pad_token=corpus.PAD,
                                   unk_token=corpus.UNK, padding_side="left",
                                   model_max_length=TrainConfig.max_position_embeddings)


def build_model(config: TrainConfig):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos, pad = corpus.TOKEN_ID[corpus.EOS], corpus.TOKEN_ID[corpus.PAD]
    model_config = LlamaConfig(
        vocab_size=len(corpus.VOCAB), hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings, tie_word_embeddings=True,
        eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    model = LlamaForCausalLM(model_config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    return model


@contextmanager
def _one_thread_and_seed(seed: int):
    """Train with one thread and a private RNG: results must not depend on the caller's settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def train(seed: int = 0, config: TrainConfig = TrainConfig(), progress: bool = True):
    """Train the testbed model on the corpus of `seed`; return (model, stats)."""
    from tqdm import tqdm

    started = time.time()
    floor = corpus.loss_floor()
    with _one_thread_and_seed(seed):
        model = build_model(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.98),
                                      weight_decay=0.0)
        batches = corpus.corpus_batches(seed, config.batch_size)
        losses: list[float] = []
        decay_start, extra = config.steps - config.decay_steps, 0
        bar = tqdm(total=config.steps, desc="testbed: training", unit="step", disable=not progress,
                   file=sys.stderr)
        step = 0
        while step < decay_start + extra + config.decay_steps:
            recent = losses[-50:]
            if step == decay_start + extra and extra < config.max_extra_steps and recent \
                    and sum(recent) / len(recent) > floor + config.converged_margin:
                extra += config.extend_steps  # not learned yet: keep the rate up a while longer
                bar.total += config.extend_steps
            if step < config.warmup_steps:
                factor = (step + 1) / config.warmup_steps
            else:
                done = (step - decay_start - extra) / max(1, config.decay_steps)
                factor = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, done))))
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * factor
            ids, mask = next(batches)
            input_ids = torch.from_numpy(ids)
            labels = input_ids.masked_fill(~torch.from_numpy(mask), -100)  # loss on completions only
            loss = model(input_ids=input_ids, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{sum(losses[-25:]) / 25:.3f}", floor=f"{floor:.3f}", refresh=False)
        bar.close()
    tail = losses[-min(50, len(losses)):]
    stats = {"wall_seconds": round(time.time() - started, 1), "steps": step, "extra_steps": extra,
             "final_loss": sum(tail) / len(tail), "loss_floor": floor,
             "documents": step * config.batch_size}
    return model.eval(), stats


# ----- the cached checkpoint -------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marker_problem(path: Path, seed: int, config: TrainConfig) -> str | None:
    """Why `path` is not the complete testbed for (seed, config), or None when it is."""
    marker = path / MARKER
    if not marker.is_file():
        return f"no {MARKER}"
    try:
        info = json.loads(marker.read_text())
        files = dict(info["files"])
    except (ValueError, KeyError, TypeError):
        return f"{MARKER} is unreadable"
    if (info.get("version"), info.get("seed"), info.get("train_config")) != (VERSION, seed, asdict(config)):
        return "built with another version, seed or training config"
    for name, digest in files.items():
        file = path / name
        if not file.is_file() or _sha256(file) != digest:
            return f"{name} is missing or damaged"
    return None


def is_testbed(path: Path) -> bool:
    """True when `path` holds a testbed marker (complete or not): ours to replace."""
    return (path / MARKER).is_file()


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


@contextmanager
def _build_lock(target: Path):
    """An exclusive lock on `.<name>.lock` beside the target, held while checking and building."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): builds are still atomic, only not deduplicated
        yield
        return
    try:
        handle = open(target.parent / f".{target.name}.lock", "w")
    except OSError as err:  # also the real test of writability (os.access says yes to root, even on /proc)
        raise UsageError(f"cannot write the testbed to '{target}': {err.strerror}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the OS if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_testbed(output_dir: str | os.PathLike | None = None, seed: int = 0, progress: bool = True,
                  config: TrainConfig = TrainConfig()) -> Path:
    """Return the testbed checkpoint directory for `seed`, training it first unless a complete one exists.

    `output_dir` defaults to `<cache>/testbed-<seed>-v<VERSION>`. An existing directory is
    reused when complete, rebuilt when it is an incomplete or damaged testbed (or empty), and
    refused (UsageError) when it holds anything else.
    """
    seed = check_seed(seed)
    target = Path(output_dir).expanduser() if output_dir is not None else default_dir(seed)
    if target.exists() and not target.is_dir():
        raise UsageError(f"output directory '{target}' is a file: give a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output directory '{target.parent}': {err.strerror}") from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write the testbed to '{target}': '{target.parent}' is not writable")

    with _build_lock(target):
        problem = _marker_problem(target, seed, config) if target.exists() else "missing"
        if problem is None:
            return target
        ours = output_dir is None or is_testbed(target)
        if target.exists() and not ours and any(target.iterdir()):
            raise UsageError(f"output directory '{target}' is not empty and holds no testbed: "
                             f"give a new or empty directory")
        if target.exists() and progress:
            print(f"testbed: rebuilding {target} ({problem})", file=sys.stderr)
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by killed builds; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        try:
            tmp.mkdir()
            _write_checkpoint(tmp, seed, config, progress)
            _swap_into_place(tmp, target)
        except OSError as err:
            raise UsageError(f"cannot write the testbed to '{target}': {err.strerror or err}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_checkpoint(path: Path, seed: int, config: TrainConfig, progress: bool) -> None:
    model, stats = train(seed, config, progress)
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    files = {p.name: _sha256(p) for p in sorted(path.iterdir()) if p.is_file()}
    info = {"version": VERSION, "seed": seed, "train_config": asdict(config), "train": stats,
            "process": {"num_terms": corpus.NUM_TERMS, "slip": corpus.SLIP, "guess": corpus.GUESS,
                        "double": corpus.DOUBLE, "kinds": list(corpus.KINDS)},
            "torch": torch.__version__, "files": files}
    (path / MARKER).write_text(json.dumps(info, indent=2))  # last: the directory is complete from here
    if progress:
        print(f"testbed: trained in {stats['wall_seconds']:.0f} s, final loss {stats['final_loss']:.3f}",
              file=sys.stderr)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; an old `target` is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.tmp-{os.getpid()}-old"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_info(path: str | os.PathLike) -> dict:
    """The testbed.json of a built testbed (seed, training config and stats, file hashes)."""
    return json.loads((Path(path) / MARKER).read_text())
