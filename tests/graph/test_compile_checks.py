"""Build-time checks of the compiler: a plugin block's forward against its shape rule (E241), a
block too large to build (E240), and the linear-time walk that finds what outputs and taps need."""

from __future__ import annotations

import random
import textwrap

import networkx as nx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.blueprint import load_blueprint
from ssmgraph.errors import BlueprintError
from ssmgraph.graph.compile import _ancestors, compile_blueprint
from ssmgraph.registry.plugins import Registry, get_registry, reset_registry
from ssmgraph.registry.specs import BlockSpec, Param, same_as_input
from ssmgraph.testing import make_case
from ssmgraph.testing.portability import blueprint_text

FILE = "bp.yaml"
ONE_NODE = """\
ssmgraph: 1
inputs: {x: {dtype: float32, shape: [batch, seq, 4]}}
nodes:
  norm: {block: norm.layer, in: x}
  odd: {block: BLOCK, in: norm}
outputs: {y: odd}
"""


class DropsAFeature(nn.Module):
    """Declares B×L×D → B×L×D (same_as_input) but returns one feature fewer."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :-1] * self.scale


class CannotRunOnExamples(nn.Module):
    """A forward that raises on the example inputs (like a block that needs longer sequences)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("needs sequences of at least 64 tokens")


class CountsAndDraws(nn.Module):
    """A valid block with side effects the check must undo: random draws (the random stream)
    and batch statistics (train mode). Counts its calls so the test knows it ran."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.norm(x.transpose(1, 2)).transpose(1, 2) * torch.rand(())


def _spec(name: str, factory, doc: str = "a test block") -> BlockSpec:
    return BlockSpec(
        name=name, role="mix", doc=doc, params=(Param("gain", float, 1.0, "unused gain"),), factory=factory, shape=same_as_input
    )


class _Plugin:
    """What an installed plugin module is, in process: an object with hook implementations."""

    @ssmgraph.hookimpl
    def ssmgraph_blocks(self) -> list[BlockSpec]:
        return [
            _spec("mix.drops_feature", lambda in_types, *, gain: DropsAFeature()),
            _spec("mix.needs_long", lambda in_types, *, gain: CannotRunOnExamples()),
            _spec("mix.counts", lambda in_types, *, gain: CountsAndDraws(in_types[0].dim)),
        ]


@pytest.fixture
def registry():
    registry = Registry(autoload=False)
    registry.register(_Plugin(), "oddblocks", "ssmgraph-oddblocks", "0.2.0")
    registry.collect()
    yield registry
    reset_registry(None)


def _compile(block: str, registry: Registry) -> ssmgraph.CompiledModel:
    return compile_blueprint(load_blueprint(FILE, text=ONE_NODE.replace("BLOCK", block)), registry=registry)


def test_a_forward_that_breaks_its_shape_rule_is_e241_at_build(registry) -> None:
    with pytest.raises(BlueprintError) as info:
        _compile("mix.drops_feature", registry)
    (d,) = info.value.diagnostics
    assert d.code == "E241" and d.path == "odd" and (d.mark.file, d.mark.line) == (FILE, 5)
    assert "block mix.drops_feature (from ssmgraph-oddblocks) returned float[3, 5, 3]" in d.message
    assert "its shape rule says float[batch, seq, 4] (float[3, 5, 4])" in d.message
    assert "ssmgraph-oddblocks" in d.help


def test_ssmgraph_build_reports_e241_naming_the_plugin(registry, tmp_path) -> None:
    from ssmgraph.cli import app

    path = tmp_path / "odd.yaml"
    path.write_text(ONE_NODE.replace("BLOCK", "mix.drops_feature"))
    reset_registry(registry)
    result = CliRunner().invoke(app, ["build", str(path)], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 2, result.output
    assert "error[E241]: odd: block mix.drops_feature (from ssmgraph-oddblocks) returned float[3, 5, 3]" in result.stderr
    assert "Traceback" not in result.output


def test_a_forward_that_cannot_run_on_the_examples_does_not_fail_the_build(registry) -> None:
    _compile("mix.needs_long", registry)


def test_the_check_leaves_no_trace_on_the_model_or_the_random_stream(registry) -> None:
    torch.manual_seed(0)
    model = _compile("mix.counts", registry)
    after_build = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after_build, torch.rand(4))  # neither factory draws: the build drew nothing
    block = model.get_submodule("odd")
    assert block.calls == 1  # the check ran it...
    assert all(m.training for m in model.modules())  # ...in eval mode, and put train mode back
    assert int(block.norm.num_batches_tracked) == 0 and torch.equal(block.norm.running_mean, torch.zeros(4))


def test_installed_plugin_blocks_pass_the_check() -> None:
    """No false alarms: every example configuration of every installed plugin block builds."""
    plugin_specs = [spec for spec in get_registry().blocks.values() if spec.plugin != "ssmgraph"]
    if not plugin_specs:
        pytest.skip("no plugin installed (pip install -e tests/plugins/ssmgraph-testplugin)")
    for spec in plugin_specs:
        for args in spec.examples or ({},):
            compile_blueprint(load_blueprint("block.yaml", text=blueprint_text(make_case(spec, args))))


# ---- E240: sizes too large for memory ----------------------------------------------------------------------


def test_a_block_too_large_to_build_blames_the_sizes_not_the_block() -> None:
    text = textwrap.dedent("""\
        ssmgraph: 1
        params: {d: 4}
        inputs: {x: {dtype: float32, shape: [batch, seq, $d]}}
        nodes:
          ffn: {block: ffn.mlp, in: x}
        outputs: {y: ffn}
        """)
    with pytest.raises(BlueprintError) as info:
        compile_blueprint(load_blueprint(FILE, {"d": 10**12}, text=text))  # torch refuses the size before allocating
    (d,) = info.value.diagnostics
    assert d.code == "E240" and d.path == "ffn"
    assert "block ffn.mlp is too large to build with" in d.message and "float[batch, seq, 1000000000000]" in d.message
    assert "bug" not in d.message + d.help and "make them smaller" in d.help


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 4000000000000 bytes."
            ),
            "3.6 TiB",
        ),
        (MemoryError(), "MemoryError"),
        (OverflowError("Python int too large to convert to C long"), "Python int too large"),
    ],
)
def test_allocation_failures_of_a_factory_are_e240_too_large(error: Exception, shown: str) -> None:
    def factory(in_types, *, gain):
        raise error

    registry = Registry(autoload=False)
    registry.blocks["mix.huge"] = _spec("mix.huge", factory)
    with pytest.raises(BlueprintError) as info:
        _compile("mix.huge", registry)
    (d,) = info.value.diagnostics
    assert d.code == "E240" and "mix.huge is too large to build with gain=" not in d.message  # a float is no size
    assert "is too large to build with input float[batch, seq, 4]" in d.message and shown in d.message


def test_other_factory_failures_still_point_at_the_block() -> None:
    def factory(in_types, *, gain):
        raise RuntimeError("kaboom")

    registry = Registry(autoload=False)
    registry.blocks["mix.buggy"] = _spec("mix.buggy", factory)
    with pytest.raises(BlueprintError) as info:
        _compile("mix.buggy", registry)
    assert "failed to build: RuntimeError: kaboom" in info.value.diagnostics[0].message


# ---- what outputs and taps need: one walk ------------------------------------------------------------------


class CountingGraph(nx.DiGraph):
    """Counts the predecessor look-ups a walk makes (networkx's own ancestors() uses them too)."""

    lookups = 0

    def predecessors(self, n):
        CountingGraph.lookups += 1
        return super().predecessors(n)


def _old_ancestors(graph: nx.DiGraph, targets: list[str]) -> set[str]:
    """The per-target version this replaced (quadratic with a tap per layer)."""
    found: set[str] = set()
    for target in targets:
        found |= {target} | nx.ancestors(graph, target)
    return found


@pytest.mark.parametrize("seed", range(5))
def test_ancestors_equal_the_per_target_walks(seed: int) -> None:
    rng = random.Random(seed)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(60))
    graph.add_edges_from((a, b) for a in range(60) for b in range(a + 1, 60) if rng.random() < 0.05)
    targets = rng.sample(range(60), 7)
    assert _ancestors(graph, targets) == _old_ancestors(graph, targets)


def test_ancestors_look_at_each_node_once_with_a_tap_per_layer() -> None:
    layers = 2000
    graph = CountingGraph()
    nx.add_path(graph, ["x", *(f"blocks.{i}.out" for i in range(layers)), "head"])
    CountingGraph.lookups = 0
    found = _ancestors(graph, ["head", *(f"blocks.{i}.out" for i in range(layers))])
    assert len(found) == layers + 2
    assert CountingGraph.lookups <= graph.number_of_nodes()  # the per-tap walks made ~2 million


def test_a_2000_layer_model_with_a_tap_per_layer_compiles() -> None:
    text = textwrap.dedent("""\
        ssmgraph: 1
        inputs: {x: {dtype: float32, shape: [batch, seq, 2]}}
        nodes:
          blocks:
            repeat: 2000
            in: x
            carry: x
            body:
              inputs: [x]
              nodes:
                out: {block: struct.mean, in: [x, x]}
              outputs: {x: out}
        outputs: {y: blocks}
        taps:
          resid: {at: blocks.*.out}
        """)
    model = compile_blueprint(load_blueprint(FILE, text=text))
    x = torch.randn(1, 3, 2)
    y, taps = model(x, taps=True)
    assert len(taps) == 2000 and torch.equal(y, x) and torch.equal(taps["resid.1999"], x)
