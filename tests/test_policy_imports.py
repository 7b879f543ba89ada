"""The command-policy modules import each other as a tree, lazy imports included.

``preflight`` (the decision) may import ``sshpolicy``; neither ``sshpolicy`` nor
``commandrules`` (what both policies share) imports ``preflight``; the parser
(``fence.executor.shellparse``) knows nothing about rules: it imports no other
fence module, and its own modules import each other without a cycle.  Read from
the source files (AST), so an import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

EXECUTOR = Path(__file__).resolve().parent.parent / "services" / "executor"
PARSER = "fence.executor.shellparse"


def policy_modules() -> dict[str, Path]:
    """Import name -> source file of the policy modules and of every module of the parser package."""
    out = {f"fence.executor.{name}": EXECUTOR / f"{name}.py" for name in ("preflight", "sshpolicy", "commandrules")}
    for path in sorted((EXECUTOR / "shellparse").glob("*.py")):
        out[PARSER if path.stem == "__init__" else f"{PARSER}.{path.stem}"] = path
    return out


def imported(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from X import y`` counts X and X.y)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = policy_modules()
    return {name: {m for m in imported(name, path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycle_among_the_policy_modules():
    edges = graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, "import cycle: " + " -> ".join(path[path.index(name) :] + [name])
        if name in done:
            return
        for dep in sorted(edges[name]):
            visit(dep, path + [name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def test_only_preflight_imports_preflight():
    edges = graph()
    assert "fence.executor.sshpolicy" in edges["fence.executor.preflight"]
    importers = sorted(name for name, deps in edges.items() if "fence.executor.preflight" in deps)
    assert importers == []


def test_the_parser_imports_no_other_fence_module():
    for name, path in policy_modules().items():
        if name.startswith(PARSER):
            outside = sorted(m for m in imported(name, path) if m.split(".")[0] == "fence" and not m.startswith(PARSER))
            assert outside == [], f"{name} imports {outside}"
