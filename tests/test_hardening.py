"""Hardening: one writer per run directory, each command writes only its own files, location-independent
study identity, every setting checked before any work, one-line errors, order-independent analysis.

    python -m pytest -q tests/test_hardening.py      # about 20 s on 2 CPU cores
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sharpen.analysis import AnalysisConfig, analyze
from sharpen.errors import UsageError
from sharpen.runs.locks import HELD_ENV, LOCK_FILE, hold_run_dir
from sharpen.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARPEN = [sys.executable, "-m", "sharpen"]


def run_cli(*args, cwd=REPO, env=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([*SHARPEN, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(done, *needles):
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def cli_error(capsys, *args, needles=()):
    """`sharpen ARGS` in this process: exit status 2 and one error line (progress bars aside) holding `needles`."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, (code, err[-2000:])
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def holder(tmp_path):
    """Another process that holds a run directory's lock until the test ends."""
    processes = []

    def start(run_dir: Path, command: str = "sample"):
        code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
                f"from sharpen.runs.locks import hold_run_dir\n"
                f"with hold_run_dir({str(run_dir)!r}, {command!r}):\n"
                f"    print('held', flush=True); time.sleep(120)\n")
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


# ---- one writer per run directory -------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_holder(tmp_path, holder, tiny_checkpoint, capsys):
    run_dir = tmp_path / "run"
    process = holder(run_dir, "sample")
    line = cli_error(capsys, "sample", "--model", tiny_checkpoint, "--task", "basic_arithmetic", "--num-problems", 2,
                     "--output-dir", run_dir,
                     needles=(str(run_dir), f"process {process.pid}", "sharpen sample", "one writer"))
    assert "wait for it" in line
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # nothing written beside the lock
    # analyze and grpo into the same directory are refused the same way
    (run_dir / "samples").mkdir()
    (run_dir / "samples" / "base.jsonl").write_text(json.dumps(_record("base", "p0", 0, True)) + "\n")
    cli_error(capsys, "analyze", run_dir, "--no-score", "--wandb", "off", needles=(f"process {process.pid}",))


def test_a_directory_inside_a_held_one_is_held_too(tmp_path, holder):
    study = tmp_path / "study"
    holder(study, "study")
    with pytest.raises(UsageError, match=r"study is being written by process \d+.*sharpen study"):
        with hold_run_dir(study / "grpo", "grpo"):
            pass
    assert not (study / "grpo").exists()


def test_the_holder_nests_its_stages_and_its_children_inherit_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    with hold_run_dir(run_dir, "study"):
        with hold_run_dir(run_dir, "sample"), hold_run_dir(run_dir / "grpo", "grpo"):
            pass
        assert str(run_dir.resolve()) in os.environ[HELD_ENV].split(os.pathsep)
        # An accelerate relaunch (a child process) works inside the parent's lock ...
        code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                f"from sharpen.runs.locks import hold_run_dir\n"
                f"with hold_run_dir({str(run_dir / 'grpo')!r}, 'grpo'): print('ok')\n")
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert child.stdout.strip() == "ok", child.stderr
        # ... and an unrelated process does not.
        unrelated = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   env={k: v for k, v in os.environ.items() if k != HELD_ENV})
        assert "is being written by" in unrelated.stderr
    assert HELD_ENV not in os.environ
    with hold_run_dir(run_dir, "analyze"):  # released: the next command takes it
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    run_dir = tmp_path / "run"
    process = holder(run_dir)
    process.kill()
    process.wait()
    with hold_run_dir(run_dir, "sample"):
        assert (run_dir / LOCK_FILE).exists()


def test_two_concurrent_samplers_write_every_record_once(tmp_path, tiny_checkpoint, capsys):
    """Two `sharpen sample` runs into one directory at once: one samples, the other is refused; no duplicates.

    The first is another process, frozen (SIGSTOP) as soon as /proc/locks shows it holding the run
    directory's lock, so the second (in this process, which saves a second start of Python and torch)
    always meets a live holder.
    """
    import signal

    run_dir = tmp_path / "run"

    def holds_the_lock(pid: int) -> bool:  # /proc/locks: "1: FLOCK ADVISORY WRITE <pid> <dev>:<inode> 0 EOF"
        if not (run_dir / LOCK_FILE).exists():
            return False
        inode = str((run_dir / LOCK_FILE).stat().st_ino)
        return any(f[1] == "FLOCK" and f[4] == str(pid) and f[5].split(":")[-1] == inode
                   for f in map(str.split, Path("/proc/locks").read_text().splitlines()))

    records = run_dir / "samples" / "base.jsonl"
    args = ["sample", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--num-problems", "6",
            "--num-samples", "4", "--max-new-tokens", "24", "--output-dir", str(run_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    first = subprocess.Popen([*SHARPEN, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not holds_the_lock(first.pid):
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None and holds_the_lock(first.pid), "the first sampler should be frozen holding the lock"
        before = records.read_bytes() if records.exists() else None
        cli_error(capsys, *args, needles=("is being written by", f"process {first.pid}"))
        assert (records.read_bytes() if records.exists() else None) == before  # the refused one wrote nothing
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    lines = records.read_text().splitlines()
    keys = [(r["problem_id"], r["sample_idx"]) for r in map(json.loads, lines)]
    assert len(keys) == len(set(keys)) == 24


# ---- each command writes only its own files ---------------------------------------------------

def test_grpo_refuses_a_study_or_sampling_directory_but_takes_a_study_stage(tmp_path, capsys):
    from sharpen.rl.rundir import check_owned

    study = tmp_path / "study"
    (study / "samples").mkdir(parents=True)
    (study / "study.json").write_text("{}")
    (study / "metrics.json").write_text("{}")
    cli_error(capsys, "grpo", "--model", "smollm2-135m", "--task", "basic_arithmetic", "--output-dir", study,
              "--max-steps", 1, needles=("holds a study or sampling records", str(study / "grpo")))
    assert (study / "metrics.json").read_text() == "{}"
    (study / "grpo").mkdir()
    check_owned(study / "grpo")  # the study's own stage is fine
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty and holds no GRPO run"):
        check_owned(foreign)


def test_overwrite_deletes_only_what_sharpen_wrote(tmp_path):
    from sharpen.study.pipeline import claim_output_dir
    from sharpen.study.config import load_study_config

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_text("precious")
    config = load_study_config("testbed", [f"output_dir={foreign}"])
    with pytest.raises(UsageError, match="sharpen did not write"):
        with hold_run_dir(foreign, "study"):
            (foreign / LOCK_FILE).unlink()  # as if the lock lived elsewhere: no marker of ours
            claim_output_dir(config, overwrite=True)
    assert (foreign / "holiday.jpg").read_text() == "precious"

    ours = tmp_path / "ours"
    config = load_study_config("testbed", [f"output_dir={ours}"])
    with hold_run_dir(ours, "study"):
        claim_output_dir(config, overwrite=False)
        (ours / "samples").mkdir()
        (ours / "samples" / "base.jsonl").write_text(json.dumps(_record("base", "p0", 0, True)) + "\n")
    other = load_study_config("testbed", [f"output_dir={ours}", "seed=5"])
    with hold_run_dir(ours, "study"):
        with pytest.raises(UsageError, match=r"other settings \(seed\)"):
            claim_output_dir(other, overwrite=False)
        claim_output_dir(other, overwrite=True)
        assert sorted(p.name for p in ours.iterdir()) == [LOCK_FILE, "study.json"]


# ---- identity and early checks ----------------------------------------------------------------

def test_study_identity_does_not_depend_on_the_working_directory(tmp_path, tiny_checkpoint, monkeypatch):
    from sharpen.study.config import load_study_config

    home = tmp_path / "project"
    home.mkdir()
    (home / "model").symlink_to(tiny_checkpoint, target_is_directory=True)
    (home / "data.json").write_text(json.dumps([{"problem": "1+1", "answer": "2"}]))
    (home / "study.yaml").write_text("name: s\nmodel: model\ntask: math500\ntask_args: {data_path: data.json}\n"
                                     "methods: [base]\n")
    identities = []
    for cwd, path in ((home, "study.yaml"), (tmp_path, "project/study.yaml"), (Path("/"), str(home / "study.yaml"))):
        monkeypatch.chdir(cwd)
        identities.append(load_study_config(path).identity())
    assert identities[0] == identities[1] == identities[2]
    assert identities[0]["model"] == str((home / "model").resolve())
    assert identities[0]["task_args"]["data_path"] == str((home / "data.json").resolve())


@pytest.mark.parametrize("override, message", [
    ("power_mh.block_size=0", "block_size must be an integer >= 1"),
    ("low_temp.temperature=-1", "temperature must be a number in [0.01, 100]"),
    ("grpo.max_step=3", "unknown key 'grpo.max_step'"),
    ("grpo.num_generations=3", "num_generations"),
    ("task_args.colour=red", "colour"),
])
def test_a_rejected_study_writes_nothing(tmp_path, override, message, capsys):
    run_dir = tmp_path / "study"
    cli_error(capsys, "study", "--config", "testbed", override, f"output_dir={run_dir}", needles=(message,))
    assert not run_dir.exists()


def test_a_session_that_wrote_no_record_does_not_block_the_corrected_command(tmp_path, tiny_checkpoint, capsys):
    run_dir = tmp_path / "run"
    args = ["sample", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--num-problems", "2",
            "--max-new-tokens", "8", "--output-dir", str(run_dir)]
    assert main([*args, "--seed", "7"]) == 0
    records = run_dir / "samples" / "base.jsonl"
    records.write_text("")  # as if that session had died before its first record
    assert main([*args, "--seed", "8"]) == 0
    assert json.loads((run_dir / "samples" / "base.config.json").read_text())["identity"]["seed"] == 8
    # with a record on disk the settings bind
    cli_error(capsys, *args, "--seed", 9, needles=("other settings (seed)",))


def test_a_run_made_before_a_setting_existed_resumes(tmp_path, tiny_checkpoint, capsys):
    """A config written before power_mh had `position` counts it as the default, so the run resumes."""
    run_dir = tmp_path / "run"
    args = ["sample", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--num-problems", "2",
            "--method", "power_mh", "--max-new-tokens", "8", "--block-size", "4", "--mcmc-steps", "1",
            "--output-dir", str(run_dir)]
    assert main(args) == 0
    path = run_dir / "samples" / "power_mh.config.json"
    config = json.loads(path.read_text())
    del config["identity"]["settings"]["position"]
    path.write_text(json.dumps(config))
    assert main([*args, "--num-samples", "2"]) == 0
    cli_error(capsys, *args, "--position", "entropy", needles=("other settings (position)",))


@pytest.mark.parametrize("method, flag, value, message", [
    ("power_smc", "--num-particles", "0", "--num-particles must be"),
    ("power_smc", "--ess-threshold", "1.5", "--ess-threshold must be"),
    ("power_sps", "--num-candidates", "0", "--num-candidates must be"),
    ("power_sps", "--num-rollouts", "1", "--num-rollouts must be"),
    ("power_mh", "--position", "middle", "--position must be one of uniform, entropy"),
])
def test_bad_sampler_settings_are_one_line(tmp_path, method, flag, value, message, capsys):
    cli_error(capsys, "sample", "--model", "m", "--task", "basic_arithmetic", "--output-dir", tmp_path / "x",
              "--method", method, flag, value, needles=(message,))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("method", ["power_mh", "power_smc", "power_sps"])
def test_a_sliding_window_model_is_refused_before_sampling(tmp_path, method, capsys):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from conftest import char_tokenizer

    tok = char_tokenizer()
    path = tmp_path / "sliding"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, use_sliding_window=True,
                                 sliding_window=4, max_window_layers=0, eos_token_id=1)).save_pretrained(path)
    tok.save_pretrained(path)
    run_dir = tmp_path / "run"
    cli_error(capsys, "sample", "--model", path, "--task", "basic_arithmetic", "--num-problems", 1,
              "--output-dir", run_dir, "--method", method, needles=("sliding-window layers",))
    assert not list(run_dir.glob("samples/*.jsonl"))


# ---- one-line errors ------------------------------------------------------------------------

@pytest.mark.parametrize("args, needles", [
    (["sample", "--model", "m", "--task", "testbed", "--output-dir", "x", "--methd", "base"], ["did you mean --method"]),
    (["testbed", "--sed", "3"], ["did you mean --seed"]),
    (["study", "--confg", "testbed"], ["did you mean --config"]),
    (["analyze", "x", "--wandb-projct", "p"], ["did you mean --wandb-project"]),
    (["grpo", "--model", "m", "--task", "testbed", "--output-dir", "x", "--max-stepz", "3"],
     ["did you mean --max-steps"]),
    (["sample", "--model", "m", "--task", "testbed", "--output-dir", "x", "extra"], ["unrecognized arguments: extra"]),
])
def test_misspelled_flags_get_one_line_and_a_suggestion(args, needles, capsys):
    cli_error(capsys, *args, needles=needles)


def test_misspelled_flags_through_the_installed_command():
    """The same through a fresh `sharpen` process: what a user sees."""
    one_line_error(run_cli("testbed", "--sed", "3"), "did you mean --seed")


def test_an_output_path_that_is_a_file_is_refused_before_any_work(tmp_path, tiny_checkpoint, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for args in (["study", "--config", "testbed", f"output_dir={afile}"],
                 ["grpo", "--model", tiny_checkpoint, "--task", "basic_arithmetic", "--output-dir", afile],
                 ["sample", "--model", tiny_checkpoint, "--task", "basic_arithmetic", "--output-dir", afile / "sub"],
                 ["analyze", afile]):
        cli_error(capsys, *args, needles=(str(afile),))
    assert afile.read_text() == "mine"


def test_duplicate_problem_ids_are_refused_before_sampling(tmp_path, tiny_checkpoint, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "a", "problem": "1+1", "answer": "2"},
                                {"id": "b", "problem": "2+2", "answer": "4"},
                                {"id": "a", "problem": "3+3", "answer": "6"}]))
    run_dir = tmp_path / "run"
    cli_error(capsys, "sample", "--model", tiny_checkpoint, "--task", "math500", "--task-args", f"data_path={data}",
              "--output-dir", run_dir, needles=("used more than once (a)",))
    assert not run_dir.exists()


def test_a_full_disk_is_one_line_and_the_rerun_resumes(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    from sharpen.runs import records

    run_dir = tmp_path / "run"
    args = ["sample", "--model", str(tiny_checkpoint), "--task", "basic_arithmetic", "--num-problems", "3",
            "--num-samples", "2", "--max-new-tokens", "8", "--output-dir", str(run_dir)]
    real_write, writes = records.RecordWriter.write, []

    def write_until_full(self, record):
        if len(writes) == 3:
            self._file.write('{"torn": ')  # the device fills up half-way through a line
            self._file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        writes.append(record)
        real_write(self, record)

    monkeypatch.setattr(records.RecordWriter, "write", write_until_full)
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]  # beside the progress bar's lines
    assert len(errors) == 1 and errors[0].startswith("sharpen sample: error: no space left"), err
    assert "resumes" in errors[0] and "Traceback" not in err
    monkeypatch.setattr(records.RecordWriter, "write", real_write)
    assert main(args) == 0
    lines = (run_dir / "samples" / "base.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len({(json.loads(x)["problem_id"], json.loads(x)["sample_idx"]) for x in lines}) == 6


@pytest.mark.parametrize("field, value", [("completion_ids", [3, float("nan")]), ("sample_idx", float("nan")),
                                          ("base_logprob_sum", float("inf")), ("sample_idx", 1.5)])
def test_non_finite_or_mistyped_values_in_records_are_named(tmp_path, field, value, capsys):
    records = [_record("base", "p0", 0, True), _record("base", "p0", 1, False)]
    records[1][field] = value
    path = tmp_path / "samples" / "base.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cli_error(capsys, "analyze", tmp_path, "--no-score", "--wandb", "off", needles=(f"base.jsonl:2: {field}",))


# ---- order-independent analysis ---------------------------------------------------------------

def _record(method, pid, idx, correct, answer=None):
    ids = [3 + (idx * 7 + len(pid)) % 20, 4 + idx % 30, 5, 1]
    return {"method": method, "problem_id": pid, "sample_idx": idx, "prompt": f"q {pid}:", "completion": "x",
            "completion_ids": ids, "finish_reason": "eos", "extracted_answer": answer, "correct": bool(correct),
            "score": float(correct), "temperature": 1.0,
            "cost": {"sampled_tokens": 4, "forward_tokens": 9, "wall_seconds": 0.25}}


VOLATILE = ("created_utc", "run_dir", "sha256", "seconds", "wandb_dir", "first_line", "last_line")


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def test_metrics_do_not_depend_on_the_order_of_record_lines(tmp_path):
    rng = np.random.default_rng(3)
    ordered, shuffled = tmp_path / "ordered", tmp_path / "shuffled"
    for kind, skill in (("base", 0.3), ("low_temp", 0.6)):
        records = [_record(kind, f"p{i}", s, rng.random() < skill, answer=str(rng.integers(3)))
                   for i in range(40) for s in range(4)]
        for run_dir, rows in ((ordered, records), (shuffled, random.Random(1).sample(records, len(records)))):
            path = run_dir / "samples" / f"{kind}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = AnalysisConfig(score=False, embeddings="off", bootstrap=300)
    a, b = (json.loads(((d / "metrics.json").read_text())) for d in (ordered, shuffled) if analyze(d, config))
    assert _stable(a) == _stable(b)
    # the check can fail: shuffling the outcomes themselves changes the intervals
    path = shuffled / "samples" / "base.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    outcomes = [r["correct"] for r in rows]
    random.Random(2).shuffle(outcomes)
    path.write_text("".join(json.dumps(dict(r, correct=c, score=float(c))) + "\n" for r, c in zip(rows, outcomes)))
    analyze(shuffled, config)
    assert _stable(a) != _stable(json.loads((shuffled / "metrics.json").read_text()))
