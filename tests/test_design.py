"""docs/design.md stays true: its module map names every module, the layers hold.

``docs/design.md``: "Module map".
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "requests_opsnow"
DESIGN = ROOT / "docs" / "design.md"

CLIENT_AGNOSTIC = (
    "_lifecycle", "_driver_sync", "_driver_async", "_protocol", "_runtime", "_token", "cache",
)  # fmt: skip
"""Modules a second HTTP client builds on: they import neither requests nor httpx (the
protocol reads ``Retry-After`` with urllib3's parser; nothing else imports urllib3)."""

ONE_FLOW = ("_lifecycle", "_protocol", "_core", "auth", "_replay", "_token", "_hosts")
"""Modules that hold the rules: they neither start threads nor await (``docs/design.md``,
"Token lifecycle": only the two drivers know threads from coroutines)."""


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in PACKAGE.glob("*.py")}


def top_level_imports(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(modules of the package, outside modules) imported when the module loads."""
    inside: set[str] = set()
    outside: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Try):  # an optional dependency: try: import x
            nodes: list[ast.stmt] = node.body
        else:
            nodes = [node]
        for statement in nodes:
            if isinstance(statement, ast.ImportFrom) and statement.level == 1:
                if statement.module:
                    inside.add(statement.module)
                else:
                    inside.update(alias.name for alias in statement.names)
            elif isinstance(statement, ast.ImportFrom) and statement.module:
                outside.add(statement.module.partition(".")[0])
            elif isinstance(statement, ast.Import):
                outside.update(alias.name.partition(".")[0] for alias in statement.names)
    return inside, outside


def test_the_module_map_names_every_module_and_nothing_else() -> None:
    mapped: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", DESIGN.read_text(), re.M):
        mapped.update(re.findall(r"`(\w+)`", row))
    assert mapped == set(modules()) - {"__init__", "__main__"}


def test_modules_import_each_other_without_a_cycle() -> None:
    graph = {name: top_level_imports(tree)[0] & set(modules()) for name, tree in modules().items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, " -> ".join([*visiting, name])
        if name in done:
            return
        visiting.append(name)
        for imported in graph[name]:
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_the_lifecycle_and_the_protocol_know_no_http_client() -> None:
    trees = modules()
    for name in CLIENT_AGNOSTIC:
        outside = top_level_imports(trees[name])[1]
        assert not outside & {"requests", "httpx"}, name
        assert "urllib3" not in outside or name == "_protocol", name


def test_the_rules_neither_start_threads_nor_await() -> None:
    trees = modules()
    for name in ONE_FLOW:
        for node in ast.walk(trees[name]):
            assert not isinstance(node, (ast.AsyncFunctionDef, ast.Await)), name
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("Thread", "to_thread", "create_task"), name
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imported = {alias.name for alias in node.names} | {getattr(node, "module", "")}
                assert not imported & {"asyncio", "anyio", "trio"}, name


def private_names(tree: ast.Module) -> set[str]:
    """The private names a module defines: functions, classes, variables, attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {name for name in names if name.startswith("_") and not name.endswith("__")}


def test_no_module_reaches_into_another_modules_private_members() -> None:
    trees = modules()
    defined = {name: private_names(tree) for name, tree in trees.items()}
    offences: list[str] = []
    for name, tree in trees.items():
        theirs = set().union(*(defined[other] for other in trees if other != name)) - defined[name]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                offences += [f"{name}: imports {a.name}" for a in node.names if a.name in theirs]
            elif isinstance(node, ast.Attribute) and node.attr in theirs:
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    offences.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert offences == []


def test_no_file_cites_a_document_outside_the_repository() -> None:
    # The project's own files (CI runs on a copy that is not a git checkout).
    files = [
        *ROOT.glob("*.md"), *ROOT.glob("*.cfg"), *ROOT.glob("*.toml"), *ROOT.glob(".ci/*"),
        *ROOT.glob("docs/*.md"), *ROOT.glob("requests_opsnow/*.py"), *ROOT.glob("tests/*.py"),
        *ROOT.glob("benchmarks/*.py"),
    ]  # fmt: skip
    outside = re.compile(r"\bSPEC\b|SPEC\.md|STYLE\.md|\.\./shared")
    offenders = [
        str(path.relative_to(ROOT))
        for path in files
        if path.name != "test_design.py" and outside.search(path.read_text(errors="replace"))
    ]
    assert len(files) > 50
    assert offenders == []
