"""docs/plugins.md's examples are complete plugins: each python block runs, the plugins it
defines register, and they work (the block passes the kit, the task samples, the merge method
merges), written against ``ssmgraph.plugin`` alone."""

from __future__ import annotations

import ast
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import ssmgraph
import ssmgraph.plugin
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge
from ssmgraph.registry.plugins import Registry, reset_registry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_FILE = re.compile(r"`([\w/]+)\.py`:\s*$")


def python_blocks() -> list[tuple[str | None, str]]:
    """(module name, code) of each python block of the docs; the module is the file the line
    before the block names (``ssmgraph_pick/run.py`` -> ``ssmgraph_pick.run``), else None."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        before = [line for line in text[: match.start()].splitlines() if line.strip()]
        named = _FILE.search(before[-1]) if before else None
        module = named.group(1).removesuffix("/__init__").replace("/", ".") if named else None
        blocks.append((module, match.group(1)))
    return blocks


def _install(name: str, code: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """``code`` as module ``name`` in sys.modules (its parent packages made as needed)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        package = ".".join(parts[:i])
        if package not in sys.modules:
            monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
            sys.modules[package].__path__ = []
    module = types.ModuleType(name)
    module.__path__ = []  # a package: the docs' __init__.py files
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(code, f"docs/plugins.md ({name})", "exec"), module.__dict__)  # noqa: S102 - running the docs is the point
    return module


@pytest.fixture(scope="module")
def docs_plugins(tmp_path_factory: pytest.TempPathFactory):
    """The docs' plugin modules installed and registered, then the other blocks run."""
    monkeypatch = pytest.MonkeyPatch()
    registry = Registry(autoload=False)  # the installed test plugin's mix.ema would clash with the docs'
    modules = [_install(name, code, monkeypatch) for name, code in python_blocks() if name]
    for module in modules:
        if any(name.startswith("ssmgraph_") for name in vars(module)):
            registry.register(module, module.__name__, f"docs-{module.__name__}", "0.1.0")
    registry.collect()
    reset_registry(registry)
    try:
        for name, code in python_blocks():
            if name is None:
                exec(compile(code, "docs/plugins.md", "exec"), {"__name__": "docs_example"})  # noqa: S102 - as above
        yield registry
    finally:
        reset_registry(None)
        monkeypatch.undo()


def test_the_docs_show_a_block_a_task_and_a_merge_method_plugin() -> None:
    modules = {name for name, _ in python_blocks() if name}
    assert modules == {"ssmgraph_ema", "ssmgraph_prevtoken", "ssmgraph_pick", "ssmgraph_pick.run"}


def test_the_examples_use_only_ssmgraph_plugin() -> None:
    used = set()
    for _, code in python_blocks():
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ssmgraph":
                assert node.module == "ssmgraph.plugin", f"the docs import from {node.module}"
                used |= {alias.name for alias in node.names}
            if isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] != "ssmgraph" for alias in node.names), "the docs import ssmgraph itself"
    assert used <= set(ssmgraph.plugin.__all__)
    assert all(getattr(ssmgraph.plugin, name) is not None for name in used)  # merge names load on first use
    assert {
        "hookimpl",
        "BlockSpec",
        "Param",
        "TaskSpec",
        "Task",
        "Batch",
        "MergeMethodSpec",
        "MergeResult",
        "check_block",
    } <= used


def test_the_docs_plugins_register_cleanly(docs_plugins: Registry) -> None:
    assert not docs_plugins.problems
    assert docs_plugins.get("mix.ema").plugin == "docs-ssmgraph_ema"
    assert docs_plugins.task("previous_token").plugin == "docs-ssmgraph_prevtoken"
    assert docs_plugins.merge_method("pick_best").run == "ssmgraph_pick.run:pick_best"


def test_the_docs_task_samples_previous_tokens(docs_plugins: Registry) -> None:
    spec = docs_plugins.task("previous_token")
    task = spec.factory(**spec.defaults())
    batch = task.sample(4, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (4, 12) and (batch.targets[:, 1:] == batch.inputs[:, :-1]).all()


def test_the_docs_merge_method_runs_from_a_recipe(docs_plugins: Registry, tmp_path: Path) -> None:
    for seed in (0, 1):
        torch.manual_seed(seed)
        ssmgraph.save(ssmgraph.build("gpt", vocab=8, d_model=16, layers=1, heads=2, max_len=16), tmp_path / f"m{seed}")
    text = (
        "merge_method: pick_best\n"
        "models: [{name: a, checkpoint: m0}, {name: b, checkpoint: m1}]\n"
        "parameters: {metric: loss}\n"
        "data: {task: previous_token, batch_size: 8, eval_batches: 2}\n"
    )
    out, _ = run_merge(recipe_from_text(text, "merge.yaml", tmp_path), tmp_path / "out", progress=False)
    report = json.loads((out / "report.json").read_text())
    scores = report["metrics"]["evaluation"]
    best = min(scores, key=lambda name: scores[name]["loss"])
    tokens = torch.randint(0, 8, (2, 6))
    torch.testing.assert_close(ssmgraph.load(out)(tokens), ssmgraph.load(tmp_path / {"a": "m0", "b": "m1"}[best])(tokens))
