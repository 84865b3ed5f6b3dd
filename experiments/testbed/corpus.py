"""The testbed's task family and its noisy-teacher pretraining corpus, with exact probabilities.

    from experiments.testbed.corpus import exact_figures, generate_problems, sample_documents
    problems = generate_problems(4, seed=0, split="test")   # alternating plain / trap problems
    problems[1]["question"]                                  # e.g. 'trap 3 + 5 + 8 + 2 + 1 ='
    exact_figures(alpha=4)["trap"]                           # the planning-trap table

The task: the last digit of a sum of five digits. A problem is a kind (`plain` or
`trap`) and five terms; its prompt is `plain 3 + 5 + 8 + 2 + 1 =`. A worked solution
writes the running total mod 10 after each term, then the answer:

    work +3 3 +5 8 +8 6 +2 8 +1 9 answer 9

(`+d` repeats a term, the digit after it is the running total). A guess skips the work:

    guess answer 4

The noisy teacher (the process the pretraining corpus is sampled from, exactly):
- plain problem: always `work`; each running total is right (previous *written* total
  plus the term, mod 10) with probability 1 - SLIP = 0.7, otherwise one of the 9 wrong
  digits, each 0.3/9; terms are always copied right; the answer repeats the last total.
  Slips propagate, so the answer is right with probability 0.1 + 0.9 (1 - 10 SLIP/9)^5
  = 0.2185 (slips can cancel).
- trap problem (the planning trap): `guess` with probability GUESS = 0.6, then a
  uniformly random answer digit (10 futures of 0.06 each, one right); or `work` with
  probability 0.4, then the solution without any slip (one future of 0.4, right).

Which opening each sampler picks on a trap problem (alpha = 4; `exact_figures`):

    opening  token p  futures      each future  base   low temp (T=1/4)  p^alpha
    guess    0.6      10, 1 right  0.06         0.600  0.835             0.005
    work     0.4      1, right     0.40         0.400  0.165             0.995

Low temperature sharpens each token before the futures are summed, so it follows the
common opening; p^alpha sharpens whole sequences, so the one likely future wins.
pass@1 on trap problems: base 0.46, low temperature 0.248, p^alpha 0.9955. On plain
problems every step has the same futures, so p^alpha over sequences equals token-level
temperature 1/alpha there: base 0.2185, both sharpened samplers 0.9998.

Train and test problems are disjoint: a problem belongs to the test split when a hash of
its kind and terms falls in the lowest 20% (`split_of`), whatever the seed; the corpus
holds train-split problems only.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

import numpy as np

NUM_TERMS = 5
SLIP = 0.3  # probability that a running total on a plain problem is wrong
GUESS = 0.6  # probability that the teacher opens a trap problem with `guess`
TEST_FRACTION = 0.2
KINDS = ("plain", "trap")

DIGITS = [str(d) for d in range(10)]
TERMS = ["+" + d for d in DIGITS]  # a term repeated inside the worked solution
SPECIAL = ["<pad>", "<eos>", "<unk>"]
WORDS = ["+", "=", "answer", "guess", "work", "plain", "trap"]
VOCAB = SPECIAL + DIGITS + TERMS + WORDS
TOKEN_ID = {word: i for i, word in enumerate(VOCAB)}
PAD, EOS, UNK = SPECIAL
PROMPT_LEN = 2 * NUM_TERMS + 1  # kind, d1, +, d2, ..., dn, =
MAX_COMPLETION_LEN = 1 + 2 * NUM_TERMS + 3  # work, (+d, total) x n, answer, digit, <eos>


# ----- problems --------------------------------------------------------------------------

def prompt_words(kind: str, terms) -> list[str]:
    words = [kind]
    for i, t in enumerate(terms):
        words += ([] if i == 0 else ["+"]) + [str(t)]
    return words + ["="]


def answer_of(terms) -> int:
    return sum(int(t) for t in terms) % 10


def problem_code(kind, terms):
    """A problem's number: kind index * 10^n + its terms read as a base-10 number (arrays work too)."""
    terms = np.asarray(terms, dtype=np.uint64)
    return (np.asarray(kind, dtype=np.uint64) * np.uint64(10 ** NUM_TERMS)
            + terms @ (np.uint64(10) ** np.arange(terms.shape[-1] - 1, -1, -1, dtype=np.uint64)))


def in_test_split(code) -> np.ndarray:
    """True for a fixed ~20% of problem codes: a splitmix64 hash of the code below 20% of 2^64."""
    with np.errstate(over="ignore"):  # the hash multiplies modulo 2^64 on purpose
        x = np.asarray(code, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x < np.uint64(int(TEST_FRACTION * 2 ** 64))


def split_of(kind: str, terms) -> str:
    """'test' for a fixed ~20% of all problems (whatever the seed), 'train' for the rest."""
    return "test" if bool(in_test_split(problem_code(KINDS.index(kind), list(terms)))) else "train"


def make_problem(kind: str, terms) -> dict:
    terms = [int(t) for t in terms]
    return {"id": f"{kind}-{''.join(map(str, terms))}", "kind": kind, "terms": terms,
            "question": " ".join(prompt_words(kind, terms)), "answer": str(answer_of(terms))}


def generate_problems(count: int, seed: int = 0, split: str = "test", kind: str = "mixed") -> list[dict]:
    """`count` distinct problems of `split`; 'mixed' alternates plain and trap, starting with plain."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got '{split}'")
    if kind not in ("mixed",) + KINDS:
        raise ValueError(f"kind must be mixed, plain or trap, got '{kind}'")
    tests = _test_table().sum(axis=1)
    pool = [int(tests[i]) if split == "test" else 10 ** NUM_TERMS - int(tests[i])
            for i, k in enumerate(KINDS) if kind in ("mixed", k)]
    if count > min(pool) * len(pool):
        raise ValueError(f"the {split} split has fewer than {count} {kind} problems")
    rng = random.Random(f"testbed/{split}/{seed}")  # str seeds hash with sha512: stable across Pythons
    problems, seen = [], set()
    while len(problems) < count:
        k = kind if kind != "mixed" else KINDS[len(problems) % 2]
        terms = [rng.randrange(10) for _ in range(NUM_TERMS)]
        problem = make_problem(k, terms)
        in_test = _test_table()[KINDS.index(k), int("".join(map(str, terms)))]  # = split_of(k, terms)
        if problem["id"] in seen or ("test" if in_test else "train") != split:
            continue
        seen.add(problem["id"])
        problems.append(problem)
    return problems


def extract_answer(completion: str) -> str | None:
    """The word after the first `answer` (what the solution commits to), or None."""
    words = completion.split()
    for i, word in enumerate(words[:-1]):
        if word == "answer":
            return words[i + 1]
    return None


# ----- the teacher, exactly --------------------------------------------------------------

def teacher_next(kind: str, terms, prefix: list[str]) -> dict[str, float]:
    """The teacher's next-word distribution after the completion words `prefix` (exact).

    Raises ValueError for a prefix the teacher never writes.
    """
    terms = [int(t) for t in terms]
    n = len(prefix)
    if n == 0:
        return {"work": 1.0} if kind == "plain" else {"guess": GUESS, "work": 1.0 - GUESS}
    if prefix[0] == "guess" and kind == "trap":
        if n == 1:
            return {"answer": 1.0}
        if n == 2:
            return {d: 0.1 for d in DIGITS}
        if n == 3 and prefix[2] in DIGITS:
            return {EOS: 1.0}
    elif prefix[0] == "work":
        steps = len(terms)
        if n <= 2 * steps:
            k = (n - 1) // 2  # the term being worked on
            if n % 2 == 1:  # the term is copied, never wrong
                if n == 1 or prefix[n - 1] in DIGITS:
                    return {TERMS[terms[k]]: 1.0}
            elif prefix[n - 1] == TERMS[terms[k]]:
                previous = int(prefix[n - 2]) if n >= 3 else 0  # slips propagate: add to what was written
                right = str((previous + terms[k]) % 10)
                if kind == "trap":
                    return {right: 1.0}
                return {d: (1.0 - SLIP) if d == right else SLIP / 9 for d in DIGITS}
        elif n == 2 * steps + 1:
            return {"answer": 1.0}
        elif n == 2 * steps + 2:
            return {prefix[2 * steps]: 1.0}
        elif n == 2 * steps + 3:
            return {EOS: 1.0}
    raise ValueError(f"the teacher never writes {' '.join(prefix)!r} for {kind} {terms}")


def enumerate_completions(kind: str, terms, temperature: float = 1.0) -> list[tuple[list[str], float]]:
    """Every completion the teacher can write with its probability under token-level `temperature`."""
    out = []

    def walk(prefix, prob):
        if prefix and prefix[-1] == EOS:
            out.append((prefix[:-1], prob))
            return
        dist = teacher_next(kind, terms, prefix)
        weights = {w: p ** (1.0 / temperature) for w, p in dist.items()}
        total = sum(weights.values())
        for word, weight in weights.items():
            walk(prefix + [word], prob * weight / total)

    walk([], 1.0)
    return out


# ----- exact figures ---------------------------------------------------------------------

def _answer_right(p_step_right: float, steps: int) -> float:
    """P(the final total is right) when each total is right w.p. p, else uniform among the 9 wrong.

    The answer is off by the sum of the slips' offsets mod 10; track its distribution.
    """
    offset = np.zeros(10)
    offset[0] = 1.0
    step = np.full(10, (1.0 - p_step_right) / 9)
    step[0] = p_step_right
    for _ in range(steps):
        offset = np.array([sum(offset[j] * step[(i - j) % 10] for j in range(10)) for i in range(10)])
    return float(offset[0])


def exact_figures(alpha: float = 4.0, steps: int = NUM_TERMS) -> dict:
    """The process's exact trap table and pass@1 for base, low temperature (1/alpha) and p^alpha."""
    g, w = GUESS, 1.0 - GUESS
    # Trap: token level at the opening, then what each opening's futures are worth.
    low_guess = g ** alpha / (g ** alpha + w ** alpha)
    mass_guess, mass_work = 10 * (g / 10) ** alpha, w ** alpha  # sum of p(x)^alpha over each opening's futures
    power_guess = mass_guess / (mass_guess + mass_work)
    trap = {
        "openings": {"guess": {"token_p": g, "futures": 10, "right_futures": 1, "future_p": g / 10},
                     "work": {"token_p": w, "futures": 1, "right_futures": 1, "future_p": w}},
        "pick_guess": {"base": g, "low_temp": low_guess, "power": power_guess},
        "pick_work": {"base": w, "low_temp": 1 - low_guess, "power": 1 - power_guess},
        "pass@1": {"base": g * 0.1 + w, "low_temp": low_guess * 0.1 + (1 - low_guess),
                   "power": power_guess * 0.1 + (1 - power_guess)},
    }
    # Plain: each total is one of 10 digits, right w.p. 1 - SLIP. Every prefix has futures of the
    # same shape, so p^alpha over sequences factorises into the per-token p^alpha (= temperature 1/alpha).
    right, wrong = 1.0 - SLIP, SLIP / 9
    sharp_right = right ** alpha / (right ** alpha + 9 * wrong ** alpha)
    plain = {
        "step_right": {"base": right, "low_temp": sharp_right, "power": sharp_right},
        "pass@1": {"base": _answer_right(right, steps), "low_temp": _answer_right(sharp_right, steps),
                   "power": _answer_right(sharp_right, steps)},
        "most_likely_completion_p": right ** steps,
    }
    mixed = {m: (plain["pass@1"][m] + trap["pass@1"][m]) / 2 for m in ("base", "low_temp", "power")}
    return {"alpha": alpha, "slip": SLIP, "guess": GUESS, "steps": steps,
            "trap": trap, "plain": plain, "mixed": {"pass@1": mixed}}


def loss_floor(steps: int = NUM_TERMS) -> float:
    """The lowest mean per-token cross-entropy a model can reach on the corpus (nats): its entropy.

    Training averages the loss over all completion tokens of a batch, so this is the expected
    entropy of a document's completion over its expected number of tokens (kinds equally likely).
    """
    right, wrong = 1.0 - SLIP, SLIP / 9
    step_entropy = -(right * math.log(right) + 9 * wrong * math.log(wrong))
    opening_entropy = -(GUESS * math.log(GUESS) + (1 - GUESS) * math.log(1 - GUESS))
    work_tokens, guess_tokens = 2 * steps + 4, 4  # both with <eos>
    plain_nats, plain_tokens = steps * step_entropy, work_tokens
    trap_nats = opening_entropy + GUESS * math.log(10)
    trap_tokens = GUESS * guess_tokens + (1 - GUESS) * work_tokens
    return (plain_nats + trap_nats) / (plain_tokens + trap_tokens)


# ----- the corpus ------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _test_table() -> np.ndarray:
    """(2, 10^NUM_TERMS) bool: is problem (kind, terms as a base-10 number) in the test split."""
    codes = np.arange(len(KINDS) * 10 ** NUM_TERMS, dtype=np.uint64)
    return in_test_split(codes).reshape(len(KINDS), 10 ** NUM_TERMS)


def sample_documents(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` corpus documents drawn from the teacher: token ids (count, L) and a loss mask.

    A document is a train-split problem's prompt followed by the teacher's completion and
    <eos>, padded with <pad>; the mask is True on the completion (and <eos>). Kinds are
    equally likely. Vectorised twin of `teacher_next`, checked against it in the tests.
    """
    n, length = NUM_TERMS, PROMPT_LEN + MAX_COMPLETION_LEN
    kind = np.empty(0, dtype=np.int64)
    terms = np.empty((0, n), dtype=np.int64)
    while len(kind) < count:  # draw, then drop test-split problems
        k = rng.integers(0, 2, count)
        t = rng.integers(0, 10, (count, n))
        keep = ~_test_table()[k, t @ (10 ** np.arange(n - 1, -1, -1))]
        kind, terms = np.concatenate([kind, k[keep]]), np.concatenate([terms, t[keep]])
    kind, terms = kind[:count], terms[:count]
    trap = kind == 1
    guess = trap & (rng.random(count) < GUESS)
    slip = ~trap[:, None] & (rng.random((count, n)) < SLIP)
    offset = rng.integers(1, 10, (count, n))  # a slip moves the total by 1..9: uniform over the wrong digits
    guessed = rng.integers(0, 10, count)

    totals = np.zeros((count, n), dtype=np.int64)
    total = np.zeros(count, dtype=np.int64)
    for i in range(n):
        total = (total + terms[:, i] + np.where(slip[:, i], offset[:, i], 0)) % 10
        totals[:, i] = total

    ids = np.full((count, length), TOKEN_ID[PAD], dtype=np.int64)
    d0, t0 = TOKEN_ID["0"], TOKEN_ID["+0"]
    ids[:, 0] = np.where(trap, TOKEN_ID["trap"], TOKEN_ID["plain"])
    ids[:, 1:2 * n:2] = d0 + terms
    ids[:, 2:2 * n:2] = TOKEN_ID["+"]
    ids[:, 2 * n] = TOKEN_ID["="]
    p = PROMPT_LEN
    ids[:, p] = np.where(guess, TOKEN_ID["guess"], TOKEN_ID["work"])
    work = ~guess
    ids[work, p + 1:p + 1 + 2 * n:2] = t0 + terms[work]
    ids[work, p + 2:p + 2 + 2 * n:2] = d0 + totals[work]
    ids[work, p + 1 + 2 * n] = TOKEN_ID["answer"]
    ids[work, p + 2 + 2 * n] = d0 + totals[work, -1]
    ids[work, p + 3 + 2 * n] = TOKEN_ID[EOS]
    ids[guess, p + 1] = TOKEN_ID["answer"]
    ids[guess, p + 2] = d0 + guessed[guess]
    ids[guess, p + 3] = TOKEN_ID[EOS]
    mask = np.zeros((count, length), dtype=bool)
    mask[:, p:] = ids[:, p:] != TOKEN_ID[PAD]
    return ids, mask


def corpus_batches(seed: int, batch_size: int):
    """The corpus of testbed `seed`, batch after batch, as the model is trained on it (endless)."""
    rng = np.random.default_rng([seed, 1])
    while True:
        yield sample_documents(rng, batch_size)


def corpus_text(count: int, seed: int = 0, batch_size: int = 256) -> list[str]:
    """The first `count` documents of the corpus as text (prompt, completion, <eos>), for reading."""
    docs: list[str] = []
    for ids, _ in corpus_batches(seed, batch_size):
        docs += [" ".join(VOCAB[i] for i in row if VOCAB[i] != PAD) for row in ids]
        if len(docs) >= count:
            return docs[:count]
    return docs
