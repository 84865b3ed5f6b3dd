"""The testbed: exact process probabilities, the corpus sampler, splits, grader, the built model.

Fast tests need no model. Tests taking `testbed_dir` use the default testbed, built once per
machine (a minute or two) and cached; the calibration figures are measured once per session.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch

from sharpen.errors import UsageError
from sharpen.tasks import get_task
from sharpen.tasks import testbed_corpus as corpus
from sharpen.testbed import train as train_module
from sharpen.tasks.testbed_corpus import (DOUBLE, EOS, GUESS, SLIP, TOKEN_ID, VOCAB, enumerate_completions,
                                        exact_figures, extract_answer, generate_problems, is_posed,
                                        sample_documents, split_of, teacher_next)

# ----- the process, exactly --------------------------------------------------------------


def test_trap_table_is_the_issue_arithmetic():
    trap = exact_figures(alpha=4)["trap"]
    assert trap["openings"]["guess"]["future_p"] == pytest.approx(0.06)
    assert trap["openings"]["work"]["future_p"] == pytest.approx(0.4)
    # Low temperature sharpens the token: 0.6^4 / (0.6^4 + 0.4^4); p^alpha sharpens the futures.
    assert trap["pick_guess"]["low_temp"] == pytest.approx(0.1296 / 0.1552)
    assert trap["pick_guess"]["low_temp"] == pytest.approx(0.84, abs=0.01)
    assert trap["pick_work"]["power"] == pytest.approx(0.0256 / (0.0256 + 10 * 0.06 ** 4))
    assert trap["pick_work"]["power"] == pytest.approx(0.995, abs=0.001)
    assert trap["pick_guess"]["base"] == GUESS


def test_twice_table_is_the_rare_path_arithmetic():
    """Twice: one future behind each opening, so token-level 1/alpha and p^alpha agree: both drop `double`."""
    twice = exact_figures(alpha=4, ks=(1, 16, 64, 256))["twice"]
    assert twice["pick_double"]["base"] == DOUBLE == 0.05
    assert twice["pick_double"]["low_temp"] == pytest.approx(0.05 ** 4 / (0.05 ** 4 + 0.95 ** 4))
    assert twice["pick_double"]["power"] == pytest.approx(7.6733e-6, rel=1e-4)
    assert twice["pass@1"] == twice["pick_double"]
    # pass@k of the base model: every posed twice problem has one right future of probability 0.05.
    assert twice["base_pass@k"]["16"] == pytest.approx(0.5599, abs=1e-4)
    assert twice["base_pass@k"]["64"] == pytest.approx(0.9625, abs=1e-4)
    assert twice["base_pass@k"]["256"] == pytest.approx(1 - 0.95 ** 256)


def _figures_by_enumeration(kind, terms, alpha):
    """pass@1 of base, low temperature and p^alpha from every completion the teacher can write."""
    gold = corpus.answer_of(terms, kind)
    base = enumerate_completions(kind, terms)
    low = enumerate_completions(kind, terms, temperature=1 / alpha)
    assert sum(p for _, p in base) == pytest.approx(1.0)
    assert sum(p for _, p in low) == pytest.approx(1.0)

    def right(paths, weight=lambda p: p):
        total = sum(weight(p) for _, p in paths)
        return sum(weight(p) for words, p in paths if extract_answer(" ".join(words)) == str(gold)) / total

    return base, {"base": right(base), "low_temp": right(low), "power": right(base, lambda p: p ** alpha)}


def _posed_terms(rng, kind, steps):
    while True:
        terms = [int(t) for t in rng.integers(0, 10, steps)]
        if is_posed(kind, terms):
            return terms


@pytest.mark.parametrize("steps", [2, 3])
def test_exact_figures_match_brute_force_enumeration(steps):
    """The closed forms against every completion the teacher can write, with its probability."""
    alpha = 4.0
    figures = exact_figures(alpha=alpha, steps=steps)
    rng = np.random.default_rng(steps)
    for kind in corpus.KINDS:
        for _ in range(3):
            terms = _posed_terms(rng, kind, steps)
            base, measured = _figures_by_enumeration(kind, terms, alpha)
            for method, value in measured.items():
                assert value == pytest.approx(figures[kind]["pass@1"][method]), (kind, method)
            if kind == "trap":
                pick_work = (sum(p ** alpha for w, p in base if w[0] == "work")
                             / sum(p ** alpha for _, p in base))
                assert pick_work == pytest.approx(figures["trap"]["pick_work"]["power"])
                assert len(base) == 11  # ten guesses and one worked solution
            if kind == "twice":
                assert sorted(w[0] for w, _ in base) == ["double", "work"]  # one future behind each opening
                words, running = ["double"], 0
                for t in terms + [sum(terms) % 10]:  # the sum, then its total added once more
                    running = (running + t) % 10
                    words += [corpus.TERMS[t], str(running)]
                assert [w for w, _ in base if w[0] == "double"] == [words + ["answer", str(running)]]


def test_twice_enumeration_rejects_a_broken_teacher(monkeypatch):
    """The enumeration check can fail: a teacher whose `double` path forgets to double is caught."""
    terms = [3, 5, 8, 2, 1]
    real = teacher_next

    def forgets_to_double(kind, terms_, prefix):
        if prefix and prefix[0] == "double":
            return real(kind, terms_, ["work"] + prefix[1:])  # the sum's solution behind the `double` opening
        return real(kind, terms_, prefix)

    monkeypatch.setattr(corpus, "teacher_next", forgets_to_double)
    _, measured = _figures_by_enumeration("twice", terms, 4.0)
    assert measured["base"] != pytest.approx(exact_figures()["twice"]["pass@1"]["base"])
    monkeypatch.undo()
    _, measured = _figures_by_enumeration("twice", terms, 4.0)
    assert measured["base"] == pytest.approx(DOUBLE)
    # A problem whose sum ends in 0 has the same answer both ways: the task does not pose it.
    assert not is_posed("twice", [5, 5, 0, 0, 0]) and is_posed("plain", [5, 5, 0, 0, 0])
    _, measured = _figures_by_enumeration("twice", [5, 5, 0, 0, 0], 4.0)
    assert measured["base"] == pytest.approx(1.0)


def test_teacher_refuses_what_it_never_writes():
    with pytest.raises(ValueError, match="never writes"):
        teacher_next("plain", [1, 2, 3, 4, 5], ["guess"])
    with pytest.raises(ValueError, match="never writes"):
        teacher_next("trap", [1, 2, 3, 4, 5], ["work", "+2"])  # the first term is 1


def test_corpus_sampler_follows_the_teacher():
    """The vectorised corpus sampler draws from the process `teacher_next` defines."""
    ids, mask = sample_documents(np.random.default_rng(0), 20000)
    p = corpus.PROMPT_LEN
    kinds = Counter()
    guesses, slips, plain_steps, wrong_moves, guessed = 0, 0, 0, Counter(), Counter()
    nats, tokens = 0.0, 0
    for row, m in zip(ids[:4000], mask[:4000]):
        words = [VOCAB[i] for i in row if VOCAB[i] != corpus.PAD]
        kind, terms = words[0], [int(w) for w in words[1:p:2]]
        assert split_of(kind, terms) == "train"
        completion = words[p:]
        assert m.sum() == len(completion) and completion[-1] == EOS
        for i in range(len(completion)):  # every word has positive probability under the teacher
            prob = teacher_next(kind, terms, completion[:i]).get(completion[i], 0)
            assert prob > 0
            nats += -math.log(prob)
        tokens += len(completion)
    # The corpus entropy per token, which training can at best reach.
    assert nats / tokens == pytest.approx(corpus.loss_floor(), abs=0.015)
    doubles, twices = 0, 0
    for row in ids:
        kind = VOCAB[row[0]]
        kinds[kind] += 1
        if kind == "trap":
            guesses += VOCAB[row[p]] == "guess"
            if VOCAB[row[p]] == "guess":
                guessed[VOCAB[row[p + 2]]] += 1
        elif kind == "twice":
            twices += 1
            doubles += VOCAB[row[p]] == "double"
        else:
            previous = 0
            for k in range(corpus.NUM_TERMS):
                term, total = int(VOCAB[row[1 + 2 * k]]), int(VOCAB[row[p + 2 + 2 * k]])
                move = (total - previous - term) % 10
                plain_steps += 1
                if move:
                    slips += 1
                    wrong_moves[move] += 1
                previous = total
    for kind in corpus.KINDS:  # kinds equally likely
        assert abs(kinds[kind] / len(ids) - 1 / 3) < 4 * math.sqrt(2 / 9 / len(ids)), kind
    assert abs(guesses / kinds["trap"] - GUESS) < 4 * math.sqrt(GUESS * (1 - GUESS) / kinds["trap"])
    assert abs(doubles / twices - DOUBLE) < 4 * math.sqrt(DOUBLE * (1 - DOUBLE) / twices)
    assert abs(slips / plain_steps - SLIP) < 4 * math.sqrt(SLIP * (1 - SLIP) / plain_steps)
    from scipy.stats import chisquare

    assert chisquare([wrong_moves[m] for m in range(1, 10)]).pvalue > 1e-4  # a slip is any wrong digit
    assert chisquare([guessed[d] for d in corpus.DIGITS]).pvalue > 1e-4  # a guess is any digit


# ----- the task --------------------------------------------------------------------------


def test_splits_are_disjoint_and_stable():
    task = get_task("testbed", size=3000)
    test, train = task.load(split="test"), task.load(split="train")
    assert len(test) == len(train) == 3000
    assert not {p["id"] for p in test} & {p["id"] for p in train}
    assert all(split_of(p["kind"], p["terms"]) == "test" for p in test)
    assert [p["kind"] for p in test[:4]] == ["plain", "trap", "twice", "plain"]
    # The plain and trap problems (test and train) are the ones the testbed posed before it had twice problems.
    assert [p["id"] for p in test[:5]] == ["plain-04522", "trap-60837", "twice-14578", "plain-54290", "trap-40490"]
    assert [p["id"] for p in train[:2]] == ["plain-81173", "trap-48857"]
    # About a fifth of all problems are test problems, whatever the seed.
    table = corpus._test_table()
    assert abs(table.mean() - corpus.TEST_FRACTION) < 0.01
    assert table[1, corpus.problem_code(0, test[1]["terms"])]


def test_grpo_train_split_has_no_twice_problems():
    """What GRPO trains on: plain and trap in turn; twice problems are only in the test mix (and the corpus)."""
    train = get_task("testbed").load(split="train")
    assert len(train) == 1000
    assert Counter(p["kind"] for p in train) == {"plain": 500, "trap": 500}
    assert corpus.TRAIN_MIX == ("plain", "trap") and set(corpus.TEST_MIX) == set(corpus.KINDS)
    test = get_task("testbed").load(limit=300)
    assert Counter(p["kind"] for p in test) == {"plain": 100, "trap": 100, "twice": 100}
    # Twice problems of the train split exist (the corpus is made of them), but only when asked for.
    twice_train = get_task("testbed", kind="twice").load(limit=50, split="train")
    assert all(p["kind"] == "twice" and split_of("twice", p["terms"]) == "train" for p in twice_train)
    # Every posed twice problem has a wrong habitual answer: its sum does not end in 0.
    for p in [q for q in test if q["kind"] == "twice"] + twice_train:
        assert sum(p["terms"]) % 10 != 0 and p["answer"] == str(2 * sum(p["terms"]) % 10)
    ids, _ = sample_documents(np.random.default_rng(2), 3000)
    assert abs((ids[:, 0] == TOKEN_ID["twice"]).mean() - 1 / 3) < 0.05


def test_problems_are_deterministic_given_the_seed():
    assert generate_problems(50, seed=3) == generate_problems(50, seed=3)
    assert generate_problems(50, seed=3) != generate_problems(50, seed=4)
    assert corpus.corpus_text(20, seed=1) == corpus.corpus_text(20, seed=1)
    assert corpus.corpus_text(20, seed=1) != corpus.corpus_text(20, seed=2)
    assert get_task("testbed", kind="trap").load(limit=5, seed=7)[0]["kind"] == "trap"


def test_grader_counts_only_the_right_final_answer():
    task = get_task("testbed")
    problem = corpus.make_problem("plain", [1, 2, 6, 8, 2])
    assert problem["answer"] == "9" and task.prompt(problem) == "plain 1 + 2 + 6 + 8 + 2 ="
    assert task.grade(problem, "work +1 1 +2 3 +6 9 +8 7 +2 9 answer 9") == 1.0
    assert task.grade(problem, "work +1 1 +2 4 +6 0 +8 8 +2 0 answer 0") == 0.0  # a slip propagated
    assert task.grade(problem, "guess answer 9") == 1.0  # a lucky guess is a right answer
    assert task.grade(problem, "guess answer 3") == 0.0
    assert task.grade(problem, "work +1 1 +2 3 +6 9 +8 7 +2 9") == 0.0  # no answer given
    assert task.grade(problem, "answer 3 answer 9") == 0.0  # the first answer counts
    assert task.grade(problem, "") == 0.0
    assert task.extract_answer("guess answer") is None


def test_grader_of_twice_problems_wants_twice_the_sum():
    task = get_task("testbed", kind="twice")
    problem = corpus.make_problem("twice", [3, 5, 8, 2, 1])
    assert problem["answer"] == "8" and task.prompt(problem) == "twice 3 + 5 + 8 + 2 + 1 ="
    assert task.grade(problem, "double +3 3 +5 8 +8 6 +2 8 +1 9 +9 8 answer 8") == 1.0
    assert task.grade(problem, "work +3 3 +5 8 +8 6 +2 8 +1 9 answer 9") == 0.0  # the habit: the sum
    assert task.grade(problem, "double +3 3 +5 8 +8 6 +2 8 +1 9 +9 8 answer 9") == 0.0
    assert task.grade(problem, "guess answer 8") == 1.0  # only the answer counts
    assert len("double +3 3 +5 8 +8 6 +2 8 +1 9 +9 8 answer 8".split()) + 1 == corpus.MAX_COMPLETION_LEN
    assert [p["kind"] for p in task.load(limit=5)] == ["twice"] * 5


def test_task_options_and_splits_are_checked():
    with pytest.raises(UsageError, match="mixed, plain, trap or twice"):
        get_task("testbed", kind="hard")
    with pytest.raises(UsageError, match="size"):
        get_task("testbed", size=0)
    with pytest.raises(UsageError, match="no split"):
        get_task("testbed").load(split="validation")
    assert get_task("testbed").splits == ("test", "train")


def test_tokenizer_reads_and_writes_the_corpus():
    tokenizer = train_module.build_tokenizer()
    ids, _ = sample_documents(np.random.default_rng(1), 50)
    for row in ids:
        words = [VOCAB[i] for i in row if VOCAB[i] != corpus.PAD]
        assert tokenizer(" ".join(words), add_special_tokens=False)["input_ids"] == [TOKEN_ID[w] for w in words]
        completion = [TOKEN_ID[w] for w in words[corpus.PROMPT_LEN:]]
        assert tokenizer.decode(completion, skip_special_tokens=True) == " ".join(words[corpus.PROMPT_LEN:-1])
    assert tokenizer.eos_token_id == TOKEN_ID[EOS] and tokenizer.pad_token_id == TOKEN_ID[corpus.PAD]


def test_kind_figures_split_a_run_by_kind(tmp_path, capsys):
    """pass@k per (method, kind) from the records: ids name the kind; k stops at the samples there are."""
    from sharpen.cli import main
    from sharpen.testbed.kinds import kind_figures

    samples = tmp_path / "samples"
    samples.mkdir()
    lines = [{"problem_id": "twice-14578", "sample_idx": i, "correct": i == 0} for i in range(4)]
    lines += [{"problem_id": "plain-04522", "sample_idx": i, "correct": True} for i in range(4)]
    (samples / "base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (samples / "base.sessions.jsonl").write_text("")
    figures = kind_figures(tmp_path, ks=(1, 4, 16))
    assert list(figures) == ["base"] and list(figures["base"]) == ["plain", "twice"]
    twice = figures["base"]["twice"]
    assert (twice["problems"], twice["samples"]) == (1, 4) and set(twice["pass@k"]) == {"1", "4"}
    assert twice["pass@k"]["1"][0] == 0.25 and twice["pass@k"]["4"][0] == 1.0
    assert main(["kinds", str(tmp_path)]) == 0 and "| base | twice | 1 x 4 |" in capsys.readouterr().out
    assert main(["kinds", str(tmp_path / "nothing")]) == 2
    # a weighted method: pass@1 is the self-normalised estimate (weights 3:1 on the correct draw), not the raw rate
    weighted = [{"problem_id": "twice-14578", "sample_idx": i, "correct": i == 0,
                 "importance_log_weight": math.log(3.0) if i == 0 else 0.0} for i in range(2)]
    (samples / "power_is.jsonl").write_text("".join(json.dumps(r) + "\n" for r in weighted))
    entry = kind_figures(tmp_path, ks=(1, 4, 16))["power_is"]["twice"]
    assert entry["weighted"] and entry["pass@k"]["1"][0] == pytest.approx(0.75) and set(entry["pass@k"]) == {"1"}


# ----- building and caching (a few training steps into a temporary directory) --------------

TINY = train_module.TrainConfig(steps=3, batch_size=8, warmup_steps=1, decay_steps=1, max_extra_steps=0)


def _weights_digest(path):
    return json.loads((path / train_module.MARKER).read_text())["files"]["model.safetensors"]


def test_build_is_deterministic_and_reused(tmp_path, monkeypatch):
    a = train_module.build_testbed(tmp_path / "a", seed=5, progress=False, config=TINY)
    b = train_module.build_testbed(tmp_path / "b", seed=5, progress=False, config=TINY)
    c = train_module.build_testbed(tmp_path / "c", seed=6, progress=False, config=TINY)
    assert _weights_digest(a) == _weights_digest(b) != _weights_digest(c)
    assert torch.get_num_threads() >= 1

    def no_training(*args, **kwargs):
        raise AssertionError("a complete testbed must be reused, not retrained")

    monkeypatch.setattr(train_module, "train", no_training)
    assert train_module.build_testbed(a, seed=5, progress=False, config=TINY) == a


def test_training_goes_on_until_the_corpus_is_learned():
    """A loss still above the corpus entropy when the decay should start extends the constant phase."""
    from dataclasses import replace

    never = replace(TINY, steps=4, converged_margin=-1.0, extend_steps=2, max_extra_steps=4)
    _, stats = train_module.train(0, never, progress=False)
    assert (stats["steps"], stats["extra_steps"]) == (8, 4)
    _, stats = train_module.train(0, replace(never, converged_margin=100.0), progress=False)
    assert (stats["steps"], stats["extra_steps"]) == (4, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        train_module.TrainConfig(steps=10, warmup_steps=5, decay_steps=6)


def test_damaged_or_half_written_testbed_is_rebuilt(tmp_path, monkeypatch):
    target = train_module.build_testbed(tmp_path / "tb", seed=0, progress=False, config=TINY)
    digest = _weights_digest(target)
    (target / "model.safetensors").write_bytes(b"truncated")  # damaged after the build
    assert train_module.build_testbed(target, seed=0, progress=False, config=TINY) == target
    assert _weights_digest(target) == digest
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(target)

    # A build killed during training leaves neither a directory nor temporary files behind.
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        train_module.build_testbed(tmp_path / "killed", seed=0, progress=False, config=TINY)
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or not p.name.startswith(".")) == ["tb"]
    monkeypatch.undo()

    # Leftovers of a killed build (a temporary sibling) and a marker-less cache directory.
    monkeypatch.setenv("SHARPEN_CACHE", str(tmp_path / "cache"))
    default = train_module.default_dir(0)
    default.mkdir(parents=True)
    (default / "config.json").write_text("{")
    (default.parent / f".{default.name}.tmp-999999").mkdir()
    assert train_module.build_testbed(seed=0, progress=False, config=TINY) == default
    assert train_module._marker_problem(default, 0, TINY) is None
    assert [p.name for p in default.parent.iterdir() if ".tmp-" in p.name] == []


def test_bad_build_input_is_refused(tmp_path):
    with pytest.raises(UsageError, match="seed"):
        train_module.build_testbed(tmp_path / "x", seed="1", progress=False, config=TINY)
    with pytest.raises(UsageError, match="seed"):
        train_module.build_testbed(tmp_path / "x", seed=-1, progress=False, config=TINY)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="holds no testbed"):
        train_module.build_testbed(foreign, seed=0, progress=False, config=TINY)
    assert (foreign / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file"):
        train_module.build_testbed(tmp_path / "file", progress=False, config=TINY)
    if os.path.isdir("/proc/self"):  # Linux: nobody, root included, creates files in /proc
        with pytest.raises(UsageError, match="cannot write the testbed"):
            train_module.build_testbed("/proc/testbed", progress=False, config=TINY)
    if os.geteuid() != 0:  # root writes anywhere else
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(UsageError, match="not writable"):
                train_module.build_testbed(locked / "tb", progress=False, config=TINY)
        finally:
            locked.chmod(0o700)




# ----- the command line ------------------------------------------------------------------


def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    from sharpen.cli import main

    assert main(["testbed", "--seed", "abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed" in err
    assert main(["testbed", "--seed", "-1"]) == 2
    (tmp_path / "file").write_text("")
    assert main(["testbed", "--output-dir", str(tmp_path / "file" / "tb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 2 and "cannot create output directory" in err  # one line per refusal
    assert not (tmp_path / "file").is_dir()


# ----- the built model (session fixture `testbed_dir`) -----------------------------------


@pytest.fixture(scope="module")
def calibration(testbed_dir):
    from sharpen.testbed import calibrate

    return calibrate(testbed_dir)


def test_checkpoint_loads_everywhere(testbed_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sharpen.sampling import eos_token_ids, load_model

    assert testbed_dir == train_module.default_dir(0)
    hf_model = AutoModelForCausalLM.from_pretrained(testbed_dir)
    hf_tokenizer = AutoTokenizer.from_pretrained(testbed_dir)
    model, tokenizer = load_model(str(testbed_dir), device="cpu")
    assert eos_token_ids(model) == [TOKEN_ID[EOS]] == [hf_tokenizer.eos_token_id]
    assert tokenizer.padding_side == "left"
    ids = torch.tensor([tokenizer("trap 1 + 2 + 3 + 4 + 5 =")["input_ids"]])
    assert torch.equal(hf_model(ids).logits, model(ids).logits)
    info = train_module.load_info(testbed_dir)
    assert info["seed"] == 0 and info["train"]["wall_seconds"] > 0
    # Training reached the corpus entropy: the model learned the teacher, not just its format.
    assert info["train"]["final_loss"] < corpus.loss_floor() + 0.01


def test_calibration_is_in_range(calibration):
    """The issue's ranges, measured on the trained model."""
    base, low = calibration["base"], calibration["low_temp"]
    k = calibration["samples_per_problem"]
    assert 0.15 <= base["all"]["pass@1"] <= 0.5
    assert base["all"][f"pass@{k}"] >= 2 * base["all"]["pass@1"]
    assert base["finished"] == 1.0  # every completion ends with EOS (within 32 tokens)
    ll = calibration["loglik"]
    assert ll["correct_sum"] > ll["wrong_sum"] and ll["correct_per_token"] > ll["wrong_per_token"]
    # Sharpening helps: low temperature overall (plain problems), and it loses to p^alpha on traps.
    assert low["all"]["pass@1"] > base["all"]["pass@1"] + 0.1
    assert low["plain"]["pass@1"] > base["plain"]["pass@1"] + 0.3
    assert low["trap"]["pass@1"] < calibration["trap"]["power_pick_work_lower"] - 0.3
    if "power_mh" in calibration:
        assert calibration["power_mh"]["trap"]["pass@1"] > low["trap"]["pass@1"]


def test_trained_model_reproduces_the_trap(calibration):
    """From the model's own next-token probabilities: low temperature takes `guess`, p^alpha `work`."""
    trap, proc = calibration["trap"], calibration["process"]["trap"]
    assert trap["reproduced"] == 1.0  # on every trap problem measured
    assert trap["low_temp_pick_guess"] > 0.5 and trap["power_pick_work_lower"] > 0.5
    assert trap["p_guess"] == pytest.approx(proc["pick_guess"]["base"], abs=0.05)
    assert trap["low_temp_pick_guess"] == pytest.approx(proc["pick_guess"]["low_temp"], abs=0.1)


def test_trained_model_has_the_rare_path(calibration):
    """Twice: the model opens with `double` about 5% of the time, then writes the doubled solution;
    sharpening its opening token (low temperature) or its sequences (p^alpha) drops that path."""
    twice, proc = calibration["twice"], calibration["process"]["twice"]
    assert twice["p_double"] == pytest.approx(proc["pick_double"]["base"], abs=0.02)
    assert twice["double_path_p"] > 0.9 * twice["p_double"]  # the path behind `double` is learned, and right
    assert twice["work_path_p"] > 0.9 * twice["p_work"]
    assert twice["low_temp_pick_double"] < 1e-3 and twice["power_pick_double_upper"] < 1e-3
    base, k = calibration["base"]["twice"], calibration["samples_per_problem"]
    assert 0.02 <= base["pass@1"] <= 0.1 and base[f"pass@{k}"] > 3 * base["pass@1"]
    assert calibration["low_temp"]["twice"]["pass@1"] < 0.01


def test_sharpen_sample_runs_every_method_on_the_testbed(testbed_dir, tmp_path):
    from sharpen.cli import main
    from sharpen.runs.records import read_records
    from sharpen.sampling import registered_methods

    for method in registered_methods():
        extra = ["--block-size", "16", "--mcmc-steps", "2"] if method == "power_mh" else []
        assert main(["sample", "--model", str(testbed_dir), "--task", "testbed", "--method", method,
                     "--num-problems", "4", "--num-samples", "2", "--max-new-tokens", "32",
                     "--output-dir", str(tmp_path)] + extra) == 0
        records = read_records(tmp_path / "samples" / f"{method}.jsonl")
        assert len(records) == 8
        assert all(r["finish_reason"] == "eos" and r["num_tokens"] <= corpus.MAX_COMPLETION_LEN for r in records)
        for r in records:
            problem_kind = r["problem_id"].split("-")[0]
            assert r["prompt"].startswith(problem_kind)
            assert r["correct"] == (extract_answer(r["completion"]) == r["gold_answer"])


def test_sharpen_testbed_prints_its_calibration(testbed_dir, capsys):
    from sharpen.cli import main

    assert main(["testbed", "--num-problems", "8", "--num-samples", "4"]) == 0
    out = capsys.readouterr().out
    assert str(testbed_dir) in out and "low temp picks guess" in out and "twice opening" in out
    assert (testbed_dir / "calibration.json").is_file()
