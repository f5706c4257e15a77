"""Checks that the block travels: its state dict through safetensors, a one-node blueprint
through ``save``/``load``, construction on the meta device, and ``torch.compile``."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from ssmgraph.blueprint import load_blueprint
from ssmgraph.blueprint.yamlsafe import dump_yaml
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import BlockSpec
from ssmgraph.serialization import load, save
from ssmgraph.testing.asserts import close
from ssmgraph.testing.cases import BlockCase


def check_state_dict_round_trip(case: BlockCase) -> None:
    source, target = case.build(seed=0), case.build(seed=1)
    state = source.state_dict()
    if set(state) != set(target.state_dict()):
        raise AssertionError("two builds with the same arguments have different state-dict keys")
    tensors = {k: v.contiguous() for k, v in state.items()}
    target.load_state_dict(safetensors_load(safetensors_save(tensors)), strict=True)
    xs = case.inputs()
    a, b = source(*xs), target(*xs)
    if a.is_floating_point():
        close(b, a, "outputs after loading the state dict into a fresh build", 0.0)
    elif not torch.equal(a, b):
        raise AssertionError("outputs differ after loading the state dict into a fresh build")


def check_meta_device(case: BlockCase) -> None:
    with torch.device("meta"):
        module = case.spec.factory(list(case.in_types), **case.args)
    real = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if not t.is_meta]
    if real:
        raise AssertionError(f"built on the meta device, these tensors were still allocated: {', '.join(real[:5])}")
    module.to_empty(device="cpu")


def blueprint_text(case: BlockCase) -> str:
    """A one-node blueprint of the configured block, reading one input per port."""
    inputs = {}
    for i, t in enumerate(case.in_types):
        inputs[f"x{i}"] = {"dtype": "int64" if t.dtype == "int" else "float32", "shape": list(t.shape)}
    node = {"block": case.spec.name, "in": list(inputs) if len(inputs) > 1 else "x0"}
    changed = {k: v for k, v in case.args.items() if case.spec.param(k).required or case.spec.param(k).default != v}
    if changed:
        node["args"] = changed
    return dump_yaml({"ssmgraph": 1, "inputs": inputs, "nodes": {"block": node}, "outputs": {"y": "block"}})


@contextlib.contextmanager
def _registered(spec: BlockSpec) -> Iterator[None]:
    """Make the registry resolve ``spec.name`` to ``spec`` (a spec under test need not be
    installed yet, and a variant must not be shadowed by the installed one)."""
    blocks = get_registry().blocks
    previous = blocks.get(spec.name)
    blocks[spec.name] = spec
    try:
        yield
    finally:
        if previous is None:
            del blocks[spec.name]
        else:
            blocks[spec.name] = previous


def check_blueprint_round_trip(case: BlockCase) -> None:
    with tempfile.TemporaryDirectory() as tmp, _registered(case.spec):
        path = Path(tmp) / "block.yaml"
        path.write_text(blueprint_text(case))
        model = compile_blueprint(load_blueprint(path)).double().eval()
        save(model, Path(tmp) / "run")
        loaded = load(Path(tmp) / "run").double().eval()
    xs = case.inputs()
    a, b = model(*xs), loaded(*xs)
    a, b = (a["y"], b["y"]) if isinstance(a, Mapping) else (a, b)
    if a.is_floating_point():
        close(b, a, "outputs after ssmgraph.save and ssmgraph.load", 0.0)
    elif not torch.equal(a, b):
        raise AssertionError("outputs differ after ssmgraph.save and ssmgraph.load")


def check_torch_compile(case: BlockCase) -> None:
    module = case.build(torch.float32)
    xs = case.inputs(torch.float32)
    eager = module(*xs)
    torch.compiler.reset()
    try:
        compiled = torch.compile(module, backend="eager", fullgraph=True)(*xs)
    except Exception as exc:  # noqa: BLE001 - Dynamo raises many types; the first line says what broke the graph
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AssertionError(f"torch.compile(fullgraph=True) failed: {type(exc).__name__}: {first}") from None
    finally:
        torch.compiler.reset()
    if eager.is_floating_point():
        close(compiled, eager, "compiled vs eager outputs", 1e-5)
