"""No import cycle among the package's modules (issue 18): the module-level imports of sdk/, adapters/
and infra/ (relative ones resolved, `if TYPE_CHECKING:` blocks and imports inside functions left out,
`from package import submodule` read as an import of the submodule) form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"stackwise": ROOT / "sdk", "stackwise.adapters": ROOT / "adapters", "stackwise.infra": ROOT / "infra"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    nodes = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))] \
            if isinstance(node, (ast.If, ast.Try)) else [node]
    for node in nodes:
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names} & set(modules)
            targets.update(subs or {base})
    return {t for t in targets if t in modules and t != name}


def test_no_import_cycle():
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles, done = [], set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append(" -> ".join(trail[trail.index(node):] + [node]))
            return
        if node in done:
            return
        for target in sorted(edges[node]):
            visit(target, trail + [node])
        done.add(node)

    for name in sorted(modules):
        visit(name, [])
    assert cycles == [], "import cycles: " + "; ".join(cycles[:5])
