"""Bad input that used to end in a traceback, pass silently or read wrongly: one line, exit status 2, nothing written.

    python -m pytest -q tests/test_bad_input.py      # about 20 s on 2 CPU cores

Issue 22, items 5-7: a cut-short weights file, data and record files that are not UTF-8, non-finite
GRPO numbers, alpha and temperatures out of their range, a `correct` that contradicts its `score`,
an unreachable --from-checkpoint while offline, and messages that named the wrong flag or counted
rows and prompts from 0. Each test asserts what the old code did not do (exit 2 and one line where it
raised a traceback or exited 0, the corrected wording where it printed a misleading one).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sharpen.cli import main

REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys, *args) -> str:
    """`sharpen ARGS` in this process: exit status 2, one error line on stderr (progress bars aside), no traceback."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, (code, err[-2000:])
    return errors[0]


def snapshot(directory: Path) -> dict:
    """Every file under `directory` (the lock's holder note aside) and a hash of its bytes."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".sharpen.lock"}


def sample_args(model, out, *extra):
    return ["sample", "--model", model, "--task", "basic_arithmetic", "--num-problems", 2, "--num-samples", 1,
            "--max-new-tokens", 4, "--output-dir", out, *extra]


# ---- item 5: tracebacks that are one line now ---------------------------------------------------

@pytest.fixture
def damaged_checkpoint(tiny_checkpoint, request):
    """The tiny checkpoint with its model.safetensors cut to `request.param` bytes (negative: that many from the end)."""
    weights = tiny_checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:request.param])
    return tiny_checkpoint


@pytest.mark.parametrize("damaged_checkpoint, reason", [
    (0, "truncated: 0 bytes, shorter than the 8-byte header length"),  # "header too small" in safetensors before
    (200, "truncated: 200 bytes, the header alone needs"),  # "invalid header length"
    (-500, "truncated"),  # "incomplete metadata, file not fully covered"
], indirect=["damaged_checkpoint"])
def test_a_truncated_weights_file_is_named_before_any_work(damaged_checkpoint, reason, tmp_path, capsys):
    out = tmp_path / "out"
    line = one_line_error(capsys, *sample_args(damaged_checkpoint, out))
    assert f"{damaged_checkpoint / 'model.safetensors'} is damaged ({reason}" in line, line
    assert not out.exists()


@pytest.mark.parametrize("damaged_checkpoint", [-500], indirect=True)
def test_a_study_names_a_truncated_weights_file_before_study_json(damaged_checkpoint, tmp_path, capsys):
    out = tmp_path / "study"
    line = one_line_error(capsys, "study", "--config", "testbed", "--output-dir", out, f"model={damaged_checkpoint}",
                          "task=basic_arithmetic", "methods=[base]", "wandb.mode=off")
    assert "model.safetensors is damaged (truncated" in line and not out.exists()


@pytest.mark.parametrize("damaged_checkpoint", [-500], indirect=True)
def test_grpo_names_a_truncated_weights_file_before_run_json(damaged_checkpoint, tmp_path, capsys):
    out = tmp_path / "grpo"
    line = one_line_error(capsys, "grpo", "--model", damaged_checkpoint, "--task", "basic_arithmetic",
                          "--output-dir", out)
    assert "model.safetensors is damaged (truncated" in line and not out.exists()


def _write_bad_bytes(path: Path) -> None:
    """A data file whose third line holds a byte that is not UTF-8 (for CSV: its third line is the second row)."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        # pyarrow validates strings it builds, so the column is assembled from raw buffers: offsets, then bytes.
        offsets = pa.py_buffer(b"".join(n.to_bytes(4, "little") for n in (0, 3, 7)))
        question = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"1+12\xff+2")])
        pq.write_table(pa.table({"question": question, "answer": ["2", "4"]}), path)
        return
    bad = "3\udcff+3".encode("utf-8", "surrogateescape")  # "3", the byte 0xff, "+3"
    if path.suffix == ".csv":
        path.write_bytes(b"question,answer\n1+1,2\n" + bad + b",6\n")
    elif path.suffix == ".json":
        path.write_bytes(b'[{"question": "1+1", "answer": "2"},\n{"question": "2+2", "answer": "4"},\n'
                         b'{"question": "' + bad + b'", "answer": "6"}]\n')
    else:
        path.write_bytes(b'{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": "4"}\n'
                         b'{"question": "' + bad + b'", "answer": "6"}\n')


@pytest.mark.parametrize("name, where", [
    ("data.jsonl", "line 3 (byte offset 85)"),  # UnicodeDecodeError from pyarrow before
    ("data.json", "line 3 (byte offset 88)"),  # "cannot be read as JSON (DatasetGenerationError ...)" before
    ("data.csv", "line 3 (byte offset 23)"),  # UnicodeDecodeError before
    ("data.parquet", "row 2"),  # UnicodeDecodeError before
])
def test_a_data_file_that_is_not_utf8_is_named_with_its_line(name, where, tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / name
    _write_bad_bytes(data)
    out = tmp_path / "out"
    line = one_line_error(capsys, *sample_args(tiny_checkpoint, out)[:3], "--task", "file", "--task-args",
                          f"path={data}", "grader=number", "--output-dir", out)
    assert f"'{data}'" in line and where in line and "UTF-8" in line, line
    assert not out.exists()


@pytest.fixture
def corrupted_run(tiny_checkpoint, tmp_path):
    """A sampled run (2 problems x 2 samples) whose second record line holds the byte 0xff."""
    run_dir = tmp_path / "run"
    assert main([str(a) for a in sample_args(tiny_checkpoint, run_dir, "--num-samples", 2)]) == 0
    path = run_dir / "samples" / "base.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"completion": "', b'"completion": "\xff', 1)
    path.write_bytes(b"\n".join(lines))
    return run_dir


def test_analyze_names_a_record_line_that_is_not_utf8(corrupted_run, capsys):
    before = snapshot(corrupted_run)
    line = one_line_error(capsys, "analyze", corrupted_run, "--no-score", "--wandb", "off")
    assert f"{corrupted_run / 'samples' / 'base.jsonl'}:2 is not UTF-8 (byte 0xff" in line, line
    assert snapshot(corrupted_run) == before  # nothing rewritten, nothing added


def test_resume_names_a_record_line_that_is_not_utf8_and_rewrites_nothing(corrupted_run, tiny_checkpoint, capsys):
    before = snapshot(corrupted_run)
    line = one_line_error(capsys, *sample_args(tiny_checkpoint, corrupted_run, "--num-samples", 3))
    assert "base.jsonl:2 is not UTF-8 (byte 0xff" in line, line
    assert snapshot(corrupted_run) == before  # the sound records are not rewritten, no session line added


def test_a_torn_last_line_cut_inside_a_character_still_resumes(tiny_checkpoint, tmp_path, capsys):
    """Only complete lines must be UTF-8: a writer killed inside a two-byte character is a torn line, cut as before."""
    run_dir = tmp_path / "run"
    assert main([str(a) for a in sample_args(tiny_checkpoint, run_dir)]) == 0
    path = run_dir / "samples" / "base.jsonl"
    with open(path, "ab") as f:
        f.write('{"completion": "caf\u00e9'.encode()[:-1])  # the first byte of é, then the kill
    assert main([str(a) for a in sample_args(tiny_checkpoint, run_dir, "--num-samples", 2)]) == 0
    assert len(path.read_text(encoding="utf-8").splitlines()) == 4


GRPO_BAD_NUMBERS = [
    ("--learning_rate", "nan", "learning_rate must be a finite number > 0, got nan"),  # torch error after run.json
    ("--learning_rate", "inf", "learning_rate must be a finite number > 0, got inf"),
    ("--learning_rate", "0", "learning_rate must be a finite number > 0, got 0.0"),
    ("--learning_rate=-1e-3", None, "learning_rate must be a finite number > 0, got -0.001"),
    ("--beta", "nan", "beta must be a finite number >= 0, got nan"),
    ("--max_grad_norm", "inf", "max_grad_norm must be a finite number >= 0, got inf"),
    ("--adam_beta2", "1", "adam_beta2 must be a finite number in [0, 1), got 1.0"),
    ("--top_p", "0", "top_p must be a finite number in (0, 1], got 0.0"),
    ("--temperature", "inf", "temperature must be a number in [0.01, 100], got inf"),
]


@pytest.mark.parametrize("flag, value, message", GRPO_BAD_NUMBERS)
def test_grpo_refuses_non_finite_numbers_before_writing(flag, value, message, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "grpo"
    line = one_line_error(capsys, "grpo", "--model", tiny_checkpoint, "--task", "basic_arithmetic",
                          "--output-dir", out, flag, *([value] if value is not None else []))
    assert message in line, line
    assert not out.exists()  # no run.json, completions/ or wandb run


def test_a_study_refuses_a_nan_learning_rate_before_study_json(tmp_path, capsys):
    run_dir = tmp_path / "study"
    line = one_line_error(capsys, "study", "--config", "testbed", "grpo.learning_rate=nan", f"output_dir={run_dir}")
    assert "learning_rate must be a finite number > 0, got nan" in line, line
    assert not run_dir.exists()  # study.json, grpo/run.json and its wandb run were written before


# ---- item 6: accepted silently before -----------------------------------------------------------

@pytest.mark.parametrize("method, flag, value", [
    ("power_mh", "--alpha", "1e300"),  # exit 0 with garbage completions and MH acceptance 0 before
    ("low_temp", "--alpha", "1e300"),
    ("power_sps", "--alpha", "1e-300"),
    ("power_smc", "--alpha", "0.001"),
    ("low_temp", "--temperature", "inf"),  # exit 0 while --alpha inf was refused
    ("low_temp", "--temperature", "1e-300"),
    ("power_mh", "--proposal-temperature", "1e300"),
    ("power_smc", "--proposal-temperature", "nan"),
])
def test_alpha_and_temperatures_out_of_range_are_refused(method, flag, value, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    line = one_line_error(capsys, *sample_args(tiny_checkpoint, out, "--method", method, flag, value))
    assert f"{flag} must be a number in [0.01, 100], got" in line, line
    assert not out.exists()


def test_the_ends_of_the_ranges_are_accepted():
    from sharpen.sampling import PowerSamplingConfig, SMCConfig, SPSConfig
    from sharpen.sampling.methods import LowTempConfig

    assert PowerSamplingConfig(alpha=100.0, proposal_temperature=0.01).proposal_temperature == 0.01
    assert SMCConfig(alpha=0.01, proposal_temperature=100.0).proposal_temperature == 100.0
    # the default proposal, 1/sqrt(alpha), stays inside the range at both ends of alpha's
    assert PowerSamplingConfig(alpha=100.0).proposal_temperature == pytest.approx(0.1)
    assert SMCConfig(alpha=0.01).proposal_temperature == pytest.approx(10.0)
    assert LowTempConfig(alpha=0.01).temperature == 100.0 and SPSConfig(alpha=100).alpha == 100
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0.01, 100\]"):
        LowTempConfig(alpha=100.5)


def test_a_study_refuses_alpha_out_of_range(tmp_path, capsys):
    run_dir = tmp_path / "study"
    line = one_line_error(capsys, "study", "--config", "testbed", "alpha=1.0e+300", f"output_dir={run_dir}")
    assert "alpha must be a number in [0.01, 100], got 1e+300" in line and not run_dir.exists()


def _records(correct_and_scores):
    out = []
    for idx, (correct, score) in enumerate(correct_and_scores):
        out.append({"method": "base", "problem_id": "p0", "sample_idx": idx, "prompt": "q:", "completion": "x",
                    "completion_ids": [3, 1], "finish_reason": "eos", "correct": correct, "score": score,
                    "temperature": 1.0, "cost": {"sampled_tokens": 2, "forward_tokens": 3, "wall_seconds": 0.1}})
    return out


@pytest.mark.parametrize("correct, score, shown", [
    (True, 0.0, "correct is true but score is 0.0"),  # counted as accuracy 1.0 before
    (False, 1.0, "correct is false but score is 1.0"),
    (True, 0.5, "correct is true but score is 0.5"),
])
def test_analyze_refuses_a_correct_that_contradicts_the_score(correct, score, shown, tmp_path, capsys):
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                _records([(True, 1.0), (correct, score), (False, 0.0)])))
    before = snapshot(tmp_path)
    line = one_line_error(capsys, "analyze", tmp_path, "--no-score", "--wandb", "off")
    assert f"{samples / 'base.jsonl'}:2: {shown}: correct must be true exactly when score >= 1" in line, line
    assert snapshot(tmp_path) == before


def test_records_that_agree_are_analysed(tmp_path):
    from sharpen.analysis.runs import load_run

    samples = tmp_path / "samples"
    samples.mkdir()
    records = _records([(True, 1.0), (False, 0.0), (False, 0.5)]) + [dict(_records([(True, None)])[0], sample_idx=3)]
    (samples / "base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert len(load_run(tmp_path).methods["base"].records) == 4  # a record without a score has nothing to contradict


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty local Hugging Face cache, whatever the machine's holds."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))


def test_from_checkpoint_is_refused_offline_when_not_cached(empty_hub_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "rl"
    line = one_line_error(capsys, "grpo", "--from-checkpoint", "owner/name", "--output-dir", out)
    assert "--from-checkpoint 'owner/name' cannot be loaded here: HF_HUB_OFFLINE is set" in line, line
    assert not out.exists()  # recorded unchecked (exit 0) before


def test_from_checkpoint_is_refused_when_the_hub_cannot_be_reached(empty_hub_cache, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def no_network(self, repo_id, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    out = tmp_path / "rl"
    line = one_line_error(capsys, "grpo", "--from-checkpoint", "owner/name", "--output-dir", out)
    assert "the Hub cannot be reached or has no such model (ConnectionError)" in line and not out.exists()


def test_from_checkpoint_takes_a_local_directory_offline(empty_hub_cache, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "rl"
    assert main(["grpo", "--from-checkpoint", str(tiny_checkpoint), "--output-dir", str(out)]) == 0
    assert json.loads((out / "grpo_checkpoint.json").read_text())["model"] == str(tiny_checkpoint.resolve())


# ---- item 7: messages that misled ---------------------------------------------------------------

@pytest.mark.parametrize("extra, expected, wrong", [
    (["--num-samples", "0"], "sharpen sample: error: --num-samples must be >= 1, got 0", "----num-samples"),
    (["--profile", "bogus"], "sharpen sample: error: unknown --profile 'bogus': valid profiles are default, "
                             "reference", "--unknown"),
    (["--alpha", "2"], "sharpen sample: error: method base has no setting alpha: its settings are --top-k, --top-p, "
                       "--max-new-tokens, --batch-size", "--help"),
    (["--name", "../x"], "sharpen sample: error: --name '../x' is not a valid file name", "--method instance"),
])
def test_sample_messages_name_the_flag_given(extra, expected, wrong, tiny_checkpoint, tmp_path, capsys):
    line = one_line_error(capsys, *sample_args(tiny_checkpoint, tmp_path / "out", *extra))
    assert line.startswith(expected) and wrong not in line, line
    if extra[0] == "--alpha":
        assert " -h" not in line and "did you mean" not in line, line
    assert not (tmp_path / "out").exists()


def test_prompts_count_from_one(tiny_model):
    from sharpen.sampling.generate import check_prompts

    with pytest.raises(ValueError, match="^prompt 1 is empty"):
        check_prompts(tiny_model, [[], [3]])
    with pytest.raises(ValueError, match="^prompt 2 has 200 tokens"):
        check_prompts(tiny_model, [[3], [3] * 200])


@pytest.mark.parametrize("rows, options, message", [
    ([{"question": "q", "answer": "seven"}, {"question": "r", "answer": "8"}], ["grader=number"],
     "e.g. row 1: 'seven'"),
    ([{"question": "q", "answer": "1"}, {"question": "r", "answer": "2", "note": "n"}],
     ["grader=number", "prompt={question} {note}"], "e.g. row 1"),  # a template that is no YAML: a traceback before
    ([{"question": "q", "answer": "1"}, {"question": "", "answer": "2"}], ["grader=number"],
     "have no value for 'question' (the question field), e.g. row 2"),
])
def test_data_rows_count_from_one(rows, options, message, tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = one_line_error(capsys, "sample", "--model", tiny_checkpoint, "--task", "file", "--task-args",
                          f"path={data}", *options, "--output-dir", tmp_path / "out")
    assert message in line, line
