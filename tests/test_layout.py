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
    above = {"train_command.py"}  # the train command's wiring builds the trainer; the front ends see events.Engine
    for name, tree, _ in _modules():
        imported = _imports(tree, name)
        if name.startswith("train/") or name in above:
            continue
        assert not {m for m in imported if m.startswith("nanogpt.train.") or m == "nanogpt.train"}, name
    for name in ("train/step.py", "train/state.py", "train/readback.py", "train/saving.py", "train/best.py"):
        tree = next(t for n, t, _ in _modules() if n == name)
        assert not {m for m in _imports(tree, name) if m.startswith(("nanogpt.train.loop", "nanogpt.train.setup",
                                                                        "nanogpt.train.gate"))}, name


def test_no_import_circle_inside_train() -> None:
    """train/ reads one way: setup -> gate, loop -> step, state, best, readback, saving; no module imports back."""
    graph = {}
    for name, tree, _ in _modules():
        if name.startswith("train/"):
            module = "nanogpt." + name.removesuffix(".py").replace("/", ".")
            graph[module] = {m for m in _imports(tree, name) if m.startswith("nanogpt.train.") and m in
                             {"nanogpt." + n.removesuffix(".py").replace("/", ".") for n, _, _ in _modules()}}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, set())] == []


ENGINE_MEMBERS = {"run", "request_stop", "stop_requested", "sample"}  # events.Engine: what a front end may use


def test_the_front_ends_reach_the_engine_only_through_its_interface() -> None:
    """tui/ and headless.py import nothing of train/ and use only events.Engine's members of the engine they are
    handed: commands in, events out (the run's settings come in RunStarted), never the trainer's insides."""
    for name, tree, _ in _modules():
        if not (name.startswith("tui/") or name == "headless.py"):
            continue
        assert not {m for m in _imports(tree, name) if m.startswith("nanogpt.train.")}, name
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ("self.engine", "engine"):
                used.add(node.attr)
            assert not (isinstance(node, ast.Name) and node.id == "trainer"), f"{name}: a trainer in the UI"
        assert used <= ENGINE_MEMBERS, (name, used - ENGINE_MEMBERS)


def test_the_trainer_has_no_forwarding_properties() -> None:
    """Trainer's members are its own: no property that only hands on a part's attribute (state.step, stepper.model)."""
    tree = next(t for n, t, _ in _modules() if n == "train/loop.py")
    trainer = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    properties = [f.name for f in trainer.body if isinstance(f, ast.FunctionDef)
                  and any(ast.unparse(d) == "property" for d in f.decorator_list)]
    assert properties == []
    size = (trainer.end_lineno or 0) - trainer.lineno + 1
    assert size <= MAX_CLASS - 25, f"Trainer is {size} lines: well under the cap, or split it by concern"


def test_the_core_refuses_nothing_the_gate_has_checked() -> None:
    """What comes from outside is refused at the gate (train/gate.py and the readers it calls); the loop, the step
    and the model trust what they are handed: none of them raises a UserError of its own."""
    for name in ("train/loop.py", "train/step.py", "train/state.py", "train/readback.py", "model.py", "schedule.py"):
        tree = next(t for n, t, _ in _modules() if n == name)
        raised = [ast.unparse(n.exc) for n in ast.walk(tree) if isinstance(n, ast.Raise) and n.exc is not None]
        assert not [r for r in raised if "UserError" in r or "ConfigError" in r], name
