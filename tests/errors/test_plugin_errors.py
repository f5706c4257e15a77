"""Error codes of plugin code: E240 (a block's own code fails) and E300 (a block name provided
twice).

Each test asserts the code, the exact position (line and column of the mark), the node
path, a key part of the message and of the help. Bad blueprints are built with the helpers
of error_helpers.py.
"""

from __future__ import annotations

import types

import pytest
from error_helpers import FILE, check, with_head

from ssmgraph.blueprint import load_blueprint
from ssmgraph.errors import BlueprintError
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.registry.specs import BlockSpec, same_as_input

# ---- E240: a block's own code fails --------------------------------------------------------------------


def _boom(*_: object, **__: object) -> None:
    raise RuntimeError("kaboom")


def _registry_with(*specs: BlockSpec):
    from ssmgraph.registry.plugins import Registry

    registry = Registry(autoload=False)
    for spec in specs:
        registry.blocks[spec.name] = spec
    return registry


def _spec(name: str, **kw: object) -> BlockSpec:
    fields = {
        "name": name,
        "role": "mix",
        "doc": "test",
        "params": (),
        "factory": _boom,
        "shape": same_as_input,
        "plugin": "brokenpkg",
    }
    fields.update(kw)
    return BlockSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_spec("mix.badshape", shape=_boom), "the shape rule of mix.badshape (from brokenpkg) failed: RuntimeError: kaboom"),
        (_spec("mix.badfactory"), "block mix.badfactory (from brokenpkg) failed to build: RuntimeError: kaboom"),
        (_spec("mix.notmodule", factory=lambda in_types, **_: 3), "returned int, not an nn.Module"),
    ],
)
def test_e240_block_code_fails(spec: BlockSpec, message: str) -> None:
    text = with_head(f"  z: {{block: {spec.name}, in: embed}}", "outputs: {y: z}")
    with pytest.raises(BlueprintError) as info:
        compile_blueprint(load_blueprint(FILE, text=text), registry=_registry_with(spec))
    (d,) = info.value.diagnostics
    check(d, "E240", 7, 3, "z", message)


# ---- E300: plugins ---------------------------------------------------------------------------------------


def test_e300_duplicate_block_name() -> None:
    from ssmgraph import hookimpl
    from ssmgraph.registry import plugins

    module = types.ModuleType("ssmgraph_dup_plugin")

    @hookimpl
    def ssmgraph_blocks() -> list[BlockSpec]:
        return [
            BlockSpec(name="norm.layer", role="norm", doc="a second norm.layer", params=(), factory=_boom, shape=same_as_input)
        ]

    module.ssmgraph_blocks = ssmgraph_blocks  # type: ignore[attr-defined]
    registry = plugins.Registry(autoload=False)
    registry.register(module, module.__name__, "ssmgraph-dup", "0.1")
    registry.collect()  # a clash is a warning; a blueprint that uses the block is refused where it names it
    text = with_head("  z: {block: norm.layer, in: embed}", "outputs: {y: z}")
    with pytest.raises(BlueprintError) as info:
        compile_blueprint(load_blueprint(FILE, text=text), registry=registry)
    (d,) = info.value.diagnostics
    check(d, "E300", 7, 14, "z.block", "'norm.layer' is provided twice", "SSMGRAPH_DISABLE_PLUGINS=ssmgraph_dup_plugin")
    assert "ssmgraph_dup_plugin" in d.message and "ssmgraph.blocks.norm" in d.message
    # The plugin registered first (the built-in) is named first; the newcomer is the one to disable.
    assert "by ssmgraph.blocks.norm" in d.message.split("and by")[0], d.message
    assert "ssmgraph.blocks.norm" not in d.help
