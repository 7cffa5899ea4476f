"""The package's shape, read from its source (no imports of the package, no sampling):

* layers without cycles: which subpackage may import which (ARCHITECTURE.md, "Module map"), and no module
  imports a private (``_name``) from another subpackage;
* one dims vocabulary: every dim name the PyMC builders use (``dims=``, ``coords``) is in ``names.DIMS``;
* ARCHITECTURE.md's module map lists exactly the modules under ``src/bayesnqp``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bayesnqp import names

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "bayesnqp"
PACKAGE = "bayesnqp"


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module name imported from (or imported)
    name: str | None  # the name imported from ``target`` (None for ``import x``)
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_runtime(node: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk_runtime(other)
            continue
        yield child
        yield from _walk_runtime(child)


def _imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield Import(module, alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                # ``from .. import names`` imports the module bayesnqp.names
                sub = f"{target}.{alias.name}"
                if sub in MODULES:
                    yield Import(module, sub, None, node.lineno)
                else:
                    yield Import(module, target, alias.name, node.lineno)


IMPORTS = [imp for mod, path in MODULES.items() for imp in _imports(mod, path)]


def _layer(module: str) -> str:
    """The subpackage (bayes, checks, ...) or top-level module (names, api, ...) a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


LEAVES = {"names", "errors", "paths", "results", "conventions", "panelops", "spatial_linalg"}
DRIVERS = {"stages", "study", "staging", "fanout", "api", "cli", "__main__", ""}
# importer layer -> layers it must never import
FORBIDDEN: dict[str, set[str]] = {
    "config": {"data", "measures", "frequentist", "bayes", "checks", "report"} | DRIVERS,
    "data": {"frequentist", "bayes", "checks", "report", "demo", "simulate"} | DRIVERS,
    "measures": {"data", "frequentist", "bayes", "checks", "report"} | DRIVERS,
    "frequentist": {"bayes", "checks", "report", "demo", "simulate"} | DRIVERS,
    "simulate": {"frequentist", "bayes", "checks", "report"} | DRIVERS,
    "demo": {"frequentist", "bayes", "checks", "report"} | DRIVERS,
    "bayes": {"frequentist", "checks", "report"} | DRIVERS,
    "checks": {"report"} | DRIVERS,
    "report": {"bayes", "checks"} | DRIVERS,
    "stages": {"study", "api", "cli", "__main__"},
}
# The known exceptions, each with its reason; a test below fails once one is no longer needed.
ALLOWED: dict[tuple[str, str], str] = {
    ("bayesnqp.bayes.likelihoods", "bayesnqp.checks.compare"):
        "fit_likelihoods compares the three likelihoods by LOO (checks.compare imports nothing from bayes)",
    ("bayesnqp.bayes.likelihoods", "bayesnqp.checks.ppc"):
        "fit_likelihoods runs the posterior predictive checks (checks.ppc imports nothing from bayes)",
}
# Only these may import the report.
REPORT_IMPORTERS = {"report", "stages", "study", "api", "cli"}


def _where(imp: Import) -> str:
    return f"{imp.importer} (line {imp.line}) imports {imp.target}" + (f".{imp.name}" if imp.name else "")


def test_the_source_is_read():
    # the checks below would pass vacuously if the walk found nothing
    assert len(MODULES) > 50 and len(IMPORTS) > 200
    assert any(i.importer == "bayesnqp.bayes.panel" and i.target == "bayesnqp.conventions" for i in IMPORTS)


def test_no_module_imports_a_private_name_from_another_subpackage():
    bad = [_where(i) for i in IMPORTS
           if i.name and i.name.startswith("_") and not i.name.startswith("__")
           and _layer(i.importer) != _layer(i.target)]
    assert not bad, "private names across subpackages:\n" + "\n".join(bad)


def test_leaves_import_only_leaves():
    bad = [_where(i) for i in IMPORTS if _layer(i.importer) in LEAVES and _layer(i.target) not in LEAVES]
    assert not bad, "\n".join(bad)


def test_layers_import_only_downwards():
    bad = [_where(i) for i in IMPORTS
           if _layer(i.target) in FORBIDDEN.get(_layer(i.importer), set())
           and (i.importer, i.target) not in ALLOWED]
    assert not bad, "imports against the layering (ARCHITECTURE.md, Module map):\n" + "\n".join(bad)


def test_bayes_never_imports_checks_beyond_the_listed_exceptions():
    edges = {(i.importer, i.target) for i in IMPORTS
             if _layer(i.importer) == "bayes" and _layer(i.target) == "checks"}
    assert edges <= set(ALLOWED), sorted(edges - set(ALLOWED))
    stale = set(ALLOWED) - edges
    assert not stale, f"no longer imported, remove from ALLOWED: {sorted(stale)}"
    # and the checks it may use import nothing from bayes, so there is no cycle
    for _, target in ALLOWED:
        assert not [i for i in IMPORTS if i.importer == target and _layer(i.target) == "bayes"]


def test_only_the_drivers_import_the_report():
    bad = [_where(i) for i in IMPORTS
           if _layer(i.target) == "report" and _layer(i.importer) not in REPORT_IMPORTERS]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------------------
# dims vocabulary
class _DimsReader:
    """Resolves the dim names a module's builders use, statically."""

    DIM_KEYWORDS = {"dims", "dim", "group_dim"}

    def __init__(self, module: str, path: Path):
        self.module = module
        self.tree = ast.parse(path.read_text(encoding="utf-8"))
        self.constants: dict[str, ast.expr] = {}
        self.from_names: dict[str, str] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.constants[node.targets[0].id] = node.value
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("names"):
                for alias in node.names:
                    self.from_names[alias.asname or alias.name] = alias.name
        self.resolved: list[tuple[str, int]] = []
        self.unresolved: list[tuple[str, int]] = []

    def resolve(self, node: ast.expr, params: set[str]) -> list[str] | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List)):
            out: list[str] = []
            for elt in node.elts:
                got = self.resolve(elt, params)
                if got is None:
                    return None
                out += got
            return out
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "names":
            value = getattr(names, node.attr, None)
            return [value] if isinstance(value, str) else None
        if isinstance(node, ast.Name):
            if node.id in self.from_names:
                value = getattr(names, self.from_names[node.id], None)
                return [value] if isinstance(value, str) else None
            if node.id in self.constants:
                return self.resolve(self.constants[node.id], params)
        return None

    def note(self, node: ast.expr, params: set[str]) -> None:
        got = self.resolve(node, params)
        if got is not None:
            self.resolved += [(d, node.lineno) for d in got]
        elif isinstance(node, ast.Name) and node.id in params:
            pass  # a function's parameter: judged where the function is called (keyword) or by its default
        else:
            self.unresolved.append((ast.unparse(node), node.lineno))

    def read(self) -> None:
        for fn in [n for n in ast.walk(self.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
            params = {a.arg for a in args}
            defaults = list(zip(reversed(fn.args.posonlyargs + fn.args.args), reversed(fn.args.defaults)))
            defaults += [(a, d) for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None]
            for arg, default in defaults:
                if arg.arg in self.DIM_KEYWORDS:
                    self.note(default, params)
            for node in ast.walk(fn):
                if isinstance(node, ast.Call):
                    for kw in node.keywords:
                        if kw.arg in self.DIM_KEYWORDS:
                            self.note(kw.value, params)
                        if kw.arg == "coords" and isinstance(kw.value, ast.Dict):
                            for key in kw.value.keys:
                                if key is not None:
                                    self.note(key, params)
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        if isinstance(target, ast.Name) and target.id == "coords" and isinstance(node.value, ast.Dict):
                            for key in node.value.keys:
                                if key is not None:
                                    self.note(key, params)
                        if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                                and target.value.id == "coords"):
                            self.note(target.slice, params)


# the builders; sampling and the nutpie disk cache only pass a model's own dims on (to ArviZ, to nutpie)
BUILDERS = [m for m in MODULES if m.startswith("bayesnqp.bayes.")
            and m not in ("bayesnqp.bayes.sampling", "bayesnqp.bayes.nutpie_disk_cache")]


@pytest.mark.parametrize("module", BUILDERS)
def test_every_dim_of_the_builders_is_in_the_vocabulary(module):
    reader = _DimsReader(module, MODULES[module])
    reader.read()
    assert not reader.unresolved, f"dims that are not names.DIMS constants or literals: {reader.unresolved}"
    unknown = sorted({(d, line) for d, line in reader.resolved if d not in names.DIMS})
    assert not unknown, f"dims missing from names.DIMS: {unknown}"


def test_the_dims_reader_finds_the_builders_dims():
    found: set[str] = set()
    for module in BUILDERS:
        reader = _DimsReader(module, MODULES[module])
        reader.read()
        found |= {d for d, _ in reader.resolved}
    # every listed dim is used somewhere, and the reader sees them (so the test above can fail)
    assert found == set(names.DIMS), (sorted(found - set(names.DIMS)), sorted(set(names.DIMS) - found))
    assert len(set(names.DIMS)) == len(names.DIMS)


# ------------------------------------------------------------------------------------------------
# ARCHITECTURE.md module map
def _module_map() -> set[str]:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    start = text.index("## Module map")
    end = text.find("\n## ", start + 1)
    section = text[start: end if end >= 0 else None]
    return set(re.findall(r"^\| `([\w/]+\.py)` \|", section, flags=re.MULTILINE))


def test_architecture_lists_every_module_and_only_those():
    listed = _module_map()
    actual = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")}
    assert listed, "no module map found in ARCHITECTURE.md"
    assert not actual - listed, f"modules missing from ARCHITECTURE.md's module map: {sorted(actual - listed)}"
    assert not listed - actual, f"listed in ARCHITECTURE.md but not in the tree: {sorted(listed - actual)}"
