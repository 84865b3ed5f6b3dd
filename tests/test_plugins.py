"""Plug-ins: a method and a task from a separately installed distribution, found through entry points.

    python -m pytest -q tests/test_plugins.py

A tiny distribution (`sharpen-toy-plugin`: method `cold`, plain sampling at a fixed temperature, and
task `toy_sum`) is built and installed with pip into a directory of its own, which the commands see
only through PYTHONPATH, as another package installed beside sharpen would be. Every run is a fresh
interpreter (`python -m sharpen`, or `accelerate launch` with two worker processes): nothing here is
registered in the test process. Broken plug-ins are hand-written dist-info directories; each must
end `sharpen sample` or `sharpen study` with exit status 2 and one line naming the distribution and
the entry point.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sharpen.runs.records import read_records
from sharpen.sampling import registered_methods
from sharpen.tasks import registered_tasks

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A toy sharpen plug-in: method `cold` (plain sampling at a fixed temperature) and task `toy_sum`."""

from dataclasses import dataclass, field

import sharpen


@dataclass
class ColdSettings:
    temperature: float = field(default=0.5, metadata={"help": "Sampling temperature (> 0)."})
    max_new_tokens: int = 32
    batch_size: int = 8

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def run_cold(model, prompts, settings, *, seeds, on_result=None):
    return sharpen.sample(model, prompts, temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
                          seeds=seeds, batch_size=settings.batch_size, on_result=on_result)


COLD = sharpen.Method("cold", ColdSettings, run_cold, "plain sampling at a fixed temperature (a plug-in)",
                      plain_decoding=True)


def answer_of(completion):
    words = completion.split()
    return words[words.index("answer") + 1] if "answer" in words[:-1] else None


class ToySum(sharpen.Task):
    """The testbed's plain problems, made here: the last digit of a sum of five digits."""

    name = "toy_sum"

    def load(self, limit=None, seed=0, split="test"):
        self.check_split(split)
        problems = []
        for i in range(8):
            terms = [(seed + 3 * i + 7 * j) % 10 for j in range(5)]
            problems.append({"id": f"toy-{i}", "question": "plain " + " + ".join(map(str, terms)) + " =",
                             "answer": str(sum(terms) % 10)})
        return problems if limit is None else problems[:limit]

    def prompt_text(self, problem):
        return problem["question"]

    def extract_answer(self, completion):
        return answer_of(completion)

    def grade(self, problem, completion):
        return 1.0 if answer_of(completion) == problem["answer"] else 0.0
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "sharpen-toy-plugin"
version = "0.1"

[project.entry-points."sharpen.methods"]
cold = "toy_plugin:COLD"

[project.entry-points."sharpen.tasks"]
toy_sum = "toy_plugin:ToySum"

[tool.setuptools]
py-modules = ["toy_plugin"]
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A directory holding the installed toy distribution (its module and its dist-info), as pip installs it."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    source.mkdir()
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "toy_plugin.py").write_text(PLUGIN)
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, capture_output=True, timeout=120)
    assert (site / "sharpen_toy_plugin-0.1.dist-info" / "entry_points.txt").is_file()
    return site


def hand_installed(root: Path, dist: str, version: str, entry_points: str, module: str, code: str) -> Path:
    """A distribution written by hand: <module>.py and <dist>-<version>.dist-info (METADATA, entry_points.txt)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return root


def sharpen_command(args: list[str], *paths: Path, launcher: list[str] | None = None, timeout: int = 300):
    """`python -m sharpen ARGS` in a fresh interpreter that finds the plug-ins in `paths` through PYTHONPATH."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([*map(str, paths), str(REPO)]))
    command = (launcher or [sys.executable]) + ["-m", "sharpen", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_test_process_itself_has_no_plug_in():
    assert "cold" not in registered_methods() and "toy_sum" not in registered_tasks()


def test_a_plugin_method_and_task_run_in_sharpen_sample_under_accelerate(plugin_site, testbed_dir, tmp_path):
    """`sharpen sample --method cold --task toy_sum` under `accelerate launch` with two worker processes: each
    is a fresh interpreter that finds the plug-in at its first lookup, and their shards merge."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "sharpen" / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port",
                str(free_port())]
    done = sharpen_command(["sample", "--model", str(testbed_dir), "--task", "toy_sum", "--method", "cold",
                            "--temperature", "0.25", "--num-problems", "4", "--num-samples", "2",
                            "--output-dir", str(tmp_path)], plugin_site, launcher=launcher)
    assert done.returncode == 0, done.stderr[-2000:]
    records = read_records(tmp_path / "samples" / "cold.jsonl")
    assert not list((tmp_path / "samples").glob("*.part*"))  # both shards wrote, and were merged
    assert len(records) == len({(r["problem_id"], r["sample_idx"]) for r in records}) == 8
    assert {r["temperature"] for r in records} == {0.25}  # Method's default temperature trait: the settings'
    for r in records:
        words = r["completion"].split()
        said = words[words.index("answer") + 1] if "answer" in words[:-1] else None
        assert r["prompt"].startswith("plain ") and r["correct"] == (said == r["gold_answer"])
    assert any(r["correct"] for r in records)  # the testbed model solves the plug-in task's plain problems
    config = json.loads((tmp_path / "samples" / "cold.config.json").read_text())
    assert config["method"] == "cold" and config["settings"]["temperature"] == 0.25


def test_a_plugin_method_runs_in_a_study(plugin_site, testbed_dir, tmp_path):
    out = tmp_path / "study"
    done = sharpen_command(["study", "--config", "testbed", "--output-dir", str(out), "task=toy_sum",
                            "num_problems=3", "num_samples=2", "methods=[base, cold, {name: colder, method: cold, "
                            "temperature: 0.1}]", "cold.temperature=0.25", "analysis.bootstrap=200",
                            "wandb.mode=off"], plugin_site)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, temperature in (("cold", 0.25), ("colder", 0.1)):
        records = read_records(out / "samples" / f"{name}.jsonl")
        assert len(records) == 6 and {r["temperature"] for r in records} == {temperature}, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"base", "cold", "colder"}
    assert "colder" in (out / "report.md").read_text()


BROKEN = {  # case -> (distribution, version, entry_points.txt, module code)
    "import fails": ("toy-broken", "0.3", "[sharpen.methods]\nbroken = toy_broken:METHOD\n",
                     "import no_such_module_anywhere\n"),
    "not a Method": ("toy-notmethod", "0.4", "[sharpen.methods]\nnumber = toy_notmethod:NUMBER\n", "NUMBER = 7\n"),
    "task not callable": ("toy-badtask", "0.5", "[sharpen.tasks]\nwords = toy_badtask:WORDS\n", "WORDS = 'a b'\n"),
    "same name twice": ("toy-dupe", "0.2", "[sharpen.methods]\ncold = toy_dupe:COLD\n",
                        "from toy_plugin import COLD\n"),
    "a built-in's name": ("toy-base", "0.6", "[sharpen.methods]\nbase = toy_base:BASE\n",
                          "import dataclasses\nfrom sharpen import Method, get_method\n"
                          "BASE = dataclasses.replace(get_method('base'))\n"),
}
EXPECTED = {
    "import fails": "plug-in toy-broken 0.3 entry point sharpen.methods:broken failed to import: "
                    "ModuleNotFoundError: No module named 'no_such_module_anywhere'",
    "not a Method": "plug-in toy-notmethod 0.4 entry point sharpen.methods:number names int 7, not a sharpen.Method",
    "task not callable": "plug-in toy-badtask 0.5 entry point sharpen.tasks:words names str 'a b', not a task class "
                         "or factory",
    "same name twice": "method 'cold' is registered twice: by plug-in sharpen-toy-plugin 0.1 entry point "
                       "sharpen.methods:cold and by plug-in toy-dupe 0.2 entry point sharpen.methods:cold",
    "a built-in's name": "method 'base' is registered twice: by sharpen itself (built in) and by plug-in toy-base 0.6 "
                         "entry point sharpen.methods:base",
}


SLOW = pytest.mark.slow  # each case is a CLI subprocess (5 s): two stay in the default suite, one per command


@pytest.mark.parametrize("case, command", [("import fails", "sample"), pytest.param("not a Method", "study", marks=SLOW),
                                           pytest.param("task not callable", "sample", marks=SLOW),
                                           pytest.param("same name twice", "sample", marks=SLOW),
                                           ("a built-in's name", "study")])
def test_a_bad_plugin_is_one_line_and_exit_status_2(case, command, plugin_site, testbed_dir, tmp_path):
    dist, version, entry_points, code = BROKEN[case]
    broken = hand_installed(tmp_path / "site", dist, version, entry_points, dist.replace("-", "_"), code)
    if command == "sample":
        args = ["sample", "--model", str(testbed_dir), "--task", "toy_sum", "--method", "base", "--num-problems", "1",
                "--num-samples", "1", "--output-dir", str(tmp_path / "out")]
    else:
        args = ["study", "--config", "testbed", "--output-dir", str(tmp_path / "out"), "num_problems=1",
                "num_samples=1", "methods=[base]", "wandb.mode=off"]
    done = sharpen_command(args, plugin_site, broken)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == f"sharpen {command}: error: {EXPECTED[case]}"  # one line, no traceback
    assert not (tmp_path / "out" / "samples").exists()  # refused before any work
