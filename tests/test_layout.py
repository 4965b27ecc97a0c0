"""The package's shape: size limits in src/, tui/ free of torch, and dependencies that point one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "nanogpt"
MAX_FUNCTION, MAX_CLASS, MAX_MODULE = 60, 250, 400
# split pending: other branches edit these modules now; they are split once those land
LONG_MODULES: set[str] = set()


def _modules() -> list[tuple[str, ast.Module, int]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        found.append((path.relative_to(SRC).as_posix(), ast.parse(text), len(text.splitlines())))
    return found


def _imports(tree: ast.Module, name: str) -> set[str]:
    """The absolute module names `tree` (module `name`, a path under nanogpt/) imports, outside TYPE_CHECKING."""
    package = ["nanogpt", *name.removesuffix(".py").split("/")][:-1]
    if name.endswith("__init__.py"):
        package = ["nanogpt", *name.split("/")[:-1]]
    for node in ast.walk(tree):  # first: a walk queues a node's children before it yields the node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return found


def test_no_module_function_or_class_is_over_the_limits() -> None:
    too_long = []
    for name, tree, lines in _modules():
        if lines > MAX_MODULE and name not in LONG_MODULES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if size > (MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION):
                too_long.append(f"{name}: {node.name}, {size} lines")
    allowed = {n for n in too_long if n.split(":")[0] in LONG_MODULES}
    assert sorted(set(too_long) - allowed) == []


def test_the_ui_never_imports_torch() -> None:
    for name, tree, _ in _modules():
        if name.startswith("tui/"):
            assert not {m for m in _imports(tree, name) if m == "torch" or m.startswith("torch.")}, name
    # nor through what it imports
    code = "import sys, nanogpt.tui.app, nanogpt.tui.widgets; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_nothing_below_the_trainer_imports_it_and_the_step_knows_no_loop() -> None:
    above = {"cli.py", "headless.py", "__main__.py"}  # the front ends that drive a trainer (the UI: types only)
    for name, tree, _ in _modules():
        imported = _imports(tree, name)
        if name.startswith("train/") or name in above:
            continue
        assert not {m for m in imported if m.startswith("nanogpt.train")}, name
    for name in ("train/step.py", "train/state.py", "train/readback.py", "train/saving.py"):
        tree = next(t for n, t, _ in _modules() if n == name)
        assert not {m for m in _imports(tree, name) if m.startswith(("nanogpt.train.loop", "nanogpt.train.setup"))}
