"""Score completions under the base model (log-likelihood, confidence, self-certainty) and store them.

    from sharpen.sampling import load_model
    model, tok = load_model("smollm2-135m")
    scores = score_completions(model, prompt_ids, completion_ids, batch_tokens=4096)
    scores[0]  # {"logprob_sum", "logprob_mean", "confidence", "self_certainty", "num_tokens"}

    info = score_run(run, "smollm2-135m")   # every record of a loaded run, into RUN_DIR/scores/<name>.jsonl

`sharpen analyze RUN_DIR` runs score_run before anything else (--no-score skips it, --rescore
starts the scores afresh).

score_run writes one line per (problem_id, sample_idx) to RUN_DIR/scores/<name>.jsonl,
appended and fsynced as each batch is scored (sharpen.runs.records), tagged with the scoring
model (its spec, local paths made absolute, and sharpen.runs.provenance.model_revision) and a
digest of the prompt and completion it scored. A killed scoring resumes where it stopped;
under `accelerate launch` every process scores a share into its own part file, merged by
the main process. A scores file made by another model, or for completions that changed,
is started afresh (scores are derived data; samples/*.jsonl are never touched).

One forward pass over prompt + completion per record, batched with left padding and
sorted by length so that little is padding. With p_t the base model's next-token
distribution (temperature 1) at completion position t, V its vocabulary and T the
completion length:

    logprob_sum    = sum_t log p_t(x_t)            logprob_mean = logprob_sum / T
    confidence     = 1/T sum_t sum_v p_t(v) log p_t(v)             (negative entropy; Karan & Du, Eq. 13)
    self_certainty = 1/T sum_t KL(U || p_t) = 1/T sum_t [-log V - 1/V sum_v log p_t(v)]   (Kang et al. 2025)

Both confidence measures grow as the base model grows surer of each next token.
Whoever sampled the completion (the base model, power-MH, a GRPO policy), it is
scored under the model passed here, which the caller makes the *base* model.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from tqdm import tqdm

from sharpen.errors import UsageError
from sharpen.runs.files import resolve_local
from sharpen.runs.processes import Shard
from sharpen.runs.provenance import model_revision
from sharpen.runs.records import ShardedRecords, merge_parts, record_key
from sharpen.sampling import load_model
from sharpen.sampling.generate import left_pad

from .runs import Run, attach_scores, record_digest, scores_path, stale_scores


def _forward_logits(model, ids, mask, positions, keep: int):
    """Logits of the last `keep` positions, (B, keep, V)."""
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                    logits_to_keep=keep)
    except TypeError:  # a model class without logits_to_keep: compute all, keep the tail
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    return out.logits[:, -keep:, :]


def _batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group indices, longest first, so that rows x longest row <= batch_tokens (one row at least)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[current[0]] > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _vocab_size(model) -> int:
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.vocab_size


def _check_ids(prompts: list[list[int]], completions: list[list[int]], vocab: int) -> None:
    """ValueError naming the first record whose prompt is empty or whose ids fall outside the vocabulary."""
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        if not prompt:
            raise ValueError(f"record {i + 1} has an empty prompt: the first completion token needs a context")
        bad = [t for t in list(prompt) + list(completion) if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"record {i + 1} has token id {bad[0]} outside the base model's vocabulary "
                             f"(0..{vocab - 1}): was it sampled with another tokenizer?")


def _targets(completions: list[list[int]], keep: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, keep) completion ids and the mask of real ones: left padding aligns the ends, so row b's
    completion targets are its last T_b positions."""
    targets = torch.zeros((len(completions), keep), dtype=torch.long, device=device)
    valid = torch.zeros((len(completions), keep), dtype=torch.bool, device=device)
    for b, completion in enumerate(completions):
        targets[b, keep - len(completion):] = torch.tensor(completion, dtype=torch.long, device=device)
        valid[b, keep - len(completion):] = True
    return targets, valid


def _score_sums(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, chunk_tokens: int) -> dict:
    """Per row, the sums over completion tokens of log p(token), sum_v p log p and KL(U || p), (B,) float64 each.

    Positions are turned into float32 log-probs a chunk at a time: chunk_tokens (row, position) pairs,
    a few chunk_tokens x V x 4 bytes.
    """
    rows, keep = targets.shape
    sums = {name: torch.zeros(rows, dtype=torch.float64, device=logits.device)
            for name in ("logprob_sum", "confidence", "self_certainty")}
    step = max(1, chunk_tokens // rows)
    for start in range(0, keep, step):
        part = slice(start, min(start + step, keep))
        log_p = torch.log_softmax(logits[:, part, :].float(), dim=-1)  # (B, c, V)
        token = log_p.gather(-1, targets[:, part, None]).squeeze(-1)
        p = log_p.exp()
        neg_entropy = torch.special.xlogy(p, p).sum(-1)  # sum_v p log p, 0 log 0 = 0
        certainty = -math.log(log_p.shape[-1]) - log_p.mean(-1)  # KL(U || p)
        m = valid[:, part]
        sums["logprob_sum"] += torch.where(m, token, 0).double().sum(-1)
        sums["confidence"] += torch.where(m, neg_entropy, 0).double().sum(-1)
        sums["self_certainty"] += torch.where(m, certainty, 0).double().sum(-1)
        del log_p, p
    return sums


def _per_token(sums: dict, b: int, length: int) -> dict:
    total = float(sums["logprob_sum"][b])
    return {"logprob_sum": total, "logprob_mean": total / length,
            "confidence": float(sums["confidence"][b]) / length,
            "self_certainty": float(sums["self_certainty"][b]) / length, "num_tokens": length}


@torch.no_grad()
def score_completions(model, prompts: list[list[int]], completions: list[list[int]], *,
                      batch_tokens: int = 4096, chunk_tokens: int = 2048, progress: bool = False,
                      on_result=None) -> list[dict | None]:
    """Base-model scores of each completion given its prompt (token id lists); None for an empty one.

    batch_tokens bounds rows x padded length per forward pass; chunk_tokens bounds the
    (row, position) pairs turned into float32 log-probs at once: a few chunk_tokens x V x 4 bytes.
    on_result(i, scores) is called as soon as completion i is scored (empty ones first), so a
    caller can store each result before the next batch runs. Every id is checked before any
    forward pass: a bad record raises ValueError before a single result is reported.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    device = next(model.parameters()).device
    _check_ids(prompts, completions, _vocab_size(model))

    results: list[dict | None] = [None] * len(prompts)
    todo = [i for i, c in enumerate(completions) if len(c) > 0]
    if on_result is not None:
        for i, completion in enumerate(completions):
            if not completion:
                on_result(i, None)
    # The last completion token is only a target, never an input: feed prompt + completion[:-1].
    lengths = {i: len(prompts[i]) + len(completions[i]) - 1 for i in todo}
    bar = tqdm(total=len(todo), desc="base-model scores", unit="completion", disable=not progress,
               file=sys.stderr)
    started, tokens_done = time.time(), 0
    for batch in _batches([lengths[i] for i in todo], batch_tokens):
        rows = [todo[j] for j in batch]
        ids, mask, positions = left_pad([list(prompts[i]) + list(completions[i][:-1]) for i in rows], 0, device)
        keep = max(len(completions[i]) for i in rows)
        logits = _forward_logits(model, ids, mask, positions, keep)  # (B, keep, V)
        targets, valid = _targets([completions[i] for i in rows], keep, device)
        sums = _score_sums(logits, targets, valid, chunk_tokens)
        for b, i in enumerate(rows):
            results[i] = _per_token(sums, b, len(completions[i]))
            if on_result is not None:
                on_result(i, results[i])
        tokens_done += int(mask.sum())
        bar.update(len(rows))
        bar.set_postfix(tok_s=f"{tokens_done / max(time.time() - started, 1e-9):.0f}", refresh=False)
    bar.close()
    return results


# ---- stored scores of a run ------------------------------------------------------------------

EMPTY = {"logprob_sum": None, "logprob_mean": None, "confidence": None, "self_certainty": None, "num_tokens": 0}


def model_identity(spec: str) -> dict:
    """How scores name their model: the spec (a local path made absolute) and its revision."""
    model = resolve_local(spec)
    return {"model": model, "model_revision": model_revision(model)}


def score_run(run: Run, spec: str | None, *, model=None, tokenizer=None, rescore: bool = False,
              batch_tokens: int = 4096, device=None, shard: Shard | None = None, progress: bool = True) -> dict:
    """Score, under model `spec`, every record of `run` that has no stored score by it; fill `run`'s scores.

    Reuses RUN_DIR/scores/<name>.jsonl lines by the same model, starts a file afresh when it holds another model's scores, scores of a completion
    that has changed since, or `rescore` is set, loads the model only when something is left to
    score, and appends each new score as its batch finishes. With `spec` None (no model named
    anywhere) the stored scores of any model are used, and anything unscored is a UsageError.
    Every process of `shard` must call it; each scores its share.
    Returns {"model", "model_revision", "scored_now", "scored_before", "reset", "scoring_seconds"}.
    """
    shard = shard or Shard()
    if spec is None and model is not None:
        spec = getattr(model, "name_or_path", None) or None
    if spec is None:  # no model named anywhere: what is stored will do, whoever scored it
        stored = attach_scores(run, None)
        if rescore or any(m.score_of(r) is None for m in run.methods.values() for r in m.records):
            raise UsageError("no base model to score with (no samples/<name>.config.json names one): "
                             "pass --base-model, or --no-score to skip likelihood and confidence")
        return {"model": None, "model_revision": None, "scored_now": 0, "scored_before": stored, "reset": {},
                "scoring_seconds": 0.0}
    identity = model_identity(spec)
    reset = {}
    if shard.is_main:
        for method in run.methods.values():
            path = scores_path(run.dir, method.name)
            merge_parts(path)  # parts left by a killed multi-process scoring
            reason = "--rescore" if rescore and path.exists() else stale_scores(run.dir, method, identity)
            if reason:
                reset[method.name] = reason
                path.unlink(missing_ok=True)
    shard.wait()
    files = {name: ShardedRecords(scores_path(run.dir, name), shard) for name in run.methods}
    stored = attach_scores(run, identity)
    todo = [(m, r) for m in run.methods.values() for r in sorted(m.records, key=record_key)
            if record_key(r) not in m.scores]
    info = {**identity, "scored_now": len(todo), "scored_before": stored, "reset": reset, "scoring_seconds": 0.0}
    if not todo:
        return info
    started = time.time()
    mine = todo[shard.rank::shard.world_size]
    if mine:
        if model is None:
            model, tokenizer = load_model(spec, device=device)
        prompt_ids: dict[str, list[int]] = {}
        for _, record in mine:
            if record["prompt"] not in prompt_ids:
                # As sampling does: the prompt text already holds any special tokens.
                prompt_ids[record["prompt"]] = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
        writers = {}  # opened at a method's first score: a scoring that fails first leaves no empty file

        def store(i: int, scores: dict | None):
            method, record = mine[i]
            if method.name not in writers:
                writers[method.name] = files[method.name].writer()
            writers[method.name].write({"problem_id": record["problem_id"], "sample_idx": record["sample_idx"],
                                        **identity, "record_digest": record_digest(record), **(scores or EMPTY)})

        try:
            score_completions(model, [prompt_ids[r["prompt"]] for _, r in mine],
                              [[int(t) for t in r["completion_ids"]] for _, r in mine],
                              batch_tokens=batch_tokens, progress=progress, on_result=store)
        except ValueError as err:
            raise UsageError(f"cannot score the records under '{spec}': {err}") from None
        finally:
            for writer in writers.values():
                writer.close()
    for records in files.values():
        records.finish()
    attach_scores(run, identity)
    info["scoring_seconds"] = time.time() - started
    return info
