"""The project's layering, read from every module's imports with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` statement of imgsearch/, indexer/, webapp/, bench/ and
tests/ counts, at module level or inside a function (a lazy import is still a dependency),
relative ones resolved against the importing module. Three rules, each failing with the file
and line of every offending statement:

1. **Packages depend downwards.** ``imgsearch`` (the core) imports none of indexer, webapp,
   bench or tests; indexer and webapp (the two programs) import neither bench nor tests, nor
   each other (neither direction exists: they meet only in imgsearch). bench and tests may
   import any package.
2. **No import cycles** among project modules, lazy imports included: a cycle is a cycle,
   whether or not import order happens to let it load. An edge goes to the module a statement
   names (``from imgsearch import localnode`` is an edge to ``imgsearch.localnode``, ``from
   .localnode import LocalNode`` one to ``imgsearch.localnode``), not to the packages above it:
   Python runs those packages' ``__init__`` too, but a module that does not name a package
   does not depend on what its ``__init__`` holds (``webapp/__init__.py``'s app factory
   imports its blueprints, which import their sibling ``webapp.errors``, not ``webapp``).
3. **No private names across modules**: ``from m import _x`` or ``import m._x`` where ``m`` is
   another project module (dunders such as ``__version__`` are not private). A name another
   module needs is public in the module that owns it. tests/ is held to this too: it cost one
   rename (``finetune.sample_per_label``), and a test that needs a name should see it the way
   every other caller does. What a test still may do is reach a module's internals through
   the module object (``localnode._verify_sha256(...)``): that is the module under test
   being tested, visible at the call, not one module building on another's internals.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("imgsearch", "indexer", "webapp", "bench", "tests")
# Package -> the project packages it must not import.
FORBIDDEN = {
    "imgsearch": ("indexer", "webapp", "bench", "tests"),
    "indexer": ("webapp", "bench", "tests"),
    "webapp": ("indexer", "bench", "tests"),
}


@dataclass(frozen=True)
class Import:
    """One imported module (and, for ``from m import n``, one name) of one statement."""

    file: str  # relative to the repository root
    line: int
    importer: str  # the importing module
    module: str  # the module named, absolute (``from . import x``: the package)
    name: str | None = None  # the name imported from it; None for ``import module``

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def statement(self) -> str:
        return f"from {self.module} import {self.name}" if self.name else f"import {self.module}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of ``packages`` below ``root``."""
    return {module_name(path, root): path
            for package in packages
            for path in sorted((root / package).rglob("*.py"))}


def read_imports(path: Path, root: Path = ROOT) -> list[Import]:
    """Every import of the file, at any depth, with relative modules made absolute."""
    importer = module_name(path, root)
    # A package's relative imports start from the package itself, a module's from its package.
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    file = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=file)):
        if isinstance(node, ast.Import):
            found += [Import(file, node.lineno, importer, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [Import(file, node.lineno, importer, module, alias.name)
                      for alias in node.names]
    return found


def all_imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    return [imp for path in project_modules(root, packages).values()
            for imp in read_imports(path, root)]


def target(imp: Import, modules: dict[str, Path]) -> str | None:
    """The project module an import loads: ``from p import m`` names module ``p.m`` when there
    is one, else the deepest project module of the dotted name; None outside the project."""
    if imp.name and f"{imp.module}.{imp.name}" in modules:
        return f"{imp.module}.{imp.name}"
    parts = imp.module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# --- the three rules, each returning one line per offending statement ------------------------


def forbidden_dependencies(imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        own, other = imp.importer.split(".")[0], imp.module.split(".")[0]
        if other in FORBIDDEN.get(own, ()):
            out.append(f"{imp.where}: {own} must not import {other} ({imp.statement()})")
    return out


def import_graph(imports: list[Import], modules: dict[str, Path]) -> dict[str, dict[str, Import]]:
    """importer -> imported project module -> the first statement that imports it."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for imp in imports:
        to = target(imp, modules)
        if to is not None and to != imp.importer:
            graph[imp.importer].setdefault(to, imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def a_cycle(graph: dict[str, dict[str, Import]], component: list[str]) -> list[Import]:
    """The statements of one shortest cycle through the component's first module."""
    start, members = component[0], set(component)
    came_from: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child, imp in sorted(graph[node].items()):
            if child not in members:
                continue
            if child == start:
                path = [imp]
                while path[0].importer != start:
                    path.insert(0, came_from[path[0].importer])
                return path
            if child not in came_from:
                came_from[child] = imp
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def import_cycles(imports: list[Import], modules: dict[str, Path]) -> list[str]:
    graph = import_graph(imports, modules)
    out = []
    for component in strongly_connected(graph):
        steps = a_cycle(graph, component)
        chain = " -> ".join([steps[0].importer] + [target(s, modules) for s in steps])
        lines = "; ".join(f"{s.where} {s.statement()}" for s in steps)
        out.append(f"import cycle {chain} ({lines})")
    return out


def private_imports(imports: list[Import], modules: dict[str, Path]) -> list[str]:
    out = []
    for imp in imports:
        if target(imp, modules) is None:
            continue  # third-party or the standard library: not this project's layering
        dotted = imp.module.split(".") + ([imp.name] if imp.name else [])
        private = [part for part in dotted if is_private(part)]
        if private and target(imp, modules) != imp.importer:
            out.append(f"{imp.where}: {imp.statement()} takes the private name {private[0]} "
                       "of another module; make it public where it is defined")
    return out


# --- the project --------------------------------------------------------------------------


def test_the_scan_sees_the_project():
    """Guards the rules against passing vacuously: known imports, lazy and relative, are read."""
    modules = project_modules()
    graph = import_graph(all_imports(), modules)
    assert {"imgsearch.settings", "indexer.index", "webapp.api", "bench.quality",
            "tests.conftest"} <= set(modules)
    assert "imgsearch.store" in graph["indexer.index"]  # absolute, module level
    assert "imgsearch.localnode" in graph["imgsearch.localcluster"]  # relative
    assert "webapp.api" in graph["webapp"]  # ``from . import api`` inside create_app


def test_packages_depend_only_downwards():
    problems = forbidden_dependencies(all_imports())
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    problems = import_cycles(all_imports(), project_modules())
    assert not problems, "\n".join(problems)


def test_no_private_names_imported_from_other_modules():
    problems = private_imports(all_imports(), project_modules())
    assert not problems, "\n".join(problems)


# --- the rules on a project made for them ---------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_each_rule_names_the_file_and_line(tmp_path):
    _write(tmp_path, {
        "imgsearch/__init__.py": "",
        "imgsearch/a.py": "import os\nfrom . import b\n",
        "imgsearch/b.py": "def f():\n    from .a import _helper  # lazy, relative, private\n",
        "imgsearch/c.py": "from imgsearch import d\n",
        "imgsearch/d.py": "def g():\n    import imgsearch.e\n",
        "imgsearch/e.py": "from .c import public\nimport numpy._core\n",
        "imgsearch/walk.py": "def f():\n    from indexer.walk import walk_files\n",
        "indexer/__init__.py": "",
        "indexer/walk.py": "from imgsearch.a import __version__\nimport webapp\n",
        "webapp/__init__.py": "from imgsearch.a import x\n",
        "bench/__init__.py": "from indexer import walk\nfrom webapp import create_app\n",
        "tests/test_x.py": "from imgsearch.b import _f\nfrom bench import run\n",
    })
    packages = ("imgsearch", "indexer", "webapp", "bench", "tests")
    modules = project_modules(tmp_path, packages)
    imports = all_imports(tmp_path, packages)
    assert forbidden_dependencies(imports) == [
        "imgsearch/walk.py:2: imgsearch must not import indexer "
        "(from indexer.walk import walk_files)",
        "indexer/walk.py:2: indexer must not import webapp (import webapp)",
    ]
    assert import_cycles(imports, modules) == [
        "import cycle imgsearch.a -> imgsearch.b -> imgsearch.a "
        "(imgsearch/a.py:2 from imgsearch import b; imgsearch/b.py:2 from imgsearch.a import "
        "_helper)",
        "import cycle imgsearch.c -> imgsearch.d -> imgsearch.e -> imgsearch.c "
        "(imgsearch/c.py:1 from imgsearch import d; imgsearch/d.py:2 import imgsearch.e; "
        "imgsearch/e.py:1 from imgsearch.c import public)",
    ]
    problems = private_imports(imports, modules)
    assert [p.split(" takes")[0] for p in problems] == [
        "imgsearch/b.py:2: from imgsearch.a import _helper",
        "tests/test_x.py:1: from imgsearch.b import _f",
    ]
