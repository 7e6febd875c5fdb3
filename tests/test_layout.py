"""The package's import graph has no cycle: every collapsekit.* import, module-level or inside a function, counts."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import collapsekit

ROOT = Path(collapsekit.__file__).resolve().parent


def module_name(path: Path) -> str:
    """collapsekit.a.b for collapsekit/a/b.py; a package's __init__.py is the package itself."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The collapsekit modules `tree` (module `name`) imports anywhere, resolved to files that exist.

    `from pkg import x` is pkg.x when that is a module (or subpackage), else pkg
    itself (x is a name its __init__ defines); relative imports resolve against
    `name`.
    """
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in modules else base)
    return {m for m in found if m in modules}


def import_graph() -> nx.DiGraph:
    """Directed graph module -> module it imports, over every module under collapsekit/."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target in imported_modules(tree, name, path.name == "__init__.py", set(files)):
            if target != name:
                graph.add_edge(name, target)
    return graph


def test_graph_sees_function_level_and_relative_imports():
    modules = {"collapsekit", "collapsekit.a", "collapsekit.a.b", "collapsekit.c"}
    tree = ast.parse("def f():\n    from collapsekit.a import b\n    from . import c\nimport collapsekit\n"
                     "from collapsekit import prune\n")
    # `from . import c` in collapsekit.a: no module collapsekit.a.c, so c is a name of collapsekit.a's __init__.
    assert imported_modules(tree, "collapsekit.a.x", False, modules) == {"collapsekit.a.b", "collapsekit.a",
                                                                         "collapsekit"}
    tree = ast.parse("from .. import c\n")
    assert imported_modules(tree, "collapsekit.a.x", False, modules) == {"collapsekit.c"}
    graph = import_graph()
    assert graph.has_edge("collapsekit.training.finetune", "collapsekit.training.schedules")
    assert graph.has_edge("collapsekit.cli.plot", "collapsekit.views.plots")  # inside run()


def cycle_text(graph: nx.DiGraph) -> str:
    cycles = sorted(nx.simple_cycles(graph), key=len)
    return "import cycles:\n" + "\n".join(" -> ".join(c + c[:1]) for c in cycles[:20])


def test_training_imports_have_no_cycle():
    graph = import_graph()
    training = graph.subgraph(n for n in graph if n.startswith("collapsekit.training"))
    assert nx.is_directed_acyclic_graph(training), cycle_text(training)


def test_every_subpackage_says_its_job_in_one_line():
    for init in ROOT.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and doc.strip(), f"{init} has no docstring"
        assert len(doc.strip().splitlines()[0]) <= 120, f"{init}: first docstring line too long"


def test_no_stage_module_left_at_the_top():
    top = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert top == ["errors", "spec", "version"], top
