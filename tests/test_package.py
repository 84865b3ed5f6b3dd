"""The package as a user gets it: one import package, the layers, the notebook API, python -m sharpen.

    python -m pytest -q tests/test_package.py

The layer rule (sharpen/__init__.py lists the layers): a module imports only from its own layer or
below; module-level imports have no cycles; a project import inside a function says why in a comment.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import types
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sharpen"
LAYERS = ["errors", "runs", "configs", "sampling", "tasks", "analysis", "testbed", "rl", "study", "cli"]
TOP = len(LAYERS)  # sharpen/__init__.py and __main__.py sit above every layer


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


def project_imports(path: Path):
    """(target module, line, at module level?, has a comment?) for every import of a sharpen module."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    own = module_name(path).split(".")
    package = own if path.name == "__init__.py" else own[:-1]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{module}.{a.name}" if (PACKAGE.parent / f"{module}.{a.name}".replace(".", "/")).exists()
                       or (PACKAGE.parent / (f"{module}.{a.name}".replace(".", "/") + ".py")).exists()
                       else module for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target == "sharpen" or target.startswith("sharpen."):
                commented = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
                yield target, node.lineno, id(node) in top_level, commented


def all_modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{module_name(p)}:{line} imports {target}" for p in all_modules()
              for target, line, _, _ in project_imports(p) if layer(target) > layer(module_name(p))]
    assert upward == []


def test_module_level_imports_have_no_cycles():
    graph = defaultdict(set)
    for path in all_modules():
        for target, _, top_level, _ in project_imports(path):
            if top_level:
                graph[module_name(path)].add(target)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package importing its own submodules (sharpen.tasks -> sharpen.tasks.base) is not a cycle
    real = [c for c in cycles if not all(c[0].startswith(m) or m.startswith(c[0]) for m in c)]
    assert real == []


def test_imports_inside_functions_say_why():
    silent = [f"{module_name(p)}:{line} imports {target}" for p in all_modules()
              for target, line, top_level, commented in project_imports(p) if not top_level and not commented]
    assert silent == []


def test_the_layer_checker_catches_an_upward_and_a_silent_local_import(tmp_path, monkeypatch):
    """The checks above must be able to fail: a module of `runs` importing `study`, inside a function."""
    bad = PACKAGE / "runs" / "_layer_probe.py"
    monkeypatch.setattr(sys.modules[__name__], "all_modules", lambda: [bad])
    bad.write_text("def f():\n    from sharpen.study import run_study\n    return run_study\n")
    try:
        found = list(project_imports(bad))
        assert [(t, top, c) for t, _, top, c in found] == [("sharpen.study", False, False)]
        assert layer("sharpen.study") > layer(module_name(bad))
        with pytest.raises(AssertionError):
            test_no_module_imports_a_layer_above_its_own()
        with pytest.raises(AssertionError):
            test_imports_inside_functions_say_why()
    finally:
        bad.unlink()


def test_the_wheel_holds_only_sharpen_with_its_configs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("sharpen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"sharpen"}
    assert "sharpen/configs/testbed.yaml" in names and "sharpen/configs/accelerate/cpu_2proc.yaml" in names
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("dist-info/METADATA"))
    runtime = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any(re.match(r"Requires-Dist: pytest\b", line) for line in runtime)


def test_python_m_sharpen_is_the_sharpen_command():
    out = subprocess.run([sys.executable, "-m", "sharpen", "--help"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and "usage: sharpen <command>" in out.stdout
    for command in ("study", "sample", "analyze", "grpo", "testbed", "kinds"):
        assert f"  {command} " in out.stdout
    bad = subprocess.run([sys.executable, "-m", "sharpen", "nope"], capture_output=True, text=True, cwd="/")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_the_notebook_api_names_resolve():
    import sharpen

    for name in sharpen.__all__:
        assert getattr(sharpen, name) is not None, name
    with pytest.raises(AttributeError):
        sharpen.no_such_name  # noqa: B018


def readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_the_readme_python_examples_run(testbed_dir, tmp_path, monkeypatch, capsys):
    """Every ```python block of README.md, in order, in one namespace (the testbed is cached by the fixture)."""
    blocks = readme_python_blocks()
    assert blocks, "README.md has no python example"
    from sharpen.sampling.methods import registered_methods, unregister_method

    monkeypatch.chdir(tmp_path)
    before = registered_methods()
    module = types.ModuleType("readme_example")  # a real module: dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), module.__dict__)
    finally:  # the README's example method must not outlive this test
        for name in set(registered_methods()) - set(before):
            unregister_method(name)
    assert capsys.readouterr().out.strip()
    assert (tmp_path / "runs" / "notebook" / "report.md").is_file()
