"""Representation similarity: linear CKA, full-batch and streaming (minibatch).

Linear CKA (Kornblith et al. 2019) of X (n×p) and Y (n×q), both column-centred, is

    CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F)  ∈ [0, 1].

It does not change under orthogonal maps or isotropic scaling of either side, so it cannot
reward an orthogonal (Procrustes, permutation) stitch: use it as a diagnostic only and judge
fitted maps by held-out R² (``ssmgraph.merge.maps.r2_score``).

The streaming variant (Nguyen, Raghu, Kornblith 2021) never stores all activations: it
averages the unbiased estimator HSIC₁ of each minibatch's linear kernels K = XXᵀ, L = YYᵀ and
normalises the averages at the end. Everything accumulates in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _matrix(x: Tensor) -> Tensor:
    """Rows are examples: a vector becomes n×1, leading axes (B×L×D) are flattened to (B·L)×D."""
    x = x.detach().to(torch.float64)
    if x.dim() == 1:
        return x[:, None]
    return x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x


def _centred(x: Tensor) -> Tensor:
    x = _matrix(x)
    return x - x.mean(0, keepdim=True)


def _check_rows(x: Tensor, y: Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares the same examples on both sides: got {x.shape[0]} and {y.shape[0]} rows")


def _cross(x: Tensor, y: Tensor) -> Tensor:
    """‖YᵀX‖²_F, through whichever Gram matrix is smaller (feature×feature or example×example)."""
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    if n * (p + q) < p * q:  # tr(XXᵀ·YYᵀ) is cheaper when there are fewer examples than features
        return ((x @ x.T) * (y @ y.T)).sum()
    return (y.T @ x).square().sum()


def linear_cka(X: Tensor, Y: Tensor) -> Tensor:
    """Linear CKA of X (n×p) and Y (n×q); columns are centred here. A float64 scalar in [0, 1]
    (0 when either side is constant)."""
    x, y = _centred(X), _centred(Y)
    _check_rows(x, y)
    denom = _cross(x, x).sqrt() * _cross(y, y).sqrt()
    if float(denom) == 0.0:
        return torch.zeros((), dtype=torch.float64)
    return (_cross(x, y) / denom).clamp(0.0, 1.0)


def cka_matrix(feats_a: Sequence[Tensor], feats_b: Sequence[Tensor]) -> Tensor:
    """Linear CKA of every pair of layers: entry [i, j] compares ``feats_a[i]`` with
    ``feats_b[j]`` (each n×d on the same n examples, e.g. taps flattened over batch and time)."""
    xs = [_centred(f) for f in feats_a]
    ys = [_centred(f) for f in feats_b]
    norm_x = [_cross(x, x).sqrt() for x in xs]
    norm_y = [_cross(y, y).sqrt() for y in ys]
    out = torch.zeros(len(xs), len(ys), dtype=torch.float64)
    for i, (x, nx) in enumerate(zip(xs, norm_x)):
        for j, (y, ny) in enumerate(zip(ys, norm_y)):
            _check_rows(x, y)
            denom = nx * ny
            out[i, j] = 0.0 if float(denom) == 0.0 else (_cross(x, y) / denom).clamp(0.0, 1.0)
    return out


def unbiased_hsic(K: Tensor, L: Tensor) -> Tensor:
    """HSIC₁ (Song et al. 2012) of two n×n kernel matrices, n ≥ 4; the diagonals are ignored:

    HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)),  K̃ = K − diag(K)."""
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 examples per batch, got {n}")
    K = K - torch.diag_embed(torch.diagonal(K))
    L = L - torch.diag_embed(torch.diagonal(L))
    trace = (K * L).sum()  # tr(K̃L̃); both are symmetric
    sums = K.sum() * L.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (K.sum(0) @ L.sum(1))
    return (trace + sums - cross) / (n * (n - 3))


def _linear_hsic(x: Tensor, y: Tensor) -> Tensor:
    """``unbiased_hsic(XXᵀ, YYᵀ)`` from the features, without forming the n×n kernels:
    tr(K̃L̃) = ‖YᵀX‖²_F − Σ_i ‖x_i‖²‖y_i‖², and K̃1 = X(Xᵀ1) − diag(K)."""
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 examples per batch, got {n}")
    kd, ld = x.square().sum(1), y.square().sum(1)
    k1, l1 = x @ x.sum(0) - kd, y @ y.sum(0) - ld
    trace = _cross(x, y) - (kd * ld).sum()
    sums = k1.sum() * l1.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (k1 @ l1)
    return (trace + sums - cross) / (n * (n - 3))


class CKAAccumulator:
    """Minibatch linear CKA (Nguyen, Raghu, Kornblith 2021):

        CKA = mean_b HSIC₁(K_b, L_b) / sqrt(mean_b HSIC₁(K_b, K_b) · mean_b HSIC₁(L_b, L_b))

    with K_b = X_bX_bᵀ, L_b = Y_bY_bᵀ for each batch b (≥ 4 rows). HSIC₁ is unbiased, so the
    average converges to the population value as batches are added, whatever the batch size;
    the full-batch ``linear_cka`` is biased upwards by O(d/n) instead. Feed the same examples to
    both sides of each ``update``."""

    def __init__(self) -> None:
        self.batches = 0
        self._xy = self._xx = self._yy = 0.0

    def update(self, x_batch: Tensor, y_batch: Tensor) -> None:
        x, y = _matrix(x_batch), _matrix(y_batch)
        _check_rows(x, y)
        self._xy += float(_linear_hsic(x, y))
        self._xx += float(_linear_hsic(x, x))
        self._yy += float(_linear_hsic(y, y))
        self.batches += 1

    def value(self) -> float:
        """The CKA so far, clipped to [0, 1] (the unbiased estimates can stray slightly outside)."""
        if self.batches == 0:
            raise ValueError("CKAAccumulator.value() before any update()")
        denom = max(self._xx, 0.0) * max(self._yy, 0.0)
        if denom == 0.0:
            return 0.0
        return min(max(self._xy / denom**0.5, 0.0), 1.0)
