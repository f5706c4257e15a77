"""Fitted maps between activation spaces, each checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ssmgraph.merge.maps import (
    LinearMap,
    barycentric_targets,
    fit_cca,
    fit_lstsq,
    fit_ot,
    fit_procrustes,
    normalized_mse,
    r2_score,
    random_orthogonal_map,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(n: int, p: int, q: int, seed: int, noise: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    X = torch.randn(n, p, generator=g, dtype=F64) * torch.linspace(0.5, 2.0, p, dtype=F64) + 1.0
    Y = X @ torch.randn(p, q, generator=g, dtype=F64) + noise * torch.randn(n, q, generator=g, dtype=F64) - 2.0
    return X, Y


def _semi_orthogonal(W: torch.Tensor) -> bool:
    q, p = W.shape
    gram = W.T @ W if q >= p else W @ W.T
    return torch.allclose(gram, torch.eye(min(p, q), dtype=W.dtype), atol=1e-10)


# ---- least squares ------------------------------------------------------------------------------
def test_lstsq_equals_normal_equations_and_numpy():
    X, Y = _pair(200, 6, 4, 0)
    fitted = fit_lstsq(X, Y)
    Xa = np.hstack([X.numpy(), np.ones((200, 1))])  # affine: solve for [Wᵀ; b] jointly
    normal = np.linalg.solve(Xa.T @ Xa, Xa.T @ Y.numpy())
    np.testing.assert_allclose(fitted.weight.numpy(), normal[:6].T, atol=1e-10)
    np.testing.assert_allclose(fitted.bias.numpy(), normal[6], atol=1e-10)
    ref = np.linalg.lstsq(Xa, Y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(fitted.weight.numpy(), ref[:6].T, atol=1e-10)
    assert fitted.weight.shape == (4, 6) and fitted.bias.shape == (4,)


def test_lstsq_ridge_closed_form():
    X, Y = _pair(100, 8, 3, 1)
    lam = 25.0
    Xc, Yc = X.numpy() - X.numpy().mean(0), Y.numpy() - Y.numpy().mean(0)
    W = np.linalg.solve(Xc.T @ Xc + lam * np.eye(8), Xc.T @ Yc).T
    fitted = fit_lstsq(X, Y, ridge=lam)
    np.testing.assert_allclose(fitted.weight.numpy(), W, atol=1e-10)
    np.testing.assert_allclose(fitted.bias.numpy(), Y.numpy().mean(0) - W @ X.numpy().mean(0), atol=1e-10)


def test_lstsq_rank_deficient_is_minimum_norm():
    X, Y = _pair(80, 4, 3, 2)
    X = torch.cat([X, X[:, :1]], 1)  # a duplicated column
    fitted = fit_lstsq(X, Y)
    Xc, Yc = X.numpy() - X.numpy().mean(0), Y.numpy() - Y.numpy().mean(0)
    np.testing.assert_allclose(fitted.weight.numpy(), np.linalg.lstsq(Xc, Yc, rcond=None)[0].T, atol=1e-9)
    assert torch.isfinite(fitted.weight).all()


def test_lstsq_exact_affine_map_and_dtype():
    X, _ = _pair(50, 5, 1, 3)
    W = torch.randn(7, 5, generator=_gen(4), dtype=F64)
    b = torch.randn(7, generator=_gen(5), dtype=F64)
    fitted = fit_lstsq(X.float(), (X @ W.T + b).float())
    assert fitted.weight.dtype == torch.float32
    torch.testing.assert_close(fitted.weight.double(), W, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted.bias.double(), b, atol=1e-4, rtol=1e-4)


# ---- Procrustes ---------------------------------------------------------------------------------
def test_procrustes_recovers_a_rotation_exactly():
    X, _ = _pair(100, 6, 1, 6)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=_gen(7), dtype=F64))
    t = torch.randn(6, generator=_gen(8), dtype=F64)
    fitted = fit_procrustes(X, X @ Q.T + t)
    assert _semi_orthogonal(fitted.weight)
    torch.testing.assert_close(fitted.weight, Q, atol=1e-10, rtol=0)
    torch.testing.assert_close(fitted.bias, t, atol=1e-10, rtol=0)
    scaled = fit_procrustes(X, 2.5 * X @ Q.T + t, scale=True)
    torch.testing.assert_close(scaled.weight, 2.5 * Q, atol=1e-10, rtol=0)
    torch.testing.assert_close(scaled.bias, t, atol=1e-10, rtol=0)


def test_procrustes_matches_scipy():
    X, Y = _pair(150, 5, 5, 9, noise=2.0)
    Xc, Yc = X.numpy() - X.numpy().mean(0), Y.numpy() - Y.numpy().mean(0)
    R, _ = scipy.linalg.orthogonal_procrustes(Xc, Yc)  # argmin ‖Xc R − Yc‖, so y ≈ Rᵀ x
    np.testing.assert_allclose(fit_procrustes(X, Y).weight.numpy(), R.T, atol=1e-10)


@pytest.mark.parametrize("p,q", [(3, 5), (5, 3)])
def test_procrustes_unequal_widths_is_semi_orthogonal(p, q):
    X, Y = _pair(120, p, q, 10)
    fitted = fit_procrustes(X, Y)
    assert fitted.weight.shape == (q, p) and fitted.bias.shape == (q,)
    assert _semi_orthogonal(fitted.weight)


def test_procrustes_recovers_an_isometric_embedding():
    X, _ = _pair(90, 3, 1, 11)
    E, _ = torch.linalg.qr(torch.randn(5, 3, generator=_gen(12), dtype=F64))  # 5×3, orthonormal columns
    fitted = fit_procrustes(X, X @ E.T)
    torch.testing.assert_close(fitted.weight, E, atol=1e-10, rtol=0)


# ---- CCA ----------------------------------------------------------------------------------------
def _cca_by_generalised_eigenproblem(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """[[0, Cxy], [Cyx, 0]] w = ρ [[Cxx, 0], [0, Cyy]] w: the canonical correlations are the
    largest min(p, q) eigenvalues."""
    p = X.shape[1]
    C = np.cov(np.hstack([X, Y]).T)
    A = np.zeros_like(C)
    A[:p, p:], A[p:, :p] = C[:p, p:], C[p:, :p]
    B = np.zeros_like(C)
    B[:p, :p], B[p:, p:] = C[:p, :p], C[p:, p:]
    return scipy.linalg.eigh(A, B, eigvals_only=True)[::-1][: min(p, Y.shape[1])]


def test_cca_correlations_match_scipy_generalised_eigenproblem():
    X, Y = _pair(400, 5, 3, 13, noise=3.0)
    _, corr = fit_cca(X, Y, reg=0.0)
    expected = _cca_by_generalised_eigenproblem(X.numpy(), Y.numpy())
    np.testing.assert_allclose(corr.numpy(), expected, atol=1e-9)
    assert bool(((corr >= 0) & (corr <= 1)).all()) and bool((corr[:-1] >= corr[1:]).all())


def test_cca_first_correlation_matches_sklearn():
    sklearn_cca = pytest.importorskip("sklearn.cross_decomposition").CCA
    X, Y = _pair(400, 4, 3, 14, noise=3.0)
    xs, ys = sklearn_cca(n_components=1, max_iter=2000, tol=1e-12).fit(X.numpy(), Y.numpy()).transform(X.numpy(), Y.numpy())
    reference = abs(np.corrcoef(xs[:, 0], ys[:, 0])[0, 1])
    assert float(fit_cca(X, Y, reg=0.0)[1][0]) == pytest.approx(reference, abs=1e-6)


def test_cca_map_full_dims_is_least_squares_and_truncation_lowers_rank():
    X, Y = _pair(300, 6, 4, 15)
    full, corr = fit_cca(X, Y, reg=0.0)
    assert corr.shape == (4,)
    ls = fit_lstsq(X, Y)
    torch.testing.assert_close(full.weight, ls.weight, atol=1e-9, rtol=0)
    torch.testing.assert_close(full.bias, ls.bias, atol=1e-9, rtol=0)
    low, corr2 = fit_cca(X, Y, dims=2)
    assert corr2.shape == (2,) and int(torch.linalg.matrix_rank(low.weight)) == 2
    assert float(r2_score(low.apply(X), Y)) <= float(r2_score(ls.apply(X), Y)) + 1e-12


def test_cca_recovers_a_shared_latent():
    g = _gen(16)
    z = torch.randn(2000, 1, generator=g, dtype=F64)
    X = z @ torch.randn(1, 6, generator=g, dtype=F64) + 0.1 * torch.randn(2000, 6, generator=g, dtype=F64)
    Y = z @ torch.randn(1, 5, generator=g, dtype=F64) + 0.1 * torch.randn(2000, 5, generator=g, dtype=F64)
    fitted, corr = fit_cca(X, Y, dims=1)
    assert float(corr[0]) > 0.99
    assert float(r2_score(fitted.apply(X), Y)) > 0.9


# ---- optimal transport --------------------------------------------------------------------------
def test_ot_recovers_a_permutation():
    pytest.importorskip("ot")
    g = _gen(17)
    X = torch.randn(60, 8, generator=g, dtype=F64)
    perm = torch.randperm(60, generator=g)
    Y = X[perm]  # y_j = x_{perm[j]}: x_i's partner is y_{perm⁻¹[i]}
    targets, plan = barycentric_targets(X, Y, reg=0.002)
    assert torch.equal(plan.argmax(1), torch.argsort(perm))
    torch.testing.assert_close(targets, X, atol=1e-6, rtol=0)
    fitted = fit_ot(X, Y, reg=0.002)
    torch.testing.assert_close(fitted.weight, torch.eye(8, dtype=F64), atol=1e-6, rtol=0)


def test_ot_unpaired_clouds_and_subsampling():
    pytest.importorskip("ot")
    g = _gen(18)
    X = torch.randn(300, 4, generator=g)
    Y = 2.0 * torch.randn(200, 4, generator=g) + 1.0  # different number of rows: no pairing
    fitted = fit_ot(X, Y, max_points=100, seed=3)
    assert fitted.weight.shape == (4, 4) and fitted.weight.dtype == torch.float32
    assert torch.equal(fitted.weight, fit_ot(X, Y, max_points=100, seed=3).weight)  # seeded
    targets, plan = barycentric_targets(X[:50], Y[:70])
    assert targets.shape == (50, 4) and plan.shape == (50, 70)
    torch.testing.assert_close(plan.sum(0), torch.full((70,), 1 / 70, dtype=F64), atol=1e-4, rtol=0)


# ---- scores and controls -------------------------------------------------------------------------
def test_r2_and_normalized_mse():
    X, Y = _pair(200, 5, 3, 19, noise=1.0)
    assert float(r2_score(Y, Y)) == 1.0
    assert float(r2_score(Y.mean(0).expand_as(Y), Y)) == pytest.approx(0.0, abs=1e-12)
    pred = fit_lstsq(X, Y).apply(X)
    assert float(normalized_mse(pred, Y)) == pytest.approx(1.0 - float(r2_score(pred, Y)), abs=1e-12)
    sk = pytest.importorskip("sklearn.metrics")
    # 1 − ΣSSE/ΣSST is the variance-weighted average of the per-feature R²
    assert float(r2_score(pred, Y)) == pytest.approx(
        sk.r2_score(Y.numpy(), pred.numpy(), multioutput="variance_weighted"), rel=1e-10
    )
    assert float(r2_score(pred.reshape(10, 20, 3), Y.reshape(10, 20, 3))) == pytest.approx(float(r2_score(pred, Y)))
    with pytest.raises(ValueError, match="differ in shape"):
        r2_score(pred[:, :2], Y)


@pytest.mark.parametrize("p,q", [(4, 4), (3, 6), (6, 3)])
def test_random_orthogonal_map(p, q):
    m = random_orthogonal_map(p, q, seed=1)
    assert m.weight.shape == (q, p) and torch.equal(m.bias, torch.zeros(q, dtype=F64))
    assert _semi_orthogonal(m.weight)
    assert torch.equal(m.weight, random_orthogonal_map(p, q, seed=1).weight)
    assert not torch.allclose(m.weight, random_orthogonal_map(p, q, seed=2).weight)


def test_linear_map_apply():
    m = LinearMap(torch.randn(3, 5, generator=_gen(20), dtype=F64), torch.ones(3, dtype=F64))
    x = torch.randn(2, 7, 5, generator=_gen(21))
    y = m.apply(x)
    assert y.shape == (2, 7, 3) and y.dtype == torch.float32
    torch.testing.assert_close(y[1, 2].double(), m.weight @ x[1, 2].double() + 1.0, atol=1e-5, rtol=1e-5)


def test_fits_check_shapes():
    with pytest.raises(ValueError, match="same examples"):
        fit_lstsq(torch.randn(10, 2), torch.randn(9, 2))
    with pytest.raises(ValueError, match="n×p"):
        fit_procrustes(torch.randn(10), torch.randn(10, 2))
