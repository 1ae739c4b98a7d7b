"""The agent's API from the collection: the module_utils the edge_agent role ships with it are
exactly those the agent imports, directly or through each other (nothing more goes to a POP)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "ansible_collections.anycast.edge.plugins.module_utils"


def module_utils_imported_by(path: Path) -> set:
    """Names (_bpf, ...) of the collection's module_utils a Python file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
            names.add(node.module[len(PACKAGE) + 1:])
    return names


def test_the_role_ships_the_module_utils_the_agent_imports_and_no_other():
    wanted = set()
    for path in (REPO / "agent" / "anycast_edge_agent").glob("*.py"):
        wanted |= module_utils_imported_by(path)
    todo = set(wanted)
    while todo:
        for name in module_utils_imported_by(REPO / "plugins" / "module_utils" / (todo.pop() + ".py")) - wanted:
            wanted.add(name)
            todo.add(name)
    role_vars = yaml.safe_load((REPO / "roles" / "edge_agent" / "vars" / "main.yml").read_text())
    assert sorted(role_vars["edge_agent_module_utils"]) == sorted(wanted)
    assert len(wanted) < len(list((REPO / "plugins" / "module_utils").glob("_*.py")))
