"""Imports only go down the stage floors of docs/design.md, and the package has no import cycle.

Floors, lowest first: errors/spec/version < files < models, data < analysis < pruning < training < validation
< views < cli; the package's own `__init__` (the public facade) and `__main__` sit on top. Every collapsekit
import counts, at module top or inside a function (`test_layout.import_graph` parses them with ast).
"""
from __future__ import annotations

import networkx as nx
from test_layout import cycle_text, import_graph

FLOORS = {
    "errors": 0, "spec": 0, "version": 0,
    "files": 1,
    "models": 2, "data": 2,
    "analysis": 3,
    "pruning": 4,
    "training": 5,
    "validation": 6,
    "views": 7,
    "cli": 8,
}
TOP = 9  # collapsekit/__init__.py and __main__.py

# Imports that go up a floor, each with the issue that removes it: none is left; never grow it.
ALLOWED_UP: set[tuple[str, str]] = set()


def floor(module: str) -> int:
    """The floor of collapsekit module `module`: its first name under collapsekit, or the top for the package."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return TOP
    return FLOORS[parts[1]]


def upward(graph: nx.DiGraph) -> list[str]:
    return sorted(f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})" for a, b in graph.edges
                  if floor(b) > floor(a) and (a, b) not in ALLOWED_UP)


def test_every_module_has_a_floor():
    assert all(floor(m) in range(TOP + 1) for m in import_graph())


def test_no_import_goes_up_a_floor():
    problems = upward(import_graph())
    assert not problems, "imports against the floors (docs/design.md):\n" + "\n".join(problems)


def test_no_stale_exception():
    stale = sorted(ALLOWED_UP - set(import_graph().edges))
    assert not stale, f"these imports are gone: delete them from ALLOWED_UP: {stale}"


def test_no_import_cycle():
    graph = import_graph()
    assert nx.is_directed_acyclic_graph(graph), cycle_text(graph)


def test_the_check_sees_an_upward_import():
    graph = nx.DiGraph([("collapsekit.files.x", "collapsekit.analysis.y"), ("collapsekit.cli.a", "collapsekit.files.b"),
                        ("collapsekit.models.m", "collapsekit.data"), ("collapsekit", "collapsekit.cli")])
    assert upward(graph) == ["collapsekit.files.x (floor 1) imports collapsekit.analysis.y (floor 3)"]
    assert floor("collapsekit.__main__") == TOP and floor("collapsekit.errors") == 0
