"""The package layers hold: the import graph of ``src/hybridft`` (read with ``ast``, imports inside
functions included) has no cycle, and every arrow points down the layer list of
``docs/architecture.md`` (the ```layers block, the one place the order is written)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "hybridft"
DOC = ROOT / "docs" / "architecture.md"
# A function-local project import needs a reason: a `# heavy: ...` comment on its line or on the
# comment lines right above its group of imports.
REASON = re.compile(r"#\s*heavy:")
# Files being reworked elsewhere (issue 19: train/ by the lead, serve/generation.py by the label
# scorer's issue): their function-local imports are not checked for a reason yet. The graph and
# the layers are checked everywhere.


def declared_layers() -> list[list[str]]:
    """The ```layers block of docs/architecture.md, top layer first."""
    block = re.search(r"```layers\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert block, f"{DOC}: no ```layers block"
    layers = []
    for line in block.group(1).splitlines():
        names = re.split(r"\s{2,}", line.strip())[0]
        if names:
            layers.append([n.strip().rstrip("/") for n in names.split(",")])
    return layers


def node_of(module: str) -> str | None:
    """``hybridft.serve.router`` -> ``serve``; a top-level module (``hybridft.cli``) is its own."""
    parts = module.split(".")
    return parts[1] if parts[0] == "hybridft" and len(parts) > 1 else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    if base == "hybridft":  # from hybridft import cli_monitor, runtime
        return [f"hybridft.{a.name}" for a in node.names]
    return [base]


def function_local(tree: ast.AST) -> set[int]:
    """ids of the import statements inside a function body."""
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            inside |= {id(n) for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)}
    return inside


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def import_graph() -> dict[tuple[str, str], list[str]]:
    """(from node, to node) -> the import sites (``file:line``) that draw that arrow."""
    arrows: dict[tuple[str, str], list[str]] = {}
    for path in source_files():
        module = module_name(path)
        src = node_of(module)
        if src is None:  # hybridft/__init__.py
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in imported_modules(node, module, path.name == "__init__.py"):
                dst = node_of(target)
                if dst is not None and dst != src:
                    where = f"{path.relative_to(SRC)}:{node.lineno}"
                    arrows.setdefault((src, dst), []).append(where)
    return arrows


def nodes() -> set[str]:
    found = {p.stem for p in SRC.glob("*.py") if p.name != "__init__.py"}
    return found | {p.parent.name for p in SRC.glob("*/__init__.py")}


def test_every_module_has_a_layer():
    layers = declared_layers()
    listed = [n for layer in layers for n in layer]
    assert len(listed) == len(set(listed)), f"listed twice: {sorted(listed)}"
    assert nodes() == set(listed), (
        f"not in docs/architecture.md's layers: {sorted(nodes() - set(listed))}; "
        f"listed but absent: {sorted(set(listed) - nodes())}"
    )


def test_the_import_graph_has_no_cycle():
    graph = nx.DiGraph(list(import_graph()))
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles between packages (first 5): {cycles[:5]}"


def test_every_import_points_down_the_layers():
    level = {name: i for i, layer in enumerate(declared_layers()) for name in layer}
    wrong = [
        f"{src} -> {dst} ({'sideways' if level[src] == level[dst] else 'up'}): {', '.join(sites)}"
        for (src, dst), sites in sorted(import_graph().items())
        if level[dst] <= level[src]
    ]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_function_local_imports_say_why():
    """Project imports inside functions only where a heavy dependency or start-up time needs them,
    and then with the reason (``# heavy: ...``) on the import or the comment above its group."""
    missing: set[str] = set()  # a nested function is walked with its parent too
    for path in source_files():
        rel = path.relative_to(SRC).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for body in _bodies(fn):
                for group in _import_groups(body):
                    if not any(_is_project(n, module_name(path)) for n in group):
                        continue
                    first, last = group[0].lineno, group[-1].end_lineno or group[-1].lineno
                    above = first - 1
                    while above >= 1 and lines[above - 1].strip().startswith("#"):
                        above -= 1
                    text = "\n".join(lines[above:last])
                    if not REASON.search(text):
                        missing.add(f"{rel}:{first}")
    assert not missing, "function-local project imports without a `# heavy:` reason: " + ", ".join(
        sorted(missing)
    )


def _bodies(fn: ast.AST) -> list[list[ast.stmt]]:
    """Every statement list inside ``fn`` (its body, branches, loops, with and try blocks)."""
    out = []
    for node in ast.walk(fn):
        for attr in ("body", "orelse", "finalbody"):
            value = getattr(node, attr, None)
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                out.append(value)
        for handler in getattr(node, "handlers", []):
            out.append(handler.body)
    return out


def _import_groups(body: list[ast.stmt]) -> list[list[ast.Import | ast.ImportFrom]]:
    """Runs of consecutive import statements: one reason comment covers a run."""
    groups: list[list[ast.Import | ast.ImportFrom]] = []
    run: list[ast.Import | ast.ImportFrom] = []
    for stmt in [*body, None]:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            run.append(stmt)
        elif run:
            groups.append(run)
            run = []
    return groups


def _is_project(node: ast.Import | ast.ImportFrom, module: str) -> bool:
    return any(
        t.split(".")[0] == "hybridft" for t in imported_modules(node, module, is_package=False)
    )
