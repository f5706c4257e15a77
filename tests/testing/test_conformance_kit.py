"""The conformance kit catches each broken contract, and only that one.

Each test breaks one promise of a well-behaved reference mixer (a causal cumulative mean
with a recurrent step) and checks that the kit fails exactly the check that guards it.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from ssmgraph.cli import app
from ssmgraph.registry.plugins import Registry, reset_registry
from ssmgraph.registry.specs import BlockSpec, Param, PermAxis, PermSpace, ShapeError, TensorType, same_as_input
from ssmgraph.testing import CHECK_NAMES, ConformanceError, check_block, make_case


class CumMean(nn.Module):
    """y_t = MLP(mean(x_0..x_t)): causal, with state (running sum, count)."""

    def __init__(self, dim: int, flaw: str = ""):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim))
        self.unused = nn.Parameter(torch.zeros(dim)) if flaw == "unused_param" else None
        if flaw == "allocates":
            self.register_buffer("table", torch.zeros(dim, device="cpu"))
        self.flaw = flaw

    def _scan(self, x: Tensor, state, mask: Tensor | None):
        total, count = (state if state is not None else self.init_state(x.shape[0], dtype=x.dtype))[:2]
        if self.flaw == "ignores_state":
            total, count = torch.zeros_like(total), torch.zeros_like(count)
        valid = torch.ones(x.shape[:2], dtype=x.dtype) if mask is None or self.flaw == "ignores_mask" else mask.to(x.dtype)
        totals = total[:, None] + torch.cumsum(x * valid[..., None], 1)
        counts = count[:, None] + torch.cumsum(valid, 1)[..., None]
        return totals / counts.clamp_min(1), (totals[:, -1], counts[:, -1])

    def forward(self, x: Tensor, *, state=None, return_state: bool = False, mask: Tensor | None = None):
        if self.flaw == "peeks":
            x = x + 0.1 * torch.roll(x, -1, dims=1)
        if self.flaw == "peeks_once" and x.shape[1] > 2:  # position 1 reads position 2, nothing else leaks
            x = torch.cat([x[:, :1], x[:, 1:2] + 0.1 * x[:, 2:3], x[:, 2:]], 1)
        if self.flaw == "graph_break" and x.sum().item() > float("inf"):
            x = x * 2
        mean, new_state = self._scan(x, state, mask)
        y = self.proj(mean)
        if self.flaw == "wrong_shape":
            y = y[..., :-1]
        if self.flaw == "counts_padding":  # a global term divided by the padded length
            valid = torch.ones(x.shape[:2], dtype=x.dtype) if mask is None else mask.to(x.dtype)
            y = y + (x * valid[..., None]).sum(1, keepdim=True) / x.shape[1]
        if self.flaw == "extra_state":  # a state part that forward returns and step never does
            new_state = (*new_state, torch.zeros_like(new_state[0]))
        return (y, new_state) if return_state else y

    def init_state(self, batch: int, *, device=None, dtype=None):
        dtype = dtype or self.proj[0].weight.dtype
        return torch.zeros(batch, self.proj[0].in_features, device=device, dtype=dtype), torch.zeros(
            batch, 1, device=device, dtype=dtype
        )

    def step(self, x_t: Tensor, state):
        total, count = state[:2]
        total, count = total + x_t, count + 1
        mean = total / count
        if self.flaw == "step_drifts":
            mean = mean * 1.01
        return self.proj(mean), (total, count)


def hidden_units(in_types, *, flaw):
    """The MLP's hidden units: rows of proj.0, columns of proj.2 (flaw "bad_space": rows of proj.2's input forgotten)."""
    dim = in_types[0].dim
    axes = (PermAxis("proj.0.weight", 0), PermAxis("proj.0.bias", 0))
    if flaw != "bad_space":
        axes += (PermAxis("proj.2.weight", 1),)
    return [PermSpace("hidden", 2 * dim, axes)]


def spec(flaw: str = "", **changes) -> BlockSpec:
    base = BlockSpec(
        name="mix.cummean",
        role="mix",
        doc="Causal cumulative mean followed by a linear map.",
        reference="a test fixture",
        params=(Param("flaw", str, flaw, "which contract to break (tests only)"),),
        factory=lambda in_types, *, flaw: CumMean(in_types[0].dim, flaw),
        shape=same_as_input,
        step=True,
        perm_spaces=hidden_units,
    )
    return dataclasses.replace(base, **changes)


def failed(block: BlockSpec, **kwargs) -> set[str]:
    report = check_block(block, raise_on_failure=False, **kwargs)
    return {r.check for r in report.results if r.status == "failed"}


def test_the_reference_mixer_passes_every_check():
    report = check_block(spec())
    assert report.ok
    assert {r.check for r in report.results if r.status == "passed"} == set(CHECK_NAMES)


@pytest.mark.parametrize(
    "flaw,check",
    [
        ("peeks", "causality"),
        ("peeks_once", "causality"),
        ("extra_state", "state_carry"),
        ("step_drifts", "step_equals_forward"),
        ("unused_param", "gradients"),
        ("ignores_state", "state_carry"),
        ("ignores_mask", "mask"),
        ("allocates", "meta_device"),
        ("graph_break", "torch_compile"),
        ("bad_space", "permutation_invariance"),
    ],
)
def test_each_broken_promise_fails_its_check(flaw, check):
    assert check in failed(spec(flaw))


def test_a_mixer_whose_outputs_depend_on_the_amount_of_padding_fails_mask():
    bidirectional = spec("counts_padding", causal=False, bidirectional=True, step=False)
    assert "mask" in failed(bidirectional)


def test_a_pointwise_block_with_a_per_position_scalar_output_passes_causality():
    scalar = BlockSpec(
        name="head.scalar",
        role="head",
        doc="One value per position: x @ w.",
        reference="a test fixture",
        params=(),
        factory=lambda in_types: Scalar(in_types[0].dim),
        shape=lambda in_types: TensorType(in_types[0].shape[:2], "float"),
        pointwise=True,
    )
    report = check_block(scalar, raise_on_failure=False)
    assert {r.check: r.status for r in report.results}["causality"] == "passed"


class Scalar(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.w


def test_a_lying_shape_rule_fails_shapes():
    assert "shapes_and_dtypes" in failed(spec("wrong_shape"))


def test_undocumented_parameters_and_missing_reference_fail_documentation():
    bare = spec(params=(Param("flaw", str, "", "x"),), reference="")
    assert {"documented"} <= failed(bare)


def test_a_non_causal_block_declared_non_causal_skips_causality():
    report = check_block(spec("peeks", causal=False, bidirectional=True, step=False), raise_on_failure=False)
    status = {r.check: r.status for r in report.results}
    assert status["causality"] == "skipped" and status["step_equals_forward"] == "skipped"


def test_expected_failures_are_reported_and_must_still_fail():
    report = check_block(spec("step_drifts"), expected_failed_checks={"step_equals_forward": "known"})
    assert {r.check: r.status for r in report.results}["step_equals_forward"] == "xfailed"
    with pytest.raises(ConformanceError, match="listed as an expected failure"):
        check_block(spec(), expected_failed_checks={"causality": "no longer true"})
    with pytest.raises(ValueError, match="unknown check"):
        check_block(spec(), expected_failed_checks={"causalty": "typo"})


def test_failures_raise_with_a_readable_message():
    with pytest.raises(
        ConformanceError, match=r"mix.cummean\[flaw=step_drifts\] fails 1 conformance check(?s:.*)step_equals_forward"
    ):
        check_block(spec(), {"flaw": "step_drifts"})


def test_required_and_unknown_arguments_are_explained():
    needs = spec(params=(Param("width", int, doc="output width of the map"),), factory=lambda in_types, *, width: CumMean(width))
    with pytest.raises(ValueError, match="needs width: pass them as args .*--set width="):
        make_case(needs)
    with pytest.raises(ValueError, match="has no parameter bogus"):
        make_case(spec(), {"bogus": 1})
    with pytest.raises(ValueError, match="unknown block 'mix.atention'.*mix.attention"):
        make_case("mix.atention")


def test_example_inputs_follow_the_shape_rule():
    def ints_only(in_types, **_):
        (x,) = in_types
        if x.dtype != "int":
            raise ShapeError("expects token ids")
        return TensorType((*x.shape, 4))

    case = make_case(spec(shape=ints_only, role="embed", step=False, pointwise=True))
    assert case.in_types == (TensorType(("batch", "seq"), "int"),)


@pytest.fixture
def registry_with_cummean():
    class Plugin:
        from ssmgraph.registry.hookspecs import hookimpl

        @hookimpl
        def ssmgraph_blocks(self):
            return [spec()]

    registry = Registry(autoload=False)
    registry.register(Plugin(), "cummean", "cummean-plugin", "0.1")
    registry.collect()
    reset_registry(registry)
    yield
    reset_registry(None)


def test_cli_check_reports_and_exits_by_the_result(registry_with_cummean):
    runner = CliRunner()
    ok = runner.invoke(app, ["check", "mix.cummean", "--json"])
    assert ok.exit_code == 0, ok.output
    rows = json.loads(ok.stdout)
    assert {r["check"] for r in rows} == set(CHECK_NAMES) and all(r["status"] == "passed" for r in rows)
    bad = runner.invoke(app, ["check", "mix.cummean", "--set", "flaw=peeks"])
    assert bad.exit_code == 1
    assert "causality" in bad.stdout and "failed" in bad.stdout
    unknown = runner.invoke(app, ["check", "mix.cummean", "--set", "bogus=1"])
    assert unknown.exit_code == 2 and "has no parameter bogus" in unknown.stderr
