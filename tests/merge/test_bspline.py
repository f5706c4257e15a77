"""The B-spline basis against scipy, and the α curve built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from ssmgraph.merge.bspline import BSplineCurve, bspline_basis, clamped_knots


def _points() -> torch.Tensor:
    rand = torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.cat([torch.linspace(0.0, 1.0, 101, dtype=torch.float64), rand])


@pytest.mark.parametrize("n_ctrl,degree", [(16, 3), (7, 3), (4, 3), (6, 2), (5, 1), (3, 0), (9, 5)])
def test_basis_equals_scipy_design_matrix(n_ctrl, degree):
    t = _points()
    knots = clamped_knots(n_ctrl, degree).numpy()
    expected = BSpline.design_matrix(t.numpy(), knots, degree).toarray()
    np.testing.assert_allclose(bspline_basis(t, n_ctrl, degree).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("n_ctrl,degree", [(16, 3), (5, 2), (4, 3)])
def test_partition_of_unity_and_non_negative(n_ctrl, degree):
    basis = bspline_basis(_points(), n_ctrl, degree)
    assert basis.shape == (301, n_ctrl)
    assert bool((basis >= 0).all())
    torch.testing.assert_close(basis.sum(1), torch.ones(301, dtype=torch.float64), atol=1e-12, rtol=0)
    # clamped: the curve starts at the first control point and ends at the last
    ends = bspline_basis(torch.tensor([0.0, 1.0], dtype=torch.float64), n_ctrl, degree)
    torch.testing.assert_close(ends, torch.eye(n_ctrl, dtype=torch.float64)[[0, -1]])


def test_basis_is_differentiable_in_t():
    c = np.random.default_rng(1).normal(size=8)
    spline = BSpline(clamped_knots(8, 3).numpy(), c, 3)
    t = torch.tensor([0.05, 0.3, 0.55, 0.77, 0.93], dtype=torch.float64, requires_grad=True)
    (bspline_basis(t, 8, 3) @ torch.from_numpy(c)).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), spline.derivative()(t.detach().numpy()), atol=1e-10)


def test_basis_dtype_and_clamping():
    assert bspline_basis(torch.tensor([0.5]), 5).dtype == torch.float32
    out = bspline_basis(torch.tensor([-0.5, 1.5], dtype=torch.float64), 5)
    torch.testing.assert_close(out, bspline_basis(torch.tensor([0.0, 1.0], dtype=torch.float64), 5))
    with pytest.raises(ValueError, match="at least 4 control points"):
        bspline_basis(torch.tensor([0.5]), 3, 3)


@pytest.mark.parametrize("squash", ["sigmoid", "clamp"])
def test_curve_starts_constant_and_trains(squash):
    curve = BSplineCurve(6, squash=squash, init=0.3)
    depths = torch.linspace(0, 1, 9)
    alpha = curve(depths)
    assert alpha.shape == (9,)
    torch.testing.assert_close(alpha, torch.full((9,), 0.3), atol=1e-6, rtol=0)
    assert float(curve.roughness().detach()) == 0.0
    ((curve(depths) - torch.linspace(0.1, 0.9, 9)) ** 2).sum().backward()
    assert curve.ctrl.grad is not None and bool((curve.ctrl.grad != 0).any())


def test_curve_vector_alpha_and_range():
    curve = BSplineCurve(5, width=7)
    with torch.no_grad():
        curve.ctrl.normal_(0.0, 10.0, generator=torch.Generator().manual_seed(2))
    alpha = curve(torch.linspace(0, 1, 4))
    assert alpha.shape == (4, 7) and bool(((alpha > 0) & (alpha < 1)).all())
    assert curve(torch.tensor([0.25]))[0].shape == (7,)
    assert curve(0.25).shape == (1, 7)  # a float depth
    clamped = BSplineCurve(5, width=7, squash="clamp")
    with torch.no_grad():
        clamped.ctrl.normal_(0.0, 10.0, generator=torch.Generator().manual_seed(2))
    alpha = clamped(torch.linspace(0, 1, 4))
    assert bool(((alpha >= 0) & (alpha <= 1)).all()) and bool(((alpha == 0) | (alpha == 1)).any())


def test_quantized_curve_uses_a_straight_through_gradient():
    curve = BSplineCurve(4, width=3, quantize=0.1, init=0.47)
    alpha = curve(torch.linspace(0, 1, 5))
    torch.testing.assert_close(alpha, torch.full((5, 3), 0.5))
    alpha.sum().backward()
    assert bool((curve.ctrl.grad > 0).all())


def test_few_control_points_lower_the_degree():
    curve = BSplineCurve(2, degree=3, squash="clamp", init=0.2)
    assert curve.degree == 1
    with torch.no_grad():
        curve.ctrl.copy_(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(curve(torch.tensor([0.0, 0.25, 1.0])), torch.tensor([0.0, 0.25, 1.0]))
    assert BSplineCurve(1)(torch.tensor([0.0, 1.0])).shape == (2,)


def test_curve_rejects_bad_arguments():
    with pytest.raises(ValueError, match="squash"):
        BSplineCurve(4, squash="tanh")
    with pytest.raises(ValueError, match="init"):
        BSplineCurve(4, init=1.0)
    with pytest.raises(ValueError, match="at least one"):
        BSplineCurve(0)
