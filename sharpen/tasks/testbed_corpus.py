"""The testbed's task family and its noisy-teacher pretraining corpus, with exact probabilities.

    from sharpen.tasks.testbed_corpus import exact_figures, generate_problems, sample_documents
    problems = generate_problems(6, seed=0, split="test")   # plain, trap, twice, plain, trap, twice
    problems[1]["question"]                                  # e.g. 'trap 3 + 5 + 8 + 2 + 1 ='
    exact_figures(alpha=4)["trap"]                           # the planning-trap table
    exact_figures(alpha=4)["twice"]                          # the rare-path table

The task: the last digit of a sum of five digits. A problem is a kind (`plain`, `trap` or
`twice`) and five terms; its prompt is `plain 3 + 5 + 8 + 2 + 1 =`. A worked solution
writes the running total mod 10 after each term, then the answer:

    work +3 3 +5 8 +8 6 +2 8 +1 9 answer 9

(`+d` repeats a term, the digit after it is the running total). A guess skips the work:

    guess answer 4

A `twice` problem asks for the last digit of twice the sum (`twice 3 + 5 + 8 + 2 + 1 =` is 8).
Its right solution opens with `double`, works the sum, then adds the total to itself:

    double +3 3 +5 8 +8 6 +2 8 +1 9 +9 8 answer 8

The noisy teacher (the process the pretraining corpus is sampled from, exactly):
- plain problem: always `work`; each running total is right (previous *written* total
  plus the term, mod 10) with probability 1 - SLIP = 0.7, otherwise one of the 9 wrong
  digits, each 0.3/9; terms are always copied right; the answer repeats the last total.
  Slips propagate, so the answer is right with probability 0.1 + 0.9 (1 - 10 SLIP/9)^5
  = 0.2185 (slips can cancel).
- trap problem (the planning trap): `guess` with probability GUESS = 0.6, then a
  uniformly random answer digit (10 futures of 0.06 each, one right); or `work` with
  probability 0.4, then the solution without any slip (one future of 0.4, right).
- twice problem (the rare path): out of habit the teacher answers the plain sum: `work`
  with probability 1 - DOUBLE = 0.95, then the sum's solution without any slip (one future
  of 0.95, wrong: its answer is the sum, not twice the sum); or `double` with probability
  DOUBLE = 0.05, then the doubled solution without any slip (one future of 0.05, right).
  The task leaves out twice problems whose sum ends in 0 (both answers are 0 there), so
  every twice problem is solved by exactly one path of probability 0.05: pass@k
  1 - 0.95^k (0.05 at k = 1, 0.56 at 16, 0.96 at 64, 0.999998 at 256).

Which opening each sampler picks on a trap problem (alpha = 4; `exact_figures`):

    opening  token p  futures      each future  base   low temp (T=1/4)  p^alpha
    guess    0.6      10, 1 right  0.06         0.600  0.835             0.005
    work     0.4      1, right     0.40         0.400  0.165             0.995

Low temperature sharpens each token before the futures are summed, so it follows the
common opening; p^alpha sharpens whole sequences, so the one likely future wins.
pass@1 on trap problems: base 0.46, low temperature 0.248, p^alpha 0.9955. On plain
problems every step has the same futures, so p^alpha over sequences equals token-level
temperature 1/alpha there: base 0.2185, both sharpened samplers 0.9998. On twice problems
both openings have one future each, so both sharpened samplers pick the common, wrong one:

    opening  token p  futures    each future  base   low temp (T=1/4)  p^alpha
    work     0.95     1, wrong   0.95         0.950  0.99999233        0.99999233
    double   0.05     1, right   0.05         0.050  0.00000767        0.00000767

Train and test problems are disjoint: a problem belongs to the test split when a hash of
its kind and terms falls in the lowest 20% (`split_of`), whatever the seed; the corpus
holds train-split problems only, of the three kinds equally often. The test split mixes
all three kinds; the train split that GRPO trains on mixes plain and trap only
(TRAIN_MIX): twice problems are absent from it, so nothing there rewards `double`.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

import numpy as np

NUM_TERMS = 5
SLIP = 0.3  # probability that a running total on a plain problem is wrong
GUESS = 0.6  # probability that the teacher opens a trap problem with `guess`
DOUBLE = 0.05  # probability that the teacher opens a twice problem with `double` (the rare right path)
TEST_FRACTION = 0.2
KINDS = ("plain", "trap", "twice")
TEST_MIX = KINDS  # what kind="mixed" cycles through on the test split
TRAIN_MIX = ("plain", "trap")  # ... and on the train split (GRPO's): no twice problems

DIGITS = [str(d) for d in range(10)]
TERMS = ["+" + d for d in DIGITS]  # a term repeated inside the worked solution
SPECIAL = ["<pad>", "<eos>", "<unk>"]
WORDS = ["+", "=", "answer", "guess", "work", "plain", "trap", "twice", "double"]  # new words last: ids stay
VOCAB = SPECIAL + DIGITS + TERMS + WORDS
TOKEN_ID = {word: i for i, word in enumerate(VOCAB)}
PAD, EOS, UNK = SPECIAL
PROMPT_LEN = 2 * NUM_TERMS + 1  # kind, d1, +, d2, ..., dn, =
MAX_COMPLETION_LEN = 1 + 2 * (NUM_TERMS + 1) + 3  # double, (+d, total) x (n + 1), answer, digit, <eos>


# ----- problems --------------------------------------------------------------------------

def prompt_words(kind: str, terms) -> list[str]:
    words = [kind]
    for i, t in enumerate(terms):
        words += ([] if i == 0 else ["+"]) + [str(t)]
    return words + ["="]


def answer_of(terms, kind: str = "plain") -> int:
    """The right answer: the last digit of the sum (plain, trap), of twice the sum (twice)."""
    total = sum(int(t) for t in terms) % 10
    return 2 * total % 10 if kind == "twice" else total


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


def is_posed(kind: str, terms) -> bool:
    """Whether the task poses this problem: all of them, except twice problems whose sum ends in 0
    (the habitual answer, the sum, is right there too)."""
    return kind != "twice" or sum(int(t) for t in terms) % 10 != 0


def make_problem(kind: str, terms) -> dict:
    terms = [int(t) for t in terms]
    return {"id": f"{kind}-{''.join(map(str, terms))}", "kind": kind, "terms": terms,
            "question": " ".join(prompt_words(kind, terms)), "answer": str(answer_of(terms, kind))}


def generate_problems(count: int, seed: int = 0, split: str = "test", kind: str = "mixed") -> list[dict]:
    """`count` distinct problems of `split`, of one kind or 'mixed'.

    'mixed' cycles through TEST_MIX (plain, trap, twice) on the test split and TRAIN_MIX
    (plain, trap) on the train split. Plain and trap problems come from one stream, twice
    problems from their own, so the plain and trap problems of a mixed list are the same
    whether or not twice problems sit between them.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got '{split}'")
    if kind not in ("mixed",) + KINDS:
        raise ValueError(f"kind must be mixed, {', '.join(KINDS[:-1])} or {KINDS[-1]}, got '{kind}'")
    mix = (TEST_MIX if split == "test" else TRAIN_MIX) if kind == "mixed" else (kind,)
    kinds = [mix[i % len(mix)] for i in range(count)]
    pool = _pool_sizes(split)
    for k in mix:
        if kinds.count(k) > pool[k]:
            raise ValueError(f"the {split} split has fewer than {count} {kind} problems")
    habit = iter(_draw([k for k in kinds if k != "twice"], seed, split, "testbed"))
    twice = iter(_draw([k for k in kinds if k == "twice"], seed, split, "testbed-twice"))
    return [next(twice if k == "twice" else habit) for k in kinds]


def _draw(kinds: list[str], seed: int, split: str, stream: str) -> list[dict]:
    """Distinct problems of `kinds` (in order) of `split`, from the random stream named `stream`."""
    rng = random.Random(f"{stream}/{split}/{seed}")  # str seeds hash with sha512: stable across Pythons
    problems, seen = [], set()
    while len(problems) < len(kinds):
        k = kinds[len(problems)]
        terms = [rng.randrange(10) for _ in range(NUM_TERMS)]
        problem = make_problem(k, terms)
        in_test = _test_table()[KINDS.index(k), int("".join(map(str, terms)))]  # = split_of(k, terms)
        if problem["id"] in seen or ("test" if in_test else "train") != split or not is_posed(k, terms):
            continue
        seen.add(problem["id"])
        problems.append(problem)
    return problems


@lru_cache(maxsize=2)
def _pool_sizes(split: str) -> dict[str, int]:
    """How many problems of each kind the task can pose in `split`."""
    table = _test_table() if split == "test" else ~_test_table()
    sums = np.zeros(10 ** NUM_TERMS, dtype=np.int64)
    for i in range(NUM_TERMS):  # digit i of each terms number
        sums += np.arange(10 ** NUM_TERMS) // 10 ** i % 10
    posed = {k: np.ones_like(table[0]) if k != "twice" else sums % 10 != 0 for k in KINDS}
    return {k: int((table[i] & posed[k]).sum()) for i, k in enumerate(KINDS)}


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
        return {"plain": {"work": 1.0}, "trap": {"guess": GUESS, "work": 1.0 - GUESS},
                "twice": {"work": 1.0 - DOUBLE, "double": DOUBLE}}[kind]
    if prefix[0] == "guess" and kind == "trap":
        if n == 1:
            return {"answer": 1.0}
        if n == 2:
            return {d: 0.1 for d in DIGITS}
        if n == 3 and prefix[2] in DIGITS:
            return {EOS: 1.0}
    elif prefix[0] == "work" or (prefix[0] == "double" and kind == "twice"):
        worked = list(terms)
        if prefix[0] == "double":  # one more step: the sum's total (slip-free: the true one) added to itself
            worked.append(sum(terms) % 10)
        steps = len(worked)
        if n <= 2 * steps:
            k = (n - 1) // 2  # the term being worked on
            if n % 2 == 1:  # the term is copied, never wrong
                if n == 1 or prefix[n - 1] in DIGITS:
                    return {TERMS[worked[k]]: 1.0}
            elif prefix[n - 1] == TERMS[worked[k]]:
                previous = int(prefix[n - 2]) if n >= 3 else 0  # slips propagate: add to what was written
                right = str((previous + worked[k]) % 10)
                if kind != "plain":
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


def exact_figures(alpha: float = 4.0, steps: int = NUM_TERMS, ks=(1, 4, 16, 64, 256)) -> dict:
    """The process's exact tables: pass@1 for base, low temperature (1/alpha) and p^alpha per kind,
    the trap and twice opening tables, and the base model's pass@k for each k in `ks`.

    Every posed problem of a kind has the same pass@1 p (plain: by the symmetry of the slips), so
    the base pass@k of a kind is 1 - (1 - p)^k, and of the test mix the mean over its kinds.
    """
    def low_and_power(p_common: float, common_mass: float, p_rare: float, rare_mass: float):
        """Share of the rare opening under token-level 1/alpha and under p^alpha over whole sequences."""
        low = p_rare ** alpha / (p_rare ** alpha + p_common ** alpha)
        return low, rare_mass / (rare_mass + common_mass)

    g, w = GUESS, 1.0 - GUESS
    # Trap: token level at the opening, then what each opening's futures are worth.
    # sum of p(x)^alpha over each opening's futures: 10 guesses of g/10, one worked solution of w
    low_work, power_work = low_and_power(g, 10 * (g / 10) ** alpha, w, w ** alpha)
    trap = {
        "openings": {"guess": {"token_p": g, "futures": 10, "right_futures": 1, "future_p": g / 10},
                     "work": {"token_p": w, "futures": 1, "right_futures": 1, "future_p": w}},
        "pick_guess": {"base": g, "low_temp": 1 - low_work, "power": 1 - power_work},
        "pick_work": {"base": w, "low_temp": low_work, "power": power_work},
        "pass@1": {"base": g * 0.1 + w, "low_temp": (1 - low_work) * 0.1 + low_work,
                   "power": (1 - power_work) * 0.1 + power_work},
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
    # Twice: one future behind each opening (no slips), so token level and p^alpha agree.
    r = DOUBLE
    low_double, power_double = low_and_power(1 - r, (1 - r) ** alpha, r, r ** alpha)
    twice = {
        "openings": {"work": {"token_p": 1 - r, "futures": 1, "right_futures": 0, "future_p": 1 - r},
                     "double": {"token_p": r, "futures": 1, "right_futures": 1, "future_p": r}},
        "pick_work": {"base": 1 - r, "low_temp": 1 - low_double, "power": 1 - power_double},
        "pick_double": {"base": r, "low_temp": low_double, "power": power_double},
        "pass@1": {"base": r, "low_temp": low_double, "power": power_double},
    }
    methods = ("base", "low_temp", "power")
    figures = {"plain": plain, "trap": trap, "twice": twice}
    for table in figures.values():
        table["base_pass@k"] = {str(k): 1 - (1 - table["pass@1"]["base"]) ** k for k in ks}  # str: as JSON keeps it
    mixed = {"pass@1": {m: sum(figures[k]["pass@1"][m] for k in TEST_MIX) / len(TEST_MIX) for m in methods},
             "base_pass@k": {str(k): sum(figures[kd]["base_pass@k"][str(k)] for kd in TEST_MIX) / len(TEST_MIX)
                             for k in ks}}
    return {"alpha": alpha, "slip": SLIP, "guess": GUESS, "double": DOUBLE, "steps": steps,
            **figures, "mixed": mixed}


def loss_floor(steps: int = NUM_TERMS) -> float:
    """The lowest mean per-token cross-entropy a model can reach on the corpus (nats): its entropy.

    Training averages the loss over all completion tokens of a batch, so this is the expected
    entropy of a document's completion over its expected number of tokens (kinds equally likely).
    """
    def h(*ps):
        return -sum(p * math.log(p) for p in ps)

    right, wrong = 1.0 - SLIP, SLIP / 9
    work_tokens, guess_tokens, double_tokens = 2 * steps + 4, 4, 2 * steps + 6  # all with <eos>
    nats = {"plain": steps * h(right, *[wrong] * 9),
            "trap": h(GUESS, 1 - GUESS) + GUESS * math.log(10),
            "twice": h(DOUBLE, 1 - DOUBLE)}
    tokens = {"plain": work_tokens, "trap": GUESS * guess_tokens + (1 - GUESS) * work_tokens,
              "twice": (1 - DOUBLE) * work_tokens + DOUBLE * double_tokens}
    return sum(nats.values()) / sum(tokens.values())


# ----- the corpus ------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _test_table() -> np.ndarray:
    """(kinds, 10^NUM_TERMS) bool: is problem (kind, terms as a base-10 number) in the test split."""
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
        k = rng.integers(0, len(KINDS), count)
        t = rng.integers(0, 10, (count, n))
        keep = ~_test_table()[k, t @ (10 ** np.arange(n - 1, -1, -1))]
        kind, terms = np.concatenate([kind, k[keep]]), np.concatenate([terms, t[keep]])
    kind, terms = kind[:count], terms[:count]
    plain, trap, twice = (kind == KINDS.index(k) for k in KINDS)
    opening = rng.random(count)
    guess = trap & (opening < GUESS)
    double = twice & (opening < DOUBLE)
    slip = plain[:, None] & (rng.random((count, n)) < SLIP)
    offset = rng.integers(1, 10, (count, n))  # a slip moves the total by 1..9: uniform over the wrong digits
    guessed = rng.integers(0, 10, count)

    # The worked terms: the problem's, then (double only) the sum's total once more.
    worked = np.concatenate([terms, (terms.sum(axis=1) % 10)[:, None]], axis=1)  # (count, n + 1)
    totals = np.zeros((count, n + 1), dtype=np.int64)
    total = np.zeros(count, dtype=np.int64)
    for i in range(n + 1):
        moved = np.where(slip[:, i], offset[:, i], 0) if i < n else 0
        total = (total + worked[:, i] + moved) % 10
        totals[:, i] = total
    steps = np.where(double, n + 1, n)  # (count,) worked steps of each document

    ids = np.full((count, length), TOKEN_ID[PAD], dtype=np.int64)
    d0, t0 = TOKEN_ID["0"], TOKEN_ID["+0"]
    ids[:, 0] = np.array([TOKEN_ID[k] for k in KINDS])[kind]
    ids[:, 1:2 * n:2] = d0 + terms
    ids[:, 2:2 * n:2] = TOKEN_ID["+"]
    ids[:, 2 * n] = TOKEN_ID["="]
    p = PROMPT_LEN
    ids[:, p] = np.select([guess, double], [TOKEN_ID["guess"], TOKEN_ID["double"]], TOKEN_ID["work"])
    rows = np.arange(count)
    for i in range(n + 1):
        on = ~guess & (i < steps)
        ids[on, p + 1 + 2 * i] = t0 + worked[on, i]
        ids[on, p + 2 + 2 * i] = d0 + totals[on, i]
    end = p + 1 + 2 * steps  # (count,) where `answer` goes in a worked document
    work = ~guess
    ids[rows[work], end[work]] = TOKEN_ID["answer"]
    ids[rows[work], end[work] + 1] = d0 + totals[rows[work], steps[work] - 1]
    ids[rows[work], end[work] + 2] = TOKEN_ID[EOS]
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
