"""B-spline curves over normalised depth: how much of model B each layer takes (superposition).

A clamped B-spline of degree k with n control points c_i is α(t) = Σ_i B_i(t) c_i on t ∈ [0, 1]
(0: first layer, 1: last). The basis is non-negative and sums to 1, so α stays within the
control points' range and a constant curve is just equal control points. Evaluating at
normalised depth lets models of different depths share one curve. Fewer control points than
layers make the curve smooth by construction; with more, only a roughness penalty
(``BSplineCurve.roughness``) does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def clamped_knots(n_ctrl: int, degree: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The clamped uniform knot vector on [0, 1]: degree + 1 zeros, n_ctrl − degree − 1 evenly
    spaced interior knots, degree + 1 ones (n_ctrl + degree + 1 knots)."""
    if n_ctrl < degree + 1:
        raise ValueError(f"a degree-{degree} B-spline needs at least {degree + 1} control points, got {n_ctrl}")
    inner = torch.linspace(0.0, 1.0, n_ctrl - degree + 1, dtype=dtype)
    return torch.cat([torch.zeros(degree, dtype=dtype), inner, torch.ones(degree, dtype=dtype)])


def bspline_basis(t: Tensor, n_ctrl: int, degree: int = 3) -> Tensor:
    """The B-spline design matrix (len(t) × n_ctrl) at points t ∈ [0, 1] (clamped into it), by the
    Cox–de Boor recursion

        B_{i,0}(t) = [u_i ≤ t < u_{i+1}],
        B_{i,k}(t) = (t − u_i)/(u_{i+k} − u_i)·B_{i,k−1}(t) + (u_{i+k+1} − t)/(u_{i+k+1} − u_{i+1})·B_{i+1,k−1}(t)

    (terms with a zero denominator are 0; t = 1 belongs to the last span). Built from torch ops,
    so it is differentiable in t; its dtype is t's (at least float32)."""
    t = torch.as_tensor(t)
    dtype = t.dtype if t.dtype.is_floating_point else torch.get_default_dtype()
    t = t.to(dtype).reshape(-1).clamp(0.0, 1.0)[:, None]
    u = clamped_knots(n_ctrl, degree, dtype).to(t.device)
    # degree 0: indicator of the span; the last non-empty span [u_{n−1}, u_n] is closed on the right
    basis = ((u[:-1] <= t) & (t < u[1:])).to(dtype)
    basis[:, n_ctrl - 1] = torch.where(t[:, 0] == 1.0, torch.ones_like(t[:, 0]), basis[:, n_ctrl - 1])
    for k in range(1, degree + 1):
        count = basis.shape[1] - 1
        left_den = u[k : k + count] - u[:count]
        right_den = u[k + 1 : k + 1 + count] - u[1 : 1 + count]
        left = torch.where(left_den > 0, (t - u[:count]) / left_den.clamp_min(1e-30), torch.zeros_like(t))
        right = torch.where(right_den > 0, (u[k + 1 : k + 1 + count] - t) / right_den.clamp_min(1e-30), torch.zeros_like(t))
        basis = left * basis[:, :-1] + right * basis[:, 1:]
    return basis


class BSplineCurve(nn.Module):
    """α(t) = squash(B(t) · C), with control points C of shape n_ctrl ("1D": one α per depth) or
    n_ctrl × width ("2D": one α per feature).

    ``squash``: ``sigmoid`` (C are logits; α ∈ (0, 1)) or ``clamp`` (C are values; α clamped to
    [0, 1], as the paper's 1D variant). Every control point starts at ``init`` (or its logit), so
    the initial curve is constant. ``quantize`` > 0 rounds α to that step in the forward pass
    with a straight-through gradient (the paper's 2D variant uses 0.1). The degree drops to
    n_ctrl − 1 when there are too few control points for ``degree``."""

    def __init__(
        self,
        n_ctrl: int,
        width: int | None = None,
        degree: int = 3,
        squash: str = "sigmoid",
        init: float = 0.5,
        quantize: float = 0.0,
    ):
        super().__init__()
        if n_ctrl < 1:
            raise ValueError(f"a B-spline curve needs at least one control point, got {n_ctrl}")
        if squash not in ("sigmoid", "clamp"):
            raise ValueError(f"squash must be 'sigmoid' or 'clamp', got {squash!r}")
        if not 0.0 <= init <= 1.0 or (squash == "sigmoid" and not 0.0 < init < 1.0):
            raise ValueError(f"init must lie in [0, 1] (strictly inside for sigmoid), got {init}")
        self.n_ctrl, self.width, self.degree = n_ctrl, width, min(degree, n_ctrl - 1)
        self.squash, self.quantize = squash, quantize
        start = math.log(init / (1.0 - init)) if squash == "sigmoid" else init
        self.ctrl = nn.Parameter(torch.full((n_ctrl,) if width is None else (n_ctrl, width), start))

    def forward(self, depth: Tensor | float) -> Tensor:
        """α at normalised depths (m values in [0, 1]): shape m, or m × width."""
        t = torch.as_tensor(depth, dtype=self.ctrl.dtype, device=self.ctrl.device).reshape(-1)
        raw = bspline_basis(t, self.n_ctrl, self.degree) @ self.ctrl
        alpha = torch.sigmoid(raw) if self.squash == "sigmoid" else raw.clamp(0.0, 1.0)
        if self.quantize > 0:
            alpha = alpha + (torch.round(alpha / self.quantize) * self.quantize - alpha).detach()
        return alpha

    def roughness(self) -> Tensor:
        """Σ_i ‖c_i − c_{i−1}‖²: a smoothness penalty on the control points (0 for one point)."""
        return (self.ctrl[1:] - self.ctrl[:-1]).square().sum()

    def extra_repr(self) -> str:
        return f"n_ctrl={self.n_ctrl}, width={self.width}, degree={self.degree}, squash={self.squash!r}, quantize={self.quantize}"
