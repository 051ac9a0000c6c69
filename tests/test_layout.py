"""The package boundaries the layout promises: `potstill/` is the library (no Prefect, MLflow or flow
imports outside its CLI), `tasks/` never import a flow, nothing imports in a cycle, and `tasks`/`flows` are
not installed as top-level packages that change the environment on import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("potstill", "tasks", "flows")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module `path` imports, at module level or inside a function."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]).strip(".")
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, name, set(mods)) for name, path in mods.items()}


def external_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_library_imports_no_prefect_mlflow_or_flows_outside_its_cli():
    for name, path in modules().items():
        if not name.startswith("potstill") or name.startswith("potstill.cli"):
            continue
        bad = external_imports(path) & {"prefect", "mlflow", "flows", "tasks"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_task_imports_a_flow():
    for name, deps in graph().items():
        if name.startswith("tasks"):
            assert not {d for d in deps if d.startswith("flows")}, name


def test_no_import_cycles():
    g = graph()
    # Package __init__ modules re-export their children; an edge child -> its own package is not a cycle.
    g = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)


def test_tasks_and_flows_are_not_installed_and_change_nothing_on_import():
    """From another directory the installed distribution offers `potstill` only; importing the project's
    tasks and flows (from the project root) leaves the environment as it was."""
    code = (
        "import importlib.util, os, sys\n"
        "assert importlib.util.find_spec('tasks') is None and importlib.util.find_spec('flows') is None\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "before = dict(os.environ)\n"
        "import tasks, flows\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_test_or_benchmark_names_a_path_of_this_machine():
    """A user's clone lives anywhere: the shared benchmark data is found beside the checkout (or through
    POTSTILL_SHARED_DATA), never at this machine's `/work/...` path."""
    machine = "/" + "work/"  # split so this file does not name it either
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("tests", "benchmarks", "potstill", "flows", "tasks")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if f'"{machine}' in line or f"'{machine}" in line
    ]
    assert not offenders, offenders
