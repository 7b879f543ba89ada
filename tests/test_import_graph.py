"""The import graph keeps its seams: services meet only on the bus, the core imports no service.

Read from the source (AST, every ``import`` anywhere in a file, including
lazy ones inside functions), not from a running process, so an import on a
rarely taken path counts as much as one at the top.  A service package
(``fence.config``, ``fence.proxy``, ``fence.executor``, ``fence.monitor``)
may import the core (``fence.*`` from ``libs/fence``) and itself; the core
may import no service.  The exceptions are the composition points, listed
in ``ALLOWED`` below.  Imports by name at run time (``fence.serve``'s
``COMPONENTS``, through ``importlib``) are not imports here: that is how
``fence/serve.py`` and the supervisor start the service processes without
the core depending on them, so those composition points need no entry.
An entry nothing uses any more fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("config", "proxy", "executor", "monitor")

ANY_SERVICE = "*"
ALLOWED: dict[tuple[str, str], str] = {
    ("libs/fence/cli.py", ANY_SERVICE): "composition point: the lone run is built in one process from every service",
}
"""(file, imported module or ANY_SERVICE) -> why it may cross a seam."""


def module_of(path: Path) -> str:
    """The import name of a source file (``libs/fence/x.py`` -> ``fence.x``,
    ``services/proxy/y.py`` -> ``fence.proxy.y``)."""
    rel = path.relative_to(REPO)
    parts = list(rel.with_suffix("").parts)
    parts = parts[1:] if parts[0] == "libs" else ["fence", *parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def owner(module: str) -> str:
    """``fence.<service>`` for a service's module, ``fence`` for the core, "" outside fence."""
    parts = module.split(".")
    if parts[0] != "fence":
        return ""
    if len(parts) > 1 and parts[1] in SERVICES:
        return f"fence.{parts[1]}"
    return "fence"


def imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, statement) for every import in ``path``, lazy ones included.

    ``from a import b`` is ``a.b``: ``b`` may be a module (``from fence import config``), and a
    name inside ``a`` still belongs to ``a``'s package.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = module_of(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, f"import {alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = base if alias.name == "*" else f"{base}.{alias.name}"
                found.append((node.lineno, target, f"from {'.' * node.level}{node.module or ''} import {alias.name}"))
    return found


def sources() -> list[Path]:
    return sorted([*(REPO / "libs").rglob("*.py"), *(REPO / "services").rglob("*.py")])


@functools.cache
def crossings() -> tuple[tuple[str, int, str, str, str], ...]:
    """(file, line, module, statement, importing package) for each import of another service, or of one by the core."""
    out = []
    for path in sources():
        mine = owner(module_of(path))
        rel = str(path.relative_to(REPO))
        for line, target, statement in imports(path):
            if owner(target) not in ("", "fence", mine):
                out.append((rel, line, target, statement, mine))
    return tuple(out)


def covers(key: tuple[str, str], rel: str, target: str) -> bool:
    """Whether the allow-list entry ``key`` permits ``rel`` importing ``target`` (a module or a name in it)."""
    where, what = key
    return where == rel and (what == ANY_SERVICE or target == what or target.startswith(what + "."))


def test_the_scan_sees_the_tree():
    """Guards the guard: module names, relative and lazy imports, and the known composition imports are found."""
    assert module_of(REPO / "services/proxy/service.py") == "fence.proxy.service"
    assert module_of(REPO / "libs/fence/__init__.py") == "fence"
    found = {(rel, target) for rel, _, target, _, _ in crossings()}
    assert ("libs/fence/cli.py", "fence.proxy.service.ProxyService") in found  # imported inside a function
    assert len(sources()) > 50


def test_no_service_imports_another_and_the_core_imports_none():
    bad = [
        f"{rel}:{line}: {statement} ({'the core' if mine == 'fence' else mine} importing {owner(target)}: "
        "meet on the bus, or move the shared part to libs/fence)"
        for rel, line, target, statement, mine in crossings()
        if not any(covers(key, rel, target) for key in ALLOWED)
    ]
    assert not bad, "imports across service seams:\n" + "\n".join(bad)


def test_every_exception_is_still_needed():
    """An allow-list entry nothing uses any more goes (after the provenance work: the executor -> config ones)."""
    stale = [
        f"{rel} -> {what}: {why}"
        for (rel, what), why in ALLOWED.items()
        if not any(covers((rel, what), r, target) for r, _, target, _, _ in crossings())
    ]
    assert not stale, "allow-list entries no longer needed (delete them):\n" + "\n".join(stale)


DECISION_CORE = (
    "policy",
    "netintent",
    "domains",
    "goquote",
    "globmatch",
    "runplan",
    "mountops",
    "defaults",
    "subjects",
)
"""The core modules that only decide (no I/O, no transport): what every service and the lone run share."""

TRANSPORTS = (
    "asyncio",
    "nats",
    "uvloop",
    "socket",
    "subprocess",
    "fence.bus",
    "fence.natsbus",
    "fence.service",
    "prometheus_client",
)
PURE_USES = {("domains", "socket"): "socket.inet_aton/inet_ntoa only: parsing an address, never a connection"}


def test_the_decision_core_imports_no_transport():
    """Deciding is pure: the policy core reaches no bus, socket or event loop, so both modes share it as is."""
    bad = []
    for name in DECISION_CORE:
        path = REPO / "libs" / "fence" / f"{name}.py"
        for line, target, statement in imports(path):
            if (name, target) not in PURE_USES and any(target == t or target.startswith(t + ".") for t in TRANSPORTS):
                bad.append(f"libs/fence/{name}.py:{line}: {statement}")
    assert not bad, "the decision core imports a transport:\n" + "\n".join(bad)


LAZY_REASON = re.compile(r"# lazy: \S")
"""How a function-level import says why it is not at the module top: ``# lazy: what it saves``."""


def unexplained_lazy_imports(source: str) -> list[tuple[int, str]]:
    """(line, statement) of every import inside a function that gives no ``# lazy:`` reason.

    The reason sits at the end of the import (any of its lines) or on the comment line
    right above it.  Anything else belongs at the top of the module: a lazy import is
    only worth its surprise where it keeps a module off a run that does not need it
    (or breaks an import cycle), and the comment says which.
    """
    lines = source.splitlines()
    found: dict[int, str] = {}
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            own = lines[node.lineno - 1 : node.end_lineno or node.lineno]
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if not any(LAZY_REASON.search(line) for line in own) and not (
                above.startswith("#") and LAZY_REASON.match(above)
            ):
                found[node.lineno] = lines[node.lineno - 1].strip()
    return sorted(found.items())


def test_the_lazy_import_scan_sees_what_it_must():
    """Guards the guard: nested and async functions count, a reason on the line or above passes."""
    source = (
        "import os\n"
        "def f():\n"
        "    import json\n"
        "    import zlib  # lazy: only f needs it\n"
        "    # lazy: only f needs it\n"
        "    from fence import cli\n"
        "    async def g():\n"
        "        import asyncio  # lazily, no reason given\n"
        "    x = 1  # lazy: not an import\n"
        "    import shlex\n"
    )
    assert unexplained_lazy_imports(source) == [
        (3, "import json"),
        (8, "import asyncio  # lazily, no reason given"),
        (10, "import shlex"),
    ]


def test_every_lazy_import_says_why():
    """An import inside a function in libs/ or services/ carries ``# lazy: <what it saves>``.

    ``fence run`` keeps its import set small on purpose (tests/test_lone_run.py), so some
    imports must wait until a run needs them; every other import goes at the top.
    """
    bad = [
        f"{path.relative_to(REPO)}:{line}: {statement}"
        for path in sources()
        for line, statement in unexplained_lazy_imports(path.read_text(encoding="utf-8"))
    ]
    assert not bad, (
        "imports inside functions without a '# lazy: <reason>' comment (on the line or the one above;"
        " or move them to the module top):\n" + "\n".join(bad)
    )
