"""The import graph (issue 16, item 4): no import cycles among fedmtl's modules (imports inside functions
count: they only hide a cycle), no module imports its own package's ``__init__``, and the FL round knows no
engine. Read from the source with ``ast``: nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fedmtl"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, int]]:
    """``(imported fedmtl module, line)`` for every import of ``name``, at any depth, except under ``TYPE_CHECKING``."""
    path, is_pkg = MODULES[name]
    package = name if is_pkg else name.rsplit(".", 1)[0]
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parts, *([child.module] if child.module else [])])
                for a in child.names:
                    full = f"{base}.{a.name}"
                    out.append((full if full in MODULES else base, child.lineno))
            visit(child)

    visit(ast.parse(path.read_text()))
    return [(m, line) for m, line in out if m == "fedmtl" or m.startswith("fedmtl.")]


def _graph() -> dict[str, set[str]]:
    """Module -> the modules importing it runs: the module itself and the ``__init__`` of each package above it."""
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        deps = set()
        for target, _ in _imports(name):
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # fedmtl's own __init__ is lazy (PEP 562): left out
                step = ".".join(parts[:i])
                if step in MODULES and step != name and not name.startswith(step + "."):
                    deps.add(step)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return found


def test_no_import_cycles():
    assert len(MODULES) > 150
    assert _cycles(_graph()) == []


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_its_own_package_init():
    offenders = []
    for name, (_, is_pkg) in MODULES.items():
        package = name if is_pkg else name.rsplit(".", 1)[0]
        offenders += [f"{name}:{line}" for target, line in _imports(name) if not is_pkg and target == package]
    assert offenders == []


def test_the_round_imports_no_engine():
    offenders = [f"{name}:{line} imports {t}" for name in MODULES if name.startswith("fedmtl.fl.") or name == "fedmtl.fl"
                 for t, line in _imports(name) if t == "fedmtl.engine" or t.startswith("fedmtl.engine.")]
    assert offenders == []


def _imports_below(name: str) -> set[str]:
    """Every fedmtl module ``name`` imports, at any depth, as a dotted prefix set (``a.b.c`` gives ``a.b`` too)."""
    out = set()
    for target, _ in _imports(name):
        parts = target.split(".")
        out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return out


def test_the_run_loop_lies_below_the_simulation_and_flower():
    """fedmtl.runloop is what the simulation (fedmtl.experiment) and the deployment (fedmtl.integrations.flower)
    share: it imports neither of them nor the CLI, and neither of them imports the other (issue 16)."""
    above = ("fedmtl.experiment", "fedmtl.cli", "fedmtl.integrations")
    runloop = [name for name in MODULES if name == "fedmtl.runloop" or name.startswith("fedmtl.runloop.")]
    assert "fedmtl.runloop.loop" in runloop
    assert [f"{n} imports {t}" for n in runloop for t in _imports_below(n) if t in above] == []
    flower = [n for n in MODULES if n.startswith("fedmtl.integrations.flower")]
    assert [f"{n} imports {t}" for n in flower for t in _imports_below(n) if t in ("fedmtl.experiment", "fedmtl.cli")] == []


def _names_imported(name: str, module: str) -> set[str]:
    path, _ = MODULES[name]
    return {
        a.name
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == module
        for a in node.names
    }


def test_one_run_loop_writes_every_run_folder():
    """The simulation and the Flower server both run their rounds through fedmtl.runloop.loop.run_rounds, and
    nothing else writes checkpoints or metrics.jsonl (a second loop would have to)."""
    for runner in ("fedmtl.experiment.experiment", "fedmtl.integrations.flower.strategy"):
        assert "run_rounds" in _names_imported(runner, "fedmtl.runloop.loop"), runner
    writers = [n for n in MODULES if "save_checkpoint" in _names_imported(n, "fedmtl.runloop.checkpoint")]
    assert writers == ["fedmtl.runloop.loop"]
    logs = [n for n in MODULES if "MetricsLog" in _names_imported(n, "fedmtl.report")]
    assert logs == ["fedmtl.runloop.loop"]
