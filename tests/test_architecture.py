"""The package's structure keeps its promises (ARCHITECTURE.md).

- no package import written inside a function outside ``cli/`` and the root
  ``__init__`` (the layer rule's third clause; import-linter checks the rest);
- no import cycles among the package's modules;
- modules of at most 800 lines, functions of at most 120;
- the root facade is lazy, and ``caltars-bayes --help`` and ``validate`` import
  neither PyMC nor numba nor JAX.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import caltars_bayes

PACKAGE = Path(caltars_bayes.__file__).parent
HEAVY = ("pymc", "pytensor", "numba", "jax", "nutpie", "matplotlib")
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 120


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _lazy_allowed(path: Path) -> bool:
    """Where package imports inside functions are allowed: cli/ and the root __init__."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] == "cli" or rel == Path("__init__.py")


def package_imports_in_functions(path: Path) -> list[str]:
    """``file:line`` of each ``caltars_bayes`` import written inside a function."""
    tree = ast.parse(path.read_text())
    hits = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("caltars_bayes")
            ):
                hits.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            elif isinstance(node, ast.Import) and any(
                a.name.startswith("caltars_bayes") for a in node.names
            ):
                hits.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return hits


def test_no_package_imports_inside_functions_outside_the_cli():
    hits = [h for p in _modules() if not _lazy_allowed(p) for h in package_imports_in_functions(p)]
    assert hits == []


def test_the_import_check_finds_an_import_inside_a_function(tmp_path):
    """The check above can fail: it sees both import forms inside a function."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\n\n"
        "def f():\n    from caltars_bayes.inference.fit import Fit\n    return Fit\n\n"
        "def g():\n    import caltars_bayes.model.plan\n"
    )
    fake = PACKAGE / "_probe_bad.py"
    fake.write_text(bad.read_text())
    try:
        assert len(package_imports_in_functions(fake)) == 2
    finally:
        fake.unlink()


def strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Groups of two or more modules that import each other (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_strongly_connected_finds_a_cycle():
    assert strongly_connected({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert strongly_connected({"a": ["b"], "b": []}) == []


def test_no_import_cycles_among_the_package_modules():
    g = grimp.build_graph("caltars_bayes", cache_dir=None)
    graph = {m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules}
    assert strongly_connected(graph) == []


def test_modules_and_functions_are_short_enough():
    long_modules = [
        f"{p.relative_to(PACKAGE)} ({n})"
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    long_functions = []
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{p.relative_to(PACKAGE)}:{node.name} ({n})")
    assert long_modules == [] and long_functions == []


def test_every_public_name_resolves_and_is_listed():
    for name in caltars_bayes.__all__:
        assert getattr(caltars_bayes, name) is not None, name
    assert "fit_model" in dir(caltars_bayes)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        caltars_bayes.nope  # noqa: B018
    # the facade points at the module that defines each name, not at a re-export
    for name, module in caltars_bayes._EXPORTS.items():
        obj = getattr(importlib.import_module(module), name)
        owner = getattr(obj, "__module__", module)
        if callable(obj) and not isinstance(obj, type(sys)):
            assert owner == module, (name, owner, module)


def _imported_after(code: str) -> list[str]:
    """Heavy modules imported by running ``code`` in a fresh interpreter."""
    listed = f"[m for m in {HEAVY!r} if m in sys.modules]"
    probe = f"{code}\nimport json, sys\nprint(json.dumps({listed}))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_and_help_and_validate_import_no_pymc(tmp_path):
    assert _imported_after("import caltars_bayes") == []
    assert (
        _imported_after(
            "import contextlib, io\nfrom caltars_bayes.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--help'])"
        )
        == []
    )
    ratings = tmp_path / "r.csv"
    ratings.write_text(
        "subject,session,judge,item,rating\n"
        + "".join(f"p{s},1,j{j},PPC{i},3\n" for s in (1, 2) for j in (1, 2) for i in (1, 2))
    )
    code = (
        "import contextlib, io\nfrom caltars_bayes.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rc = main(['validate', {str(ratings)!r}])\n"
        "assert rc == 0, rc"
    )
    assert _imported_after(code) == []
    # and the probe sees a heavy import where there is one
    assert "pymc" in _imported_after("import caltars_bayes.model.build")
