"""The package's layers import one way (docs/architecture.md): a module may import from its own
layer and the layers below it, never from one above — not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ssmgraph"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "version", "progress"),
    ("registry",),
    ("blueprint",),
    ("graph",),
    ("ops",),
    ("blocks", "kernels"),
    ("serialization", "folders", "safeio", "optim", "zoo"),
    ("train", "interop", "testing", "plugin_template"),
    ("merge",),
    ("cli", "__main__"),
    ("__init__", "plugin"),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MAX_LINES = 400
LONG_MODULES: dict[str, str] = {}  # path -> why one idea needs the length (docs/architecture.md says the same)


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def top(module: str) -> str:
    """``ssmgraph.train.trainer`` -> ``train``; the package root -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ssmgraph import in the file, function-local ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "ssmgraph"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.split(".")[0] == "ssmgraph":
                found.append((node.lineno, name))
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({top(module_name(p)) for p in modules()} - set(RANK))
    assert not unplaced, f"place these in LAYERS (and docs/architecture.md): {unplaced}"


def test_imports_go_one_way() -> None:
    upward = []
    for path in modules():
        own = top(module_name(path))
        for line, name in imported(path):
            if RANK[top(name)] > RANK[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {name} ({top(name)})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    where = str(path.relative_to(PACKAGE.parent))
    assert lines <= MAX_LINES or where in LONG_MODULES, (
        f"{where} has {lines} lines; split it by job (or say in LONG_MODULES why not)"
    )
