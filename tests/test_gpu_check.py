"""The GPU check's dry run on the CPU: every section runs at tiny sizes and lands in the JSON and the table.

    python -m pytest -q tests/test_gpu_check.py

Without CUDA `python -m benchmarks.gpu_check` runs in tiny mode and its "device" is the CPU, so its
equality section compares the CPU with itself: every sampler must give the same tokens for the same
seeds, also at another batch size. A section that fails or runs past its limit is recorded with a
one-line reason and the next still runs.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import SECTIONS, main


@pytest.mark.slow  # 30 s: the GPU check's whole script on CPU; its sections are unit-tested below
def test_dry_run_writes_every_section(testbed_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the dry run is the no-CUDA path")
    code = main(["--tiny", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    table = (tmp_path / "gpu_check.md").read_text()
    env = report["environment"]
    assert report["tiny"] and not report["cuda"] and "no CUDA" in env["device"]
    assert env["date"] and env["torch"] == torch.__version__ and env["transformers"] and env["sharpen_commit"]
    assert list(report["sections"]) == list(SECTIONS)
    for name, record in report["sections"].items():
        assert record["status"] in ("ok", "skipped"), f"{name}: {record['reason']}"
        assert record["status"] == "ok" or record["reason"]
        assert record["seconds"] > 0 and f"| {name} | {record['status']} |" in table
    assert code == 0

    equality = report["sections"]["equality"]["results"]
    assert "CPU against CPU" in equality["compared"]
    assert {"base", "low_temp", "power_mh", "power_smc", "power_sps"} <= set(equality["methods"])
    assert equality["checks"] and all(equality["checks"].values())
    for row in equality["methods"].values():
        assert row["fp32"]["identical"] == row["fp32"]["completions"] == 8
        assert row["fp32"]["max_logprob_gap"] == 0.0  # the same kernels on the same machine
    enumeration = report["sections"]["enumeration"]["results"]
    assert all(case["p_value"] > 1e-3 for case in enumeration["cases"].values())
    throughput = report["sections"]["throughput"]["results"]
    assert throughput["sharpen_sample"]["tokens_per_s"] > 0 and throughput["hf_generate"]["tokens_per_s"] > 0
    assert {"power_mh", "power_smc", "power_sps"} <= set(throughput["latency"]["methods"])


def test_a_failing_section_leaves_the_others_and_says_why(tmp_path, monkeypatch):
    def broken(cfg, device, tiny):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    def slow(cfg, device, tiny):
        time.sleep(5)

    def absent(cfg, device, tiny):
        raise gpu_check.Skipped("trl cannot be imported (ModuleNotFoundError: No module named 'trl')")

    monkeypatch.setitem(gpu_check.RUNNERS, "equality", broken)
    monkeypatch.setitem(gpu_check.RUNNERS, "throughput", slow)
    monkeypatch.setitem(gpu_check.RUNNERS, "grpo", absent)
    monkeypatch.setitem(gpu_check.LIMITS, "throughput", 1)
    assert main(["--tiny", "--out", str(tmp_path), "--sections", "equality", "throughput", "grpo"]) == 1
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert sections["equality"] == {**sections["equality"], "status": "failed",
                                    "reason": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert sections["throughput"]["status"] == "failed" and "1 s limit" in sections["throughput"]["reason"]
    assert sections["throughput"]["seconds"] < 3
    assert sections["grpo"]["status"] == "skipped" and "trl" in sections["grpo"]["reason"]
    assert "| grpo | skipped |" in (tmp_path / "gpu_check.md").read_text()


def test_unknown_sections_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path), "--sections", "equalty"])
    assert exit_.value.code == 2
    assert "unknown section equalty: sections are equality, enumeration" in capsys.readouterr().err
