"""The import graph of the installed ``rayzor`` package: no cycles, and each layer imports only those below it.

Every module file is parsed with :mod:`ast` (nothing is imported), and every
import of a ``rayzor.*`` module counts: at module level and inside functions,
absolute and relative. ``from rayzor.compression import X`` is an import of
the package ``rayzor.compression`` (its ``__init__``), or of the submodule
``rayzor.compression.X`` when ``X`` is one.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import rayzor

#: Subpackages an editable install maps from folders outside ``rayzor/``, so
#: ``pkgutil.iter_modules(rayzor.__path__)`` does not list them.
MAPPED = ("compression", "spaces", "search", "cluster")


@dataclass(frozen=True)
class Import:
    """One import statement's target: a ``rayzor`` module, or a third-party top-level name."""

    target: str
    line: int
    rayzor: bool


@cache
def modules() -> dict[str, Path]:
    """Every module of the installed ``rayzor`` package -> its file (a package -> its ``__init__.py``)."""
    found: dict[str, Path] = {"rayzor": Path(rayzor.__file__)}
    names = {m.name for m in pkgutil.iter_modules(rayzor.__path__)} | set(MAPPED)
    for name in sorted(names):
        spec = importlib.util.find_spec(f"rayzor.{name}")
        assert spec is not None and spec.origin, f"rayzor.{name} is not installed"
        if not spec.submodule_search_locations:
            found[f"rayzor.{name}"] = Path(spec.origin)
            continue
        for root in spec.submodule_search_locations:
            _walk(Path(root), f"rayzor.{name}", found)
    return found


def _walk(folder: Path, package: str, found: dict[str, Path]) -> None:
    found[package] = folder / "__init__.py"
    for path in sorted(folder.iterdir()):
        if path.is_dir() and (path / "__init__.py").is_file():
            _walk(path, f"{package}.{path.name}", found)
        elif path.suffix == ".py" and path.name != "__init__.py":
            found[f"{package}.{path.stem}"] = path


def _is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def _resolve_module(name: str) -> str:
    """The longest prefix of ``name`` that is a rayzor module (``rayzor.x.y.attr`` -> ``rayzor.x.y``)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules():
        parts.pop()
    return ".".join(parts)


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    """Every import in ``module``'s file, at any depth (functions, ``if TYPE_CHECKING``, ``try``)."""
    tree = ast.parse(modules()[module].read_text(), filename=str(modules()[module]))
    package = module if _is_package(module) else module.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(_classify(alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base != "rayzor" and not base.startswith("rayzor."):
                out.append(_classify(base, node.lineno))
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append(_classify(sub if sub in modules() else base, node.lineno))
    return tuple(out)


def _classify(name: str, line: int) -> Import:
    if name == "rayzor" or name.startswith("rayzor."):
        return Import(_resolve_module(name), line, True)
    return Import(name.split(".")[0], line, False)


def graph() -> dict[str, set[str]]:
    """Module -> the rayzor modules it imports (itself left out)."""
    return {m: {i.target for i in imports_of(m) if i.rayzor and i.target != m} for m in modules()}


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles until none is left; each found cycle's first edge is dropped before looking again, so all are reported."""
    edges = {k: set(v) for k, v in edges.items()}
    cycles = []
    while (cycle := _find_cycle(edges)) is not None:
        cycles.append(cycle)
        edges[cycle[0]].discard(cycle[1])
    return cycles


def _violations(prefix: str, allowed, forbidden_third_party: frozenset[str] = frozenset()) -> list[str]:
    """``module:line imports target`` for every import out of ``prefix`` that ``allowed(target)`` refuses."""
    out = []
    for module in modules():
        if module != prefix and not module.startswith(prefix + "."):
            continue
        for imp in imports_of(module):
            bad = (imp.rayzor and not allowed(imp.target)) or (not imp.rayzor and imp.target in forbidden_third_party)
            if bad:
                out.append(f"{module}:{imp.line} imports {imp.target}")
    return sorted(set(out))


def _within(target: str, *packages: str) -> bool:
    return any(target == p or target.startswith(p + ".") for p in packages)


# -- the checker itself ---------------------------------------------------------------


def test_every_layer_is_found():
    found = modules()
    for name in ("rayzor.errors", "rayzor._resolve", "rayzor.tasks", *(f"rayzor.{m}" for m in MAPPED)):
        assert name in found, name
    assert "rayzor.compression._registry" in found and "rayzor.compression._engine" in found


def test_cycle_finder_reports_the_path():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    assert len(_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}})) == 2


def test_relative_and_submodule_imports_resolve():
    # `from rayzor.compression import X` is the package unless X is a submodule.
    assert _resolve_module("rayzor.compression.CompressionPlan") == "rayzor.compression"
    assert _resolve_module("rayzor.compression._plan") == "rayzor.compression._plan"
    targets = {i.target for i in imports_of("rayzor.compression") if i.rayzor}
    assert "rayzor.compression._plan" in targets and "rayzor.compression" not in targets


# -- the rules ------------------------------------------------------------------------


def test_no_import_cycles():
    cycles = _cycles(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_compression_imports_no_higher_layer_and_no_optuna_or_ray():
    bad = _violations(
        "rayzor.compression",
        lambda t: not _within(t, "rayzor.search", "rayzor.spaces", "rayzor.cluster", "rayzor.tasks"),
        frozenset({"optuna", "ray"}),
    )
    assert not bad, "\n".join(bad)


def test_compression_imports_rayzor_modules_only_at_module_top():
    """A function-level import of a sibling is how a cycle hides; heavy third-party imports may stay lazy."""
    bad = []
    for module, path in modules().items():
        if not _within(module, "rayzor.compression"):
            continue
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else ["." * node.level + (node.module or "")]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                bad += [
                    f"{module}:{node.lineno} imports {n} in {func.name}()"
                    for n in names
                    if n.startswith((".", "rayzor"))
                ]
    assert not bad, "\n".join(sorted(set(bad)))


def test_errors_and_resolve_are_the_bottom():
    assert not _violations("rayzor.errors", lambda t: False)
    assert not _violations("rayzor._resolve", lambda t: t == "rayzor.errors")


def test_tasks_import_only_errors_resolve_and_compression():
    bad = _violations(
        "rayzor.tasks", lambda t: _within(t, "rayzor.errors", "rayzor._resolve", "rayzor.compression", "rayzor.tasks")
    )
    assert not bad, "\n".join(bad)


def test_spaces_import_neither_search_nor_cluster():
    bad = _violations("rayzor.spaces", lambda t: not _within(t, "rayzor.search", "rayzor.cluster"))
    assert not bad, "\n".join(bad)


def test_cluster_does_not_import_search():
    bad = _violations("rayzor.cluster", lambda t: not _within(t, "rayzor.search"))
    assert not bad, "\n".join(bad)


# -- public names -----------------------------------------------------------------------


PACKAGES = sorted(m for m in modules() if _is_package(m))


@pytest.mark.parametrize("package", PACKAGES)
def test_all_names_exist_and_are_unique(package):
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    if names is None:
        pytest.skip(f"{package} defines no __all__")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    assert not duplicates, f"{package}.__all__ repeats {duplicates}"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"
