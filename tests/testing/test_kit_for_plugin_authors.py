"""What a new plugin author runs into with the conformance kit: small permutation spaces, the
label of each argument set, typos in a spec, blocks whose inputs depend on their arguments,
and where a failure is located."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from ssmgraph.cli import app
from ssmgraph.errors import Collector
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.plugins import Registry, reset_registry
from ssmgraph.registry.specs import BlockSpec, Param, PermAxis, PermSpace, ShapeError, TensorType, same_as_input
from ssmgraph.testing import check_block, make_case, parametrize_block_checks, run_check
from ssmgraph.testing.conformance import Check
from ssmgraph.testing.permutations import derangement


class Bottleneck(nn.Module):
    """y = up(tanh(down(x))) over ``units`` hidden units, per position."""

    def __init__(self, dim: int, units: int):
        super().__init__()
        self.down, self.up = nn.Linear(dim, units), nn.Linear(units, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(torch.tanh(self.down(x)))


def bottleneck(units: int, *, forget_up: bool = False, solo: bool = False) -> BlockSpec:
    def spaces(in_types, *, units):
        axes = (PermAxis("down.weight", 0), PermAxis("down.bias", 0)) + (() if forget_up else (PermAxis("up.weight", 1),))
        declared = [PermSpace("hidden", units, axes)]
        return declared + ([PermSpace("solo", 1, (PermAxis("up.bias", 0),))] if solo else [])

    return BlockSpec(
        name="ffn.bottleneck",
        role="ffn",
        doc="A narrow two-layer perceptron per position.",
        reference="a test fixture",
        params=(Param("units", int, units, "hidden units of the bottleneck"),),
        factory=lambda in_types, *, units: Bottleneck(in_types[0].dim, units),
        shape=same_as_input,
        pointwise=True,
        perm_spaces=spaces,
    )


def status(spec: BlockSpec, check: str, args: dict | None = None) -> tuple[str, str]:
    result = {r.check: r for r in check_block(spec, args, raise_on_failure=False).results}[check]
    return result.status, result.detail


# ---- permutations: every declared unit moves -------------------------------------------------------------


def test_a_wrong_declaration_on_a_two_unit_space_fails() -> None:
    state, detail = status(bottleneck(2, forget_up=True), "permutation_invariance")
    assert state == "failed", detail  # before: the drawn permutation of 2 units was the identity, and it passed
    assert status(bottleneck(2), "permutation_invariance") == ("passed", "every unit moved in hidden (2 units)")


def test_a_space_of_one_unit_is_left_out_and_said_so() -> None:
    state, detail = status(bottleneck(3, solo=True), "permutation_invariance")
    assert (
        state == "passed"
        and detail == "every unit moved in hidden (3 units); solo of one unit in this configuration cannot be permuted"
    )
    state, detail = status(bottleneck(1), "permutation_invariance")
    assert state == "skipped" and "hidden of one unit in this configuration cannot be permuted" in detail


@pytest.mark.parametrize("size", [2, 3, 5, 16])
def test_derangements_move_every_unit(size: int) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        perm = derangement(size, generator)
        assert sorted(perm.tolist()) == list(range(size)) and not (perm == torch.arange(size)).any()
    with pytest.raises(ValueError, match="1 unit"):
        derangement(1, generator)


# ---- each argument set is labelled by what it was given ----------------------------------------------------


class Heads(nn.Module):
    """Per-head mean over the features of each head (``heads`` must divide the width)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        mean = x.view(b, n, self.heads, d // self.heads).mean(-1, keepdim=True).expand(b, n, self.heads, d // self.heads)
        return self.proj(mean.reshape(b, n, d))


def _divisible(in_types, *, heads):
    out = same_as_input(in_types)
    if out.dim % heads:
        raise ShapeError(f"width {out.dim} is not divisible by heads={heads}")
    return out


HEADS = BlockSpec(
    name="ffn.heads",
    role="ffn",
    doc="Per-head mean of the features, then a linear map.",
    reference="a test fixture",
    params=(Param("heads", int, 2, "number of heads (divides the width)", min=1),),
    factory=lambda in_types, *, heads: Heads(in_types[0].dim, heads),
    shape=_divisible,
    pointwise=True,
    examples=({"heads": 2}, {"heads": 3}, {}),
)


def test_each_argument_set_is_labelled_by_what_it_gives() -> None:
    labels = [make_case(HEADS, example).label for example in HEADS.examples]
    assert labels == ["ffn.heads[heads=2]", "ffn.heads[heads=3]", "ffn.heads"]  # before: heads=2 (the default) was "ffn.heads"
    params = parametrize_block_checks([HEADS]).args[1]
    assert {p.id.split("-")[0] for p in params} == set(labels)


def test_example_inputs_follow_the_block_parameters() -> None:
    case = make_case(HEADS, {"heads": 3})  # before: only width 8 was tried, which 3 does not divide
    assert case.in_types[0].dim % 3 == 0 and case.in_types[0].dim >= 6
    assert check_block(HEADS, {"heads": 3}).ok
    assert make_case(HEADS, {"heads": 2}).in_types == (TensorType(("batch", "seq", 8)),)  # width 8 first, as before


@pytest.fixture
def heads_installed():
    class Plugin:
        @hookimpl
        def ssmgraph_blocks(self):
            return [HEADS]

    registry = Registry(autoload=False)
    registry.register(Plugin(), "heads", "ssmgraph-heads", "0.1")
    registry.collect()
    reset_registry(registry)
    yield
    reset_registry(None)


def test_the_results_table_labels_each_argument_set(heads_installed) -> None:
    result = CliRunner().invoke(app, ["check", "ffn.heads", "--json"])
    assert result.exit_code == 0, result.output
    assert sorted({row["block"] for row in json.loads(result.stdout)}) == [
        "ffn.heads",
        "ffn.heads[heads=2]",
        "ffn.heads[heads=3]",
    ]


# ---- a typo in a spec is reported at the spec ----------------------------------------------------------------


def _declared_at() -> str:
    """``this file:line`` of the line that names ffn.heads in HEADS."""
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if 'name="ffn.heads"' in text)
    return f"{__file__}:{line}: ffn.heads"


def test_a_typo_in_examples_is_reported_at_the_spec() -> None:
    typo = dataclasses.replace(HEADS, examples=({"heads": 2}, {"haeds": 4}))
    with pytest.raises(ValueError) as info:
        parametrize_block_checks([typo])
    message = str(info.value)
    assert message.startswith(_declared_at() + ": examples[1] names haeds, not a parameter of the block (its parameters: heads)")
    assert message.endswith("did you mean 'heads'?")


def test_a_typo_in_a_param_name_is_reported_at_the_spec() -> None:
    typo = dataclasses.replace(HEADS, params=(Param("haeds", int, 2, "number of heads"),), examples=())
    with pytest.raises(ValueError) as info:
        check_block(typo)  # before: a TypeError from inside the kit
    message = str(info.value)
    assert message.startswith(
        _declared_at()
        + ": parameter 'haeds' is declared, but the factory <lambda> takes no keyword 'haeds' (did you mean 'heads'?)"
    )
    assert "the shape rule _divisible needs keyword 'heads', which no Param declares" in message


# ---- a failure is located in the block's code ------------------------------------------------------------------


def _blocks_code() -> None:
    raise RuntimeError("kaboom")


def _fails_inside_ssmgraph(case) -> None:
    try:
        _blocks_code()
    except RuntimeError:
        errors = Collector()
        errors.add("E240", "block ffn.heads failed to build: RuntimeError: kaboom")
        errors.raise_if_any()  # what the compiler does with a factory's error


def test_a_failure_is_located_in_the_blocks_code_not_in_ssmgraph() -> None:
    result = run_check(Check("builds", "the block builds", _fails_inside_ssmgraph), make_case(HEADS))
    assert (
        result.status == "failed" and "errors.py" not in result.detail
    )  # before: "(at .../ssmgraph/errors.py:..., in raise_if_any)"
    assert result.detail.endswith(f"(at {__file__}:{_blocks_code.__code__.co_firstlineno + 1}, in _blocks_code)")
